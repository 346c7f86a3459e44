//! The gateway's Prometheus metrics (text format through prometheus-client). Gauges that
//! mirror state (replicas, in flight, queued) are refreshed from that state at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabel {
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub function: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StartLabels {
    pub function: String,
    /// "cold" when the request waited for a replica to start, else "warm".
    pub start: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub function: String,
    /// spawn, readiness or first_byte.
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub function: String,
    /// serverless or baseline.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub function: String,
    /// ready, starting or baseline.
    pub state: &'static str,
}

/// A queue trigger: its function and stream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub function: String,
    pub stream: String,
}

type Histograms<L> = Family<L, LatencyHistogram, fn() -> LatencyHistogram>;

fn latency() -> LatencyHistogram {
    // 100 µs to ~100 s.
    LatencyHistogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// A latency histogram in seconds whose `observe` takes no lock: prometheus-client's own
/// takes a write lock on every observation, and the gateway observes twice per request
/// from every serving thread. Bucket counts are atomics; the sum is kept in nanoseconds.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    inner: Arc<LatencyInner>,
}

#[derive(Debug)]
struct LatencyInner {
    /// Upper bounds, the last one +Inf (f64::MAX, as prometheus-client does).
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Vec<f64> = bounds
            .into_iter()
            .chain(std::iter::once(f64::MAX))
            .collect();
        let counts = bounds.iter().map(|_| AtomicU64::new(0)).collect();
        Self {
            inner: Arc::new(LatencyInner {
                bounds,
                counts,
                count: AtomicU64::new(0),
                sum_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// The bucket upper bounds (the last one +Inf) and their counts now.
    pub fn snapshot(&self) -> (&[f64], Vec<u64>) {
        let counts = self
            .inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        (&self.inner.bounds, counts)
    }

    pub fn observe(&self, seconds: f64) {
        let i = self
            .inner
            .bounds
            .partition_point(|b| *b < seconds)
            .min(self.inner.bounds.len() - 1);
        self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        self.inner
            .sum_nanos
            .fetch_add((seconds.max(0.0) * 1e9) as u64, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let i = &self.inner;
        let buckets: Vec<(f64, u64)> = i
            .bounds
            .iter()
            .zip(&i.counts)
            .map(|(b, c)| (*b, c.load(Ordering::Relaxed)))
            .collect();
        let sum = i.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, i.count.load(Ordering::Relaxed), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Every metric the gateway exports.
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<CodeLabels, Counter>,
    pub duration: Histograms<StartLabels>,
    pub overhead: Histograms<FunctionLabel>,
    pub cold_starts: Family<FunctionLabel, Counter>,
    pub cold_start_duration: Histograms<FunctionLabel>,
    pub cold_start_phase: Histograms<PhaseLabels>,
    pub replicas: Family<StateLabels, Gauge>,
    pub inflight: Family<FunctionLabel, Gauge>,
    pub queued: Family<FunctionLabel, Gauge>,
    pub replica_seconds: Family<KindLabels, Counter<f64, AtomicU64>>,
    pub upstream_idle: Gauge,
    pub async_accepted: Family<FunctionLabel, Counter>,
    pub async_delivered: Family<FunctionLabel, Counter>,
    pub async_retried: Family<FunctionLabel, Counter>,
    pub async_failed: Family<FunctionLabel, Counter>,
    pub async_dead: Family<FunctionLabel, Counter>,
    pub async_pending: Family<FunctionLabel, Gauge>,
    pub async_oldest_pending: Family<FunctionLabel, Gauge<f64, AtomicU64>>,
    pub async_attempt_duration: Histograms<FunctionLabel>,
    pub queue_delivered: Family<QueueLabels, Counter>,
    pub queue_retried: Family<QueueLabels, Counter>,
    pub queue_dead: Family<QueueLabels, Counter>,
    pub queue_backlog: Family<QueueLabels, Gauge>,
    pub queue_connected: Family<QueueLabels, Gauge>,
    /// Not exported (`requests` has them by code): answers other than 200, and those of
    /// them 5xx, per function, for the dashboard's history; and the last cold start's
    /// duration in ms.
    pub not_ok: Family<FunctionLabel, Counter>,
    pub server_errors: Family<FunctionLabel, Counter>,
    pub last_cold_start_ms: Family<FunctionLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cubeflash");
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency),
            overhead: Family::new_with_constructor(latency),
            cold_starts: Family::default(),
            cold_start_duration: Family::new_with_constructor(latency),
            cold_start_phase: Family::new_with_constructor(latency),
            replicas: Family::default(),
            inflight: Family::default(),
            queued: Family::default(),
            replica_seconds: Family::default(),
            upstream_idle: Gauge::default(),
            async_accepted: Family::default(),
            async_delivered: Family::default(),
            async_retried: Family::default(),
            async_failed: Family::default(),
            async_dead: Family::default(),
            async_pending: Family::default(),
            async_oldest_pending: Family::default(),
            async_attempt_duration: Family::new_with_constructor(latency),
            queue_delivered: Family::default(),
            queue_retried: Family::default(),
            queue_dead: Family::default(),
            queue_backlog: Family::default(),
            queue_connected: Family::default(),
            not_ok: Family::default(),
            server_errors: Family::default(),
            last_cold_start_ms: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by function and status code",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, by function and whether it waited for a cold start",
            m.duration.clone(),
        );
        registry.register(
            "gateway_overhead_seconds",
            "Time the gateway itself added to a warm request (total minus the replica's own time)",
            m.overhead.clone(),
        );
        registry.register(
            "cold_starts",
            "Scale-ups from zero replicas caused by a request",
            m.cold_starts.clone(),
        );
        registry.register(
            "cold_start_duration_seconds",
            "From a request arriving at a function with no replica to its first response byte",
            m.cold_start_duration.clone(),
        );
        registry.register(
            "cold_start_phase_seconds",
            "Where a cold start's time went: spawn, readiness, first_byte",
            m.cold_start_phase.clone(),
        );
        registry.register(
            "replicas",
            "Replicas by state: starting, ready, baseline",
            m.replicas.clone(),
        );
        registry.register(
            "inflight_requests",
            "Requests being handled by a replica",
            m.inflight.clone(),
        );
        registry.register(
            "queued_requests",
            "Requests waiting for a replica",
            m.queued.clone(),
        );
        registry.register(
            "replica_seconds",
            "Compute held: replica-seconds of serverless and baseline replicas (the pay-per-use figure)",
            m.replica_seconds.clone(),
        );
        registry.register(
            "upstream_idle_connections",
            "Keep-alive connections to replicas waiting in the gateway's pool",
            m.upstream_idle.clone(),
        );
        for (name, help, family) in [
            (
                "async_accepted",
                "Async calls stored and answered 202",
                &m.async_accepted,
            ),
            (
                "async_delivered",
                "Async calls the function answered 2xx",
                &m.async_delivered,
            ),
            (
                "async_retried",
                "Async call attempts that failed and will be retried",
                &m.async_retried,
            ),
            (
                "async_failed",
                "Async calls the function refused with a 4xx (not retried)",
                &m.async_failed,
            ),
            (
                "async_dead",
                "Async calls that used up their retries or maxAge",
                &m.async_dead,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "async_pending_calls",
            "Async calls waiting for an attempt",
            m.async_pending.clone(),
        );
        registry.register(
            "async_oldest_pending_seconds",
            "How long the most overdue pending async call has waited for its attempt",
            m.async_oldest_pending.clone(),
        );
        registry.register(
            "async_attempt_duration_seconds",
            "How long one attempt of an async call took, through the engine",
            m.async_attempt_duration.clone(),
        );
        for (name, help, family) in [
            (
                "queue_delivered",
                "Queue messages the function answered 2xx (acked)",
                &m.queue_delivered,
            ),
            (
                "queue_retried",
                "Queue message deliveries that failed and were nak'ed for another",
                &m.queue_retried,
            ),
            (
                "queue_dead",
                "Queue messages moved to the dead-letter stream",
                &m.queue_dead,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "queue_backlog_messages",
            "Messages of a queue trigger pending or delivered and not yet acked (its lag)",
            m.queue_backlog.clone(),
        );
        registry.register(
            "queue_connected",
            "1 while a queue trigger's consumer is connected to NATS, else 0",
            m.queue_connected.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// Sets the gauges that mirror state from the functions as they are now.
    pub fn refresh(
        &self,
        functions: &[std::sync::Arc<super::function::FunctionState>],
        idle: usize,
    ) {
        for f in functions {
            let name = f.name();
            let ready = f.serverless.ready_count();
            let baseline = f.baseline.as_ref().map_or(0, |b| b.ready_count());
            for (state, n) in [
                ("ready", ready),
                ("starting", f.serverless.wanted().saturating_sub(ready)),
                ("baseline", baseline),
            ] {
                self.replicas
                    .get_or_create(&StateLabels {
                        function: name.to_string(),
                        state,
                    })
                    .set(i64::from(n));
            }
            self.inflight
                .get_or_create(&label(name))
                .set(i64::from(f.inflight()));
            self.queued
                .get_or_create(&label(name))
                .set(i64::from(f.queued()));
        }
        self.upstream_idle.set(idle as i64);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

pub fn label(function: &str) -> FunctionLabel {
    FunctionLabel {
        function: function.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histograms_encode_like_prometheus_client_ones() {
        let mut registry = Registry::default();
        let ours = LatencyHistogram::new([0.1, 1.0]);
        let theirs = prometheus_client::metrics::histogram::Histogram::new([0.1, 1.0]);
        registry.register("ours", "x", ours.clone());
        registry.register("theirs", "x", theirs.clone());
        for v in [0.05, 0.1, 0.5, 2.0, 0.25] {
            ours.observe(v);
            theirs.observe(v);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let ours_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("ours_")).collect();
        let theirs_lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("theirs_"))
            .map(|l| l.replacen("theirs_", "ours_", 1))
            .collect();
        assert_eq!(ours_lines, theirs_lines, "{text}");
        assert!(text.contains("ours_bucket{le=\"0.1\"} 2"), "{text}");
        assert!(text.contains("ours_bucket{le=\"+Inf\"} 5"), "{text}");
    }
}
