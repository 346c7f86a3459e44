//! The event-trigger modes of `cubeflash bench`:
//!
//! - `--async FUNCTION`: the load goes to `POST /async-function/FUNCTION` (so the load
//!   generator times the *accept*: stored, fsync'd or acked by JetStream, then 202); then
//!   the calls are followed through the admin API until every one finished, and their
//!   *completion* (accepted → last attempt ended, from the call records, ms resolution) and
//!   the end-to-end throughput (calls / first accept → last finish) are reported.
//! - `--queue FUNCTION`: messages are published to the function's queue trigger subject
//!   (each acked by its stream, in windows), and timed until the gateway delivered them all
//!   (its `cubeflash_queue_delivered_total`): messages per second end to end.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::hist::{self, Latency};
use crate::gateway::api::CallState;
use crate::gateway::client::{AdminClient, ClientError};

/// Why a trigger benchmark could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum TriggerBenchError {
    #[error("the gateway's admin API refused")]
    Admin(#[source] ClientError),
    #[error("{function} has no queue trigger: `cubeflash bench --queue` publishes to one (add `triggers: [{{ queue: {{ subject: ... }} }}]` to its function.yaml)")]
    NoQueue { function: String },
    #[error("cubeflash.yaml names no NATS server (nats.url), so there is no queue to publish to")]
    NoNats,
    #[error("cannot publish to NATS at {url}")]
    Nats {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{done} of {expected} {what} finished within {waited:?}; the rest are still pending (see `cubeflash ls` and the gateway log)")]
    Unfinished {
        what: &'static str,
        done: usize,
        expected: usize,
        waited: Duration,
    },
}

/// What following the accepted calls found.
#[derive(Debug)]
pub struct AsyncFigures {
    pub calls: usize,
    pub succeeded: usize,
    /// Accepted → last attempt ended, in µs (from ms records).
    pub completion: Latency,
    /// First accept to last finish.
    pub span: Duration,
}

impl AsyncFigures {
    pub fn throughput(&self) -> f64 {
        self.calls as f64 / self.span.as_secs_f64().max(1e-3)
    }
}

/// Calls a benchmark follows, at most (the admin API lists this many).
const MAX_CALLS: usize = 10_000;

/// Waits (up to `wait`) until the calls of `function` accepted since `since_ms` have all
/// finished, and measures them.
pub async fn follow_calls(
    client: &AdminClient,
    function: &str,
    since_ms: u64,
    wait: Duration,
) -> Result<AsyncFigures, TriggerBenchError> {
    let deadline = Instant::now() + wait;
    // Until none waits or runs (small questions: the whole list is asked for once, at the
    // end).
    while Instant::now() < deadline {
        let mut busy = false;
        for state in ["queued", "running", "retrying"] {
            let some = client
                .calls(Some(function), Some(state), 1)
                .await
                .map_err(TriggerBenchError::Admin)?;
            busy |= some.iter().any(|c| c.accepted_at >= since_ms);
        }
        if !busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        let calls = client
            .calls(Some(function), None, MAX_CALLS)
            .await
            .map_err(TriggerBenchError::Admin)?;
        let ours: Vec<_> = calls
            .into_iter()
            .filter(|c| c.accepted_at >= since_ms)
            .collect();
        let finished = ours.iter().filter(|c| c.state.finished()).count();
        if finished == ours.len() || Instant::now() >= deadline {
            if finished < ours.len() {
                return Err(TriggerBenchError::Unfinished {
                    what: "async calls",
                    done: finished,
                    expected: ours.len(),
                    waited: wait,
                });
            }
            let mut completion = hist::new();
            let (mut first, mut last) = (u64::MAX, 0);
            for c in &ours {
                let end = c
                    .attempts
                    .last()
                    .map_or(c.accepted_at, |a| a.started_at + a.duration_ms);
                first = first.min(c.accepted_at);
                last = last.max(end);
                hist::record(&mut completion, end.saturating_sub(c.accepted_at) * 1000);
            }
            return Ok(AsyncFigures {
                calls: ours.len(),
                succeeded: ours
                    .iter()
                    .filter(|c| c.state == CallState::Succeeded)
                    .count(),
                completion,
                span: Duration::from_millis(last.saturating_sub(first)),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What publishing to a queue trigger found.
#[derive(Debug, Clone, Copy)]
pub struct QueueFigures {
    pub messages: u64,
    /// First publish to the last one acked by the stream.
    pub publish: Duration,
    /// First publish to the last delivery the gateway counted.
    pub end_to_end: Duration,
}

impl QueueFigures {
    pub fn throughput(&self) -> f64 {
        self.messages as f64 / self.end_to_end.as_secs_f64().max(1e-3)
    }
}

/// Messages the gateway delivered through `function`'s queue triggers (its metrics).
fn delivered(metrics: &str, function: &str) -> u64 {
    let prefix = format!("cubeflash_queue_delivered_total{{function=\"{function}\",");
    metrics
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Messages published at once before their acks are awaited (async-nats bounds the acks
/// in flight).
const WINDOW: usize = 256;

/// Publishes `n` messages of `body` to `function`'s (first) queue trigger and waits (up to
/// `wait`) until the gateway delivered them.
pub async fn queue_run(
    client: &AdminClient,
    nats_url: &str,
    function: &str,
    n: u64,
    body: Bytes,
    wait: Duration,
) -> Result<QueueFigures, TriggerBenchError> {
    let info = client
        .function(function)
        .await
        .map_err(TriggerBenchError::Admin)?;
    let subject = info
        .triggers
        .iter()
        .find_map(|t| match t {
            crate::spec::Trigger::Queue(q) => Some(q.subject.clone()),
            _ => None,
        })
        .ok_or_else(|| TriggerBenchError::NoQueue {
            function: function.to_string(),
        })?;
    let nats = |source: Box<dyn std::error::Error + Send + Sync>| TriggerBenchError::Nats {
        url: nats_url.to_string(),
        source,
    };
    let js = async_nats::jetstream::new(
        async_nats::connect(nats_url)
            .await
            .map_err(|e| nats(e.into()))?,
    );
    let before = delivered(
        &client.metrics().await.map_err(TriggerBenchError::Admin)?,
        function,
    );
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < n {
        let mut acks = Vec::with_capacity(WINDOW);
        for _ in 0..WINDOW.min((n - sent) as usize) {
            acks.push(
                js.publish(subject.clone(), body.clone())
                    .await
                    .map_err(|e| nats(e.into()))?,
            );
            sent += 1;
        }
        for ack in acks {
            ack.await.map_err(|e| nats(e.into()))?;
        }
    }
    let publish = started.elapsed();
    let deadline = Instant::now() + wait;
    loop {
        let now = delivered(
            &client.metrics().await.map_err(TriggerBenchError::Admin)?,
            function,
        );
        let done = now.saturating_sub(before);
        if done >= n {
            return Ok(QueueFigures {
                messages: n,
                publish,
                end_to_end: started.elapsed(),
            });
        }
        if Instant::now() >= deadline {
            return Err(TriggerBenchError::Unfinished {
                what: "queue messages",
                done: done as usize,
                expected: n as usize,
                waited: wait,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `figures` as `triggers.csv` (name, value) in `dir`.
pub fn write_figures(
    dir: &std::path::Path,
    figures: &[(&str, String)],
) -> Result<(), super::output::OutputError> {
    let path = dir.join("triggers.csv");
    let io = |source| super::output::OutputError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut w = csv::Writer::from_path(&path)?;
    w.write_record(["figure", "value"])?;
    for (k, v) in figures {
        w.write_record([*k, v.as_str()])?;
    }
    w.flush().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::delivered;

    #[test]
    fn delivered_sums_a_functions_queue_triggers_only() {
        let metrics = "cubeflash_queue_delivered_total{function=\"job\",stream=\"A\"} 3\n\
                       cubeflash_queue_delivered_total{function=\"job\",stream=\"B\"} 4\n\
                       cubeflash_queue_delivered_total{function=\"jobs\",stream=\"C\"} 100\n";
        assert_eq!(delivered(metrics, "job"), 7);
        assert_eq!(delivered(metrics, "none"), 0);
    }
}
