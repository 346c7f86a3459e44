//! A function's set of local replicas: keeps as many running as the autoscaler asks for,
//! publishes the ready ones for dispatch, restarts crashed ones with exponential backoff,
//! gives up on a crash loop, and drains a replica before stopping its process group.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use futures::future::BoxFuture;

use super::local::{self, LogBuffer, ProcessSpec};
pub use super::pool::{Endpoint, StartTimes};
use super::pool::{ReplicaPool, Slot, Waiters};

/// Early failures in a row (exited before ready, or within `EARLY_EXIT` of it without
/// serving a request) that make a crash loop. A replica that served and then died is simply
/// replaced.
pub const CRASH_LIMIT: u32 = 5;
/// An exit this soon after readiness counts as a failure to start.
pub const EARLY_EXIT: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A failed function retries on its own, first after this, doubling up to `FAILED_RETRY_MAX`.
const FAILED_RETRY_START: Duration = Duration::from_secs(10);
const FAILED_RETRY_MAX: Duration = Duration::from_secs(300);
/// How long a new replica may take to answer GET /_/ready.
const READY_DEADLINE: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(5);

pub type ProbeClient = Client<HttpConnector, Empty<bytes::Bytes>>;

struct ReplicaCtl {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The replicas of one function (or of its baseline).
pub struct ReplicaSet {
    me: std::sync::Weak<ReplicaSet>,
    pub spec: ProcessSpec,
    pub logs: Arc<LogBuffer>,
    ready: RwLock<Vec<Arc<Endpoint>>>,
    /// Requests waiting for a replica, woken when one becomes ready or frees up, or the set fails.
    waiters: Arc<Waiters>,
    /// Wakes supervisors: a replica was marked suspect, or a failed set should retry now.
    nudge: Notify,
    running: Mutex<Vec<ReplicaCtl>>,
    stopping: Mutex<Vec<JoinHandle<()>>>,
    failure: Mutex<Option<String>>,
    /// Early failures in a row (see `CRASH_LIMIT`).
    early_failures: AtomicU32,
    /// Failed rounds in a row: how long a failed set waits before it tries again.
    failed_rounds: AtomicU32,
    /// Counts `clear_failure`s: a supervisor that sees it change starts its backoff over.
    cleared: AtomicU64,
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
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            spec,
            logs,
            ready: RwLock::default(),
            waiters: Arc::default(),
            nudge: Notify::new(),
            running: Mutex::default(),
            stopping: Mutex::default(),
            failure: Mutex::default(),
            early_failures: AtomicU32::new(0),
            failed_rounds: AtomicU32::new(0),
            cleared: AtomicU64::new(0),
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

    /// Why the set gave up for now (a crash loop), with the last log lines.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("failure lock").clone()
    }

    /// Starts or stops replicas until `n` are wanted; `clear_failure` forgets a crash loop
    /// and makes waiting supervisors try again at once (deploy, reload, admin scale).
    pub fn scale_to(self: &Arc<Self>, n: u32, clear_failure: bool) {
        if clear_failure {
            self.clear_failure();
        }
        let mut running = self.running.lock().expect("running lock");
        while (running.len() as u32) < n {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (stop, stop_rx) = watch::channel(false);
            let set = self.clone();
            let task = self
                .handle
                .spawn(async move { set.supervise(id, stop_rx).await });
            running.push(ReplicaCtl { stop, task });
        }
        while (running.len() as u32) > n {
            // Stop the youngest first: older replicas are warm.
            let ctl = running.pop().expect("len > n >= 0");
            let _ = ctl.stop.send(true);
            self.stopping.lock().expect("stopping lock").push(ctl.task);
        }
    }

    fn clear_failure(&self) {
        let was = self.failure.lock().expect("failure lock").take();
        self.early_failures.store(0, Ordering::Relaxed);
        self.failed_rounds.store(0, Ordering::Relaxed);
        self.cleared.fetch_add(1, Ordering::Relaxed);
        if was.is_some() {
            tracing::info!(function = %self.spec.function, "crash loop cleared; starting again");
            self.nudge.notify_waiters();
        }
    }

    /// Stops every replica and waits until their processes are gone.
    pub async fn shutdown(self: &Arc<Self>) {
        self.scale_to(0, false);
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.stopping.lock().expect("stopping lock"));
        for t in tasks {
            let _ = t.await;
        }
    }

    fn remove_ready(&self, id: u64) {
        self.ready
            .write()
            .expect("ready lock")
            .retain(|e| e.id != id);
    }

    /// Records a replica that failed to start (or exited early) and returns how long to
    /// wait before the next try: the short backoff, or, once this makes a crash loop, the
    /// failed set's growing retry interval.
    fn failed_start(&self, id: u64, why: &str, backoff: &mut Duration) -> Duration {
        self.logs.push(format!(
            "[{}#{id}] cubeflash: replica {why}",
            self.spec.function
        ));
        let n = self.early_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < CRASH_LIMIT {
            let wait = *backoff;
            *backoff = (*backoff * 2).min(BACKOFF_MAX);
            return wait;
        }
        let rounds = self.failed_rounds.fetch_add(1, Ordering::Relaxed);
        let wait = FAILED_RETRY_START
            .saturating_mul(1u32 << rounds.min(8))
            .min(FAILED_RETRY_MAX);
        let mut failure = self.failure.lock().expect("failure lock");
        if failure.is_none() {
            tracing::warn!(function = %self.spec.function, failures = n, retry_in = ?wait, "crash loop: the function is marked failed");
        }
        *failure = Some(format!(
            "{} failed to start {n} times in a row; it tries again on its own in {}s (or at once on `cubeflash deploy` or `cubeflash scale`); its last output is in `log`",
            self.spec.function,
            wait.as_secs()
        ));
        drop(failure);
        self.waiters.wake();
        wait
    }

    /// A replica served and then exited: replace it, without counting it toward a crash
    /// loop.
    fn died(&self, id: u64, why: &str) {
        self.logs.push(format!(
            "[{}#{id}] cubeflash: replica {why}; replacing it",
            self.spec.function
        ));
        self.early_failures.store(0, Ordering::Relaxed);
    }

    /// A replica became ready: whatever failed before is over.
    fn became_ready(&self) {
        self.failed_rounds.store(0, Ordering::Relaxed);
        if self.failure.lock().expect("failure lock").take().is_some() {
            tracing::info!(function = %self.spec.function, "recovered from a crash loop");
        }
    }

    async fn supervise(self: Arc<Self>, id: u64, mut stop: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_START;
        let mut cleared = self.cleared.load(Ordering::Relaxed);
        loop {
            if *stop.borrow() {
                return;
            }
            let now_cleared = self.cleared.load(Ordering::Relaxed);
            if now_cleared != cleared {
                cleared = now_cleared;
                backoff = BACKOFF_START;
            }
            let asked = Instant::now();
            let mut proc = match local::spawn(&self.spec, id, &self.logs).await {
                Ok(p) => p,
                Err(e) => {
                    let why = format!("could not start {}: {e}", self.spec.program);
                    let wait = self.failed_start(id, &why, &mut backoff);
                    if self.pause(&mut stop, wait).await {
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
                let wait = self.failed_start(id, &why, &mut backoff);
                if self.pause(&mut stop, wait).await {
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
                pid: proc.pgid.as_raw() as u32,
                ..Endpoint::new(id, proc.addr, start)
            });
            self.ready
                .write()
                .expect("ready lock")
                .push(endpoint.clone());
            self.became_ready();
            self.waiters.wake();
            let outcome = loop {
                let nudged = self.nudge.notified();
                tokio::pin!(nudged);
                nudged.as_mut().enable();
                if endpoint.suspect.load(Ordering::SeqCst) {
                    break Served::Suspect;
                }
                tokio::select! {
                    status = proc.child.wait() => break Served::Exited(describe(status)),
                    _ = stop.changed() => break Served::Stopped,
                    _ = nudged => continue,
                }
            };
            self.remove_ready(id);
            match outcome {
                Served::Stopped => {
                    drain(&endpoint, self.drain_grace).await;
                    local::stop(&mut proc, STOP_GRACE).await;
                    return;
                }
                Served::Suspect => {
                    // Not answering (stopped, wedged): replace it at once.
                    local::stop(&mut proc, Duration::ZERO).await;
                    self.died(id, "stopped answering and was taken out of rotation");
                    backoff = BACKOFF_START;
                }
                Served::Exited(status) => {
                    local::stop(&mut proc, Duration::ZERO).await;
                    let why = format!("exited ({status})");
                    let served = endpoint.served.load(Ordering::Relaxed) > 0;
                    if endpoint.ready_at.elapsed() < EARLY_EXIT && !served {
                        let wait = self.failed_start(id, &why, &mut backoff);
                        if self.pause(&mut stop, wait).await {
                            return;
                        }
                    } else {
                        self.died(id, &why);
                        backoff = BACKOFF_START;
                    }
                }
            }
        }
    }

    /// Waits `wait`, or less when nudged to retry; true when told to stop meanwhile.
    async fn pause(&self, stop: &mut watch::Receiver<bool>, wait: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(wait) => *stop.borrow(),
            _ = self.nudge.notified() => *stop.borrow(),
            _ = stop.changed() => true,
        }
    }
}

/// How a serving replica's time in rotation ended.
enum Served {
    Stopped,
    Suspect,
    Exited(String),
}

impl ReplicaPool for ReplicaSet {
    fn acquire(&self, limit: u32) -> Option<Slot> {
        let ready = self.ready.read().expect("ready lock");
        let best = ready
            .iter()
            .filter(|e| !e.suspect.load(Ordering::Relaxed))
            .filter(|e| limit == 0 || e.inflight.load(Ordering::Relaxed) < limit)
            .min_by_key(|e| e.inflight.load(Ordering::Relaxed))?;
        Some(Slot::take(best.clone(), self.waiters.clone()))
    }

    fn ready_count(&self) -> u32 {
        ReplicaSet::ready_count(self)
    }

    fn wanted(&self) -> u32 {
        self.running()
    }

    fn scale_to(&self, n: u32, clear_failure: bool) {
        // The supervisors need an owning handle; the gateway holds every set in an Arc.
        if let Some(me) = self.me.upgrade() {
            ReplicaSet::scale_to(&me, n, clear_failure);
        }
    }

    fn failure(&self) -> Option<String> {
        ReplicaSet::failure(self)
    }

    fn waiters(&self) -> &Arc<Waiters> {
        &self.waiters
    }

    fn unreachable(&self, endpoint: &Endpoint) -> bool {
        if !endpoint.suspect.swap(true, Ordering::SeqCst) {
            tracing::warn!(function = %self.spec.function, replica = endpoint.id, addr = %endpoint.addr, "replica taken out of rotation");
            self.remove_ready(endpoint.id);
            self.nudge.notify_waiters();
        }
        true
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.ready().iter().map(|e| e.addr).collect()
    }

    fn pids(&self) -> Vec<u32> {
        self.ready().iter().map(|e| e.pid).collect()
    }

    fn log_tail(&self, n: usize) -> Option<Vec<String>> {
        Some(self.logs.tail(n))
    }

    fn log_since(
        &self,
        after: u64,
        n: usize,
        keep: &dyn Fn(&str) -> bool,
    ) -> Option<(Vec<String>, u64)> {
        Some(self.logs.since(after, n, keep))
    }

    fn note(&self, line: String) {
        self.logs.push(line);
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(me) = self.me.upgrade() {
                ReplicaSet::shutdown(&me).await;
            }
        })
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
