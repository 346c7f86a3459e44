//! What a bench run leaves behind in bench/results/<UTC timestamp>/: summary.csv, one `.hgrm`
//! percentile distribution per target and step, `run.hlog` (HdrHistogram interval log, V2 +
//! DEFLATE, base64: what HistogramLogProcessor reads), and the `latest` link. The HTML report
//! is report.rs.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hdrhistogram::serialization::{Serializer as _, V2DeflateSerializer};

use super::hist::{self, Latency};
use super::{Mode, StepRecord};

pub const HLOG_FILE: &str = "run.hlog";
pub const SUMMARY_FILE: &str = "summary.csv";
pub const LATEST: &str = "latest";

/// Why results could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("failed to write {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to write summary.csv")]
    Csv(#[from] csv::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The folder of one run, and its interval log, written as the run goes.
pub struct RunDir {
    pub dir: PathBuf,
    pub started: SystemTime,
    hlog: BufWriter<File>,
    serializer: V2DeflateSerializer,
    buf: Vec<u8>,
}

impl RunDir {
    /// Creates `<results>/<UTC timestamp>/` and starts its interval log.
    pub fn create(results: &Path) -> Result<Self, OutputError> {
        let started = SystemTime::now();
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let mut dir = results.join(&stamp);
        let mut n = 1;
        while dir.exists() {
            n += 1;
            dir = results.join(format!("{stamp}-{n}"));
        }
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(HLOG_FILE);
        let file = File::create(&path).map_err(io_err(&path))?;
        let mut hlog = BufWriter::new(file);
        let secs = started
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let when = chrono::DateTime::<chrono::Utc>::from(started).to_rfc2822();
        write!(
            hlog,
            "#[Logged with cubeflash bench {}]\n#[Histogram log format version 1.3]\n#[StartTime: {secs:.3} (seconds since epoch), {when}]\n#[BaseTime: {secs:.3} (seconds since epoch)]\n#[Values in microseconds; Interval_Max in milliseconds]\n\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
            env!("CARGO_PKG_VERSION")
        )
        .map_err(io_err(&path))?;
        Ok(Self {
            dir,
            started,
            hlog,
            serializer: V2DeflateSerializer::new(),
            buf: Vec::new(),
        })
    }

    /// Appends one tagged interval; `start` is wall-clock time.
    pub fn interval(
        &mut self,
        tag: &str,
        start: SystemTime,
        length: Duration,
        h: &Latency,
    ) -> Result<(), OutputError> {
        let path = self.dir.join(HLOG_FILE);
        self.buf.clear();
        self.serializer
            .serialize(h, &mut self.buf)
            .map_err(|e| OutputError::Io {
                path: path.clone(),
                source: io::Error::other(e.to_string()),
            })?;
        let offset = start.duration_since(self.started).unwrap_or_default();
        let encoded = base64::engine::general_purpose::STANDARD.encode(&self.buf);
        writeln!(
            self.hlog,
            "Tag={tag},{:.3},{:.3},{:.3},{encoded}",
            offset.as_secs_f64(),
            length.as_secs_f64(),
            h.max() as f64 / hist::SCALE_TO_MS
        )
        .map_err(io_err(&path))
    }

    pub fn flush(&mut self) -> Result<(), OutputError> {
        let path = self.dir.join(HLOG_FILE);
        self.hlog.flush().map_err(io_err(&path))
    }

    /// Writes summary.csv and the .hgrm files, then points `latest` at this run.
    pub fn finish(&mut self, records: &[StepRecord]) -> Result<(), OutputError> {
        self.flush()?;
        write_summary(&self.dir.join(SUMMARY_FILE), records)?;
        for r in records {
            for (suffix, h) in r.histograms() {
                let path = self.dir.join(format!("{}{suffix}.hgrm", r.file_stem()));
                std::fs::write(&path, hist::hgrm(h)).map_err(io_err(&path))?;
            }
        }
        link_latest(&self.dir)
    }
}

/// The columns of summary.csv, in order.
pub const SUMMARY_COLUMNS: &[&str] = &[
    "target",
    "mode",
    "concurrency",
    "rate",
    "requests",
    "errors",
    "rps",
    "mean_ms",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p99_9_ms",
    "max_ms",
    "errors_connect",
    "errors_timeout",
    "errors_429",
    "errors_502_504",
    "errors_4xx",
    "errors_5xx",
    "errors_broken",
    "achieved_rate",
    "late_p50_ms",
    "max_late_ms",
    "missed_starts",
    "replicas_min",
    "replicas_max",
    "replicas_mean",
    "cpu_seconds",
    "replica_seconds",
    "step_start_s",
    "step_end_s",
    "step",
];

fn write_summary(path: &Path, records: &[StepRecord]) -> Result<(), OutputError> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record(SUMMARY_COLUMNS)?;
    for r in records {
        for row in r.rows() {
            let f = hist::figures(row.latency);
            let e = row.errors;
            let (concurrency, rate) = match r.mode {
                Mode::Closed { concurrency } => (concurrency.to_string(), String::new()),
                Mode::Open { rate } => (String::new(), fmt_num(rate)),
                Mode::Cold | Mode::Trace { .. } => (String::new(), String::new()),
            };
            let rps = row.rps.map_or(String::new(), |v| format!("{v:.1}"));
            let (achieved, late_p50, late, missed) = match (&r.outcome.schedule, !row.measured) {
                (Some(s), false) => (
                    format!("{:.1}", s.achieved_rate),
                    format!("{:.3}", s.late_p50.as_secs_f64() * 1000.0),
                    format!("{:.3}", s.max_late.as_secs_f64() * 1000.0),
                    s.missed.to_string(),
                ),
                _ => Default::default(),
            };
            let ms = |v: f64| format!("{v:.3}");
            let held = r.resources.filter(|_| row.measured);
            let held_cols = match held {
                Some(h) => [
                    h.replicas_min.to_string(),
                    h.replicas_max.to_string(),
                    format!("{:.2}", h.replicas_mean),
                    h.cpu_seconds.map_or(String::new(), |c| format!("{c:.3}")),
                    format!("{:.2}", h.replica_seconds),
                ],
                None => Default::default(),
            };
            let window = if row.measured {
                [
                    format!("{:.3}", r.window.0.as_secs_f64()),
                    format!("{:.3}", r.window.1.as_secs_f64()),
                ]
            } else {
                Default::default()
            };
            let [rmin, rmax, rmean, cpu, rsec] = held_cols;
            let [wstart, wend] = window;
            w.write_record([
                r.target.clone(),
                row.mode,
                concurrency,
                rate,
                f.count.to_string(),
                e.total().to_string(),
                rps,
                ms(f.mean),
                ms(f.p50),
                ms(f.p90),
                ms(f.p99),
                ms(f.p999),
                ms(f.max),
                e.connect.to_string(),
                e.timeout.to_string(),
                e.throttled.to_string(),
                e.unavailable.to_string(),
                e.client.to_string(),
                e.server.to_string(),
                e.broken.to_string(),
                achieved,
                late_p50,
                late,
                missed,
                rmin,
                rmax,
                rmean,
                cpu,
                rsec,
                wstart,
                wend,
                r.mode.param(),
            ])?;
        }
    }
    w.flush().map_err(io_err(path))?;
    Ok(())
}

pub const TIMELINE_FILE: &str = "timeline.csv";

/// timeline.csv: every sample of what the functions held, one row per function and sample.
pub fn write_timeline(
    dir: &Path,
    functions: &[String],
    samples: &[super::sampler::Sample],
) -> Result<(), OutputError> {
    let path = dir.join(TIMELINE_FILE);
    let mut w = csv::Writer::from_path(&path)?;
    w.write_record([
        "t_s",
        "function",
        "serverless_replicas",
        "baseline_replicas",
        "serverless_cpu_s",
        "baseline_cpu_s",
        "cold_starts",
    ])?;
    let cpu = |c: Option<f64>| c.map_or(String::new(), |c| format!("{c:.3}"));
    for s in samples {
        w.write_record([
            format!("{:.3}", s.at.as_secs_f64()),
            functions.get(s.function).cloned().unwrap_or_default(),
            s.serverless.to_string(),
            s.baseline.to_string(),
            cpu(s.serverless_cpu),
            cpu(s.baseline_cpu),
            s.cold_starts.to_string(),
        ])?;
    }
    w.flush().map_err(io_err(&path))?;
    Ok(())
}

/// A rate as written in names and tables: no decimals when it is whole.
pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// Points `<results>/latest` at `dir`, replacing any older link in one rename.
fn link_latest(dir: &Path) -> Result<(), OutputError> {
    let results = dir.parent().unwrap_or(Path::new("."));
    let name = dir.file_name().unwrap_or_default();
    let tmp = results.join(format!(".latest-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp).map_err(io_err(&tmp))?;
    let latest = results.join(LATEST);
    std::fs::rename(&tmp, &latest).map_err(io_err(&latest))
}
