//! The run's answer to the seed report's question, in words and numbers: what serverless
//! costs in latency (at the lowest and the highest closed-loop concurrency), in cold starts,
//! in throughput, and the compute each side held. Every figure is computed from the same
//! rounded values summary.csv shows, so a reader can check one against the other.

use super::hist;
use super::{Mode, Role, RunResult, StepRecord};

pub const CONCLUSION_FILE: &str = "conclusion.txt";

/// A latency as summary.csv writes it (ms, 3 decimals), read back.
fn ms(v: f64) -> f64 {
    format!("{v:.3}").parse().unwrap_or(v)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

/// The measured figures of a record: (p50, p99, req/s), rounded as in summary.csv.
fn figures(r: &StepRecord) -> (f64, f64, f64) {
    let f = hist::figures(&r.outcome.latency);
    let rps: f64 = format!("{:.1}", r.outcome.rps()).parse().unwrap_or(0.0);
    (ms(f.p50), ms(f.p99), rps)
}

fn find<'a>(run: &'a RunResult, target: &str, mode: Mode) -> Option<&'a StepRecord> {
    run.records
        .iter()
        .find(|r| r.target == target && r.mode == mode && !r.outcome.latency.is_empty())
}

/// The summary, one sentence per line; empty when the run has no serverless target with a
/// baseline beside it.
pub fn conclude(run: &RunResult) -> Vec<String> {
    let mut lines = Vec::new();
    for s in run.records.iter().filter(|r| r.role == Role::Serverless) {
        if lines
            .iter()
            .any(|l: &String| l.starts_with(&format!("{}:", s.target)))
        {
            continue;
        }
        let direct = super::plan::baseline_name(&s.target);
        let via = super::plan::gateway_baseline_name(&s.target);
        let has = |t: &str| run.records.iter().any(|r| r.target == t);
        let base = if has(&direct) {
            direct.clone()
        } else if has(&via) {
            via.clone()
        } else {
            continue;
        };
        lines.push(format!(
            "{}: serverless (through the gateway, scales to zero) against {base} (always on)",
            s.target
        ));
        let closed: Vec<u32> = run
            .records
            .iter()
            .filter(|r| r.target == s.target)
            .filter_map(|r| match r.mode {
                Mode::Closed { concurrency } => Some(concurrency),
                _ => None,
            })
            .collect();
        let (lo, hi) = (closed.iter().min(), closed.iter().max());
        for (label, c) in [("low", lo), ("high", hi)] {
            let Some(&c) = c else { continue };
            if label == "high" && Some(&c) == lo {
                continue;
            }
            let mode = Mode::Closed { concurrency: c };
            let (Some(a), Some(b)) = (find(run, &s.target, mode), find(run, &base, mode)) else {
                continue;
            };
            let ((ap50, ap99, arps), (bp50, bp99, brps)) = (figures(a), figures(b));
            let mut line = format!(
                "  latency at {label} concurrency (closed c{c}): p50 {ap50:.3} ms against {bp50:.3} ms ({}x), p99 {ap99:.3} ms against {bp99:.3} ms ({}x); throughput {arps:.1} against {brps:.1} req/s ({}x)",
                ratio(ap50, bp50),
                ratio(ap99, bp99),
                ratio(arps, brps),
            );
            if base == direct {
                if let Some(g) = find(run, &via, mode) {
                    let (gp50, _, _) = figures(g);
                    line.push_str(&format!(
                        "; of the p50 difference, the gateway hop is {:.3} ms ({via} p50 {gp50:.3} ms) and the serverless side's own share (its replicas, which scale) {:.3} ms",
                        gp50 - bp50,
                        ap50 - gp50
                    ));
                }
            }
            lines.push(line);
        }
        if let (Some(a), Some(b)) = (
            find(run, &s.target, Mode::Cold),
            find(run, &base, Mode::Cold),
        ) {
            let ((ap50, ap99, _), (bp50, bp99, _)) = (figures(a), figures(b));
            lines.push(format!(
                "  a cold start (cold): p50 {ap50:.3} ms, p99 {ap99:.3} ms against {bp50:.3} / {bp99:.3} ms for a first request to the baseline: {:.3} ms more at p50",
                ap50 - bp50
            ));
        }
        for t in run
            .records
            .iter()
            .filter(|r| r.target == s.target && matches!(r.mode, Mode::Trace { .. }))
        {
            lines.push(trace_line(run, t, &base));
        }
        let compute = |t: &str| {
            let held = run.replica_seconds.get(t).copied()?;
            let requests: u64 = run
                .records
                .iter()
                .filter(|r| r.target == t)
                .map(|r| r.outcome.latency.len() + r.outcome.errors.total())
                .sum();
            Some((held, requests))
        };
        if let (Some((sh, sn)), Some((bh, _))) = (compute(&s.target), compute(&base)) {
            let per = |h: f64, n: u64| {
                if n > 0 {
                    format!("{:.3}", h * 1000.0 / n as f64)
                } else {
                    "-".into()
                }
            };
            // The baseline's replica serves both baseline targets: per 1,000 of all of them.
            let base_requests: u64 = run
                .records
                .iter()
                .filter(|r| r.target == direct || r.target == via)
                .map(|r| r.outcome.latency.len() + r.outcome.errors.total())
                .sum();
            lines.push(format!(
                "  compute held over the whole run: serverless {sh:.1} replica-seconds ({} per 1,000 requests), baseline {bh:.1} ({} per 1,000 requests)",
                per(sh, sn),
                per(bh, base_requests)
            ));
            if sh > bh {
                let peak = run
                    .records
                    .iter()
                    .filter(|r| r.target == s.target)
                    .filter_map(|r| r.resources.map(|h| (h.replicas_max, r)))
                    // The first step that reached the peak, not the last that still held it.
                    .fold(
                        None,
                        |best: Option<(u32, &StepRecord)>, (n, r)| match best {
                            Some((m, _)) if m >= n => best,
                            _ => Some((n, r)),
                        },
                    );
                let why = match peak {
                    Some((n, r)) if n > 1 => format!(
                        "the autoscaler went up to {n} replicas (first at {} {}), where the baseline runs 1; the replicas per step are in summary.csv and the report",
                        r.mode.name(),
                        r.mode.param()
                    ),
                    _ => "its replicas stayed up between steps (scale.idle is longer than the pauses of this plan)".into(),
                };
                lines.push(format!(
                    "  contrary to the usual claim, serverless held more compute than the baseline here: {why}. Scale-to-zero saves only where the function sits idle longer than its scale.idle (a `trace` step measures that)"
                ));
            } else {
                lines.push(format!(
                    "  serverless held {:.0}% of the baseline's compute: it paid in cold starts instead of idle replicas",
                    if bh > 0.0 { sh * 100.0 / bh } else { 0.0 }
                ));
            }
        }
    }
    if let Some(place) = &run.place {
        lines.push(format!("  {place}"));
    }
    for r in &run.records {
        for row in r.rows() {
            let f = hist::figures(row.latency);
            let errors = row.errors.total();
            if errors > 0 {
                lines.push(format!(
                    "  note: {} {} {}: {errors} errors ({}), counted apart from the latencies",
                    r.target,
                    row.mode,
                    r.mode.param(),
                    row.errors.describe()
                ));
            }
            // 1 s is the first TCP retransmit: a SYN dropped by a full listen backlog.
            if f.max >= 1000.0 && f.p50 < 200.0 && r.mode != Mode::Cold {
                lines.push(format!(
                    "  note: {} {} {}: max {:.3} ms against p50 {:.3} ms, a retransmit-sized latency (a dropped connection or SYN, e.g. a full listen backlog)",
                    r.target,
                    row.mode,
                    r.mode.param(),
                    f.max,
                    f.p50
                ));
            }
        }
    }
    lines
}

/// Writes `<run>/conclusion.txt`.
pub fn write(run: &RunResult, lines: &[String]) -> std::io::Result<()> {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(run.dir.join(CONCLUSION_FILE), text)
}

/// What a trace step showed: compute held by each side over the trace, and the price of each
/// burst's first request.
fn trace_line(run: &RunResult, s: &StepRecord, base: &str) -> String {
    let b = run
        .records
        .iter()
        .find(|r| r.target == base && r.mode == s.mode);
    let held = |r: &StepRecord| r.resources.map(|h| (h.replica_seconds, h.replicas_min));
    let firsts = |r: &StepRecord| -> Vec<String> {
        r.outcome
            .bursts
            .iter()
            .map(|(_, f)| f.map_or("failed".into(), |us| format!("{:.3}", us as f64 / 1000.0)))
            .collect()
    };
    let mut line = format!(
        "  trace ({} {}): the first request of each burst took {} ms",
        s.mode.name(),
        s.mode.param(),
        firsts(s).join(", ")
    );
    if let Some(b) = b {
        line.push_str(&format!(" (baseline: {})", firsts(b).join(", ")));
        if let (Some((sh, smin)), Some((bh, _))) = (held(s), held(b)) {
            line.push_str(&format!(
                "; over the trace serverless held {sh:.1} replica-seconds against the baseline's {bh:.1} ({}%)",
                if bh > 0.0 { format!("{:.0}", sh * 100.0 / bh) } else { "-".into() }
            ));
            if smin > 0 {
                line.push_str(", and never fell to zero: the silences are shorter than the function's scale.idle");
            } else {
                line.push_str(", falling to zero replicas in the silences");
            }
        }
    }
    line
}
