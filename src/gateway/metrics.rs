//! The gateway's Prometheus metrics (text format through prometheus-client). Gauges that
//! mirror state (replicas, in flight, queued) are refreshed from that state at scrape time.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
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
pub struct StateLabels {
    pub function: String,
    /// ready, starting or baseline.
    pub state: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 100 µs to ~100 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
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
    pub replica_seconds: Family<FunctionLabel, Counter<f64, AtomicU64>>,
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
        Self { registry, ..m }
    }
}

impl Metrics {
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
