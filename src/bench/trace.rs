//! A trace step's schedule: when each request is due, from phases of constant rate (bursts
//! with idle gaps between them) or from a recorded trace (a CSV of timestamps, or of
//! per-second rates). Due times are computed per request from the phases, never stored, so a
//! long trace holds no more memory than a short one (a timestamp trace holds its file).

use std::path::Path;
use std::time::Duration;

use crate::spec::diagnostic::{Diagnostic, Loc};
use crate::spec::{Diagnostics, SourceFile};

/// The longest a trace may run.
pub const MAX_LENGTH: Duration = Duration::from_secs(3600);
/// In a timestamp trace, a silence at least this long separates two bursts.
const BURST_GAP: Duration = Duration::from_secs(1);

/// A stretch of constant rate (zero: idle).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phase {
    pub rate: f64,
    pub length: Duration,
}

/// A burst: requests `first..first+count`, starting at `start`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Burst {
    pub start: Duration,
    pub length: Duration,
    pub first: u64,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum Due {
    /// Per phase: its start, its rate, the index of its first request.
    Phases(Vec<(Duration, f64, u64)>),
    Times(Vec<Duration>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    due: Due,
    total: u64,
    length: Duration,
    pub bursts: Vec<Burst>,
}

impl Trace {
    /// From phases (already checked: rates ≥ 0, lengths > 0).
    pub fn from_phases(phases: &[Phase]) -> Self {
        let mut table = Vec::new();
        let mut bursts: Vec<Burst> = Vec::new();
        let (mut at, mut first) = (Duration::ZERO, 0u64);
        let mut idle_before = true;
        for p in phases {
            let count = (p.rate * p.length.as_secs_f64()).round() as u64;
            if count > 0 {
                table.push((at, p.rate, first));
                match bursts.last_mut() {
                    Some(b) if !idle_before => {
                        b.count += count;
                        b.length += p.length;
                    }
                    _ => bursts.push(Burst {
                        start: at,
                        length: p.length,
                        first,
                        count,
                    }),
                }
                idle_before = false;
            } else {
                idle_before = true;
            }
            first += count;
            at += p.length;
        }
        Self {
            due: Due::Phases(table),
            total: first,
            length: at,
            bursts,
        }
    }

    /// From request times (sorted here).
    pub fn from_times(mut times: Vec<Duration>) -> Self {
        times.sort();
        let mut bursts: Vec<Burst> = Vec::new();
        for (i, &t) in times.iter().enumerate() {
            match bursts.last_mut() {
                Some(b) if t.saturating_sub(b.start + b.length) < BURST_GAP => {
                    b.count += 1;
                    b.length = t - b.start;
                }
                _ => bursts.push(Burst {
                    start: t,
                    length: Duration::ZERO,
                    first: i as u64,
                    count: 1,
                }),
            }
        }
        let length = times.last().copied().unwrap_or_default() + Duration::from_millis(1);
        Self {
            total: times.len() as u64,
            due: Due::Times(times),
            length,
            bursts,
        }
    }

    /// Requests the trace sends.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn length(&self) -> Duration {
        self.length
    }

    /// When request `i` is due, from the step's start; None past the end.
    pub fn due(&self, i: u64) -> Option<Duration> {
        if i >= self.total {
            return None;
        }
        match &self.due {
            Due::Times(t) => t.get(i as usize).copied(),
            Due::Phases(table) => {
                let k = table.partition_point(|p| p.2 <= i) - 1;
                let (start, rate, first) = table[k];
                Some(start + Duration::from_secs_f64((i - first) as f64 / rate))
            }
        }
    }

    /// The longest idle stretch between two bursts.
    pub fn longest_gap(&self) -> Duration {
        self.bursts
            .windows(2)
            .map(|w| w[1].start.saturating_sub(w[0].start + w[0].length))
            .max()
            .unwrap_or_default()
    }
}

/// Reads a recorded trace: one number per line is a timestamp in seconds (each line one
/// request); `second,rate` per line is a rate for that second. A header line is allowed;
/// `#` starts a comment. Problems are located in the trace file.
pub fn load(path: &Path, display: &Path) -> Result<Trace, Diagnostics> {
    let mut diags = Diagnostics::default();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            diags.push(Diagnostic::whole_file(
                display,
                format!("cannot read the trace file: {e}"),
            ));
            return Err(diags);
        }
    };
    let file = SourceFile::new(display, text.clone());
    let mut times = Vec::new();
    let mut rates: Vec<(u64, f64)> = Vec::new();
    let mut columns = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let numbers: Option<Vec<f64>> = cells.iter().map(|c| c.parse::<f64>().ok()).collect();
        let at = Loc {
            line: n + 1,
            column: 1,
            len: raw.len().max(1),
        };
        let mut bad = |why: String, hint: &str| {
            diags.push(Diagnostic::new(&file, at, "", why).with_hint(hint));
        };
        let Some(numbers) = numbers else {
            if columns.is_none() && times.is_empty() && rates.is_empty() {
                continue; // a header
            }
            bad(
                format!("{line:?} is not a number"),
                "each line is a time in seconds (`12.5`) or `second,rate` (`12,50`)",
            );
            continue;
        };
        match (columns.get_or_insert(numbers.len()), numbers.as_slice()) {
            (1, [t]) if t.is_finite() && *t >= 0.0 && *t <= MAX_LENGTH.as_secs_f64() => {
                times.push(Duration::from_secs_f64(*t))
            }
            (2, [s, r])
                if s.fract() == 0.0
                    && *s >= 0.0
                    && *s < MAX_LENGTH.as_secs_f64()
                    && r.is_finite()
                    && *r >= 0.0
                    && *r <= 10_000_000.0 =>
            {
                rates.push((*s as u64, *r))
            }
            (1, [_]) => bad(
                format!("{line:?} is not a time from 0 to 3600 seconds"),
                "a trace may run for an hour at most",
            ),
            (2, [_, _]) => bad(
                format!("{line:?} is not `second,rate` with a whole second below 3600 and a rate from 0 to 10000000"),
                "e.g. `12,50`: 50 requests in second 12",
            ),
            _ => bad(
                format!("{line:?} has {} columns where the lines above have {}", numbers.len(), columns.unwrap_or(0)),
                "use one column (times) or two (second,rate) throughout",
            ),
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let trace = if rates.is_empty() {
        Trace::from_times(times)
    } else {
        rates.sort_by_key(|r| r.0);
        let mut phases = Vec::new();
        let mut next = 0;
        for (s, r) in rates {
            if s > next {
                phases.push(Phase {
                    rate: 0.0,
                    length: Duration::from_secs(s - next),
                });
            }
            phases.push(Phase {
                rate: r,
                length: Duration::from_secs(1),
            });
            next = s + 1;
        }
        Trace::from_phases(&phases)
    };
    if trace.total() == 0 {
        diags.push(Diagnostic::whole_file(
            display,
            "the trace sends no request",
        ));
        return Err(diags);
    }
    Ok(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_give_due_times_and_bursts() {
        let t = Trace::from_phases(&[
            Phase {
                rate: 10.0,
                length: Duration::from_secs(1),
            },
            Phase {
                rate: 0.0,
                length: Duration::from_secs(5),
            },
            Phase {
                rate: 2.0,
                length: Duration::from_secs(2),
            },
        ]);
        assert_eq!(t.total(), 14);
        assert_eq!(t.due(0), Some(Duration::ZERO));
        assert_eq!(t.due(9), Some(Duration::from_millis(900)));
        assert_eq!(t.due(10), Some(Duration::from_secs(6)));
        assert_eq!(t.due(13), Some(Duration::from_millis(7500)));
        assert_eq!(t.due(14), None);
        assert_eq!(t.bursts.len(), 2);
        assert_eq!((t.bursts[1].first, t.bursts[1].count), (10, 4));
        assert_eq!(t.longest_gap(), Duration::from_secs(5));
        assert_eq!(t.length(), Duration::from_secs(8));
    }

    #[test]
    fn recorded_traces_parse_and_bad_lines_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let times = dir.path().join("t.csv");
        std::fs::write(&times, "time\n0.5\n0.1\n3.0 # late\n").unwrap();
        let t = load(&times, Path::new("t.csv")).unwrap();
        assert_eq!(t.total(), 3);
        assert_eq!(t.due(0), Some(Duration::from_millis(100)));
        assert_eq!(t.bursts.len(), 2);
        let rates = dir.path().join("r.csv");
        std::fs::write(&rates, "second,rate\n0,5\n4,2\n").unwrap();
        let r = load(&rates, Path::new("r.csv")).unwrap();
        assert_eq!(r.total(), 7);
        assert_eq!(r.due(5), Some(Duration::from_secs(4)));
        let bad = dir.path().join("b.csv");
        std::fs::write(&bad, "1\n2\nsoon\n1,2\n9999\n").unwrap();
        let e = load(&bad, Path::new("b.csv")).unwrap_err().to_string();
        assert!(
            e.contains("b.csv:3:1") && e.contains("\"soon\" is not a number"),
            "{e}"
        );
        assert!(e.contains("b.csv:4:1"), "{e}");
        assert!(
            e.contains("b.csv:5:1") && e.contains("an hour at most"),
            "{e}"
        );
        let missing = load(&dir.path().join("none.csv"), Path::new("none.csv")).unwrap_err();
        assert!(missing.to_string().contains("cannot read the trace file"));
    }
}
