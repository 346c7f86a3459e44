//! Cold starts: for each sample and each target in turn, the function is scaled to zero and
//! one request is timed on a new connection.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::gateway::scale_to_zero;
use super::http::Connection;
use super::load::{self, Outcome};
use super::{
    empty_outcome, hist, BenchError, Expected, Mode, ResolvedTarget, Role, Session, StepRecord, Ui,
};

/// Cold starts: for each sample and each target in turn, scale the function to zero through
/// the admin API, wait until no replica is left, then time one request on a new connection
/// (connect included). Baseline and URL targets are not scaled: their samples are a first
/// request on a new connection, the always-on side of the comparison.
pub(super) async fn cold_starts(
    client: Option<&crate::gateway::client::AdminClient>,
    session: &Session<'_>,
    targets: &[ResolvedTarget],
    samples: u32,
    timeout: Duration,
    ui: &mut dyn Ui,
) -> Result<Vec<StepRecord>, BenchError> {
    let cancel = session.cancel;
    let mut records: Vec<StepRecord> = targets
        .iter()
        .map(|t| StepRecord {
            target: t.name.clone(),
            role: t.role,
            mode: Mode::Cold,
            outcome: empty_outcome(),
            resources: None,
            window: (Duration::ZERO, Duration::ZERO),
            intervals: Vec::new(),
        })
        .collect();
    ui.step_started(
        "cold starts",
        Expected::Requests(u64::from(samples) * targets.len() as u64),
    );
    let start = Instant::now();
    let mut done = 0;
    for _ in 0..samples {
        for (t, rec) in targets.iter().zip(records.iter_mut()) {
            if cancel.load(Ordering::Relaxed) {
                return Err(BenchError::Interrupted);
            }
            if let (Role::Serverless, Some(c), Some(f)) = (t.role, client, &t.function) {
                scale_to_zero(c, f).await?;
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut conn = Connection::new();
            let sent = Instant::now();
            let result = match tokio::time::timeout(timeout, conn.send(&t.request)).await {
                Ok(r) => r.map_err(Outcome::Failed),
                Err(_) => Err(Outcome::Timeout),
            };
            let took = sent.elapsed();
            if !rec.outcome.errors.count(result) {
                hist::record(&mut rec.outcome.latency, took.as_micros() as u64);
            }
            done += 1;
            ui.progress(&load::Progress {
                done,
                errors: records_errors(rec),
                elapsed: start.elapsed(),
                warming_up: false,
                last_p99_ms: None,
            });
        }
    }
    for r in &mut records {
        r.outcome.elapsed = start.elapsed();
    }
    Ok(records)
}

fn records_errors(r: &StepRecord) -> u64 {
    r.outcome.errors.total()
}
