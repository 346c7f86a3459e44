//! One function as the engine serves it, on any backend: its route-table entry, its
//! serverless and baseline replica pools, and the counters the autoscaler and metrics read.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::runtime::pool::ReplicaPool;

use super::metrics::{label, CodeLabels, Metrics, StartLabels};
use super::scaler;
use super::table::RouteEntry;

pub struct FunctionState {
    pub entry: RouteEntry,
    pub serverless: Arc<dyn ReplicaPool>,
    pub baseline: Option<Arc<dyn ReplicaPool>>,
    /// Requests being handled by a replica (see `Inflight`).
    inflight: AtomicU32,
    pub cold_starts: AtomicU64,
    /// When the last request arrived, as milliseconds since `epoch`.
    last_request_ms: AtomicU64,
    epoch: Instant,
    /// Since when the autoscaler has wanted fewer replicas than it has.
    below_since: Mutex<Option<Instant>>,
    /// When the cold start in progress began (a request found no replica).
    pub cold_start_began: Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
    /// This function's hot-path metrics, looked up once instead of per request.
    pub hot: HotMetrics,
    /// Replaced by a reload: requests waiting for one of its replicas move to the successor.
    retired: std::sync::atomic::AtomicBool,
    /// Async calls waiting for an attempt: demand for the autoscaler like queued requests.
    async_pending: AtomicU32,
    /// When the most overdue pending async call fell due (ms since the epoch; 0: none).
    async_oldest_ms: AtomicU64,
    /// Each queue trigger's consumer state, by subject (its consumer says).
    queues: Mutex<std::collections::BTreeMap<String, super::api::QueueStatus>>,
}

/// Per-function metric handles used on every request.
pub struct HotMetrics {
    pub ok: prometheus_client::metrics::counter::Counter,
    pub warm: super::metrics::LatencyHistogram,
    pub overhead: super::metrics::LatencyHistogram,
    /// Answers other than 200, and those of them 5xx (the dashboard's history).
    pub not_ok: prometheus_client::metrics::counter::Counter,
    pub server_errors: prometheus_client::metrics::counter::Counter,
}

/// One request counted in flight for its function until dropped.
pub struct Inflight(Arc<FunctionState>);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request counted as waiting for a replica of `pool` until dropped.
pub struct Queued<'a>(&'a AtomicU32);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FunctionState {
    pub fn new(
        entry: RouteEntry,
        serverless: Arc<dyn ReplicaPool>,
        baseline: Option<Arc<dyn ReplicaPool>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let name = entry.name.clone();
        let hot = HotMetrics {
            ok: metrics
                .requests
                .get_or_create(&CodeLabels {
                    function: name.clone(),
                    code: 200,
                })
                .clone(),
            warm: metrics
                .duration
                .get_or_create(&StartLabels {
                    function: name.clone(),
                    start: "warm",
                })
                .clone(),
            overhead: metrics.overhead.get_or_create(&label(&name)).clone(),
            not_ok: metrics.not_ok.get_or_create(&label(&name)).clone(),
            server_errors: metrics.server_errors.get_or_create(&label(&name)).clone(),
        };
        Arc::new(Self {
            entry,
            serverless,
            baseline,
            inflight: AtomicU32::new(0),
            cold_starts: AtomicU64::new(0),
            last_request_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            below_since: Mutex::new(None),
            cold_start_began: Mutex::new(None),
            hot,
            metrics,
            retired: Default::default(),
            async_pending: AtomicU32::new(0),
            async_oldest_ms: AtomicU64::new(0),
            queues: Mutex::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// Requests being handled by a replica now.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Requests waiting for a replica now.
    pub fn queued(&self) -> u32 {
        self.serverless.waiters().count()
    }

    /// Counts a request in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> Inflight {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        Inflight(self.clone())
    }

    /// Counts a request as waiting for a replica, unless `bound` already wait.
    pub fn wait_in_queue(&self, bound: u32) -> Option<Queued<'_>> {
        let waiting = &self.serverless.waiters().waiting;
        if waiting.fetch_add(1, Ordering::SeqCst) >= bound {
            waiting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Queued(waiting))
    }

    /// Starts what must always run: `scale.min` replicas (or keeps more, for a pool taken
    /// over from an earlier table or started by a rollout) and the baseline. A crash loop a
    /// rollout saw stands: the pool retries on its own.
    pub fn start(&self) {
        let min = self.entry.scale.min;
        self.serverless.scale_to(
            min.max(self.serverless.wanted())
                .min(self.entry.scale.max.max(min)),
            false,
        );
        if let (Some(b), Some(pool)) = (&self.entry.baseline, &self.baseline) {
            pool.scale_to(b.replicas, false);
        }
    }

    /// Marks this version replaced and wakes the requests waiting for its replicas.
    pub fn mark_retired(&self) {
        self.retired.store(true, Ordering::SeqCst);
        self.serverless.waiters().wake();
    }

    /// Async calls waiting for an attempt (the delivery loop says).
    pub fn set_async_pending(&self, backlog: crate::triggers::calls::Backlog) {
        let n = backlog.pending.min(u32::MAX as usize) as u32;
        self.async_pending.store(n, Ordering::Relaxed);
        self.async_oldest_ms
            .store(backlog.oldest_ms.unwrap_or(0), Ordering::Relaxed);
        self.metrics
            .async_pending
            .get_or_create(&label(self.name()))
            .set(i64::from(n));
        self.metrics
            .async_oldest_pending
            .get_or_create(&label(self.name()))
            .set(self.async_oldest_age_ms().unwrap_or(0) as f64 / 1000.0);
    }

    /// How long the most overdue pending async call has waited, in ms.
    pub fn async_oldest_age_ms(&self) -> Option<u64> {
        match self.async_oldest_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(crate::triggers::calls::now_ms().saturating_sub(at)),
        }
    }

    pub fn async_pending(&self) -> u32 {
        self.async_pending.load(Ordering::Relaxed)
    }

    /// Queue-trigger messages not yet handled (pending plus unacked), over its triggers.
    pub fn queue_backlog(&self) -> u32 {
        let queues = self.queues.lock().expect("queues lock");
        queues
            .values()
            .map(|q| q.backlog)
            .sum::<u64>()
            .min(u64::from(u32::MAX)) as u32
    }

    /// Records a queue trigger consumer's state.
    pub fn set_queue_status(&self, status: super::api::QueueStatus) {
        let labels = super::metrics::QueueLabels {
            function: self.name().to_string(),
            stream: status.stream.clone(),
        };
        self.metrics
            .queue_backlog
            .get_or_create(&labels)
            .set(status.backlog.min(i64::MAX as u64) as i64);
        self.metrics
            .queue_connected
            .get_or_create(&labels)
            .set(i64::from(status.state == "consuming"));
        self.queues
            .lock()
            .expect("queues lock")
            .insert(status.subject.clone(), status);
    }

    /// The queue trigger consumers' states.
    pub fn queue_statuses(&self) -> Vec<super::api::QueueStatus> {
        self.queues
            .lock()
            .expect("queues lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    pub fn touch(&self) {
        self.last_request_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn since_request(&self) -> Duration {
        let last = Duration::from_millis(self.last_request_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// A request found no replica: ask for one now rather than at the next autoscaler tick.
    /// Counts one cold start however many requests arrive at once.
    pub fn scale_from_zero(&self) {
        if self.serverless.wanted() == 0 && self.serverless.failure().is_none() {
            let mut began = self.cold_start_began.lock().expect("cold start lock");
            if began.is_none() {
                *began = Some(Instant::now());
                self.cold_starts.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .cold_starts
                    .get_or_create(&label(self.name()))
                    .inc();
                tracing::info!(function = %self.name(), "cold start");
            }
            drop(began);
            self.serverless.scale_to(1, false);
        }
    }

    /// One autoscaler step. A failed pool is not scaled up (it retries on its own), but it
    /// still goes back to zero when idle.
    pub fn autoscale(&self) {
        let spec = &self.entry.scale;
        let current = self.serverless.wanted();
        let demand = self.inflight() + self.queued() + self.async_pending() + self.queue_backlog();
        let bounds = scaler::Bounds {
            min: spec.min,
            max: spec.max,
            concurrency: spec.concurrency,
            idle: spec.idle.value,
        };
        let desired = scaler::tick(
            bounds,
            current,
            demand,
            self.since_request(),
            &self.below_since,
        );
        if desired == current || (desired > current && self.serverless.failure().is_some()) {
            return;
        }
        tracing::info!(function = %self.name(), from = current, to = desired, demand, "scaling");
        self.serverless.scale_to(desired, false);
    }

    /// Stops the pools that `keep` (the function's successor, if any) does not take over.
    pub async fn retire(&self, keep: Option<&FunctionState>) {
        let shared = |a: &Arc<dyn ReplicaPool>, b: Option<&Arc<dyn ReplicaPool>>| {
            b.is_some_and(|b| Arc::ptr_eq(a, b))
        };
        let serverless = async {
            if !shared(&self.serverless, keep.map(|k| &k.serverless)) {
                self.serverless.shutdown().await;
            }
        };
        let baseline = async {
            if let Some(b) = &self.baseline {
                if !shared(b, keep.and_then(|k| k.baseline.as_ref())) {
                    b.shutdown().await;
                }
            }
        };
        tokio::join!(serverless, baseline);
    }

    pub async fn shutdown(&self) {
        let baseline = async {
            if let Some(b) = &self.baseline {
                b.shutdown().await;
            }
        };
        tokio::join!(self.serverless.shutdown(), baseline);
    }
}
