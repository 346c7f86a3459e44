//! The admin API's wire types: what the gateway answers under /system/ and /healthz, and
//! what its one client (`client.rs`) reads back. The CLI, `bench`, local `deploy` (and the
//! dashboard to come) all go through these types; nobody indexes the JSON by hand.

use serde::{Deserialize, Serialize};

use crate::runtime::pool::PoolState;
use crate::spec::function::Scale;
use crate::spec::values::Dur;
use crate::spec::{Runtime, Trigger};

/// Every error the gateway answers itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub function: Option<String>,
    /// The function's last log lines, where they explain the error (crash, crash loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<Vec<String>>,
}

/// GET /healthz.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// "ok" or "unavailable".
    pub status: String,
    /// "local" or "kubernetes".
    pub backend: String,
    /// The repo root a local gateway serves.
    pub repo: Option<String>,
    /// Why it is not ready (draining, or what the backend cannot do).
    pub reason: Option<String>,
    pub pid: u32,
}

/// Replicas wanted and ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaCount {
    pub desired: u32,
    pub ready: u32,
}

/// One function, as GET /system/functions[/NAME] shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionInfo {
    pub name: String,
    pub runtime: Runtime,
    pub state: PoolState,
    pub triggers: Vec<Trigger>,
    pub replicas: ReplicaCount,
    pub baseline_replicas: Option<ReplicaCount>,
    pub inflight: u32,
    pub queued: u32,
    /// Async calls waiting for an attempt.
    #[serde(default)]
    pub async_pending: u32,
    /// How long the most overdue of them has waited, in ms.
    #[serde(default)]
    pub async_oldest_pending_ms: Option<u64>,
    /// Where async calls are stored: redb or jetstream (none: async calls are off).
    #[serde(default)]
    pub async_store: Option<String>,
    /// Each queue trigger's consumer, as it is now.
    #[serde(default)]
    pub queues: Vec<QueueStatus>,
    pub cold_starts: u64,
    pub url: String,
    /// Where the always-on baseline answers directly (local: a replica; Kubernetes: its
    /// Service, reachable only inside the cluster).
    pub baseline_url: Option<String>,
    #[serde(default)]
    pub baseline_urls: Vec<String>,
    /// Process ids of the ready replicas, where they run on the gateway's machine (local).
    #[serde(default)]
    pub replica_pids: Vec<u32>,
    #[serde(default)]
    pub baseline_pids: Vec<u32>,
    /// Why the function failed (crash loop), with its last output.
    pub failed: Option<String>,
    /// What keeps it from scaling (the backend's refusal), if anything.
    pub trouble: Option<String>,
    pub scale: Scale,
    pub timeout: Dur,
}

/// A queue trigger's consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    pub subject: String,
    pub stream: String,
    /// `starting`, `consuming` or `disconnected`.
    pub state: String,
    /// Messages pending plus delivered and not yet acknowledged.
    pub backlog: u64,
    /// Why it is disconnected.
    pub error: Option<String>,
}

/// POST /system/functions/NAME/scale.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    pub replicas: u32,
}

/// DELETE /system/functions/NAME.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deleted {
    pub deleted: String,
}

/// GET /system/functions/NAME/logs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Logs {
    pub function: String,
    pub lines: Vec<String>,
    /// Pass as `after=` to get only the lines written since (`follow`); lines are numbered
    /// as they arrive.
    #[serde(default)]
    pub next: u64,
}

/// POST /system/reload[?verify=false]: what changed. A function in `failed` was not switched
/// over: its new version did not become ready, and the version before it (if any) still
/// serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    #[serde(default)]
    pub unchanged: Vec<String>,
    pub removed: Vec<String>,
    #[serde(default)]
    pub failed: Vec<RolloutFailure>,
}

/// A new version that did not become ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutFailure {
    pub name: String,
    /// What went wrong, in a sentence.
    pub reason: String,
    /// Whether an earlier version still serves.
    pub kept_previous: bool,
    /// The first lines the new version wrote, one per entry.
    pub output: Vec<String>,
}

/// Where an async call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    /// Stored, waiting for its first attempt.
    Queued,
    /// An attempt is under way.
    Running,
    /// An attempt failed in a way worth retrying; the next one is at `nextAttemptAt`.
    Retrying,
    /// The function answered 2xx.
    Succeeded,
    /// The function answered a 4xx that no retry changes.
    Failed,
    /// Its retries or its maxAge were used up: kept until redriven or purged.
    Dead,
}

impl CallState {
    pub fn finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Dead)
    }
}

/// One async call: POST /async-function/NAME answers with its id; GET /system/calls/ID shows
/// it. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Call {
    pub id: String,
    pub function: String,
    pub state: CallState,
    pub method: String,
    /// What the function sees as its path (the rest after /async-function/NAME), with the
    /// query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body_bytes: u64,
    pub accepted_at: u64,
    pub next_attempt_at: Option<u64>,
    /// While running: until when this gateway holds it (extended while the call runs).
    pub lease_until: Option<u64>,
    pub attempts: Vec<Attempt>,
    pub result: Option<CallResult>,
    /// Why it failed or died, in a sentence.
    pub error: Option<String>,
    /// The retry budget already spent by earlier rounds (a redrive starts a fresh one).
    #[serde(default)]
    pub redriven: u32,
    /// Where the outcome goes once the call is finished (`X-Callback-Url`), and how that went.
    #[serde(default)]
    pub callback: Option<Callback>,
}

/// An async call's callback: POST of the finished call (this JSON) to `url`, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Callback {
    pub url: String,
    pub attempts: u32,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub delivered: bool,
}

/// One try of a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub number: u32,
    pub started_at: u64,
    pub duration_ms: u64,
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// What the function answered, kept with the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallResult {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// UTF-8 text, or base64 when `bodyEncoding` says so.
    pub body: String,
    pub body_encoding: String,
}

/// The 202 of POST /async-function/NAME.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub call_id: String,
    pub function: String,
    /// GET it (admin or read token) to follow the call.
    pub status_url: String,
    /// An `Idempotency-Key` seen before: this is the first call's id, nothing new was stored.
    pub duplicate: bool,
}

/// One bucket of a function's recent history (GET /system/functions/NAME/history): what
/// the gateway answered in it and what the function held at its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// The bucket's end, in ms since the Unix epoch.
    pub t: u64,
    pub requests: u64,
    /// Answers of 500 and above (the gateway's own 502/503/504 among them).
    pub errors: u64,
    /// Latency percentiles of the answered requests, from the gateway's histograms
    /// (interpolated within a bucket); none when nothing was answered.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub replicas: u32,
    pub cold_starts: u64,
}

/// GET /system/functions/NAME/history.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub function: String,
    pub bucket_ms: u64,
    /// Oldest first.
    pub points: Vec<Point>,
}

/// What the dashboard's table shows of a function besides `FunctionInfo`: the last
/// minute's traffic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rates {
    pub requests_per_second: f64,
    /// Share of answers that were 5xx, 0 to 1.
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub last_cold_start_ms: Option<u64>,
}

/// The repo a local gateway serves, as git and `render --check` see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    pub commit: Option<String>,
    /// Uncommitted changes in the working tree.
    pub dirty: bool,
    /// `render --check` fails: generated/ does not match functions/ and templates/.
    pub generated_stale: bool,
    /// Why a part could not be read (no git, not a repo...).
    pub note: Option<String>,
}

/// One line of the gateway's action log (scale, delete, reload, create, redrive...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionLine {
    pub at_ms: u64,
    pub action: String,
    /// The CLI command that does the same.
    pub command: String,
}

/// GET /system/overview, and each `overview` event of GET /system/stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    pub backend: String,
    pub gateway_url: String,
    pub provenance: Option<Provenance>,
    pub functions: Vec<FunctionInfo>,
    pub rates: std::collections::BTreeMap<String, Rates>,
    /// The latest actions, newest last.
    pub actions: Vec<ActionLine>,
}

/// A test event, `functions/NAME/events/EVENT.json`: a request to send to the function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestEvent {
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_event_method")]
    pub method: String,
    /// Appended to the function's URL: `/`, `/items?id=3`.
    #[serde(default = "default_event_path")]
    pub path: String,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Text, or any JSON value (sent as JSON).
    #[serde(default)]
    pub body: Option<serde_json::Value>,
}

fn default_event_method() -> String {
    "GET".into()
}

fn default_event_path() -> String {
    "/".into()
}

/// GET /system/whoami: what the bearer's token allows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Whoami {
    /// "admin" or "read-only".
    pub access: String,
    pub backend: String,
    /// Whether the dashboard can create functions and reload from the repo (local target).
    pub repo: Option<String>,
}

/// POST /system/functions (local target, admin token): what `cubeflash new` takes, and
/// optionally the handler's text in place of the scaffold's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewFunction {
    pub name: String,
    pub runtime: Runtime,
    #[serde(default)]
    pub handler: Option<String>,
}

/// The 201 of POST /system/functions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Created {
    pub name: String,
    pub url: String,
    /// The files written, relative to the repo: commit them.
    pub files: Vec<String>,
    /// The CLI commands that do the same.
    pub command: String,
}

/// GET /system/scaffold?runtime=R: the handler `cubeflash new` would write.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scaffold {
    pub runtime: Runtime,
    pub file: String,
    pub handler: String,
}

/// One run folder under bench/results/ (GET /system/bench), newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchRun {
    pub name: String,
    /// The run `bench/results/latest` points at.
    pub latest: bool,
    /// The report's summary, in words (conclusion.txt).
    pub conclusion: Vec<String>,
    pub files: Vec<String>,
}

/// GET /system/bench/RUN/link: where the browser opens the run's report. The link works
/// without a token for a few minutes and only for that run's files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchLink {
    pub url: String,
    pub expires_in_s: u64,
}
