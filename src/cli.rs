//! The command line: clap definitions only.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "cubeflash",
    version,
    about = "Function-as-a-Service for Kubernetes that lives in a git repo"
)]
pub struct Cli {
    /// The repo to work on (default: the nearest folder at or above the current one with a cubeflash.yaml).
    #[arg(short = 'C', long = "dir", global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeArg {
    Python,
    Node,
    Exec,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a new cubeflash repo (cubeflash.yaml, functions/, Makefile) in DIR or the current folder.
    Init {
        /// Where to start the repo.
        path: Option<PathBuf>,
        /// The Kubernetes namespace the project deploys into.
        #[arg(long, default_value = "cubeflash")]
        namespace: String,
        /// Also run `git init` there (when it is not in a git repository yet).
        #[arg(long)]
        git: bool,
    },
    /// Scaffold functions/<NAME>/ with a function.yaml and a handler that work at once.
    New {
        /// The function's name: lowercase letters, digits and '-'.
        name: String,
        /// The language of the handler.
        #[arg(long, short, value_enum, default_value = "python")]
        runtime: RuntimeArg,
        /// Do not render generated/ afterwards.
        #[arg(long)]
        no_render: bool,
    },
    /// Check cubeflash.yaml, every function.yaml and every rendered object, writing nothing.
    Validate,
    /// Render functions/ and templates/ into generated/.
    Render {
        /// Write nothing; fail with a diff when generated/ is out of date.
        #[arg(long)]
        check: bool,
    },
    /// Run the local platform (gateway + process runtime) in the foreground.
    Up {
        /// Address to listen on (loopback unless told otherwise).
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// Port to listen on (default: gateway.port in cubeflash.yaml; 0 picks a free one).
        #[arg(long, env = "CUBEFLASH_PORT")]
        port: Option<u16>,
        /// Event log lines: text for a terminal, json for a log collector.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Bring the repo's functions up on the target (local: start or reload the platform;
    /// kubernetes: server-side apply generated/, prune, wait for rollouts).
    Deploy {
        #[command(flatten)]
        target: TargetArgs,
        /// Kubernetes: let the API server validate everything and store nothing.
        #[arg(long)]
        dry_run: bool,
        /// Kubernetes: do not wait for Deployments to roll out.
        #[arg(long)]
        no_wait: bool,
        /// Kubernetes: how long to wait for rollouts.
        #[arg(long, default_value = "3m", value_parser = parse_duration)]
        timeout: std::time::Duration,
        /// Kubernetes: take over fields another field manager (kubectl, another tool) owns.
        #[arg(long)]
        force_conflicts: bool,
        /// Local: switch a function at zero to its new version without starting it once
        /// first (a function with replicas is always rolled out).
        #[arg(long)]
        no_verify: bool,
        /// Local: re-render generated/ first if it is out of date (else deploy warns).
        #[arg(long)]
        render: bool,
    },
    /// Stop the local platform that `deploy` started.
    Down,
    /// List functions with replicas, requests in flight and URLs.
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        gateway: GatewayArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Show one function in detail (JSON).
    Describe {
        name: String,
        #[command(flatten)]
        gateway: GatewayArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Call a function through the gateway and print its answer.
    Invoke {
        name: String,
        /// Request body: text, @file, or - for standard input (implies POST).
        #[arg(short, long)]
        data: Option<String>,
        /// Extra header, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// HTTP method (default: GET, or POST with --data).
        #[arg(short = 'X', long)]
        method: Option<String>,
        /// Store the call and return at once with its id (POST /async-function/NAME); follow
        /// it with `cubeflash calls show ID`.
        #[arg(long = "async")]
        is_async: bool,
        /// Send a test event from functions/NAME/events/EVENT.json (its method, path,
        /// headers and body; -H adds headers).
        #[arg(short, long, conflicts_with_all = ["data", "method"])]
        event: Option<String>,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Async calls: list them, show one, redrive a dead one, purge one.
    Calls {
        #[command(subcommand)]
        action: Option<CallsAction>,
        /// Only this function's calls.
        function: Option<String>,
        /// Only calls in this state: queued, running, retrying, succeeded, failed, dead.
        #[arg(long)]
        state: Option<String>,
        /// At most this many, newest first.
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Secrets for functions on the local platform (.cubeflash/secrets/, never in git):
    /// set a key, list them (never their values), remove one.
    Secret {
        #[command(subcommand)]
        action: SecretAction,
    },
    /// Install functions' dependencies (requirements.txt; package.json + package-lock.json)
    /// into the shared cache ahead of a deploy, and show what is cached.
    Deps {
        /// Only this function.
        function: Option<String>,
        /// Remove cache entries that no function of this repo uses (the cache is shared
        /// between repos: entries another repo needs are installed again when it deploys).
        #[arg(long)]
        prune: bool,
    },
    /// Print a function's recent output (from .cubeflash/logs/).
    Logs {
        name: String,
        /// Keep printing new lines as they come.
        #[arg(short, long)]
        follow: bool,
        /// How many recent lines to print.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
    },
    /// Set a function's replica count now (the autoscaler goes on from there).
    Scale {
        name: String,
        replicas: u32,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Remove a function from the running platform (drains and stops its replicas), or
    /// delete its objects from the cluster (--target kubernetes).
    #[command(visible_aliases = ["rm", "remove"])]
    Delete {
        name: String,
        #[command(flatten)]
        gateway: GatewayArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Run the gateway with the Kubernetes backend: what the rendered gateway Deployment runs
    /// in the cluster (routes from the routes ConfigMap, scaling through the scale subresource).
    Gateway {
        /// The namespace the functions live in.
        #[arg(long, env = "CUBEFLASH_NAMESPACE")]
        namespace: String,
        /// The ConfigMap holding routes.json.
        #[arg(long, default_value = "cubeflash-routes")]
        routes_configmap: String,
        #[arg(long, default_value = "0.0.0.0")]
        bind: std::net::IpAddr,
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Requests that may wait for a function to scale up.
        #[arg(long, default_value_t = 100)]
        queue_size: u32,
        /// Largest request body, in bytes; larger ones get 413.
        #[arg(long, default_value_t = 6 * 1024 * 1024)]
        max_body_size: u64,
        /// Client connections served at once (gateway.maxConnections).
        #[arg(long, default_value_t = 2048)]
        max_connections: u32,
        /// A request head must arrive within this (gateway.headerTimeout).
        #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
        header_timeout: std::time::Duration,
        /// A request body that sends nothing this long gets 408 (gateway.bodyTimeout).
        #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
        body_timeout: std::time::Duration,
        /// An idle keep-alive connection is closed after this (gateway.idleTimeout).
        #[arg(long, default_value = "75s", value_parser = parse_duration_arg)]
        idle_timeout: std::time::Duration,
        /// Event log lines: text for a terminal, json for a log collector.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// The kubeconfig context (default: the kubeconfig's current context, else in-cluster).
        #[arg(long)]
        context: Option<String>,
        /// The NATS server (with JetStream) that stores async calls and feeds queue
        /// triggers (nats.url); without it both are off.
        #[arg(long, env = "CUBEFLASH_NATS_URL")]
        nats_url: Option<String>,
        /// A host an async call's X-Callback-Url may name (gateway.callbackHosts); repeat it.
        #[arg(long = "callback-host")]
        callback_hosts: Vec<String>,
        /// How long a delivery holds an async call without renewing it (gateway.asyncLease).
        #[arg(long, default_value = "10s", value_parser = parse_duration_arg)]
        async_lease: std::time::Duration,
        /// How long finished async calls are kept (gateway.asyncRetention).
        #[arg(long, default_value = "24h", value_parser = parse_duration_arg)]
        async_retention: std::time::Duration,
    },
    /// Load-test functions (serverless against their always-on baseline) or any URL, and
    /// write latency histograms, summary.csv and an HTML report under bench/results/.
    #[command(
        after_help = "Examples:\n  cubeflash bench                       run bench/plan.yaml (starts the local platform if needed)\n  cubeflash bench --url http://127.0.0.1:8080/ -c 64 -z 10s\n  cubeflash bench --url http://127.0.0.1:8080/ --rate 2000 -z 10s -c 32\n  cubeflash bench --target kubernetes    the plan against the cluster's functions (port-forward to the gateway)\n  cubeflash bench compare latest RUN     two runs side by side"
    )]
    Bench(BenchArgs),
    /// Runs an exec replica's program under the gateway's lifeline (internal).
    #[command(name = "__replica-guard", hide = true)]
    ReplicaGuard {
        program: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// `cubeflash bench` options: a plan, or an ad-hoc run against one URL like oha or hey,
/// or against a function's async or queue trigger.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("adhoc").args(["url", "async_function", "queue"])))]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// The plan to run (default: bench/plan.yaml in the repo).
    #[arg(conflicts_with = "url")]
    pub plan: Option<PathBuf>,
    /// Benchmark this http:// URL instead of a plan.
    #[arg(long)]
    pub url: Option<String>,
    /// Async mode: send the calls to POST /async-function/FUNCTION, timing their accept
    /// (the load) and then, from the call records, their completion and the end-to-end
    /// throughput.
    #[arg(long = "async", value_name = "FUNCTION", conflicts_with_all = ["url", "plan", "queue"])]
    pub async_function: Option<String>,
    /// Queue mode: publish -n messages (default 5000, body -d) to FUNCTION's queue trigger
    /// and time them through the function: messages/s end to end.
    #[arg(long, value_name = "FUNCTION", conflicts_with_all = ["url", "plan"])]
    pub queue: Option<String>,
    /// Concurrent connections (workers): closed loop, or the pool an open-loop --rate is served from.
    #[arg(short = 'c', long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000), requires = "adhoc")]
    pub concurrency: u32,
    /// Stop after this many requests.
    #[arg(short = 'n', long, requires = "adhoc")]
    pub requests: Option<u64>,
    /// Stop after this long (e.g. 10s, 1m; default 10s).
    #[arg(short = 'z', long, value_parser = parse_duration, requires = "adhoc")]
    pub duration: Option<std::time::Duration>,
    /// Open loop: requests per second, each timed from when it was due.
    #[arg(long, requires = "adhoc")]
    pub rate: Option<f64>,
    /// HTTP method.
    #[arg(short = 'm', long, default_value = "GET", requires = "adhoc")]
    pub method: String,
    /// Extra header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", requires = "adhoc")]
    pub headers: Vec<String>,
    /// Request body: text, @file, or - for standard input.
    #[arg(short = 'd', long, requires = "adhoc")]
    pub data: Option<String>,
    /// A request with no answer after this long counts as a timeout (default: the plan's,
    /// else 10s).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Generator threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where run folders go (default: bench/results in the repo, or ./bench/results).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    /// kubernetes: run against the functions in the cluster, through a port-forward to the
    /// gateway's Service that cubeflash opens (or the address --gateway gives).
    #[command(flatten)]
    pub target: TargetArgs,
}

/// `cubeflash secret` actions.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SecretAction {
    /// Set NAME's KEY from standard input (a final newline is dropped) or --from-file.
    Set {
        name: String,
        key: String,
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// kubernetes: create or update the Kubernetes Secret in the project's namespace.
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Every secret with its keys and the functions that use it; never a value.
    Ls {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Remove a key, or the whole secret.
    Rm {
        name: String,
        key: Option<String>,
        #[command(flatten)]
        target: TargetArgs,
    },
}

/// What `cubeflash bench` does besides running a plan.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// Two runs side by side: the same tables, with the ratio B/A per step (a change to a
    /// function or the gateway, before and after). RUN: a run folder, or its name under
    /// bench/results (`latest` works).
    Compare { a: PathBuf, b: PathBuf },
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::spec::values::parse_duration(text)
}

/// Which target a verb works on.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TargetArgs {
    /// local or kubernetes (default: `target` in cubeflash.yaml).
    #[arg(long)]
    pub target: Option<String>,
    /// Kubernetes: the kubeconfig context to use (default: the current one).
    #[arg(long)]
    pub context: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CallsAction {
    /// One call: its state, every attempt and the result (JSON).
    Show {
        id: String,
        /// Wait this long (at most 5m) for the call to finish first.
        #[arg(long, value_parser = parse_duration)]
        wait: Option<std::time::Duration>,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Put a dead or failed call back in its queue with a fresh retry budget.
    Redrive {
        id: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Remove a call (and its request body) from the store.
    Purge {
        id: String,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
}

/// Where the running gateway is.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Gateway URL (default: the one `up` recorded in .cubeflash/gateway.url, else
    /// http://127.0.0.1:<gateway.port>).
    #[arg(long, env = "CUBEFLASH_GATEWAY")]
    pub gateway: Option<String>,
}

/// How the gateway writes its event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_duration_arg(text: &str) -> Result<std::time::Duration, String> {
    crate::spec::values::parse_duration(text)
}
