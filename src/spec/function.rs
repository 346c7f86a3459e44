//! `functions/<name>/function.yaml`: its types, defaults and decoding with located errors.
//! Checks that need other files (handler present, routes unique) live in `repo`.

use std::collections::BTreeMap;

use marked_yaml::Node;
use serde::{Deserialize, Serialize};

use super::decode::{node_loc, Fields, Reader};
use super::diagnostic::{Diagnostics, Loc, SourceFile};
use super::values::{self, Dur};

/// Longest function name: cubeflash appends `-baseline` and `-schedule-N`, and CronJob names
/// are limited to 52 characters.
pub const MAX_NAME_LEN: usize = 40;

mod triggers;

/// Names that generated/ uses for itself.
pub const RESERVED_NAMES: &[&str] = &["gateway"];

pub mod defaults {
    pub const SCALE_MIN: u32 = 0;
    pub const SCALE_MAX: u32 = 10;
    pub const CONCURRENCY: u32 = 10;
    pub const LIMIT: u32 = 0;
    pub const IDLE: &str = "60s";
    pub const COLD_START_TIMEOUT: &str = "30s";
    pub const TIMEOUT: &str = "30s";
    pub const CPU: &str = "100m";
    pub const MEMORY: &str = "128Mi";
    pub const CPU_LIMIT: &str = "1";
    pub const BASELINE_REPLICAS: u32 = 1;
    pub const ASYNC_RETRIES: u32 = 5;
    pub const ASYNC_MIN_BACKOFF: &str = "1s";
    pub const ASYNC_MAX_BACKOFF: &str = "1m";
    pub const ASYNC_MAX_AGE: &str = "1h";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Python,
    Node,
    Exec,
    Image,
}

impl Runtime {
    pub const ALL: [&'static str; 4] = ["python", "node", "exec", "image"];

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "python" => Some(Self::Python),
            "node" => Some(Self::Node),
            "exec" => Some(Self::Exec),
            "image" => Some(Self::Image),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Python => "python",
            Self::Node => "node",
            Self::Exec => "exec",
            Self::Image => "image",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct HttpTrigger {
    pub path: String,
    /// Empty: every method.
    pub methods: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleTrigger {
    pub cron: String,
    pub body: String,
    /// An IANA time zone the expression is read in (UTC when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// After a time the scheduler was down, fire once for the runs it missed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub catch_up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct QueueTrigger {
    pub subject: String,
    /// The JetStream stream holding the subject (created as a work queue if missing).
    pub stream: String,
    /// The durable pull consumer's name.
    pub durable: String,
    /// Messages handled at once.
    pub concurrency: u32,
    /// One at a time, in stream order.
    pub ordered: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Http(HttpTrigger),
    Schedule(ScheduleTrigger),
    Queue(QueueTrigger),
}

impl Trigger {
    /// The http triggers among `triggers`.
    pub fn http_of(triggers: &[Trigger]) -> impl Iterator<Item = &HttpTrigger> {
        triggers.iter().filter_map(|t| match t {
            Trigger::Http(h) => Some(h),
            _ => None,
        })
    }

    /// The schedule triggers among `triggers`.
    pub fn schedules_of(triggers: &[Trigger]) -> impl Iterator<Item = &ScheduleTrigger> {
        triggers.iter().filter_map(|t| match t {
            Trigger::Schedule(s) => Some(s),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct Scale {
    pub min: u32,
    pub max: u32,
    pub concurrency: u32,
    pub limit: u32,
    pub idle: Dur,
    pub cold_start_timeout: Dur,
}

/// How an async call (or a queue message) is retried: up to `retries` more attempts, waiting
/// `minBackoff` doubling up to `maxBackoff` (with jitter) between them, and never once it is
/// older than `maxAge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    pub retries: u32,
    pub min_backoff: Dur,
    pub max_backoff: Dur,
    pub max_age: Dur,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: defaults::ASYNC_RETRIES,
            min_backoff: Dur::parse(defaults::ASYNC_MIN_BACKOFF).expect("default parses"),
            max_backoff: Dur::parse(defaults::ASYNC_MAX_BACKOFF).expect("default parses"),
            max_age: Dur::parse(defaults::ASYNC_MAX_AGE).expect("default parses"),
        }
    }
}

impl Default for Scale {
    fn default() -> Self {
        Self {
            min: defaults::SCALE_MIN,
            max: defaults::SCALE_MAX,
            concurrency: defaults::CONCURRENCY,
            limit: defaults::LIMIT,
            idle: Dur::parse(defaults::IDLE).expect("default parses"),
            cold_start_timeout: Dur::parse(defaults::COLD_START_TIMEOUT).expect("default parses"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceAmounts {
    pub cpu: String,
    pub memory: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resources {
    /// Requests.
    pub cpu: String,
    pub memory: String,
    pub limits: ResourceAmounts,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu: defaults::CPU.into(),
            memory: defaults::MEMORY.into(),
            limits: ResourceAmounts {
                cpu: defaults::CPU_LIMIT.into(),
                memory: defaults::MEMORY.into(),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Baseline {
    pub replicas: u32,
}

/// Where the keys that later checks refer to were written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionLocs {
    pub name: Loc,
    pub handler: Loc,
    /// One per http trigger, in order: the trigger's index in `triggers` and where its path is.
    pub http_paths: Vec<(usize, Loc)>,
    /// One per queue trigger: its index and where it is written.
    pub queues: Vec<(usize, Loc)>,
    /// One per schedule trigger: its index and where it is written.
    pub schedules: Vec<(usize, Loc)>,
    /// Where `async:` is written, if it is.
    pub async_policy: Option<Loc>,
}

/// A function as its function.yaml describes it, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSpec {
    pub name: String,
    pub runtime: Runtime,
    /// python/node: `file[:function]`; exec: a command line; image: none.
    pub handler: Option<String>,
    pub image: Option<String>,
    pub env: BTreeMap<String, String>,
    /// Secrets it reads as files (`secrets: [name]`): their values never appear in the repo.
    pub secrets: Vec<String>,
    pub triggers: Vec<Trigger>,
    pub scale: Scale,
    pub resources: Resources,
    pub timeout: Dur,
    pub baseline: Option<Baseline>,
    /// Retries of async calls.
    pub retry: RetryPolicy,
    pub locs: FunctionLocs,
}

impl FunctionSpec {
    /// The handler's file and exported function, for python and node.
    pub fn handler_file(&self) -> Option<(&str, &str)> {
        match self.runtime {
            Runtime::Python | Runtime::Node => {
                let h = self.handler.as_deref()?;
                Some(h.split_once(':').unwrap_or((h, "handle")))
            }
            Runtime::Exec | Runtime::Image => None,
        }
    }

    pub fn http_triggers(&self) -> impl Iterator<Item = &HttpTrigger> {
        Trigger::http_of(&self.triggers)
    }

    pub fn schedule_triggers(&self) -> impl Iterator<Item = &ScheduleTrigger> {
        Trigger::schedules_of(&self.triggers)
    }
}

const TOP_KEYS: &[&str] = &[
    "name",
    "runtime",
    "handler",
    "image",
    "env",
    "secrets",
    "triggers",
    "scale",
    "resources",
    "timeout",
    "baseline",
    "async",
];

/// Decodes a function.yaml, reporting every problem found in it.
pub fn decode(file: &SourceFile, root: &Node) -> Result<FunctionSpec, Diagnostics> {
    let mut r = Reader::new(file);
    let spec = read_function(&mut r, root);
    match spec {
        Some(spec) if r.diags.is_empty() => Ok(spec),
        _ => Err(r.diags),
    }
}

fn read_function(r: &mut Reader, root: &Node) -> Option<FunctionSpec> {
    let f = r.mapping(root, "", TOP_KEYS)?;
    let mut locs = FunctionLocs::default();

    let name = r.required(&f, "name", "name: random-quote").and_then(|n| {
        locs.name = node_loc(n);
        let name = r.string(
            n,
            "name",
            "write the function's name, e.g. `name: random-quote`",
        )?;
        if RESERVED_NAMES.contains(&name.as_str()) {
            r.error(
                n,
                "name",
                format!("{name:?} is reserved: generated/{name}/ holds cubeflash's own manifests"),
                "choose another name",
            );
            return None;
        }
        if let Err(why) = values::check_dns_label(&name, MAX_NAME_LEN) {
            let hint = format!(
                "rename it, e.g. `name: {}` (and its folder to match)",
                values::suggest_dns_label(&name)
            );
            r.error(n, "name", why, &hint);
            return None;
        }
        Some(name)
    });

    let runtime = r.required(&f, "runtime", "runtime: python").and_then(|n| {
        let text = r.string(n, "runtime", "")?;
        let runtime = Runtime::parse(&text);
        if runtime.is_none() {
            r.error(
                n,
                "runtime",
                format!(
                    "unsupported runtime {text:?}{}",
                    super::decode::closest(&text, &Runtime::ALL)
                        .map(|n| format!(" (did you mean {n}?)"))
                        .unwrap_or_default()
                ),
                &format!(
                    "use one of {}; `exec` runs any program that serves HTTP on $PORT",
                    Runtime::ALL.join(", ")
                ),
            );
        }
        runtime
    });

    let image = f.get("image").and_then(|n| {
        let image = r.string(n, "image", "")?;
        if let Err(why) = values::check_image(&image) {
            r.error(n, "image", why, "");
        }
        Some(image)
    });

    let handler = read_handler(r, &f, runtime, image.is_some(), &mut locs);

    let env = f
        .get("env")
        .map(|n| {
            let hint = "write `env:` as a mapping of NAME: value";
            let raw = r.string_map(n, "env", hint);
            let mut env = BTreeMap::new();
            for (k, (v, loc)) in raw {
                if let Err(why) = values::check_env_name(&k) {
                    r.error_at(loc, &format!("env.{k}"), why, "rename the variable");
                }
                env.insert(k, v);
            }
            env
        })
        .unwrap_or_default();

    let secrets = f
        .get("secrets")
        .map(|n| read_secrets(r, n))
        .unwrap_or_default();

    let triggers = f
        .get("triggers")
        .map(|n| {
            let function = name.clone().unwrap_or_default();
            triggers::read_triggers(r, n, &mut locs, &function)
        })
        .unwrap_or_default();
    let scale = f.get("scale").map(|n| read_scale(r, n)).unwrap_or_default();
    let resources = f
        .get("resources")
        .map(|n| read_resources(r, n))
        .unwrap_or_default();
    let timeout = duration(r, &f, "timeout", defaults::TIMEOUT);
    let baseline = f.get("baseline").and_then(|n| {
        let b = r.mapping(n, "baseline", &["replicas"])?;
        let replicas = b
            .get("replicas")
            .and_then(|n| r.uint(n, "baseline.replicas", 1, 100))
            .unwrap_or(defaults::BASELINE_REPLICAS);
        Some(Baseline { replicas })
    });
    if let Some(n) = f.get("async") {
        locs.async_policy = Some(node_loc(n));
    }
    let retry = f.get("async").map(|n| read_retry(r, n)).unwrap_or_default();

    Some(FunctionSpec {
        name: name?,
        runtime: runtime?,
        handler,
        image,
        env,
        secrets,
        triggers,
        scale,
        resources,
        timeout,
        baseline,
        retry,
        locs,
    })
}

/// `secrets: [name, ...]`: names of secrets (DNS-1123 labels, as Kubernetes Secret names
/// used as volume names must be), each once.
fn read_secrets(r: &mut Reader, node: &Node) -> Vec<String> {
    let hint = "write `secrets: [db, api-key]`: the names of secrets set with `cubeflash secret set NAME KEY`";
    let Some(items) = r.sequence(node, "secrets", hint) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("secrets[{i}]");
        let Some(name) = r.string(item, &path, hint) else {
            continue;
        };
        // 56: its volume, `secret-<name>`, is a DNS-1123 label of at most 63.
        if let Err(why) = values::check_dns_label(&name, 56) {
            r.error(
                item,
                &path,
                format!("secret name {name:?}: {why}"),
                "use lowercase letters, digits and '-', at most 56 of them",
            );
        } else if out.contains(&name) {
            r.error(
                item,
                &path,
                format!("secret {name:?} is listed twice"),
                "list each secret once",
            );
        } else {
            out.push(name);
        }
    }
    out
}

fn read_retry(r: &mut Reader, node: &Node) -> RetryPolicy {
    let mut policy = RetryPolicy::default();
    let Some(f) = r.mapping(
        node,
        "async",
        &["retries", "minBackoff", "maxBackoff", "maxAge"],
    ) else {
        return policy;
    };
    if let Some(n) = f.get("retries") {
        policy.retries = r
            .uint(n, "async.retries", 0, 100)
            .unwrap_or(defaults::ASYNC_RETRIES);
    }
    policy.min_backoff = duration(r, &f, "minBackoff", defaults::ASYNC_MIN_BACKOFF);
    policy.max_backoff = duration(r, &f, "maxBackoff", defaults::ASYNC_MAX_BACKOFF);
    policy.max_age = duration(r, &f, "maxAge", defaults::ASYNC_MAX_AGE);
    if policy.min_backoff.value > policy.max_backoff.value {
        if let Some(n) = f.get("minBackoff") {
            r.error(
                n,
                "async.minBackoff",
                format!(
                    "minBackoff ({}) is longer than maxBackoff ({})",
                    policy.min_backoff.text, policy.max_backoff.text
                ),
                "lower minBackoff or raise maxBackoff",
            );
        }
    }
    policy
}

fn read_handler(
    r: &mut Reader,
    f: &Fields,
    runtime: Option<Runtime>,
    has_image: bool,
    locs: &mut FunctionLocs,
) -> Option<String> {
    let node = f.get("handler");
    match (runtime, node) {
        (Some(Runtime::Image), Some(n)) => {
            r.error(
                n,
                "handler",
                "runtime `image` takes no handler: the image's own command serves HTTP on $PORT",
                "remove `handler`, or use runtime exec to run a command",
            );
            None
        }
        (Some(Runtime::Image), None) => {
            if !has_image {
                r.error_at(
                    f.loc(),
                    "image",
                    "runtime `image` needs an `image`",
                    "add e.g. `image: ghcr.io/acme/resize:1.4.0`",
                );
            }
            None
        }
        (Some(rt), None) => {
            let example = match rt {
                Runtime::Python => "handler: handler.py",
                Runtime::Node => "handler: handler.js",
                _ => "handler: ./server --port $PORT",
            };
            r.required(f, "handler", example);
            None
        }
        (rt, Some(n)) => {
            locs.handler = node_loc(n);
            let handler = r.string(n, "handler", "")?;
            let bad = |exts: &[&str]| {
                let (file, func) = handler.split_once(':').unwrap_or((&handler, "handle"));
                !exts.iter().any(|e| file.ends_with(e)) || !is_identifier(func)
            };
            match rt {
                Some(Runtime::Python) if bad(&[".py"]) => r.error(
                    n,
                    "handler",
                    format!("{handler:?} is not a python handler"),
                    "name a .py file, optionally with the function to call: `handler: handler.py` or `handler.py:main`",
                ),
                Some(Runtime::Node) if bad(&[".js", ".mjs", ".cjs"]) => r.error(
                    n,
                    "handler",
                    format!("{handler:?} is not a node handler"),
                    "name a .js, .mjs or .cjs file, optionally with the export to call: `handler: handler.js` or `handler.js:main`",
                ),
                Some(Runtime::Exec) if handler.trim().is_empty() => {
                    r.error(n, "handler", "the command line is empty", "write the command that serves HTTP on $PORT, e.g. `handler: python3 server.py`")
                }
                _ => {}
            }
            Some(handler)
        }
        (None, None) => None,
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

fn read_scale(r: &mut Reader, node: &Node) -> Scale {
    let mut scale = Scale::default();
    let Some(f) = r.mapping(
        node,
        "scale",
        &[
            "min",
            "max",
            "concurrency",
            "limit",
            "idle",
            "coldStartTimeout",
        ],
    ) else {
        return scale;
    };
    let num = |r: &mut Reader, key: &str, min: u32, max: u32, default: u32| {
        f.get(key)
            .and_then(|n| r.uint(n, &f.path_of(key), min, max))
            .unwrap_or(default)
    };
    scale.min = num(r, "min", 0, 1000, defaults::SCALE_MIN);
    scale.max = num(r, "max", 1, 1000, defaults::SCALE_MAX);
    scale.concurrency = num(r, "concurrency", 1, 100_000, defaults::CONCURRENCY);
    scale.limit = num(r, "limit", 0, 100_000, defaults::LIMIT);
    scale.idle = duration(r, &f, "idle", defaults::IDLE);
    scale.cold_start_timeout = duration(r, &f, "coldStartTimeout", defaults::COLD_START_TIMEOUT);
    if scale.min > scale.max {
        if let Some(n) = f.get("min") {
            r.error(
                n,
                "scale.min",
                format!("min ({}) is greater than max ({})", scale.min, scale.max),
                "lower min or raise max",
            );
        }
    }
    if scale.limit != 0 && scale.limit < scale.concurrency {
        if let Some(n) = f.get("limit") {
            r.error(
                n,
                "scale.limit",
                format!("limit ({}) is below concurrency ({}): replicas would never reach the autoscaler's target", scale.limit, scale.concurrency),
                "set limit to 0 (no cap) or to at least concurrency",
            );
        }
    }
    scale
}

fn duration(r: &mut Reader, f: &Fields, key: &str, default: &str) -> Dur {
    f.get(key)
        .and_then(|n| {
            let path = f.path_of(key);
            let value = r.duration(n, &path, false, default)?;
            let text = r.scalar_text(n, &path, "")?;
            Some(Dur { text, value })
        })
        .unwrap_or_else(|| Dur::parse(default).expect("default parses"))
}

fn read_resources(r: &mut Reader, node: &Node) -> Resources {
    let mut res = Resources::default();
    let Some(f) = r.mapping(node, "resources", &["cpu", "memory", "limits"]) else {
        return res;
    };
    let memory_given = f.get("memory").is_some();
    quantity(r, &f, "cpu", &mut res.cpu);
    quantity(r, &f, "memory", &mut res.memory);
    // Memory limit follows the request unless set: a pod that outgrows its request is killed
    // predictably instead of starving its node.
    if memory_given {
        res.limits.memory = res.memory.clone();
    }
    if let Some(l) = f.get("limits") {
        if let Some(lf) = r.mapping(l, "resources.limits", &["cpu", "memory"]) {
            quantity(r, &lf, "cpu", &mut res.limits.cpu);
            quantity(r, &lf, "memory", &mut res.limits.memory);
        }
    }
    res
}

fn quantity(r: &mut Reader, f: &Fields, key: &str, out: &mut String) {
    let Some(n) = f.get(key) else { return };
    let path = f.path_of(key);
    let Some(text) = r.scalar_text(n, &path, "") else {
        return;
    };
    match values::check_quantity(&text) {
        Ok(()) => *out = text,
        Err(why) => r.error(n, &path, why, ""),
    }
}
