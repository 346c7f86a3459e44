//! One function as the gateway serves it: its spec, its serverless replica set, its
//! baseline replica set, and the counters the autoscaler and metrics read.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::runtime::local::{LogBuffer, ProcessSpec};
use crate::runtime::replicas::{ProbeClient, ReplicaSet};
use crate::spec::Function;

use super::metrics::{label, CodeLabels, Metrics, StartLabels};
use super::scaler;

/// How long in-flight requests may take to finish before a replica is stopped anyway.
fn drain_grace(f: &Function) -> Duration {
    f.spec.timeout.value + Duration::from_secs(1)
}

pub struct FunctionState {
    pub function: Function,
    pub serverless: Arc<ReplicaSet>,
    pub baseline: Option<Arc<ReplicaSet>>,
    pub logs: Arc<LogBuffer>,
    /// Requests being handled by a replica.
    pub inflight: AtomicU32,
    /// Requests waiting for a replica.
    pub queued: AtomicU32,
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
}

/// Per-function metric handles used on every request.
pub struct HotMetrics {
    pub ok: prometheus_client::metrics::counter::Counter,
    pub warm: super::metrics::LatencyHistogram,
    pub overhead: super::metrics::LatencyHistogram,
}

impl FunctionState {
    pub fn new(
        function: Function,
        spec: ProcessSpec,
        logs: Arc<LogBuffer>,
        probe: ProbeClient,
        metrics: Arc<Metrics>,
        handle: tokio::runtime::Handle,
    ) -> Arc<Self> {
        let name = function.spec.name.clone();
        let grace = drain_grace(&function);
        let serverless = ReplicaSet::new(
            spec.clone(),
            logs.clone(),
            grace,
            probe.clone(),
            handle.clone(),
        );
        let baseline = function.spec.baseline.as_ref().map(|_| {
            let mut spec = spec.clone();
            spec.function = format!("{name}-baseline");
            ReplicaSet::new(spec, logs.clone(), grace, probe, handle)
        });
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
        };
        Arc::new(Self {
            function,
            serverless,
            baseline,
            logs,
            inflight: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            cold_starts: AtomicU64::new(0),
            last_request_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            below_since: Mutex::new(None),
            cold_start_began: Mutex::new(None),
            hot,
            metrics,
        })
    }

    pub fn name(&self) -> &str {
        &self.function.spec.name
    }

    /// Starts what must always run: `scale.min` replicas and the baseline.
    pub fn start(&self) {
        let spec = &self.function.spec;
        self.serverless.scale_to(spec.scale.min);
        if let (Some(b), Some(set)) = (&spec.baseline, &self.baseline) {
            set.scale_to(b.replicas);
        }
    }

    pub fn touch(&self) {
        self.last_request_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn since_request(&self) -> Duration {
        let last = Duration::from_millis(self.last_request_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// A request found no replica: start one now rather than at the next autoscaler tick.
    /// Counts one cold start however many requests arrive at once.
    pub fn scale_from_zero(&self) {
        if self.serverless.running() == 0 && self.serverless.failure().is_none() {
            let mut began = self.cold_start_began.lock().expect("cold start lock");
            if began.is_none() {
                *began = Some(Instant::now());
                self.cold_starts.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .cold_starts
                    .get_or_create(&label(self.name()))
                    .inc();
            }
            drop(began);
            self.serverless.scale_to(1);
        }
    }

    /// One autoscaler step.
    pub fn autoscale(&self) {
        if self.serverless.failure().is_some() {
            return;
        }
        let spec = &self.function.spec.scale;
        let current = self.serverless.running();
        let demand = self.inflight.load(Ordering::Relaxed) + self.queued.load(Ordering::Relaxed);
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
        if desired != current {
            self.serverless.scale_to(desired);
        }
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
