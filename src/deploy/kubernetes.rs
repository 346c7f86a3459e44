//! The Kubernetes target: connects the way kubectl does (KUBECONFIG, contexts, in-cluster),
//! resolves each object's kind through discovery, server-side applies generated/ with field
//! manager `cubeflash` in dependency order, prunes what generated/ no longer holds, waits for
//! rollouts with kube-runtime's conditions, and deletes, lists and describes functions.
//! Progress goes to a callback; nothing here prints.

pub mod forward;
pub mod manifests;
pub mod usage;

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{ApiCapabilities, ApiGroup, Scope};
use kube::{Client, Config, ResourceExt};
use serde_json::{json, Value};

use crate::names::labels;
use manifests::{LiveObject, Manifest};

/// The field manager cubeflash applies with.
pub use crate::names::DEPLOY_MANAGER as FIELD_MANAGER;
/// How long to wait for the API server to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// Neither KUBECONFIG, ~/.kube/config nor an in-cluster service account.
    #[error("no Kubernetes cluster is configured: set KUBECONFIG or write ~/.kube/config (`kind create cluster` or `k3d cluster create` make one), or run inside a cluster; the local platform needs none: `cubeflash deploy --target local`")]
    NoCluster(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A --context the kubeconfig does not have, or a kubeconfig that cannot be read.
    #[error("cannot use the kubeconfig{}", context.as_ref().map(|c| format!(" context {c:?}")).unwrap_or_default())]
    Kubeconfig {
        context: Option<String>,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No answer from the API server.
    #[error("cannot reach the Kubernetes API server at {url} (waited {}s to connect): is the cluster running, and is this the right context?", CONNECT_TIMEOUT.as_secs())]
    Unreachable {
        url: String,
        #[source]
        source: kube::Error,
    },
    /// RBAC refused a request.
    #[error("the cluster refused to {verb} {resource} in namespace {namespace}: {message}; ask for a Role that allows it (check with `kubectl auth can-i {verb} {resource} -n {namespace}`)")]
    Forbidden {
        verb: String,
        resource: String,
        namespace: String,
        message: String,
    },
    /// Server-side apply found fields owned by another manager.
    #[error("{object}: fields are owned by another field manager: {message}; someone changed it with kubectl or another tool; rerun with --force-conflicts to take the fields over for cubeflash")]
    Conflict { object: String, message: String },
    /// The cluster does not serve a kind generated/ uses.
    #[error("the cluster does not serve {api_version} {kind} (used by {file})")]
    UnknownKind {
        api_version: String,
        kind: String,
        file: String,
    },
    #[error("failed to {action} {object}")]
    Api {
        action: String,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("timed out after {}s waiting for rollouts:\n{report}", waited.as_secs())]
    NotReady { waited: Duration, report: String },
    #[error("no function named {name:?} in namespace {namespace}")]
    NoSuchFunction { name: String, namespace: String },
    #[error(transparent)]
    Manifests(#[from] manifests::ManifestError),
    #[error("no Service {service} in namespace {namespace}: deploy first (`cubeflash deploy --target kubernetes`), or check cubeflash.yaml's namespace and the --context")]
    NoService { service: String, namespace: String },
    #[error("no ready pod behind Service {service} in namespace {namespace} (selector {selector}): see `kubectl -n {namespace} get pods -l {selector}` and `kubectl -n {namespace} describe deployment {service}`")]
    NoReadyPod {
        service: String,
        namespace: String,
        selector: String,
    },
    #[error("Service {service} in namespace {namespace} names no port its pod serves: check its targetPort against the pod's container ports")]
    NoServicePort { service: String, namespace: String },
    #[error("cannot listen on 127.0.0.1 for the port-forward")]
    Listen {
        #[source]
        source: std::io::Error,
    },
    #[error("no Secret {name} in namespace {namespace}")]
    NoSuchSecret { name: String, namespace: String },
    #[error("no admin token: the {secret} Secret in namespace {namespace} has no `token` key; set CUBEFLASH_ADMIN_TOKEN, or create it: kubectl -n {namespace} create secret generic {secret} --from-literal=token=$(openssl rand -hex 24)")]
    NoAdminToken { secret: String, namespace: String },
}

/// How `apply` should run.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Server-side dry run: the API server validates, nothing is stored.
    pub dry_run: bool,
    /// Take over fields another field manager owns.
    pub force_conflicts: bool,
    /// Wait for Deployments with replicas to roll out (and how long).
    pub wait: Option<Duration>,
}

/// What `apply` did.
#[derive(Debug, Default)]
pub struct ApplySummary {
    pub applied: Vec<String>,
    pub pruned: Vec<String>,
    pub rolled_out: Vec<String>,
}

/// A client for `context` (or the current one), or for the in-cluster service account.
pub async fn connect(context: Option<&str>) -> Result<(Client, String), KubeError> {
    let mut config = match context {
        Some(c) => {
            let options = KubeConfigOptions {
                context: Some(c.to_string()),
                ..Default::default()
            };
            Config::from_kubeconfig(&options)
                .await
                .map_err(|e| KubeError::Kubeconfig {
                    context: Some(c.to_string()),
                    source: Box::new(e),
                })?
        }
        None => match Kubeconfig::read() {
            Ok(_) => Config::infer().await.map_err(|e| KubeError::Kubeconfig {
                context: None,
                source: Box::new(e),
            })?,
            // A kubeconfig that exists but cannot be read is its own problem, not "no cluster".
            Err(e) if kubeconfig_exists() => {
                return Err(KubeError::Kubeconfig {
                    context: None,
                    source: Box::new(e),
                })
            }
            Err(_) => Config::incluster().map_err(|e| KubeError::NoCluster(Box::new(e)))?,
        },
    };
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(Duration::from_secs(60));
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| KubeError::NoCluster(Box::new(e)))?;
    Ok((client, url.trim_end_matches('/').to_string()))
}

/// Whether a kubeconfig file is there to read: one named by KUBECONFIG, or ~/.kube/config.
fn kubeconfig_exists() -> bool {
    match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        Some(paths) => std::env::split_paths(&paths).any(|p| p.exists()),
        None => std::env::var_os("HOME")
            .map(|h| std::path::Path::new(&h).join(".kube/config").exists())
            .unwrap_or(false),
    }
}

/// Turns a failed request into the error a user can act on.
fn classify(
    err: kube::Error,
    verb: &str,
    resource: &str,
    namespace: &str,
    object: &str,
    url: &str,
) -> KubeError {
    match err {
        kube::Error::Api(status) if status.code == 403 => KubeError::Forbidden {
            verb: verb.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            message: status.message.clone(),
        },
        kube::Error::Api(status) if status.code == 409 && verb == "patch" => KubeError::Conflict {
            object: object.into(),
            message: status.message.clone(),
        },
        e @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => KubeError::Unreachable {
            url: url.into(),
            source: e,
        },
        e => KubeError::Api {
            action: verb.into(),
            object: object.into(),
            source: e,
        },
    }
}

/// Kinds resolved through discovery, one request per group-version.
pub struct Kinds {
    client: Client,
    url: String,
    groups: HashMap<String, ApiGroup>,
}

impl Kinds {
    pub fn new(client: Client, url: &str) -> Self {
        Self {
            client,
            url: url.to_string(),
            groups: HashMap::new(),
        }
    }

    async fn resolve(
        &mut self,
        gvk: &GroupVersionKind,
    ) -> Result<Option<(ApiResource, ApiCapabilities)>, KubeError> {
        let key = format!("{}/{}", gvk.group, gvk.version);
        if !self.groups.contains_key(&key) {
            let gv = kube::core::GroupVersion::gv(&gvk.group, &gvk.version);
            match kube::discovery::pinned_group(&self.client, &gv).await {
                Ok(g) => {
                    self.groups.insert(key.clone(), g);
                }
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
                Err(e) => return Err(classify(e, "discover", &key, "-", &key, &self.url)),
            }
        }
        Ok(self.groups[&key]
            .versioned_resources(&gvk.version)
            .into_iter()
            .find(|(ar, _)| ar.kind == gvk.kind))
    }

    fn api(&self, ar: &ApiResource, caps: &ApiCapabilities, namespace: &str) -> Api<DynamicObject> {
        match caps.scope {
            Scope::Cluster => Api::all_with(self.client.clone(), ar),
            Scope::Namespaced => Api::namespaced_with(self.client.clone(), namespace, ar),
        }
    }
}

fn managed_selector() -> String {
    format!("{}={}", labels::MANAGED_BY, labels::MANAGER)
}

/// Applies generated/ (already checked to be up to date) to `namespace`, prunes, and waits.
pub async fn apply(
    client: Client,
    url: &str,
    namespace: &str,
    desired: &[Manifest],
    options: ApplyOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<ApplySummary, KubeError> {
    let mut kinds = Kinds::new(client.clone(), url);
    let mut summary = ApplySummary::default();
    // Resolve every kind first, so that a kind the cluster lacks stops us before any change.
    let mut resolved = Vec::new();
    for m in desired {
        let (ar, caps) = kinds
            .resolve(&m.gvk)
            .await?
            .ok_or_else(|| KubeError::UnknownKind {
                api_version: m.gvk.api_version(),
                kind: m.gvk.kind.clone(),
                file: m.file.display().to_string(),
            })?;
        resolved.push((ar, caps));
    }
    let live = live_objects(&mut kinds, namespace, None).await?;
    let existing: std::collections::BTreeSet<(String, String)> = live
        .iter()
        .map(|l| (l.kind.clone(), l.name.clone()))
        .collect();
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.force = options.force_conflicts;
    params.dry_run = options.dry_run;
    for (m, (ar, caps)) in desired.iter().zip(&resolved) {
        let api = kinds.api(ar, caps, namespace);
        let mut object = m.object.clone();
        // The gateway owns a function's replica count (through the scale subresource) once the
        // Deployment exists: applying `replicas` again would reset or fight it.
        if m.is_scaled_by_gateway() && existing.contains(&(m.gvk.kind.clone(), m.name())) {
            if let Some(spec) = object.data.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("replicas");
            }
        }
        api.patch(&m.name(), &params, &Patch::Apply(&object))
            .await
            .map_err(|e| classify(e, "patch", &ar.plural, namespace, &m.display(), url))?;
        progress(&format!("applied {}", m.display()));
        summary.applied.push(m.display());
    }
    for l in manifests::prune_plan(desired, &live) {
        let gvk = manifests::gvk_of(&l.api_version, &l.kind);
        let Some((ar, caps)) = kinds.resolve(&gvk).await? else {
            continue;
        };
        let api = kinds.api(&ar, &caps, namespace);
        let dp = DeleteParams {
            dry_run: options.dry_run,
            ..DeleteParams::background()
        };
        let shown = format!("{}/{}", l.kind, l.name);
        match api.delete(&l.name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(classify(e, "delete", &ar.plural, namespace, &shown, url)),
        }
        progress(&format!("pruned {shown} (no longer in generated/)"));
        summary.pruned.push(shown);
    }
    if let (Some(timeout), false) = (options.wait, options.dry_run) {
        let waiting: Vec<&Manifest> = desired.iter().filter(|m| m.replicas() > 0).collect();
        if !waiting.is_empty() {
            let names: Vec<String> = waiting.iter().map(|m| m.name()).collect();
            progress(&format!(
                "waiting up to {}s for {} to roll out",
                timeout.as_secs(),
                names.join(", ")
            ));
            summary.rolled_out =
                wait_rollouts(&client, namespace, &names, timeout, progress).await?;
        }
    }
    Ok(summary)
}

/// Live objects labelled as managed by cubeflash (and, with `function`, belonging to it).
async fn live_objects(
    kinds: &mut Kinds,
    namespace: &str,
    function: Option<&str>,
) -> Result<Vec<LiveObject>, KubeError> {
    let mut selector = managed_selector();
    if let Some(f) = function {
        selector.push_str(&format!(",{}={f}", labels::FUNCTION));
    }
    let mut out = Vec::new();
    for (api_version, kind) in manifests::PRUNABLE {
        let gvk = manifests::gvk_of(api_version, kind);
        let Some((ar, caps)) = kinds.resolve(&gvk).await? else {
            continue;
        };
        let list = kinds
            .api(&ar, &caps, namespace)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| classify(e, "list", &ar.plural, namespace, &ar.plural, &kinds.url))?;
        out.extend(list.items.iter().map(|o| LiveObject {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            name: o.name_any(),
        }));
    }
    Ok(out)
}

/// Waits for each Deployment to complete its rollout (kube-runtime's condition); on timeout,
/// says which are not ready and why.
async fn wait_rollouts(
    client: &Client,
    namespace: &str,
    names: &[String],
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<String>, KubeError> {
    use kube::runtime::wait::{await_condition, conditions};
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + timeout;
    // Each Deployment is judged on its own, all against the same deadline.
    let mut waits: futures::stream::FuturesUnordered<_> = names
        .iter()
        .map(|name| {
            let (api, name) = (api.clone(), name.clone());
            async move {
                let wait = await_condition(api, &name, conditions::is_deployment_completed());
                let ok = matches!(tokio::time::timeout_at(deadline, wait).await, Ok(Ok(_)));
                (name, ok)
            }
        })
        .collect();
    let (mut done, mut pending) = (Vec::new(), Vec::new());
    while let Some((name, ok)) = futures::StreamExt::next(&mut waits).await {
        if ok {
            progress(&format!("rolled out Deployment/{name}"));
            done.push(name);
        } else {
            pending.push(name);
        }
    }
    pending.sort();
    if pending.is_empty() {
        return Ok(done);
    }
    let mut report = String::new();
    for name in &pending {
        report.push_str(&not_ready_report(client, namespace, name).await);
    }
    Err(KubeError::NotReady {
        waited: timeout,
        report,
    })
}

/// Why a Deployment is not ready: its conditions, and its pods' waiting reasons.
async fn not_ready_report(client: &Client, namespace: &str, name: &str) -> String {
    let mut out = format!("  Deployment/{name}:\n");
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    match api.get(name).await {
        Ok(d) => {
            let status = d.status.unwrap_or_default();
            out.push_str(&format!(
                "    replicas: {} wanted, {} updated, {} ready\n",
                d.spec.and_then(|s| s.replicas).unwrap_or(1),
                status.updated_replicas.unwrap_or(0),
                status.ready_replicas.unwrap_or(0)
            ));
            for c in status.conditions.unwrap_or_default() {
                out.push_str(&format!(
                    "    condition {}={}: {} {}\n",
                    c.type_,
                    c.status,
                    c.reason.unwrap_or_default(),
                    c.message.unwrap_or_default()
                ));
            }
        }
        Err(e) => out.push_str(&format!("    cannot read it: {e}\n")),
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{}={name}", labels::NAME);
    if let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await {
        for p in list.items {
            let pod = p.name_any();
            let statuses = p
                .status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default();
            for cs in statuses {
                if let Some(w) = cs.state.and_then(|s| s.waiting) {
                    out.push_str(&format!(
                        "    pod {pod} container {}: waiting: {} {}\n",
                        cs.name,
                        w.reason.unwrap_or_default(),
                        w.message.unwrap_or_default()
                    ));
                }
            }
        }
    }
    out
}

/// Deletes every object of one function (labelled with its name) from the cluster.
pub async fn delete_function(
    client: Client,
    url: &str,
    namespace: &str,
    function: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<String>, KubeError> {
    let mut kinds = Kinds::new(client, url);
    let live = live_objects(&mut kinds, namespace, Some(function)).await?;
    if live.is_empty() {
        return Err(KubeError::NoSuchFunction {
            name: function.into(),
            namespace: namespace.into(),
        });
    }
    let mut deleted = Vec::new();
    for l in manifests::prune_plan(&[], &live) {
        let gvk = manifests::gvk_of(&l.api_version, &l.kind);
        let Some((ar, caps)) = kinds.resolve(&gvk).await? else {
            continue;
        };
        let shown = format!("{}/{}", l.kind, l.name);
        match kinds
            .api(&ar, &caps, namespace)
            .delete(&l.name, &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(classify(e, "delete", &ar.plural, namespace, &shown, url)),
        }
        progress(&format!("deleted {shown}"));
        deleted.push(shown);
    }
    Ok(deleted)
}

/// The functions in the namespace, as `list` and `describe` show them: replicas desired and
/// ready, of the function and of its baseline.
pub async fn functions(
    client: Client,
    url: &str,
    namespace: &str,
) -> Result<Vec<Value>, KubeError> {
    let api: Api<Deployment> = Api::namespaced(client, namespace);
    let list = api
        .list(&ListParams::default().labels(&managed_selector()))
        .await
        .map_err(|e| classify(e, "list", "deployments", namespace, "deployments", url))?;
    let replicas = |d: &Deployment| {
        json!({
            "desired": d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            "ready": d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0),
        })
    };
    let label = |d: &Deployment, key: &str| d.labels().get(key).cloned().unwrap_or_default();
    let mut out = Vec::new();
    for d in list
        .items
        .iter()
        .filter(|d| label(d, labels::COMPONENT) == "function")
    {
        let name = label(d, labels::FUNCTION);
        let baseline = list.items.iter().find(|b| {
            label(b, labels::COMPONENT) == "baseline" && label(b, labels::FUNCTION) == name
        });
        out.push(json!({
            "name": name,
            "namespace": namespace,
            "state": rollout_state(d),
            "replicas": replicas(d),
            "baselineReplicas": baseline.map(replicas),
        }));
    }
    Ok(out)
}

/// A function Deployment's state in a word, as `ls` shows it: `failed` (its rollout
/// exceeded its progress deadline, or pods cannot be created), `rolling out` (a new template
/// is not on every replica yet), `idle` (at zero), `ready`, or `scaling`.
pub fn rollout_state(d: &Deployment) -> &'static str {
    let spec = d.spec.as_ref();
    let status = d.status.as_ref();
    let desired = spec.and_then(|s| s.replicas).unwrap_or(1);
    let conditions = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let failed = conditions.iter().any(|c| {
        (c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
            || (c.type_ == "ReplicaFailure" && c.status == "True")
    });
    let generation = d.metadata.generation.unwrap_or(0);
    let observed = status.and_then(|s| s.observed_generation).unwrap_or(0);
    let updated = status.and_then(|s| s.updated_replicas).unwrap_or(0);
    let total = status.and_then(|s| s.replicas).unwrap_or(0);
    let ready = status.and_then(|s| s.ready_replicas).unwrap_or(0);
    if failed {
        "failed"
    } else if observed < generation || updated < desired.min(total) || total > desired.max(updated)
    {
        "rolling out"
    } else if desired == 0 && total == 0 {
        "idle"
    } else if ready >= desired {
        "ready"
    } else {
        "scaling"
    }
}

/// Recent events of a function's Deployment (scale-ups and downs among them), newest last.
pub async fn recent_events(
    client: Client,
    url: &str,
    namespace: &str,
    function: &str,
    limit: usize,
) -> Result<Vec<Value>, KubeError> {
    let api: Api<Event> = Api::namespaced(client, namespace);
    let fields = format!("involvedObject.kind=Deployment,involvedObject.name={function}");
    let list = api
        .list(&ListParams::default().fields(&fields))
        .await
        .map_err(|e| classify(e, "list", "events", namespace, "events", url))?;
    let mut events: Vec<Value> = list
        .items
        .into_iter()
        .map(|e| {
            json!({
                "time": e.last_timestamp.map(|t| t.0.to_string()).or(e.event_time.map(|t| t.0.to_string())),
                "reason": e.reason,
                "message": e.message,
            })
        })
        .collect();
    let skip = events.len().saturating_sub(limit);
    events.drain(..skip);
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::rollout_state;
    use k8s_openapi::api::apps::v1::Deployment;
    use serde_json::json;

    fn deployment(generation: i64, replicas: i32, status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "f", "generation": generation},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn rollout_states_read_like_kubectl_rollout_status() {
        let cases = [
            (
                deployment(
                    2,
                    1,
                    json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}),
                ),
                "ready",
            ),
            (deployment(2, 0, json!({"observedGeneration": 2})), "idle"),
            (
                deployment(
                    3,
                    1,
                    json!({"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}),
                ),
                "rolling out",
            ),
            (
                deployment(
                    2,
                    1,
                    json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "readyReplicas": 1}),
                ),
                "rolling out",
            ),
            (
                deployment(
                    2,
                    2,
                    json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 1}),
                ),
                "scaling",
            ),
            (
                deployment(
                    2,
                    1,
                    json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}),
                ),
                "failed",
            ),
            (
                deployment(
                    2,
                    1,
                    json!({"observedGeneration": 2, "conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate"}]}),
                ),
                "failed",
            ),
        ];
        for (d, want) in cases {
            assert_eq!(rollout_state(&d), want, "{:?}", d.status);
        }
    }
}
