//! A function's set of local replicas: keeps as many running as the autoscaler asks for,
//! publishes the ready ones for dispatch, restarts crashed ones with exponential backoff,
//! gives up on a crash loop, and drains a replica before stopping its process group.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::local::{self, LogBuffer, ProcessSpec};

/// Crashes within `CRASH_WINDOW` that make a crash loop.
pub const CRASH_LIMIT: usize = 5;
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a new replica may take to answer GET /_/ready.
const READY_DEADLINE: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(5);

pub type ProbeClient = Client<HttpConnector, Empty<bytes::Bytes>>;

/// A ready replica that requests can be sent to.
#[derive(Debug)]
pub struct Endpoint {
    pub id: u64,
    pub addr: SocketAddr,
    pub inflight: AtomicU32,
    pub ready_at: Instant,
    /// Where this replica's start-up time went.
    pub start: StartTimes,
}

/// Where a new replica's start-up time went.
#[derive(Debug, Clone, Copy)]
pub struct StartTimes {
    /// From asking for the process to having it running.
    pub spawn: Duration,
    /// From running to answering GET /_/ready with 200.
    pub readiness: Duration,
}

struct ReplicaCtl {
    id: u64,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The replicas of one function (or of its baseline).
pub struct ReplicaSet {
    pub spec: ProcessSpec,
    pub logs: Arc<LogBuffer>,
    ready: RwLock<Vec<Arc<Endpoint>>>,
    /// Wakes requests waiting for a replica (one became ready, freed up, or the set failed).
    pub changed: Notify,
    running: Mutex<Vec<ReplicaCtl>>,
    stopping: Mutex<Vec<JoinHandle<()>>>,
    failure: Mutex<Option<String>>,
    crashes: Mutex<VecDeque<Instant>>,
    next_id: AtomicU64,
    drain_grace: Duration,
    probe: ProbeClient,
    /// The runtime supervisors run on (not a request-serving worker's).
    handle: tokio::runtime::Handle,
}

impl ReplicaSet {
    pub fn new(
        spec: ProcessSpec,
        logs: Arc<LogBuffer>,
        drain_grace: Duration,
        probe: ProbeClient,
        handle: tokio::runtime::Handle,
    ) -> Arc<Self> {
        Arc::new(Self {
            spec,
            logs,
            ready: RwLock::default(),
            changed: Notify::new(),
            running: Mutex::default(),
            stopping: Mutex::default(),
            failure: Mutex::default(),
            crashes: Mutex::default(),
            next_id: AtomicU64::new(1),
            drain_grace,
            probe,
            handle,
        })
    }

    /// Replicas wanted (starting or ready).
    pub fn running(&self) -> u32 {
        self.running.lock().expect("running lock").len() as u32
    }

    pub fn ready(&self) -> Vec<Arc<Endpoint>> {
        self.ready.read().expect("ready lock").clone()
    }

    pub fn ready_count(&self) -> u32 {
        self.ready.read().expect("ready lock").len() as u32
    }

    /// The ready replica with the fewest requests in flight, below `limit` (0 = no cap),
    /// with its in-flight count already taken.
    pub fn acquire(&self, limit: u32) -> Option<Arc<Endpoint>> {
        let ready = self.ready.read().expect("ready lock");
        let best = ready
            .iter()
            .filter(|e| limit == 0 || e.inflight.load(Ordering::Relaxed) < limit)
            .min_by_key(|e| e.inflight.load(Ordering::Relaxed))?;
        best.inflight.fetch_add(1, Ordering::SeqCst);
        Some(best.clone())
    }

    /// Gives back what `acquire` took, and wakes waiters that a cap may have held back.
    /// `waiting` says whether any request is queued: waking takes a lock, which the common
    /// case (nobody waits) skips. A waiter counts itself before it looks for a replica, so
    /// either it sees this release's slot or this release sees it (both SeqCst).
    pub fn release(&self, endpoint: &Endpoint, waiting: bool) {
        endpoint.inflight.fetch_sub(1, Ordering::SeqCst);
        if waiting {
            self.changed.notify_waiters();
        }
    }

    /// Why the set gave up (a crash loop), with the last log lines.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("failure lock").clone()
    }

    /// Starts or stops replicas until `n` are wanted. Clears a previous crash loop when
    /// asked for more than zero again after one.
    pub fn scale_to(self: &Arc<Self>, n: u32) {
        let mut running = self.running.lock().expect("running lock");
        if n > 0 && running.is_empty() {
            *self.failure.lock().expect("failure lock") = None;
            self.crashes.lock().expect("crash lock").clear();
        }
        while (running.len() as u32) < n {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (stop, stop_rx) = watch::channel(false);
            let set = self.clone();
            let task = self
                .handle
                .spawn(async move { set.supervise(id, stop_rx).await });
            running.push(ReplicaCtl { id, stop, task });
        }
        while (running.len() as u32) > n {
            // Stop the youngest first: older replicas are warm.
            let ctl = running.pop().expect("len > n >= 0");
            let _ = ctl.stop.send(true);
            self.stopping.lock().expect("stopping lock").push(ctl.task);
        }
    }

    /// Stops every replica and waits until their processes are gone.
    pub async fn shutdown(self: &Arc<Self>) {
        self.scale_to(0);
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.stopping.lock().expect("stopping lock"));
        for t in tasks {
            let _ = t.await;
        }
    }

    fn forget(&self, id: u64) {
        self.running
            .lock()
            .expect("running lock")
            .retain(|c| c.id != id);
    }

    fn remove_ready(&self, id: u64) {
        self.ready
            .write()
            .expect("ready lock")
            .retain(|e| e.id != id);
    }

    /// Records a crash; true when it makes a crash loop (the set then stops trying).
    fn crashed(&self, id: u64, why: &str) -> bool {
        self.logs.push(format!(
            "[{}#{id}] cubeflash: replica {why}",
            self.spec.function
        ));
        let now = Instant::now();
        let mut crashes = self.crashes.lock().expect("crash lock");
        crashes.push_back(now);
        while crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            crashes.pop_front();
        }
        if crashes.len() < CRASH_LIMIT {
            return false;
        }
        let last = self.logs.tail(20).join("\n");
        *self.failure.lock().expect("failure lock") = Some(format!(
            "{} crashed {} times in {}s and is not restarted; last output:\n{last}",
            self.spec.function,
            crashes.len(),
            CRASH_WINDOW.as_secs()
        ));
        drop(crashes);
        self.forget(id);
        self.changed.notify_waiters();
        true
    }

    async fn supervise(self: Arc<Self>, id: u64, mut stop: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_START;
        loop {
            if *stop.borrow() {
                return;
            }
            let asked = Instant::now();
            let mut proc = match local::spawn(&self.spec, id, &self.logs).await {
                Ok(p) => p,
                Err(e) => {
                    if self.crashed(id, &format!("could not start {}: {e}", self.spec.program)) {
                        return;
                    }
                    if sleep_or_stop(&mut stop, &mut backoff).await {
                        return;
                    }
                    continue;
                }
            };
            let spawned = Instant::now();
            let ready = tokio::select! {
                r = probe_ready(&self.probe, proc.addr) => r,
                status = proc.child.wait() => Err(format!("exited before it was ready ({})", describe(status))),
                _ = stop.changed() => {
                    local::stop(&mut proc, STOP_GRACE).await;
                    return;
                }
            };
            if let Err(why) = ready {
                local::stop(&mut proc, Duration::ZERO).await;
                if self.crashed(id, &why) || sleep_or_stop(&mut stop, &mut backoff).await {
                    return;
                }
                continue;
            }
            let now = Instant::now();
            let start = StartTimes {
                spawn: spawned - asked,
                readiness: now - spawned,
            };
            let endpoint = Arc::new(Endpoint {
                id,
                addr: proc.addr,
                inflight: AtomicU32::new(0),
                ready_at: now,
                start,
            });
            self.ready
                .write()
                .expect("ready lock")
                .push(endpoint.clone());
            self.changed.notify_waiters();
            backoff = BACKOFF_START;
            tokio::select! {
                status = proc.child.wait() => {
                    self.remove_ready(id);
                    local::stop(&mut proc, Duration::ZERO).await;
                    if self.crashed(id, &format!("exited ({})", describe(status))) || sleep_or_stop(&mut stop, &mut backoff).await {
                        return;
                    }
                }
                _ = stop.changed() => {
                    self.remove_ready(id);
                    drain(&endpoint, self.drain_grace).await;
                    local::stop(&mut proc, STOP_GRACE).await;
                    return;
                }
            }
        }
    }
}

/// Sleeps the backoff (doubling it), or returns true at once if told to stop.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    tokio::select! {
        _ = tokio::time::sleep(wait) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("unknown status: {e}"),
    }
}

/// Waits for requests in flight on `endpoint` to finish, at most `grace`.
async fn drain(endpoint: &Endpoint, grace: Duration) {
    let deadline = Instant::now() + grace;
    while endpoint.inflight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls GET /_/ready until it answers 200.
async fn probe_ready(client: &ProbeClient, addr: SocketAddr) -> Result<(), String> {
    let uri: hyper::Uri = format!("http://{addr}/_/ready").parse().expect("valid uri");
    let deadline = Instant::now() + READY_DEADLINE;
    let mut pause = Duration::from_millis(2);
    while Instant::now() < deadline {
        let attempt = tokio::time::timeout(Duration::from_secs(1), client.get(uri.clone())).await;
        if let Ok(Ok(resp)) = attempt {
            if resp.status() == hyper::StatusCode::OK {
                return Ok(());
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(5));
    }
    Err(format!(
        "did not answer GET /_/ready with 200 within {}s",
        READY_DEADLINE.as_secs()
    ))
}
