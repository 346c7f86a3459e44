//! `cubeflash bench`: runs a plan's steps against its targets, interleaved step by step
//! (serverless c=1, baseline c=1, serverless c=2, ...) so machine drift hits both alike, and
//! writes the results. The engine (load.rs) measures; this module sequences, talks to the
//! gateway's admin API for cold starts and replica-seconds, and hands results to output.rs
//! and report.rs. It prints nothing: the CLI layer implements [`Ui`].

pub mod cluster;
mod cold;
pub mod compare;
pub mod conclusion;
mod gateway;
pub mod hist;
pub mod http;
pub mod load;
pub mod output;
pub mod plan;
pub mod report;
pub mod sampler;
pub mod trace;
pub mod triggers;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gateway::replica_seconds;
use hist::Latency;
use http::PreparedRequest;
use load::{ErrorCounts, Observer, StepOutcome};
use plan::{Plan, StepGroup};

/// Why a bench run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("target {target}")]
    Request {
        target: String,
        #[source]
        source: http::RequestError,
    },
    #[error("cannot reach target {target} at {url} (is it running?)")]
    Unreachable {
        target: String,
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the plan names function {0:?}, which the gateway does not serve: `cubeflash ls` lists what it does")]
    UnknownFunction(String),
    #[error("function targets need a gateway: run `cubeflash bench` in the repo (it starts the local platform), or pass --gateway")]
    NoGateway,
    #[error("the gateway does not give an address for the baseline of {0}: is its baseline replica running? (`cubeflash ls`)")]
    NoBaselineUrl(String),
    #[error("the gateway's admin API failed")]
    Admin(#[source] crate::gateway::client::ClientError),
    #[error("{0} still has replicas 30s after scaling it to zero")]
    StillRunning(String),
    #[error(transparent)]
    Output(#[from] output::OutputError),
    #[error("interrupted")]
    Interrupted,
}

/// What kind of thing a target is, for the report's comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A function through the gateway (scales to zero).
    Serverless,
    /// A function's always-on baseline replica, called directly.
    Baseline,
    /// The same baseline through the gateway (`/baseline/NAME`).
    BaselineGateway,
    /// Any URL.
    Url,
}

/// A target with its request built and, for functions, the function it belongs to.
#[derive(Debug, Clone)]
pub struct ResolvedTarget {
    pub name: String,
    pub role: Role,
    pub function: Option<String>,
    pub request: PreparedRequest,
}

/// Which figure a record holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Closed {
        concurrency: u32,
    },
    Open {
        rate: f64,
    },
    Cold,
    /// The plan's n-th trace step (from 1).
    Trace {
        step: u32,
    },
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Closed { .. } => "closed",
            Mode::Open { .. } => "open",
            Mode::Cold => "cold",
            Mode::Trace { .. } => "trace",
        }
    }

    /// `c4`, `r500` or empty: the step's parameter as tags and file names carry it.
    pub fn param(&self) -> String {
        match self {
            Mode::Closed { concurrency } => format!("c{concurrency}"),
            Mode::Open { rate } => format!("r{}", output::fmt_num(*rate)),
            Mode::Cold => String::new(),
            Mode::Trace { step } => format!("t{step}"),
        }
    }
}

/// One target's result for one step.
pub struct StepRecord {
    pub target: String,
    pub role: Role,
    pub mode: Mode,
    pub outcome: StepOutcome,
    /// What the target's replicas held during the step (function targets).
    pub resources: Option<sampler::Resources>,
    /// When the step ran, from the run's start.
    pub window: (Duration, Duration),
    /// Per interval of the measured part: (start from the step's start in s, p50 ms, p99
    /// ms, answers); for the report's timelines.
    pub intervals: Vec<(f64, f64, f64, u64)>,
}

impl StepRecord {
    /// The interval-log tag of this record's `kind` of histogram ("", "uncorrected", "warmup").
    pub fn tag(&self, kind: &str) -> String {
        let mode = match kind {
            "uncorrected" => format!("{}-uncorrected", self.mode.name()),
            _ => self.mode.name().to_string(),
        };
        let mut tag = format!("{}/{mode}", self.target);
        if !self.mode.param().is_empty() {
            tag.push('/');
            tag.push_str(&self.mode.param());
        }
        if kind == "warmup" {
            tag.push_str("/warmup");
        }
        tag
    }

    pub fn file_stem(&self) -> String {
        let param = self.mode.param();
        if param.is_empty() {
            format!("{}_{}", self.target, self.mode.name())
        } else {
            format!("{}_{}_{param}", self.target, self.mode.name())
        }
    }

    /// The histograms worth a file: (file-name suffix, histogram).
    pub fn histograms(&self) -> Vec<(&'static str, &Latency)> {
        let o = &self.outcome;
        let mut out = vec![("", &o.latency)];
        if let Some(u) = &o.uncorrected {
            out.push(("_uncorrected", u));
        }
        if !o.warmup.is_empty() || o.warmup_errors.total() > 0 {
            out.push(("_warmup", &o.warmup));
        }
        out
    }

    /// The rows summary.csv, the report and the terminal table show: the measured figures,
    /// then the uncorrected ones (open loop), then the warm-up ones.
    pub fn rows(&self) -> Vec<Row<'_>> {
        let o = &self.outcome;
        let name = self.mode.name();
        let rps = (self.mode != Mode::Cold).then(|| o.rps());
        let mut rows = vec![Row {
            mode: name.to_string(),
            latency: &o.latency,
            errors: o.errors,
            rps,
            measured: true,
        }];
        if let Some(u) = &o.uncorrected {
            rows.push(Row {
                mode: format!("{name}-uncorrected"),
                latency: u,
                errors: o.errors,
                rps,
                measured: true,
            });
        }
        if !o.warmup.is_empty() || o.warmup_errors.total() > 0 {
            rows.push(Row {
                mode: format!("{name}-warmup"),
                latency: &o.warmup,
                errors: o.warmup_errors,
                rps: None,
                measured: false,
            });
        }
        rows
    }
}

pub use gateway::resolve_targets;

/// One row of figures of a record.
pub struct Row<'a> {
    /// `closed`, `open-uncorrected`, `closed-warmup`, ...
    pub mode: String,
    pub latency: &'a Latency,
    pub errors: ErrorCounts,
    /// Answers per second of the measured part (none for cold starts and warm-up).
    pub rps: Option<f64>,
    /// False for warm-up rows.
    pub measured: bool,
}

/// What the command line shows while a run goes on.
pub trait Ui: Observer {
    /// A step begins: `label` names target and step; `expected` is its planned length.
    fn step_started(&mut self, label: &str, expected: Expected);
    fn step_finished(&mut self, record: &StepRecord);
    fn note(&mut self, text: &str);
}

/// How long a step is planned to be, for a progress bar's length.
#[derive(Debug, Clone, Copy)]
pub enum Expected {
    Requests(u64),
    Duration(Duration),
}

/// The gateway a run talks to, when it has function targets.
#[derive(Debug, Clone)]
pub struct GatewayHandle {
    pub url: String,
    pub token: String,
}

/// Everything a finished run produced.
pub struct RunResult {
    pub dir: std::path::PathBuf,
    pub records: Vec<StepRecord>,
    /// Replica-seconds each function target held during the run (serverless, baseline).
    pub replica_seconds: BTreeMap<String, f64>,
    /// The functions sampled, and their samples over the run (see sampler.rs).
    pub functions: Vec<String>,
    pub timeline: Vec<sampler::Sample>,
    /// The computed summary (conclusion.rs), one sentence per line.
    pub conclusion: Vec<String>,
    /// Where the functions ran and how the gateway was reached, when not on this machine.
    pub place: Option<String>,
}

/// Where and how a run happens, besides its plan and targets.
pub struct Session<'a> {
    /// For the admin API; [`run`] blocks, so it must be called outside any runtime.
    pub rt: &'a tokio::runtime::Runtime,
    pub gateway: Option<&'a GatewayHandle>,
    /// The folder run folders go into (bench/results).
    pub results: &'a std::path::Path,
    /// Generator threads, unless the plan says.
    pub threads: usize,
    /// Set to stop the run early.
    pub cancel: &'a Arc<AtomicBool>,
    /// The cluster the functions run in (None: the local platform).
    pub cluster: Option<&'a Arc<cluster::Cluster>>,
}

/// Runs every step of the plan against every target, interleaved, and writes the results.
pub fn run(
    session: &Session<'_>,
    plan: &Plan,
    targets: &[ResolvedTarget],
    ui: &mut dyn Ui,
) -> Result<RunResult, BenchError> {
    let Session {
        rt,
        gateway,
        results,
        threads,
        cancel,
        cluster,
    } = *session;
    let mut dir = output::RunDir::create(results)?;
    let client = gateway.map(|g| g.client());
    let run_start = std::time::Instant::now();
    let mut functions: Vec<String> = Vec::new();
    for f in targets.iter().filter_map(|t| t.function.clone()) {
        if !functions.contains(&f) {
            functions.push(f);
        }
    }
    let sampler = client.as_ref().filter(|_| !functions.is_empty()).map(|c| {
        sampler::Sampler::start(
            rt,
            c.clone(),
            cluster.cloned(),
            functions.clone(),
            run_start,
        )
    });
    // Lets the sampler see what a step began with.
    let settle = || std::thread::sleep(sampler::EVERY + Duration::from_millis(20));
    let held = |t: &ResolvedTarget, window: (Duration, Duration)| {
        let side = match t.role {
            Role::Serverless => sampler::Side::Serverless,
            _ => sampler::Side::Baseline,
        };
        sampler
            .as_ref()
            .zip(t.function.as_deref())
            .and_then(|(s, f)| s.resources(f, side, window.0, window.1))
    };
    let before = match &client {
        Some(c) => rt.block_on(replica_seconds(c)),
        None => BTreeMap::new(),
    };
    let mut records = Vec::new();
    let threads = plan.threads.unwrap_or(threads).max(1);
    let mut traces = 0;
    for group in &plan.steps {
        let values: Vec<(Mode, load::Step, Expected)> = match group {
            StepGroup::Closed {
                concurrency,
                stop,
                warmup,
            } => concurrency
                .iter()
                .map(|&c| {
                    let step = load::Step {
                        load: load::Load::Closed {
                            concurrency: c,
                            stop: *stop,
                        },
                        warmup: *warmup,
                        timeout: plan.timeout,
                        interval: plan.interval,
                        threads,
                    };
                    let expected = match stop {
                        load::Stop::Requests(n) => Expected::Requests(*n),
                        load::Stop::Duration(d) => Expected::Duration(*d + *warmup),
                    };
                    (Mode::Closed { concurrency: c }, step, expected)
                })
                .collect(),
            StepGroup::Open {
                rates,
                duration,
                connections,
                warmup,
            } => rates
                .iter()
                .map(|&rate| {
                    let step = load::Step {
                        load: load::Load::Open {
                            rate,
                            duration: *duration,
                            connections: *connections,
                        },
                        warmup: *warmup,
                        timeout: plan.timeout,
                        interval: plan.interval,
                        threads,
                    };
                    (
                        Mode::Open { rate },
                        step,
                        Expected::Duration(*duration + *warmup),
                    )
                })
                .collect(),
            StepGroup::Trace {
                trace, connections, ..
            } => {
                traces += 1;
                let step = load::Step {
                    load: load::Load::Trace {
                        trace: trace.clone(),
                        connections: *connections,
                    },
                    warmup: Duration::ZERO,
                    timeout: plan.timeout,
                    interval: plan.interval,
                    threads,
                };
                vec![(
                    Mode::Trace { step: traces },
                    step,
                    Expected::Duration(trace.length()),
                )]
            }
            StepGroup::Cold { samples } => {
                let from = run_start.elapsed();
                let mut recs = rt.block_on(cold::cold_starts(
                    client.as_ref(),
                    session,
                    targets,
                    *samples,
                    plan.timeout,
                    ui,
                ))?;
                if sampler.is_some() {
                    settle();
                }
                let window = (from, run_start.elapsed());
                for (r, t) in recs.iter_mut().zip(targets) {
                    r.window = window;
                    r.resources = held(t, window);
                }
                for r in recs {
                    dir.interval(
                        &r.tag(""),
                        r.outcome.started,
                        r.outcome.elapsed,
                        &r.outcome.latency,
                    )?;
                    ui.step_finished(&r);
                    records.push(r);
                }
                continue;
            }
        };
        for (mode, step, expected) in values {
            for t in targets {
                if cancel.load(Ordering::Relaxed) {
                    return Err(BenchError::Interrupted);
                }
                let label = format!("{} {} {}", t.name, mode.name(), mode.param());
                ui.step_started(&label, expected);
                let mut sink = StepSink {
                    ui: &mut *ui,
                    dir: &mut dir,
                    tag: String::new(),
                    uncorrected_tag: String::new(),
                    started: SystemTime::now() + step.warmup,
                    error: None,
                    intervals: Vec::new(),
                };
                let probe = StepRecord {
                    target: t.name.clone(),
                    role: t.role,
                    mode,
                    outcome: empty_outcome(),
                    resources: None,
                    window: (Duration::ZERO, Duration::ZERO),
                    intervals: Vec::new(),
                };
                sink.tag = probe.tag("");
                sink.uncorrected_tag = probe.tag("uncorrected");
                let from = run_start.elapsed() + step.warmup;
                let outcome = load::run(&step, &t.request, cancel, &mut sink);
                if let Some(e) = sink.error {
                    return Err(e.into());
                }
                if sampler.is_some() {
                    settle();
                }
                let window = (from, run_start.elapsed());
                let record = StepRecord {
                    outcome,
                    resources: held(t, window),
                    window,
                    intervals: std::mem::take(&mut sink.intervals),
                    ..probe
                };
                if !record.outcome.warmup.is_empty() {
                    dir.interval(
                        &record.tag("warmup"),
                        record.outcome.started - step.warmup,
                        step.warmup,
                        &record.outcome.warmup,
                    )?;
                }
                ui.step_finished(&record);
                records.push(record);
            }
        }
    }
    let replica_seconds = match gateway {
        Some(gw) => {
            let after = rt.block_on(replica_seconds(&gw.client()));
            targets
                .iter()
                .filter_map(|t| {
                    let f = t.function.as_ref()?;
                    let kind = if t.role == Role::Serverless {
                        "serverless"
                    } else {
                        "baseline"
                    };
                    let key = format!("{f}/{kind}");
                    let held = after.get(&key)? - before.get(&key).copied().unwrap_or(0.0);
                    Some((t.name.clone(), held))
                })
                .collect()
        }
        None => BTreeMap::new(),
    };
    let timeline = sampler.map(|s| s.stop()).unwrap_or_default();
    dir.finish(&records)?;
    output::write_timeline(&dir.dir, &functions, &timeline)?;
    let run = RunResult {
        dir: dir.dir.clone(),
        records,
        replica_seconds,
        functions,
        timeline,
        conclusion: Vec::new(),
        place: cluster.map(|c| {
            format!(
                "Measured on Kubernetes, namespace {}, the gateway reached {}.",
                c.namespace, c.via
            )
        }),
    };
    let mut run = run;
    run.conclusion = conclusion::conclude(&run);
    let text = run.dir.join(conclusion::CONCLUSION_FILE);
    conclusion::write(&run, &run.conclusion)
        .map_err(|source| output::OutputError::Io { path: text, source })?;
    let page = run.dir.join(report::REPORT_FILE);
    report::write(&run).map_err(|source| output::OutputError::Io { path: page, source })?;
    Ok(run)
}

pub(crate) fn empty_outcome() -> StepOutcome {
    StepOutcome {
        latency: hist::new(),
        uncorrected: None,
        warmup: hist::new(),
        warmup_errors: ErrorCounts::default(),
        errors: ErrorCounts::default(),
        elapsed: Duration::ZERO,
        started: SystemTime::now(),
        schedule: None,
        bursts: Vec::new(),
    }
}

/// Forwards progress to the screen and finished intervals to the interval log.
struct StepSink<'a> {
    ui: &'a mut dyn Ui,
    dir: &'a mut output::RunDir,
    tag: String,
    uncorrected_tag: String,
    started: SystemTime,
    error: Option<output::OutputError>,
    intervals: Vec<(f64, f64, f64, u64)>,
}

impl Observer for StepSink<'_> {
    fn progress(&mut self, progress: &load::Progress) {
        self.ui.progress(progress);
    }

    fn interval(&mut self, i: &load::Interval<'_>) {
        self.ui.interval(i);
        if !i.latency.is_empty() {
            let ms = |q: f64| i.latency.value_at_quantile(q) as f64 / hist::SCALE_TO_MS;
            self.intervals
                .push((i.start.as_secs_f64(), ms(0.5), ms(0.99), i.latency.len()));
        }
        let start = self.started + i.start;
        let mut write = |tag: &str, h: &Latency| {
            if let Err(e) = self.dir.interval(tag, start, i.length, h) {
                self.error.get_or_insert(e);
            }
        };
        write(&self.tag, i.latency);
        if let Some(u) = i.uncorrected {
            write(&self.uncorrected_tag, u);
        }
    }
}
