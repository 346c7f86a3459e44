//! The dashboard's charts without Prometheus: every 5 s the gateway reads each function's
//! cumulative counters and latency histograms (the ones `/metrics` exports, so the request
//! path does no extra work), keeps the difference as one point, and keeps an hour of
//! points per function. The last minute's difference gives the table's rates.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::api::{Point, Rates};
use super::function::FunctionState;
use super::metrics::{label, Metrics, StartLabels};

/// One point per this.
pub const BUCKET: Duration = Duration::from_secs(5);
/// Points kept per function: an hour.
pub const KEEP: usize = 720;
/// The table's rates cover this many buckets (a minute).
const RATE_BUCKETS: usize = 12;

/// A function's cumulative figures at one moment.
#[derive(Debug, Clone, Default)]
struct Totals {
    requests: u64,
    errors: u64,
    cold_starts: u64,
    /// Latency bucket counts, warm and cold requests together.
    latency: Vec<u64>,
}

#[derive(Debug, Default)]
struct Series {
    points: VecDeque<Point>,
    /// The last RATE_BUCKETS + 1 snapshots, oldest first.
    recent: VecDeque<Totals>,
    rates: Rates,
}

/// Every function's recent history, by name (it outlives a reload's new version).
#[derive(Debug, Default)]
pub struct History {
    series: Mutex<HashMap<String, Series>>,
}

impl History {
    /// Takes one point per function in `functions`; functions no longer served are
    /// forgotten.
    pub fn sample(&self, metrics: &Metrics, functions: &[Arc<FunctionState>], now_ms: u64) {
        let mut series = self.series.lock().expect("history lock");
        series.retain(|name, _| functions.iter().any(|f| f.name() == name));
        for f in functions {
            let (bounds, totals) = totals(metrics, f.name());
            let s = series.entry(f.name().to_string()).or_default();
            let previous = s.recent.back().cloned();
            s.recent.push_back(totals.clone());
            if s.recent.len() > RATE_BUCKETS + 1 {
                s.recent.pop_front();
            }
            // The first sight of a name is the baseline, not a point: its counters may
            // hold what an earlier function of that name answered (the gateway takes a
            // sample as it starts, so nothing before the first request is lost).
            let Some(previous) = previous else {
                continue;
            };
            let delta = difference(&totals, &previous);
            s.points.push_back(Point {
                t: now_ms,
                requests: delta.requests,
                errors: delta.errors,
                p50_ms: percentile_ms(&bounds, &delta.latency, 0.5),
                p99_ms: percentile_ms(&bounds, &delta.latency, 0.99),
                replicas: f.serverless.ready_count(),
                cold_starts: delta.cold_starts,
            });
            if s.points.len() > KEEP {
                s.points.pop_front();
            }
            let first = s.recent.front().expect("two snapshots at least");
            let window = difference(&totals, first);
            let seconds = (s.recent.len() - 1) as f64 * BUCKET.as_secs_f64();
            let last_cold = metrics
                .last_cold_start_ms
                .get_or_create(&label(f.name()))
                .get();
            s.rates = Rates {
                requests_per_second: window.requests as f64 / seconds,
                error_rate: if window.requests == 0 {
                    0.0
                } else {
                    window.errors as f64 / window.requests as f64
                },
                p50_ms: percentile_ms(&bounds, &window.latency, 0.5),
                p99_ms: percentile_ms(&bounds, &window.latency, 0.99),
                last_cold_start_ms: (last_cold > 0).then_some(last_cold as u64),
            };
        }
    }

    /// A function's points, oldest first (None: not sampled yet or not served).
    pub fn points(&self, name: &str) -> Option<Vec<Point>> {
        let series = self.series.lock().expect("history lock");
        series.get(name).map(|s| s.points.iter().cloned().collect())
    }

    /// Every function's rates over the last minute.
    pub fn rates(&self) -> BTreeMap<String, Rates> {
        let series = self.series.lock().expect("history lock");
        series
            .iter()
            .map(|(name, s)| (name.clone(), s.rates.clone()))
            .collect()
    }
}

fn totals(metrics: &Metrics, name: &str) -> (Vec<f64>, Totals) {
    let l = label(name);
    let histogram = |start: &'static str| {
        metrics
            .duration
            .get_or_create(&StartLabels {
                function: name.to_string(),
                start,
            })
            .clone()
    };
    let (warm, cold) = (histogram("warm"), histogram("cold"));
    let (bounds, mut latency) = warm.snapshot();
    let bounds = bounds.to_vec();
    for (a, b) in latency.iter_mut().zip(cold.snapshot().1) {
        *a += b;
    }
    let ok = metrics
        .requests
        .get_or_create(&super::metrics::CodeLabels {
            function: name.to_string(),
            code: 200,
        })
        .get();
    let totals = Totals {
        requests: ok + metrics.not_ok.get_or_create(&l).get(),
        errors: metrics.server_errors.get_or_create(&l).get(),
        cold_starts: metrics.cold_starts.get_or_create(&l).get(),
        latency,
    };
    (bounds, totals)
}

/// `now - before`; a counter that went back (it cannot, but a reset would) counts from 0.
fn difference(now: &Totals, before: &Totals) -> Totals {
    let d = |a: u64, b: u64| if a >= b { a - b } else { a };
    Totals {
        requests: d(now.requests, before.requests),
        errors: d(now.errors, before.errors),
        cold_starts: d(now.cold_starts, before.cold_starts),
        latency: now
            .latency
            .iter()
            .enumerate()
            .map(|(i, a)| d(*a, before.latency.get(i).copied().unwrap_or(0)))
            .collect(),
    }
}

/// The `q` quantile of bucket counts, interpolated linearly within its bucket, in ms.
fn percentile_ms(bounds: &[f64], counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            let upper = bounds[i];
            if upper == f64::MAX {
                return Some(lower * 1000.0);
            }
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some((lower + (upper - lower) * within) * 1000.0);
        }
        below += n;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_within_their_bucket() {
        let bounds = [0.001, 0.002, 0.004, f64::MAX];
        // 100 answers: 50 under 1 ms, 40 in 1-2 ms, 10 in 2-4 ms.
        let counts = [50, 40, 10, 0];
        assert_eq!(percentile_ms(&bounds, &counts, 0.5), Some(1.0));
        let p90 = percentile_ms(&bounds, &counts, 0.9).unwrap();
        assert!((p90 - 2.0).abs() < 1e-9, "{p90}");
        let p99 = percentile_ms(&bounds, &counts, 0.99).unwrap();
        assert!((p99 - 3.8).abs() < 1e-9, "{p99}");
        assert_eq!(percentile_ms(&bounds, &[0, 0, 0, 0], 0.5), None);
        assert_eq!(percentile_ms(&bounds, &[0, 0, 0, 3], 0.5), Some(4.0));
    }

    #[test]
    fn totals_count_every_answer_and_5xx_as_errors() {
        let metrics = Metrics::default();
        let ok = |n: u32| {
            for _ in 0..n {
                metrics
                    .requests
                    .get_or_create(&super::super::metrics::CodeLabels {
                        function: "f".into(),
                        code: 200,
                    })
                    .inc();
            }
        };
        ok(50);
        let (_, before) = totals(&metrics, "f");
        assert_eq!(before.requests, 50);
        ok(10);
        metrics.not_ok.get_or_create(&label("f")).inc_by(2);
        metrics.server_errors.get_or_create(&label("f")).inc();
        let (bounds, now) = totals(&metrics, "f");
        assert_eq!(bounds.len(), now.latency.len());
        let d = difference(&now, &before);
        assert_eq!((d.requests, d.errors), (12, 1));
    }

    #[test]
    fn a_counter_that_went_back_counts_from_zero() {
        let before = Totals {
            requests: 10,
            errors: 2,
            cold_starts: 1,
            latency: vec![5, 5],
        };
        let now = Totals {
            requests: 3,
            errors: 2,
            cold_starts: 4,
            latency: vec![7, 1],
        };
        let d = difference(&now, &before);
        assert_eq!((d.requests, d.errors, d.cold_starts), (3, 0, 3));
        assert_eq!(d.latency, vec![2, 1]);
    }
}
