//! The bench plan (bench/plan.yaml, or one built from `--url -c -z ...`): targets and steps,
//! decoded with the same located diagnostics as function.yaml. No IO beyond reading the file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use marked_yaml::Node;

use super::load::Stop;
use super::trace::{self, Phase, Trace};
use crate::spec::decode::{self, Fields, Reader};
use crate::spec::{Diagnostic, Diagnostics, SourceFile};

pub const DEFAULT_PLAN: &str = "bench/plan.yaml";

pub mod defaults {
    pub const TIMEOUT: &str = "10s";
    pub const INTERVAL: &str = "1s";
    pub const CONNECTIONS: u32 = 64;
    pub const COLD_SAMPLES: u32 = 10;
}

/// What a target sends requests to.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    Url(String),
    /// A function of the repo, through the gateway; its always-on baseline is benchmarked
    /// beside it, called directly and through the gateway, as `baseline` says.
    Function {
        name: String,
        path: String,
        baseline: Baselines,
    },
}

/// Which baseline targets a function target brings along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Baselines {
    /// `NAME-baseline`: the baseline replica called directly (no FaaS at all).
    pub direct: bool,
    /// `NAME-baseline-gw`: the baseline through the gateway (`/baseline/NAME`): the same
    /// proxy hop as the serverless target, without scale-to-zero.
    pub gateway: bool,
}

impl Baselines {
    pub const BOTH: Baselines = Baselines {
        direct: true,
        gateway: true,
    };
    pub const NONE: Baselines = Baselines {
        direct: false,
        gateway: false,
    };
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetSpec {
    /// Shown in tables and file names (default: the function's name, or `url-N`).
    pub name: String,
    pub endpoint: Endpoint,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A group of steps of one mode; every value of it runs against every target in turn.
#[derive(Debug, Clone, PartialEq)]
pub enum StepGroup {
    Closed {
        concurrency: Vec<u32>,
        stop: Stop,
        warmup: Duration,
    },
    Open {
        rates: Vec<f64>,
        duration: Duration,
        connections: u32,
        warmup: Duration,
    },
    /// Scale the function to zero, time the first request; `samples` times.
    Cold { samples: u32 },
    /// An open-loop schedule of rates over time (bursts and idle gaps, or a recorded trace).
    Trace {
        trace: Arc<Trace>,
        connections: u32,
        /// How the plan gave it, for the report (`3 bursts of 5s at 20/s, 8s apart`).
        shape: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub targets: Vec<TargetSpec>,
    pub steps: Vec<StepGroup>,
    pub timeout: Duration,
    pub interval: Duration,
    /// Threads of the generator (default: one per core).
    pub threads: Option<usize>,
}

impl Plan {
    pub fn uses_functions(&self) -> bool {
        self.targets
            .iter()
            .any(|t| matches!(t.endpoint, Endpoint::Function { .. }))
    }
}

/// Why a plan could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("failed to read the bench plan {}: pass another with `cubeflash bench PLAN`, or benchmark one URL with `--url`", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the bench plan has problems:\n{}", .0.report("nothing was run"))]
    Invalid(Diagnostics),
}

/// Reads and decodes a plan file; `display` is the path shown in messages.
pub fn load(path: &Path, display: &Path) -> Result<Plan, PlanError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
        path: display.to_path_buf(),
        source,
    })?;
    decode_in(&SourceFile::new(display, text), path.parent())
}

/// Decodes a plan; trace files are read relative to the current directory.
pub fn decode_text(file: &SourceFile) -> Result<Plan, PlanError> {
    decode_in(file, None)
}

/// Decodes a plan whose trace files are relative to `base` (the plan's folder).
fn decode_in(file: &SourceFile, base: Option<&Path>) -> Result<Plan, PlanError> {
    let root = decode::parse_document(file).map_err(|d| {
        let mut all = Diagnostics::default();
        all.push(*d);
        PlanError::Invalid(all)
    })?;
    decode(file, &root, base).map_err(PlanError::Invalid)
}

const TOP_KEYS: &[&str] = &["targets", "steps", "timeout", "interval", "threads"];
const TARGET_KEYS: &[&str] = &[
    "name", "url", "function", "path", "baseline", "method", "headers", "body",
];

fn decode(file: &SourceFile, root: &Node, base: Option<&Path>) -> Result<Plan, Diagnostics> {
    let mut r = Reader::new(file);
    let mut plan = Plan {
        targets: Vec::new(),
        steps: Vec::new(),
        timeout: Duration::from_secs(10),
        interval: Duration::from_secs(1),
        threads: None,
    };
    if let Some(f) = r.mapping(root, "", TOP_KEYS) {
        if let Some(n) = r.required(&f, "targets", "targets: [{function: random-quote}]") {
            if let Some(list) = r.sequence(n, "targets", "list the targets, e.g. `- function: random-quote` or `- url: http://127.0.0.1:8080/`") {
                for (i, t) in list.iter().enumerate() {
                    if let Some(t) = target(&mut r, t, &format!("targets[{i}]"), i) {
                        plan.targets.push(t);
                    }
                }
                if list.is_empty() {
                    r.error(n, "targets", "the plan has no targets", "add `- function: NAME` or `- url: URL`");
                }
            }
        }
        if let Some(n) = r.required(&f, "steps", "steps: [{closed: {concurrency: [1, 2, 4]}}]") {
            if let Some(list) = r.sequence(
                n,
                "steps",
                "list the steps, e.g. `- closed: {concurrency: [1, 2, 4], duration: 5s}`",
            ) {
                for (i, s) in list.iter().enumerate() {
                    if let Some(s) = step(&mut r, s, &format!("steps[{i}]"), base) {
                        plan.steps.push(s);
                    }
                }
                if list.is_empty() {
                    r.error(
                        n,
                        "steps",
                        "the plan has no steps",
                        "add `- closed: {concurrency: [1, 2, 4], duration: 5s}`",
                    );
                }
            }
        }
        if let Some(n) = f.get("timeout") {
            plan.timeout = r
                .duration(n, "timeout", false, defaults::TIMEOUT)
                .unwrap_or(plan.timeout);
        }
        if let Some(n) = f.get("interval") {
            plan.interval = r
                .duration(n, "interval", false, defaults::INTERVAL)
                .unwrap_or(plan.interval);
        }
        if let Some(n) = f.get("threads") {
            plan.threads = r.uint(n, "threads", 1, 256).map(|t| t as usize);
        }
    }
    check_names(&mut r, root, &plan);
    if r.diags.is_empty() {
        Ok(plan)
    } else {
        Err(r.diags)
    }
}

fn target(r: &mut Reader, node: &Node, path: &str, index: usize) -> Option<TargetSpec> {
    let f = r.mapping(node, path, TARGET_KEYS)?;
    let text = |r: &mut Reader, key: &str| {
        f.get(key)
            .and_then(|n| r.string(n, &f.path_of(key), "quote it"))
    };
    let url = text(r, "url");
    let function = text(r, "function");
    let name = text(r, "name");
    let sub_path = text(r, "path");
    let endpoint = match (url, function) {
        (Some(url), None) => {
            if !url.starts_with("http://") {
                let n = f.get("url").expect("read above");
                r.error(n, &f.path_of("url"), format!("{url:?} is not an http:// URL"), "the generator speaks plain HTTP/1.1: use an http:// URL (https is not supported)");
            }
            if f.get("path").is_some() || f.get("baseline").is_some() {
                r.error_at(
                    f.loc(),
                    path,
                    "`path` and `baseline` go with `function`, not `url`",
                    "put the path in the URL",
                );
            }
            Endpoint::Url(url)
        }
        (None, Some(function)) => {
            if let Err(why) = crate::spec::values::check_dns_label(&function, 63) {
                let n = f.get("function").expect("read above");
                r.error(
                    n,
                    &f.path_of("function"),
                    why,
                    "use the function's folder name under functions/",
                );
            }
            let sub_path = sub_path.unwrap_or_default();
            if !sub_path.is_empty() && !sub_path.starts_with('/') {
                let n = f.get("path").expect("read above");
                r.error(
                    n,
                    &f.path_of("path"),
                    "the path must start with `/`",
                    "e.g. `path: /quotes?n=1`",
                );
            }
            let baseline = match f.get("baseline") {
                Some(n) => baselines(r, n, &f.path_of("baseline"))?,
                None => Baselines::BOTH,
            };
            Endpoint::Function {
                name: function,
                path: sub_path,
                baseline,
            }
        }
        (Some(_), Some(_)) => {
            r.error_at(
                f.loc(),
                path,
                "a target has either `url` or `function`, not both",
                "split it into two targets",
            );
            return None;
        }
        (None, None) => {
            r.error_at(
                f.loc(),
                path,
                "a target needs `url` or `function`",
                "add `function: random-quote` or `url: http://127.0.0.1:8080/`",
            );
            return None;
        }
    };
    let method = match f.get("method") {
        Some(n) => {
            let m = r.string(n, &f.path_of("method"), "")?;
            if let Err(why) = crate::spec::values::check_method(&m.to_ascii_uppercase()) {
                r.error(n, &f.path_of("method"), why, "");
            }
            m.to_ascii_uppercase()
        }
        None => "GET".into(),
    };
    let headers = f
        .get("headers")
        .map(|n| {
            r.string_map(
                n,
                &f.path_of("headers"),
                "e.g. `headers: {Content-Type: application/json}`",
            )
            .into_iter()
            .map(|(k, (v, _))| (k, v))
            .collect()
        })
        .unwrap_or_default();
    let body = text(r, "body").unwrap_or_default().into_bytes();
    let name = name.unwrap_or_else(|| match &endpoint {
        Endpoint::Function { name, .. } => name.clone(),
        Endpoint::Url(_) => format!("url-{}", index + 1),
    });
    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == ',' || c == '/') {
        r.error_at(
            f.loc(),
            &f.path_of("name"),
            format!("{name:?} cannot name a target"),
            "use letters, digits, `-`, `_` or `.`: it becomes part of file names",
        );
    }
    Some(TargetSpec {
        name,
        endpoint,
        method,
        headers,
        body,
    })
}

/// `true` (both baselines), `false` (none), `direct` or `gateway`.
fn baselines(r: &mut Reader, node: &Node, path: &str) -> Option<Baselines> {
    match node {
        Node::Scalar(s) if s.may_coerce() && s.as_bool().is_some() => {
            Some(if s.as_bool() == Some(true) {
                Baselines::BOTH
            } else {
                Baselines::NONE
            })
        }
        Node::Scalar(s) if s.as_str() == "direct" => Some(Baselines {
            direct: true,
            gateway: false,
        }),
        Node::Scalar(s) if s.as_str() == "gateway" => Some(Baselines {
            direct: false,
            gateway: true,
        }),
        _ => {
            r.error(
                node,
                path,
                format!(
                    "expected true, false, direct or gateway, found {}",
                    decode::describe(node)
                ),
                "true: the baseline called directly and through the gateway; direct or gateway: one of them; false: none",
            );
            None
        }
    }
}

fn step(r: &mut Reader, node: &Node, path: &str, base: Option<&Path>) -> Option<StepGroup> {
    let outer = r.mapping(node, path, &["closed", "open", "cold", "trace"])?;
    let mut entries = outer.entries();
    let (key, body) = entries.next()?;
    if entries.next().is_some() {
        r.error_at(
            outer.loc(),
            path,
            "a step has exactly one mode: closed, open, cold or trace",
            "write each mode as its own `- closed: ...` item",
        );
        return None;
    }
    let path = decode::join(path, key.as_str());
    match key.as_str() {
        "closed" => {
            let f = r.mapping(
                body,
                &path,
                &["concurrency", "requests", "duration", "warmup"],
            )?;
            let concurrency = numbers(r, &f, "concurrency", 1, 100_000)?;
            let stop = match (f.get("requests"), f.get("duration")) {
                (Some(_), Some(_)) => {
                    r.error_at(
                        f.loc(),
                        &path,
                        "give `requests` or `duration`, not both",
                        "",
                    );
                    return None;
                }
                (Some(n), None) => {
                    Stop::Requests(u64::from(r.uint(n, &f.path_of("requests"), 1, u32::MAX)?))
                }
                (None, Some(n)) => Stop::Duration(step_length(r, n, &f.path_of("duration"))?),
                (None, None) => Stop::Duration(Duration::from_secs(5)),
            };
            let warmup = warmup(r, &f)?;
            Some(StepGroup::Closed {
                concurrency: concurrency.into_iter().map(|c| c as u32).collect(),
                stop,
                warmup,
            })
        }
        "open" => {
            let f = r.mapping(body, &path, &["rate", "duration", "connections", "warmup"])?;
            let rates = numbers(r, &f, "rate", 1, 10_000_000)?;
            let duration = match f.get("duration") {
                Some(n) => step_length(r, n, &f.path_of("duration"))?,
                None => Duration::from_secs(5),
            };
            let connections = match f.get("connections") {
                Some(n) => r.uint(n, &f.path_of("connections"), 1, 100_000)?,
                None => defaults::CONNECTIONS,
            };
            let warmup = warmup(r, &f)?;
            Some(StepGroup::Open {
                rates: rates.into_iter().map(|r| r as f64).collect(),
                duration,
                connections,
                warmup,
            })
        }
        "trace" => trace_step(r, body, &path, base),
        _ => {
            let f = r.mapping(body, &path, &["samples"])?;
            let samples = match f.get("samples") {
                Some(n) => r.uint(n, &f.path_of("samples"), 1, 10_000)?,
                None => defaults::COLD_SAMPLES,
            };
            Some(StepGroup::Cold { samples })
        }
    }
}

/// A step's duration: above zero, an hour at most.
fn step_length(r: &mut Reader, n: &Node, path: &str) -> Option<Duration> {
    let d = r.duration(n, path, false, "5s")?;
    if d > trace::MAX_LENGTH {
        r.error(
            n,
            path,
            format!(
                "a step runs for an hour at most, not {}",
                crate::spec::values::format_duration(d)
            ),
            "split it into several steps, or shorten it",
        );
        return None;
    }
    Some(d)
}

const TRACE_KEYS: &[&str] = &[
    "rate",
    "burst",
    "gap",
    "bursts",
    "phases",
    "repeat",
    "file",
    "connections",
];

/// `trace: {rate: 50, burst: 30s, gap: 2m, bursts: 3}`, `trace: {phases: [{rate: 50, for:
/// 30s}, {rate: 0, for: 2m}], repeat: 3}` or `trace: {file: trace.csv}`.
fn trace_step(r: &mut Reader, body: &Node, path: &str, base: Option<&Path>) -> Option<StepGroup> {
    let f = r.mapping(body, path, TRACE_KEYS)?;
    let connections = match f.get("connections") {
        Some(n) => r.uint(n, &f.path_of("connections"), 1, 100_000)?,
        None => defaults::CONNECTIONS,
    };
    let given: Vec<&str> = ["rate", "phases", "file"]
        .into_iter()
        .filter(|k| f.get(k).is_some())
        .collect();
    if given.len() != 1 {
        r.error_at(
            f.loc(),
            path,
            "a trace is given by bursts (`rate`, `burst`, `gap`, `bursts`), by `phases`, or by a recorded `file`: exactly one of them",
            "e.g. `trace: {rate: 50, burst: 30s, gap: 2m, bursts: 3}`",
        );
        return None;
    }
    let (trace, shape) = match given[0] {
        "rate" => {
            let rate = r.uint(f.get("rate")?, &f.path_of("rate"), 1, 10_000_000)?;
            let burst = match f.get("burst") {
                Some(n) => step_length(r, n, &f.path_of("burst"))?,
                None => Duration::from_secs(30),
            };
            let gap = match f.get("gap") {
                Some(n) => step_length(r, n, &f.path_of("gap"))?,
                None => Duration::from_secs(120),
            };
            let bursts = match f.get("bursts") {
                Some(n) => r.uint(n, &f.path_of("bursts"), 1, 1000)?,
                None => 3,
            };
            let mut phases = Vec::new();
            for i in 0..bursts {
                if i > 0 {
                    phases.push(Phase {
                        rate: 0.0,
                        length: gap,
                    });
                }
                phases.push(Phase {
                    rate: f64::from(rate),
                    length: burst,
                });
            }
            let fmt = crate::spec::values::format_duration;
            (
                Trace::from_phases(&phases),
                format!(
                    "{bursts} bursts of {} at {rate}/s, {} of silence between them",
                    fmt(burst),
                    fmt(gap)
                ),
            )
        }
        "phases" => {
            let n = f.get("phases")?;
            let list = r.sequence(
                n,
                &f.path_of("phases"),
                "e.g. `phases: [{rate: 50, for: 30s}, {rate: 0, for: 2m}]`",
            )?;
            let mut phases = Vec::new();
            for (i, p) in list.iter().enumerate() {
                let at = format!("{}[{i}]", f.path_of("phases"));
                let Some(pf) = r.mapping(p, &at, &["rate", "for"]) else {
                    continue;
                };
                let rate = match pf.get("rate") {
                    Some(n) => r.uint(n, &pf.path_of("rate"), 0, 10_000_000),
                    None => {
                        r.error_at(
                            pf.loc(),
                            &at,
                            "a phase needs a `rate` (0: silence)",
                            "e.g. `{rate: 50, for: 30s}`",
                        );
                        None
                    }
                };
                let length = match pf.get("for") {
                    Some(n) => step_length(r, n, &pf.path_of("for")),
                    None => {
                        r.error_at(
                            pf.loc(),
                            &at,
                            "a phase needs a length, `for`",
                            "e.g. `{rate: 50, for: 30s}`",
                        );
                        None
                    }
                };
                if let (Some(rate), Some(length)) = (rate, length) {
                    phases.push(Phase {
                        rate: f64::from(rate),
                        length,
                    });
                }
            }
            let repeat = match f.get("repeat") {
                Some(n) => r.uint(n, &f.path_of("repeat"), 1, 1000)?,
                None => 1,
            };
            let all: Vec<Phase> = (0..repeat).flat_map(|_| phases.iter().copied()).collect();
            let trace = Trace::from_phases(&all);
            if trace.total() == 0 && list.len() == phases.len() {
                r.error(
                    n,
                    &f.path_of("phases"),
                    "the phases send no request",
                    "give one phase a rate above zero",
                );
                return None;
            }
            (trace, format!("{} phases, {repeat} time(s)", phases.len()))
        }
        _ => {
            let n = f.get("file")?;
            let name = r.string(n, &f.path_of("file"), "quote it")?;
            let full = match base {
                Some(b) => b.join(&name),
                None => Path::new(&name).to_path_buf(),
            };
            match trace::load(&full, Path::new(&name)) {
                Ok(t) => (t, format!("recorded trace {name}")),
                Err(d) => {
                    r.diags.extend(d);
                    return None;
                }
            }
        }
    };
    if trace.length() > trace::MAX_LENGTH {
        r.error_at(
            f.loc(),
            path,
            format!(
                "the trace runs for {}; a step runs for an hour at most",
                crate::spec::values::format_duration(trace.length())
            ),
            "fewer bursts, or shorter ones",
        );
        return None;
    }
    if f.get("repeat").is_some() && given[0] != "phases" {
        r.error_at(
            f.loc(),
            path,
            "`repeat` goes with `phases`",
            "for bursts, give `bursts: N`",
        );
    }
    Some(StepGroup::Trace {
        trace: Arc::new(trace),
        connections,
        shape,
    })
}

fn warmup(r: &mut Reader, f: &Fields) -> Option<Duration> {
    match f.get("warmup") {
        Some(n) => r.duration(n, &f.path_of("warmup"), true, "1s"),
        None => Some(Duration::ZERO),
    }
}

/// A number or a list of numbers, each within [min, max].
fn numbers(r: &mut Reader, f: &Fields, key: &str, min: u32, max: u32) -> Option<Vec<u64>> {
    let path = f.path_of(key);
    let n = r.required(f, key, &format!("{key}: [1, 2, 4]"))?;
    let items: Vec<&Node> = match n {
        Node::Sequence(s) => s.iter().collect(),
        _ => vec![n],
    };
    if items.is_empty() {
        r.error(
            n,
            &path,
            format!("`{key}` lists no values"),
            &format!("e.g. `{key}: [1, 2, 4]`"),
        );
        return None;
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        out.push(u64::from(r.uint(
            item,
            &format!("{path}[{i}]"),
            min,
            max,
        )?));
    }
    Some(out)
}

/// Target names must be unique once baselines are added (`NAME-baseline`).
fn check_names(r: &mut Reader, root: &Node, plan: &Plan) {
    let mut seen = std::collections::BTreeSet::new();
    for t in &plan.targets {
        let mut names = vec![t.name.clone()];
        if let Endpoint::Function { baseline, .. } = t.endpoint {
            if baseline.direct {
                names.push(baseline_name(&t.name));
            }
            if baseline.gateway {
                names.push(gateway_baseline_name(&t.name));
            }
        }
        for n in names {
            if !seen.insert(n.clone()) {
                r.error(
                    root,
                    "targets",
                    format!("two targets are named {n:?}"),
                    "give one of them a `name:` of its own",
                );
            }
        }
    }
}

/// The plan used when a repo has no bench/plan.yaml: every function (with its baseline, when
/// it has one), a closed-loop sweep, two open-loop rates and cold starts.
pub fn default_plan_text(functions: &[String]) -> String {
    let mut text = String::from("# built in: no bench/plan.yaml in this repo\ntargets:\n");
    for f in functions {
        text.push_str(&format!("  - function: {f}\n"));
    }
    text.push_str(
        "steps:\n  - closed: {concurrency: [1, 2, 4, 8, 16, 32, 64, 128], duration: 3s, warmup: 500ms}\n  - open: {rate: [50, 200], duration: 5s, connections: 32}\n  - cold: {samples: 10}\n",
    );
    text
}

pub fn baseline_name(target: &str) -> String {
    format!("{target}-baseline")
}

pub fn gateway_baseline_name(target: &str) -> String {
    format!("{target}-baseline-gw")
}

/// The plan of an ad-hoc run (`--url`): one target, one step.
pub struct AdHoc {
    pub url: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub concurrency: u32,
    pub requests: Option<u64>,
    pub duration: Option<Duration>,
    pub rate: Option<f64>,
    pub timeout: Duration,
}

impl AdHoc {
    pub fn into_plan(self) -> Result<Plan, Box<Diagnostic>> {
        let whole = |msg: &str| Box::new(Diagnostic::whole_file(Path::new("command line"), msg));
        if !self.url.starts_with("http://") {
            return Err(whole(&format!(
                "{:?} is not an http:// URL (the generator speaks plain HTTP/1.1)",
                self.url
            )));
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(whole(&format!(
                    "--rate {rate} is not a rate: give requests per second above zero, e.g. --rate 500"
                )));
            }
        }
        if self.requests == Some(0) {
            return Err(whole("-n 0 sends nothing: give a request count above zero"));
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err(whole(
                "-z 0s runs for no time: give a duration, e.g. -z 10s",
            ));
        }
        let step = match (self.rate, self.requests, self.duration) {
            (Some(_), Some(_), _) => {
                return Err(whole(
                    "--rate runs for a duration (-z), not a request count (-n)",
                ))
            }
            (Some(rate), None, d) => StepGroup::Open {
                rates: vec![rate],
                duration: d.unwrap_or(Duration::from_secs(10)),
                connections: self.concurrency,
                warmup: Duration::ZERO,
            },
            (None, Some(_), Some(_)) => {
                return Err(whole("give -n (requests) or -z (duration), not both"))
            }
            (None, Some(n), None) => StepGroup::Closed {
                concurrency: vec![self.concurrency],
                stop: Stop::Requests(n),
                warmup: Duration::ZERO,
            },
            (None, None, d) => StepGroup::Closed {
                concurrency: vec![self.concurrency],
                stop: Stop::Duration(d.unwrap_or(Duration::from_secs(10))),
                warmup: Duration::ZERO,
            },
        };
        Ok(Plan {
            targets: vec![TargetSpec {
                name: "url".into(),
                endpoint: Endpoint::Url(self.url),
                method: self.method.to_ascii_uppercase(),
                headers: self.headers,
                body: self.body,
            }],
            steps: vec![step],
            timeout: self.timeout,
            interval: Duration::from_secs(1),
            threads: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Result<Plan, PlanError> {
        decode_text(&SourceFile::new("bench/plan.yaml", text))
    }

    #[test]
    fn a_full_plan_decodes() {
        let p = plan(
            "targets:\n  - function: random-quote\n  - name: nginx\n    url: http://127.0.0.1:8081/\n    method: post\n    headers: {X-A: b}\n    body: hi\nsteps:\n  - closed: {concurrency: [1, 2], requests: 100, warmup: 1s}\n  - open: {rate: 500, duration: 2s}\n  - cold: {samples: 3}\ntimeout: 2s\n",
        )
        .unwrap();
        assert_eq!(p.targets.len(), 2);
        assert_eq!(
            p.targets[0].endpoint,
            Endpoint::Function {
                name: "random-quote".into(),
                path: String::new(),
                baseline: Baselines::BOTH
            }
        );
        assert_eq!(p.targets[1].method, "POST");
        assert_eq!(p.targets[1].body, b"hi");
        assert_eq!(
            p.steps[0],
            StepGroup::Closed {
                concurrency: vec![1, 2],
                stop: Stop::Requests(100),
                warmup: Duration::from_secs(1)
            }
        );
        assert!(
            matches!(&p.steps[1], StepGroup::Open { rates, connections: 64, .. } if rates == &vec![500.0])
        );
        assert_eq!(p.steps[2], StepGroup::Cold { samples: 3 });
        assert_eq!(p.timeout, Duration::from_secs(2));
    }

    #[test]
    fn the_plans_in_the_docs_and_the_repo_decode() {
        let howto = include_str!("../../docs/howto-bench.md");
        let start = howto
            .find("```yaml\n# bench/plan.yaml")
            .expect("the how-to has a plan")
            + 8;
        let end = start + howto[start..].find("```").unwrap();
        let p = plan(&howto[start..end]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.targets.len(), 2);
        assert_eq!(p.steps.len(), 4);
        assert_eq!(p.threads, Some(2));
        let repo = plan(include_str!("../../bench/plan.yaml")).unwrap_or_else(|e| panic!("{e}"));
        assert!(repo.uses_functions());
        let built_in = plan(&default_plan_text(&["a".into(), "b".into()])).unwrap();
        assert_eq!(built_in.targets.len(), 2);
    }

    #[test]
    fn every_problem_is_located() {
        let Err(PlanError::Invalid(d)) = plan(
            "targets:\n  - url: https://x/\n  - functon: a\nsteps:\n  - closed: {concurrency: [0, 2], duration: soon}\n  - open: {rate: 5}\n    cold: {}\n",
        ) else {
            panic!("expected problems")
        };
        let text = d.to_string();
        assert!(text.contains("bench/plan.yaml:2:10"), "{text}");
        assert!(text.contains("not an http:// URL"), "{text}");
        assert!(text.contains("did you mean `function`"), "{text}");
        assert!(text.contains("steps[0].closed.concurrency[0]"), "{text}");
        assert!(text.contains("exactly one mode"), "{text}");
    }
}
