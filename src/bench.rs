//! `cubeflash bench`: runs a plan's steps against its targets, interleaved step by step
//! (serverless c=1, baseline c=1, serverless c=2, ...) so machine drift hits both alike, and
//! writes the results. The engine (load.rs) measures; this module sequences, talks to the
//! gateway's admin API for cold starts and replica-seconds, and hands results to output.rs
//! and report.rs. It prints nothing: the CLI layer implements [`Ui`].

pub mod hist;
pub mod http;
pub mod load;
pub mod output;
pub mod plan;
pub mod report;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use hist::Latency;
use http::{Connection, PreparedRequest};
use load::{ErrorCounts, Observer, Outcome, StepOutcome};
use plan::{Endpoint, Plan, StepGroup};

/// Why a bench run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("target {target}: {source}")]
    Request {
        target: String,
        #[source]
        source: http::RequestError,
    },
    #[error("cannot reach target {target} at {url}: {source}; is it running?")]
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
    #[error("the gateway's admin API at {url} failed: {detail}")]
    Admin { url: String, detail: String },
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
    /// A function's always-on baseline replica.
    Baseline,
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
    Closed { concurrency: u32 },
    Open { rate: f64 },
    Cold,
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Closed { .. } => "closed",
            Mode::Open { .. } => "open",
            Mode::Cold => "cold",
        }
    }

    /// `c4`, `r500` or empty: the step's parameter as tags and file names carry it.
    pub fn param(&self) -> String {
        match self {
            Mode::Closed { concurrency } => format!("c{concurrency}"),
            Mode::Open { rate } => format!("r{}", output::fmt_num(*rate)),
            Mode::Cold => String::new(),
        }
    }
}

/// One target's result for one step.
pub struct StepRecord {
    pub target: String,
    pub role: Role,
    pub mode: Mode,
    pub outcome: StepOutcome,
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
}

/// Turns the plan's targets into requests: function targets through the gateway (and their
/// baselines, whose URL the admin API gives); then checks each one listens.
pub async fn resolve_targets(
    plan: &Plan,
    gateway: Option<&GatewayHandle>,
) -> Result<Vec<ResolvedTarget>, BenchError> {
    let client = admin_client();
    let mut out = Vec::new();
    for t in &plan.targets {
        let build = |name: &str, url: &str| {
            PreparedRequest::new(url, &t.method, &t.headers, &t.body).map_err(|source| {
                BenchError::Request {
                    target: name.to_string(),
                    source,
                }
            })
        };
        match &t.endpoint {
            Endpoint::Url(url) => out.push(ResolvedTarget {
                name: t.name.clone(),
                role: Role::Url,
                function: None,
                request: build(&t.name, url)?,
            }),
            Endpoint::Function {
                name,
                path,
                baseline,
            } => {
                let gw = gateway.ok_or(BenchError::NoGateway)?;
                let info = admin_call(
                    &client,
                    gw,
                    reqwest::Method::GET,
                    &format!("/system/functions/{name}"),
                    None,
                )
                .await
                .map_err(|e| match e {
                    BenchError::Admin { detail, .. } if detail.contains("404") => {
                        BenchError::UnknownFunction(name.clone())
                    }
                    e => e,
                })?;
                let url = format!("{}/function/{name}{path}", gw.url);
                out.push(ResolvedTarget {
                    name: t.name.clone(),
                    role: Role::Serverless,
                    function: Some(name.clone()),
                    request: build(&t.name, &url)?,
                });
                if *baseline {
                    if let Some(base) = info["baselineUrl"].as_str() {
                        let bname = plan::baseline_name(&t.name);
                        let url = format!("{}{path}", base.trim_end_matches('/'));
                        out.push(ResolvedTarget {
                            name: bname.clone(),
                            role: Role::Baseline,
                            function: Some(name.clone()),
                            request: build(&bname, &url)?,
                        });
                    }
                }
            }
        }
    }
    for t in &out {
        http::probe(t.request.addr, Duration::from_secs(3))
            .await
            .map_err(|source| BenchError::Unreachable {
                target: t.name.clone(),
                url: t.request.url.clone(),
                source,
            })?;
    }
    Ok(out)
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
    } = *session;
    let mut dir = output::RunDir::create(results)?;
    let client = admin_client();
    let before = match gateway {
        Some(gw) => rt.block_on(replica_seconds(&client, gw)),
        None => BTreeMap::new(),
    };
    let mut records = Vec::new();
    let threads = plan.threads.unwrap_or(threads).max(1);
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
            StepGroup::Cold { samples } => {
                let recs = rt.block_on(cold_starts(
                    &client,
                    session,
                    targets,
                    *samples,
                    plan.timeout,
                    ui,
                ))?;
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
                };
                let probe = StepRecord {
                    target: t.name.clone(),
                    role: t.role,
                    mode,
                    outcome: empty_outcome(),
                };
                sink.tag = probe.tag("");
                sink.uncorrected_tag = probe.tag("uncorrected");
                let outcome = load::run(&step, &t.request, cancel, &mut sink);
                if let Some(e) = sink.error {
                    return Err(e.into());
                }
                let record = StepRecord { outcome, ..probe };
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
            let after = rt.block_on(replica_seconds(&client, gw));
            targets
                .iter()
                .filter_map(|t| {
                    let f = t.function.as_ref()?;
                    let kind = if t.role == Role::Baseline {
                        "baseline"
                    } else {
                        "serverless"
                    };
                    let key = format!("{f}/{kind}");
                    let held = after.get(&key)? - before.get(&key).copied().unwrap_or(0.0);
                    Some((t.name.clone(), held))
                })
                .collect()
        }
        None => BTreeMap::new(),
    };
    dir.finish(&records)?;
    let run = RunResult {
        dir: dir.dir.clone(),
        records,
        replica_seconds,
    };
    let page = run.dir.join(report::REPORT_FILE);
    report::write(&run).map_err(|source| output::OutputError::Io { path: page, source })?;
    Ok(run)
}

fn empty_outcome() -> StepOutcome {
    StepOutcome {
        latency: hist::new(),
        uncorrected: None,
        warmup: hist::new(),
        warmup_errors: ErrorCounts::default(),
        errors: ErrorCounts::default(),
        elapsed: Duration::ZERO,
        started: SystemTime::now(),
        schedule: None,
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
}

impl Observer for StepSink<'_> {
    fn progress(&mut self, progress: &load::Progress) {
        self.ui.progress(progress);
    }

    fn interval(&mut self, i: &load::Interval<'_>) {
        self.ui.interval(i);
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

/// Cold starts: for each sample and each target in turn, scale the function to zero through
/// the admin API, wait until no replica is left, then time one request on a new connection
/// (connect included). Baseline and URL targets are not scaled: their samples are a first
/// request on a new connection, the always-on side of the comparison.
async fn cold_starts(
    client: &reqwest::Client,
    session: &Session<'_>,
    targets: &[ResolvedTarget],
    samples: u32,
    timeout: Duration,
    ui: &mut dyn Ui,
) -> Result<Vec<StepRecord>, BenchError> {
    let (gateway, cancel) = (session.gateway, session.cancel);
    let mut records: Vec<StepRecord> = targets
        .iter()
        .map(|t| StepRecord {
            target: t.name.clone(),
            role: t.role,
            mode: Mode::Cold,
            outcome: empty_outcome(),
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
            if let (Role::Serverless, Some(gw), Some(f)) = (t.role, gateway, &t.function) {
                scale_to_zero(client, gw, f).await?;
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

async fn scale_to_zero(
    client: &reqwest::Client,
    gw: &GatewayHandle,
    function: &str,
) -> Result<(), BenchError> {
    let path = format!("/system/functions/{function}");
    admin_call(
        client,
        gw,
        reqwest::Method::POST,
        &format!("{path}/scale"),
        Some(serde_json::json!({"replicas": 0})),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let f = admin_call(client, gw, reqwest::Method::GET, &path, None).await?;
        let replicas = &f["replicas"];
        if replicas["desired"].as_u64() == Some(0) && replicas["ready"].as_u64() == Some(0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Admin {
                url: gw.url.clone(),
                detail: format!("{function} still has replicas 30s after scaling it to zero"),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn admin_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

async fn admin_call(
    client: &reqwest::Client,
    gw: &GatewayHandle,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, BenchError> {
    let mut req = client
        .request(method, format!("{}{path}", gw.url))
        .bearer_auth(&gw.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let fail = |detail: String| BenchError::Admin {
        url: gw.url.clone(),
        detail,
    };
    let resp = req.send().await.map_err(|e| fail(e.to_string()))?;
    let status = resp.status();
    let value: Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        return Err(fail(format!(
            "{status}: {}",
            value["error"].as_str().unwrap_or("no detail")
        )));
    }
    Ok(value)
}

/// `cubeflash_replica_seconds_total` by "function/kind", from the gateway's /metrics.
async fn replica_seconds(client: &reqwest::Client, gw: &GatewayHandle) -> BTreeMap<String, f64> {
    let Ok(resp) = client.get(format!("{}/metrics", gw.url)).send().await else {
        return BTreeMap::new();
    };
    let text = resp.text().await.unwrap_or_default();
    parse_replica_seconds(&text)
}

fn parse_replica_seconds(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("cubeflash_replica_seconds_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                kv.strip_prefix(&format!("{name}=\""))
                    .and_then(|v| v.strip_suffix('"'))
            })
        };
        if let (Some(f), Some(k), Ok(v)) = (
            label("function"),
            label("kind"),
            value.trim().parse::<f64>(),
        ) {
            out.insert(format!("{f}/{k}"), v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_seconds_are_read_per_function_and_kind() {
        let text = "# TYPE x counter\ncubeflash_replica_seconds_total{function=\"q\",kind=\"serverless\"} 1.5\ncubeflash_replica_seconds_total{function=\"q\",kind=\"baseline\"} 30.0\n";
        let m = parse_replica_seconds(text);
        assert_eq!(m["q/serverless"], 1.5);
        assert_eq!(m["q/baseline"], 30.0);
    }
}
