//! The Kubernetes backend, as `cubeflash gateway` runs it in the cluster: the route table
//! from the routes ConfigMap (typed, `table::RouteTable`; reloaded when it changes), each
//! function a `DeploymentPool` fed by one watcher on the project's Deployments. Routing,
//! queueing, limits, forwarding, metrics and the admin API are the engine's, as locally.
//! What the API server refuses (a 403, an unreachable server) is kept as the backend's
//! trouble: /healthz says so, and so does the 504 of a request that waited.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;

use crate::names::{labels, ROUTES_KEY};
use crate::runtime::kubernetes::{describe_refusal, DeploymentPool};
use crate::runtime::pool::ReplicaPool;

use super::api::Reloaded;
use super::async_calls::AsyncCalls;
use super::function::FunctionState;
use super::table::{RouteEntry, RouteTable, TableError};
use super::{Backend, Gateway};
use crate::triggers::jetstream_calls::JetCalls;
use crate::triggers::store::Store;

/// What `cubeflash gateway` needs.
#[derive(Debug, Clone)]
pub struct KubeGatewayConfig {
    pub namespace: String,
    pub routes_configmap: String,
    pub queue_size: u32,
    pub max_body_size: u64,
    /// Bearer token of the admin API under /system/ (none: the admin API is off).
    pub admin_token: Option<String>,
    /// Read-only token of the admin API.
    pub read_token: Option<String>,
    /// NATS (JetStream): the async call store and the queue triggers' source.
    pub nats_url: Option<String>,
    /// Hosts an async call's callback may go to.
    pub callback_hosts: Vec<String>,
    /// How long a delivery holds a call without renewing it.
    pub async_lease: std::time::Duration,
    /// How long finished calls are kept.
    pub async_retention: std::time::Duration,
    /// Signs callbacks; every gateway replica needs the same one.
    pub callback_secret: Option<String>,
}

impl KubeGatewayConfig {
    /// The callback signing key: the one given, else one derived from the admin token
    /// (the same in every replica), else a random one (a warning: replicas then differ).
    fn callback_secret(&self) -> String {
        use hmac::Mac;
        if let Some(s) = &self.callback_secret {
            return s.clone();
        }
        if let Some(token) = &self.admin_token {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes())
                .expect("HMAC takes any key");
            mac.update(b"cubeflash callback secret");
            return mac
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
        }
        tracing::warn!("no CUBEFLASH_CALLBACK_SECRET and no admin token: callbacks are signed with a key of this replica's own");
        super::tokens::random_token().unwrap_or_else(|_| format!("{:x}", std::process::id()))
    }
}

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeBackendError {
    #[error("failed to read the route table (ConfigMap {configmap} in namespace {namespace}); deploy the repo first (`cubeflash deploy --target kubernetes`)")]
    Read {
        configmap: String,
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("the route table in ConfigMap {configmap} cannot be used")]
    Table {
        configmap: String,
        #[source]
        source: TableError,
    },
}

pub struct KubeBackend {
    client: Client,
    namespace: String,
    routes_configmap: String,
    /// Every function's (and baseline's) pool, by Deployment name.
    pools: Mutex<HashMap<String, Arc<DeploymentPool>>>,
    /// What the watchers or the route table cannot do now, by source.
    trouble: Mutex<HashMap<&'static str, String>>,
    /// Async calls, stored in JetStream (none without NATS).
    calls: Option<Arc<AsyncCalls>>,
    nats: Option<String>,
}

impl KubeBackend {
    /// Reads the route table once (failing loudly when it is missing or does not parse),
    /// installs it in `gateway`, and returns the backend; `start` keeps it current.
    pub async fn attach(
        gateway: &Arc<Gateway>,
        client: Client,
        config: &KubeGatewayConfig,
    ) -> Result<Arc<Self>, KubeBackendError> {
        let backend = Arc::new(Self {
            client: client.clone(),
            namespace: config.namespace.clone(),
            routes_configmap: config.routes_configmap.clone(),
            pools: Mutex::default(),
            trouble: Mutex::default(),
            calls: config.nats_url.as_ref().map(|url| {
                let calls = AsyncCalls::new(
                    Store::JetStream(JetCalls::start(url, config.async_lease)),
                    config.callback_secret(),
                );
                calls.set_callback_hosts(config.callback_hosts.clone());
                calls.set_retention(config.async_retention);
                calls
            }),
            nats: config.nats_url.clone(),
        });
        let cms: Api<ConfigMap> = Api::namespaced(client, &config.namespace);
        let cm =
            cms.get(&config.routes_configmap)
                .await
                .map_err(|source| KubeBackendError::Read {
                    configmap: config.routes_configmap.clone(),
                    namespace: config.namespace.clone(),
                    source,
                })?;
        let table = parse_configmap(&cm).map_err(|source| KubeBackendError::Table {
            configmap: config.routes_configmap.clone(),
            source,
        })?;
        gateway.set_backend(backend.clone());
        backend.install(gateway, table);
        Ok(backend)
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn pool(&self, deployment: &str, service: &str, managed: bool) -> Arc<DeploymentPool> {
        let mut pools = self.pools.lock().expect("pools lock");
        pools
            .entry(deployment.to_string())
            .or_insert_with(|| {
                DeploymentPool::start(
                    self.deployments(),
                    &self.namespace,
                    deployment,
                    service,
                    managed,
                )
            })
            .clone()
    }

    /// Serves `table` from now on; pools of Deployments that stay are kept (with their
    /// counts and waiting requests), those of functions that left are forgotten.
    fn install(&self, gateway: &Gateway, table: RouteTable) -> Reloaded {
        let current = gateway.routes();
        let mut report = Reloaded::default();
        let mut next = Vec::new();
        for entry in table.functions {
            match current.by_name.get(&entry.name) {
                Some(f) if f.entry == entry => {
                    next.push(f.clone());
                    continue;
                }
                Some(_) => report.changed.push(entry.name.clone()),
                None => report.added.push(entry.name.clone()),
            }
            next.push(self.function_state(gateway, entry));
        }
        report.removed = current
            .functions()
            .iter()
            .map(|f| f.name().to_string())
            .filter(|n| !next.iter().any(|f| f.name() == n))
            .collect();
        let used: HashSet<String> = next
            .iter()
            .flat_map(|f| {
                std::iter::once(f.entry.deployment.clone())
                    .chain(f.entry.baseline.as_ref().map(|b| b.deployment.clone()))
            })
            .collect();
        self.pools
            .lock()
            .expect("pools lock")
            .retain(|name, _| used.contains(name));
        gateway.install(next);
        tracing::info!(added = ?report.added, changed = ?report.changed, removed = ?report.removed, "route table loaded");
        report
    }

    fn function_state(&self, gateway: &Gateway, entry: RouteEntry) -> Arc<FunctionState> {
        let serverless: Arc<dyn ReplicaPool> = self.pool(&entry.deployment, &entry.service, true);
        let baseline = entry
            .baseline
            .as_ref()
            .map(|b| self.pool(&b.deployment, &b.service, false) as Arc<dyn ReplicaPool>);
        FunctionState::new(entry, serverless, baseline, gateway.metrics.clone())
    }

    fn set_trouble(&self, source: &'static str, why: Option<String>) {
        let mut trouble = self.trouble.lock().expect("trouble lock");
        match why {
            Some(why) => {
                if trouble.get(source) != Some(&why) {
                    tracing::warn!(source, "{why}");
                }
                trouble.insert(source, why);
            }
            None => {
                if trouble.remove(source).is_some() {
                    tracing::info!(source, "watching works again");
                }
            }
        }
    }

    async fn watch_routes(self: Arc<Self>, gateway: Arc<Gateway>) {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let cfg =
            watcher::Config::default().fields(&format!("metadata.name={}", self.routes_configmap));
        let mut stream = watcher::watcher(api, cfg)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(item) = stream.next().await {
            match item {
                Ok(cm) => match parse_configmap(&cm) {
                    Ok(table) => {
                        self.set_trouble("routes", None);
                        self.install(&gateway, table);
                    }
                    Err(e) => self.set_trouble(
                        "routes",
                        Some(format!(
                            "the route table in ConfigMap {} cannot be used, the previous one is kept: {:#}",
                            self.routes_configmap,
                            anyhow::Error::from(e)
                        )),
                    ),
                },
                Err(e) => self.set_trouble("routes", Some(watch_failure(&e, "configmaps", &self.namespace))),
            }
        }
    }

    async fn watch_deployments(self: Arc<Self>) {
        let cfg = watcher::Config::default().labels(&format!(
            "{}={}",
            labels::MANAGED_BY,
            labels::MANAGER
        ));
        let mut stream = watcher::watcher(self.deployments(), cfg)
            .default_backoff()
            .boxed();
        // Deployments seen in a relist: those missing from it were deleted meanwhile.
        let mut relisted: Option<HashSet<String>> = None;
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(e) => {
                    self.set_trouble("deployments", None);
                    e
                }
                Err(e) => {
                    self.set_trouble(
                        "deployments",
                        Some(watch_failure(&e, "deployments", &self.namespace)),
                    );
                    continue;
                }
            };
            match event {
                Event::Init => relisted = Some(HashSet::new()),
                Event::InitApply(d) => {
                    if let Some(seen) = relisted.as_mut() {
                        seen.insert(d.metadata.name.clone().unwrap_or_default());
                    }
                    self.observe(&d);
                }
                Event::InitDone => {
                    if let Some(seen) = relisted.take() {
                        let pools: Vec<Arc<DeploymentPool>> = self
                            .pools
                            .lock()
                            .expect("pools lock")
                            .values()
                            .cloned()
                            .collect();
                        for p in pools.iter().filter(|p| !seen.contains(p.deployment())) {
                            p.deleted();
                        }
                    }
                }
                Event::Apply(d) => self.observe(&d),
                Event::Delete(d) => {
                    let name = d.metadata.name.unwrap_or_default();
                    if let Some(p) = self.pools.lock().expect("pools lock").get(&name) {
                        p.deleted();
                    }
                }
            }
        }
    }

    fn observe(&self, d: &Deployment) {
        let name = d.metadata.name.clone().unwrap_or_default();
        let Some(pool) = self.pools.lock().expect("pools lock").get(&name).cloned() else {
            return;
        };
        let ready = d
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
            .max(0) as u32;
        let spec = d
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .map(|r| r.max(0) as u32);
        pool.observe(ready, spec);
    }
}

fn parse_configmap(cm: &ConfigMap) -> Result<RouteTable, TableError> {
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(ROUTES_KEY))
        .ok_or(TableError::Missing)?;
    RouteTable::parse(text)
}

/// A watcher's error in words a cluster admin acts on.
fn watch_failure(e: &watcher::Error, resource: &str, namespace: &str) -> String {
    let inner = match e {
        watcher::Error::InitialListFailed(k)
        | watcher::Error::WatchStartFailed(k)
        | watcher::Error::WatchFailed(k) => Some(k),
        _ => None,
    };
    match inner {
        Some(k) => describe_refusal(k, "list and watch", resource, "", namespace),
        None => format!("watching {resource} in namespace {namespace} failed: {e}"),
    }
}

impl Backend for KubeBackend {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn trouble(&self) -> Option<String> {
        let trouble = self.trouble.lock().expect("trouble lock");
        let mut all: Vec<String> = trouble.values().cloned().collect();
        drop(trouble);
        all.extend(
            self.pools
                .lock()
                .expect("pools lock")
                .values()
                .filter_map(|p| p.trouble()),
        );
        all.sort();
        (!all.is_empty()).then(|| all.join("; "))
    }

    fn reload<'a>(
        &'a self,
        gateway: &'a Arc<Gateway>,
        _verify: bool,
    ) -> BoxFuture<'a, Result<Reloaded, String>> {
        Box::pin(async move {
            let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
            let cm = cms.get(&self.routes_configmap).await.map_err(|e| {
                describe_refusal(
                    &e,
                    "get",
                    "configmaps",
                    &self.routes_configmap,
                    &self.namespace,
                )
            })?;
            let table =
                parse_configmap(&cm).map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
            Ok(self.install(gateway, table))
        })
    }

    fn start(
        self: Arc<Self>,
        gateway: Arc<Gateway>,
        _stop: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut loops = vec![
            tokio::spawn(self.clone().watch_routes(gateway.clone())),
            tokio::spawn(self.clone().watch_deployments()),
        ];
        loops.extend(crate::triggers::start(
            &gateway,
            self.calls.as_ref(),
            self.nats.as_deref(),
        ));
        loops
    }

    fn calls(&self) -> Option<Arc<AsyncCalls>> {
        self.calls.clone()
    }
}
