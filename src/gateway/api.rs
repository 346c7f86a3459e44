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
    pub cold_starts: u64,
    pub url: String,
    /// Where the always-on baseline answers directly (local: a replica; Kubernetes: its
    /// Service, reachable only inside the cluster).
    pub baseline_url: Option<String>,
    #[serde(default)]
    pub baseline_urls: Vec<String>,
    /// Why the function failed (crash loop), with its last output.
    pub failed: Option<String>,
    /// What keeps it from scaling (the backend's refusal), if anything.
    pub trouble: Option<String>,
    pub scale: Scale,
    pub timeout: Dur,
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
