//! The seam between the gateway engine and a backend: a `ReplicaPool` is the replicas of one
//! function (or of its baseline) as a backend runs them — local processes, or a Kubernetes
//! Deployment behind its Service. The engine asks it for a replica, tells it how many to
//! run, and reports replicas that did not answer; everything else (routing, queueing,
//! limits, forwarding, metrics) is the engine's and written once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::Notify;

/// A ready replica that requests can be sent to. On Kubernetes, the function's Service.
#[derive(Debug)]
pub struct Endpoint {
    pub id: u64,
    pub addr: SocketAddr,
    pub inflight: AtomicU32,
    pub ready_at: Instant,
    /// Where this replica's start-up time went (zero where the backend cannot tell).
    pub start: StartTimes,
    /// Timeouts in a row; reset by an answer.
    pub timeouts: AtomicU32,
    /// Taken out of rotation (did not accept a connection, or timed out repeatedly).
    pub suspect: AtomicBool,
    /// Requests it was given: a replica that served and then died is replaced, not counted
    /// toward a crash loop.
    pub served: AtomicU64,
    /// The local replica's process (group) id; 0 where the backend has none (Kubernetes).
    pub pid: u32,
}

impl Endpoint {
    pub fn new(id: u64, addr: SocketAddr, start: StartTimes) -> Self {
        Self {
            id,
            addr,
            inflight: AtomicU32::new(0),
            ready_at: Instant::now(),
            start,
            timeouts: AtomicU32::new(0),
            suspect: AtomicBool::new(false),
            served: AtomicU64::new(0),
            pid: 0,
        }
    }
}

/// Where a new replica's start-up time went.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartTimes {
    /// From asking for the process to having it running.
    pub spawn: Duration,
    /// From running to answering GET /_/ready with 200.
    pub readiness: Duration,
}

/// Wakes requests waiting for a replica, and counts them: the count is the function's
/// queue, read by the autoscaler and the metrics.
#[derive(Debug, Default)]
pub struct Waiters {
    pub notify: Notify,
    pub waiting: AtomicU32,
}

impl Waiters {
    pub fn wake(&self) {
        self.notify.notify_waiters();
    }

    /// Requests waiting now.
    pub fn count(&self) -> u32 {
        self.waiting.load(Ordering::SeqCst)
    }
}

/// A request's hold on one replica's capacity: taken by `ReplicaPool::acquire`, given back
/// when dropped, on every path (answered, failed, timed out, client gone, panic).
#[derive(Debug)]
pub struct Slot {
    pub endpoint: Arc<Endpoint>,
    waiters: Arc<Waiters>,
}

impl Slot {
    /// Takes one unit of `endpoint`'s capacity.
    pub fn take(endpoint: Arc<Endpoint>, waiters: Arc<Waiters>) -> Self {
        endpoint.inflight.fetch_add(1, Ordering::SeqCst);
        endpoint.served.fetch_add(1, Ordering::Relaxed);
        Self { endpoint, waiters }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.endpoint.inflight.fetch_sub(1, Ordering::SeqCst);
        // A waiter counts itself before it looks for a replica (both SeqCst): either it sees
        // this freed slot or this sees it waiting. Waking takes a lock the common case skips.
        if self.waiters.count() > 0 {
            self.waiters.wake();
        }
    }
}

/// A function's state as `ls`, the admin API and the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolState {
    /// Replicas ready and none wanted beyond them.
    Ready,
    /// No replica, none wanted.
    Idle,
    /// Replicas wanted that are not ready yet.
    Scaling,
    /// Gave up for now (crash loop, or the backend cannot scale it); retried on its own.
    Failed,
}

/// The replicas of one function as a backend runs them.
pub trait ReplicaPool: Send + Sync + 'static {
    /// The ready replica with the fewest requests in flight and below `limit` in flight (0:
    /// no cap), with that capacity taken; None when there is none.
    fn acquire(&self, limit: u32) -> Option<Slot>;
    /// Replicas ready to take requests.
    fn ready_count(&self) -> u32;
    /// Replicas wanted (starting or ready).
    fn wanted(&self) -> u32;
    /// Asks for `n` replicas. Clears a failed state when `clear_failure`.
    fn scale_to(&self, n: u32, clear_failure: bool);
    /// Why the pool cannot serve now (crash loop, or what the backend refused), if so.
    fn failure(&self) -> Option<String>;
    /// Requests waiting for a replica of this pool, and how to wake them.
    fn waiters(&self) -> &Arc<Waiters>;
    /// `endpoint` refused a connection or timed out repeatedly: out of rotation. Returns
    /// whether another attempt may go to a different address at once (false: the backend
    /// has one address and the caller should pause before trying it again).
    fn unreachable(&self, endpoint: &Endpoint) -> bool;
    /// Addresses of the replicas now serving (idle upstream connections to others close).
    fn addrs(&self) -> Vec<SocketAddr>;
    /// Where the replicas answer directly, as URLs (for a baseline: what `bench` calls).
    fn urls(&self) -> Vec<String> {
        self.addrs().iter().map(|a| format!("http://{a}")).collect()
    }
    /// What keeps the backend from scaling or watching this pool, if anything (named in
    /// the 504 a waiting request gets); unlike `failure`, requests still wait.
    fn trouble(&self) -> Option<String> {
        None
    }
    /// Process ids of the replicas now serving, where they run on this machine (what
    /// `bench` reads CPU time from); empty elsewhere.
    fn pids(&self) -> Vec<u32> {
        Vec::new()
    }
    /// The last `n` lines of the replicas' output, where the backend keeps them.
    fn log_tail(&self, n: usize) -> Option<Vec<String>>;
    /// Up to `n` lines written after line number `after` that `keep` accepts, and the
    /// number to resume from (`LogBuffer::since`), where the backend keeps them.
    fn log_since(
        &self,
        _after: u64,
        _n: usize,
        _keep: &dyn Fn(&str) -> bool,
    ) -> Option<(Vec<String>, u64)> {
        None
    }
    /// Adds a line of the gateway's own to the function's log, where there is one.
    fn note(&self, _line: String) {}
    /// Stops every replica (locally) or stops managing them (Kubernetes).
    fn shutdown(&self) -> BoxFuture<'_, ()>;

    fn state(&self) -> PoolState {
        if self.failure().is_some() {
            return PoolState::Failed;
        }
        let (ready, wanted) = (self.ready_count(), self.wanted());
        match (ready, wanted) {
            (0, 0) => PoolState::Idle,
            (r, w) if r < w => PoolState::Scaling,
            _ => PoolState::Ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_gives_its_capacity_back_when_dropped_and_wakes_waiters() {
        let ep = Arc::new(Endpoint::new(
            1,
            "127.0.0.1:1".parse().unwrap(),
            StartTimes::default(),
        ));
        let waiters = Arc::new(Waiters::default());
        let slot = Slot::take(ep.clone(), waiters.clone());
        assert_eq!(ep.inflight.load(Ordering::SeqCst), 1);
        waiters.waiting.store(1, Ordering::SeqCst);
        let woken = waiters.notify.notified();
        futures::pin_mut!(woken);
        woken.as_mut().enable();
        drop(slot);
        assert_eq!(ep.inflight.load(Ordering::SeqCst), 0);
        assert!(
            futures::FutureExt::now_or_never(woken).is_some(),
            "the waiter was woken"
        );
    }
}
