//! The Kubernetes replica pool: one function's Deployment, scaled through its scale
//! subresource (field manager `cubeflash-gateway`), with requests sent to its Service. The
//! gateway's Deployment watcher reports readiness here (`observe`); a patcher task applies
//! the latest wanted count, coalescing bursts, and retries with backoff when the API server
//! refuses, keeping the refusal as the pool's `trouble` (named in /healthz and in the 504 a
//! waiting request gets). kube-proxy load-balances across pods, so the engine sees one
//! endpoint whose capacity is `limit` per ready replica.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::{watch, Notify};

use super::pool::{Endpoint, ReplicaPool, Slot, StartTimes, Waiters};
use crate::names::SCALE_MANAGER;

const RETRY_START: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

pub struct DeploymentPool {
    deployment: String,
    namespace: String,
    /// host:port of the Service.
    service: String,
    endpoint: RwLock<Option<Arc<Endpoint>>>,
    ready: AtomicU32,
    /// What the gateway wants (sent or about to be sent to the scale subresource).
    desired: AtomicU32,
    /// The Deployment's `spec.replicas` as last seen; u64::MAX before the first sight.
    observed: AtomicU64,
    want: watch::Sender<u32>,
    /// A scale patch is being sent: a watch event seen meanwhile may predate it.
    patching: AtomicBool,
    /// Someone else set `spec.replicas`: apply the count as ours even though it is already
    /// the value, so that the gateway's field manager owns it again.
    reown: AtomicBool,
    waiters: Arc<Waiters>,
    trouble: Mutex<Option<String>>,
    /// The Deployment is gone (deleted) or the pool was shut down: nothing is scaled.
    gone: AtomicBool,
    stop: Notify,
    /// The watcher has seen the Deployment once.
    seen: Notify,
    managed: bool,
}

impl DeploymentPool {
    /// Starts the pool's patcher on the current runtime. `service` is the Service URL from the
    /// route table (`http://name.ns.svc:8080`).
    /// `managed`: the gateway scales it (a function); else it only watches it (a baseline,
    /// whose replicas the deploy sets).
    pub fn start(
        api: Api<Deployment>,
        namespace: &str,
        deployment: &str,
        service: &str,
        managed: bool,
    ) -> Arc<Self> {
        let initial = 0;
        let (want, wanted) = watch::channel(initial);
        let service = service
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let pool = Arc::new(Self {
            deployment: deployment.to_string(),
            namespace: namespace.to_string(),
            service,
            endpoint: RwLock::new(None),
            ready: AtomicU32::new(0),
            desired: AtomicU32::new(initial),
            observed: AtomicU64::new(u64::MAX),
            want,
            patching: AtomicBool::new(false),
            reown: AtomicBool::new(false),
            waiters: Arc::default(),
            trouble: Mutex::new(None),
            gone: AtomicBool::new(false),
            stop: Notify::new(),
            seen: Notify::new(),
            managed,
        });
        if managed {
            tokio::spawn(pool.clone().patcher(api, wanted));
        }
        tokio::spawn(pool.clone().resolver());
        pool
    }

    pub fn deployment(&self) -> &str {
        &self.deployment
    }

    /// The watcher saw the Deployment: its ready replicas and `spec.replicas`.
    pub fn observe(&self, ready: u32, spec_replicas: Option<u32>) {
        if self.gone.swap(false, Ordering::SeqCst) {
            tracing::info!(deployment = %self.deployment, "deployment is back");
        }
        let was = self.ready.swap(ready, Ordering::SeqCst);
        if let Some(spec) = spec_replicas {
            let before = self.observed.swap(u64::from(spec), Ordering::SeqCst);
            if !self.managed {
                self.desired.store(spec, Ordering::SeqCst);
                if ready != was {
                    self.waiters.wake();
                }
                return;
            }
            if before == u64::MAX {
                // First sight (a gateway that just started): keep what runs, or more.
                let keep = self.desired.load(Ordering::SeqCst).max(spec);
                self.desired.store(keep, Ordering::SeqCst);
                let _ = self.want.send(keep);
                self.seen.notify_waiters();
                if ready != was {
                    self.waiters.wake();
                }
                return;
            }
            // Someone else (a deploy, kubectl scale) set the count: adopt it, and apply it
            // as ours so the gateway owns `spec.replicas` again.
            let ours = self.desired.load(Ordering::SeqCst);
            let changed_by_other = before != u64::from(spec) && spec != ours;
            if changed_by_other
                && !self.patching.load(Ordering::SeqCst)
                && *self.want.borrow() == ours
            {
                tracing::info!(deployment = %self.deployment, from = ours, to = spec, "replicas changed outside the gateway; adopting");
                self.desired.store(spec, Ordering::SeqCst);
                self.reown.store(true, Ordering::SeqCst);
                let _ = self.want.send(spec);
            }
        }
        if ready != was {
            self.waiters.wake();
        }
    }

    /// The Deployment was deleted: stop scaling it until it comes back.
    pub fn deleted(&self) {
        if !self.gone.swap(true, Ordering::SeqCst) {
            tracing::info!(deployment = %self.deployment, "deployment deleted; no longer scaled");
        }
        self.ready.store(0, Ordering::SeqCst);
        self.waiters.wake();
    }

    async fn patcher(self: Arc<Self>, api: Api<Deployment>, mut wanted: watch::Receiver<u32>) {
        let mut retry = RETRY_START;
        // Patch nothing before the Deployment's own count is known (it may be running more
        // than the gateway would ask for), unless the watcher cannot see it at all.
        let seen = self.seen.notified();
        if self.observed.load(Ordering::SeqCst) == u64::MAX {
            let _ = tokio::time::timeout(Duration::from_secs(2), seen).await;
        }
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    changed = wanted.changed() => if changed.is_err() { return },
                    _ = self.stop.notified() => return,
                }
            }
            first = false;
            loop {
                if self.gone.load(Ordering::SeqCst) {
                    break;
                }
                let n = *wanted.borrow_and_update();
                let settled = u64::from(n) == self.observed.load(Ordering::SeqCst)
                    && self.trouble().is_none()
                    && !self.reown.swap(false, Ordering::SeqCst);
                if settled {
                    break;
                }
                let patching = Flag::raise(&self.patching);
                let pp = PatchParams {
                    field_manager: Some(SCALE_MANAGER.into()),
                    ..Default::default()
                };
                let patch = Patch::Merge(serde_json::json!({ "spec": { "replicas": n } }));
                let result = api.patch_scale(&self.deployment, &pp, &patch).await;
                drop(patching);
                match result {
                    Ok(_) => {
                        self.observed.store(u64::from(n), Ordering::SeqCst);
                        if self.trouble.lock().expect("trouble lock").take().is_some() {
                            tracing::info!(deployment = %self.deployment, "scaling works again");
                        }
                        retry = RETRY_START;
                        if *wanted.borrow() == n {
                            break;
                        }
                    }
                    Err(e) => {
                        let why = describe_refusal(
                            &e,
                            "patch",
                            "deployments/scale",
                            &self.deployment,
                            &self.namespace,
                        );
                        tracing::warn!(deployment = %self.deployment, replicas = n, "{why}");
                        *self.trouble.lock().expect("trouble lock") = Some(why);
                        self.waiters.wake();
                        tokio::select! {
                            _ = tokio::time::sleep(retry) => {}
                            _ = self.stop.notified() => return,
                        }
                        retry = (retry * 2).min(RETRY_MAX);
                    }
                }
            }
        }
    }

    /// Resolves the Service's name to its address, and again every 30 s (a Service deleted
    /// and created again gets a new cluster IP).
    async fn resolver(self: Arc<Self>) {
        let mut id = 0;
        loop {
            let resolved = tokio::net::lookup_host(&self.service)
                .await
                .ok()
                .and_then(|mut a| a.next());
            let pause = match resolved {
                Some(addr) => {
                    let mut current = self.endpoint.write().expect("endpoint lock");
                    if current.as_ref().is_none_or(|e| e.addr != addr) {
                        id += 1;
                        *current = Some(Arc::new(Endpoint::new(id, addr, StartTimes::default())));
                        self.waiters.wake();
                    }
                    Duration::from_secs(30)
                }
                None => {
                    tracing::warn!(service = %self.service, "cannot resolve the function's Service");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.stop.notified() => return,
            }
        }
    }
}

/// A flag raised while it lives: lowered on drop, also when the future holding it is dropped.
struct Flag<'a>(&'a AtomicBool);

impl<'a> Flag<'a> {
    fn raise(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::SeqCst);
        Self(flag)
    }
}

impl Drop for Flag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// What the API server refused, and the RBAC rule that would allow it.
pub fn describe_refusal(
    e: &kube::Error,
    verb: &str,
    resource: &str,
    name: &str,
    namespace: &str,
) -> String {
    let object = if name.is_empty() {
        resource.to_string()
    } else {
        format!("{resource} {name}")
    };
    match e {
        kube::Error::Api(status) if status.code == 403 => format!(
            "the API server refused to {verb} {object} in namespace {namespace} (403 Forbidden: {}): the gateway's Role needs `{verb}` on `{resource}`; check with `kubectl auth can-i {verb} {resource} -n {namespace} --as system:serviceaccount:{namespace}:cubeflash-gateway`",
            status.message
        ),
        kube::Error::Api(status) => format!(
            "the API server refused to {verb} {object} in namespace {namespace} ({} {}: {})",
            status.code, status.reason, status.message
        ),
        other => format!("cannot reach the API server to {verb} {object}: {other}"),
    }
}

impl ReplicaPool for DeploymentPool {
    fn acquire(&self, limit: u32) -> Option<Slot> {
        let ready = self.ready.load(Ordering::SeqCst);
        if ready == 0 || self.gone.load(Ordering::SeqCst) {
            return None;
        }
        let endpoint = self.endpoint.read().expect("endpoint lock").clone()?;
        if limit > 0 && endpoint.inflight.load(Ordering::Relaxed) >= limit.saturating_mul(ready) {
            return None;
        }
        Some(Slot::take(endpoint, self.waiters.clone()))
    }

    fn ready_count(&self) -> u32 {
        self.ready.load(Ordering::SeqCst)
    }

    fn wanted(&self) -> u32 {
        self.desired.load(Ordering::SeqCst)
    }

    fn scale_to(&self, n: u32, clear_failure: bool) {
        if !self.managed || (self.gone.load(Ordering::SeqCst) && !clear_failure) {
            return;
        }
        self.desired.store(n, Ordering::SeqCst);
        let _ = self.want.send(n);
    }

    fn failure(&self) -> Option<String> {
        None
    }

    fn trouble(&self) -> Option<String> {
        if self.gone.load(Ordering::SeqCst) {
            return Some(format!(
                "the Deployment {} was deleted; deploy the repo again (`cubeflash deploy --target kubernetes`)",
                self.deployment
            ));
        }
        self.trouble.lock().expect("trouble lock").clone()
    }

    fn waiters(&self) -> &Arc<Waiters> {
        &self.waiters
    }

    fn unreachable(&self, _endpoint: &Endpoint) -> bool {
        // One address: kube-proxy may not have the new pod's endpoint yet. Try it again
        // after a pause, until the request's cold-start deadline.
        false
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.endpoint
            .read()
            .expect("endpoint lock")
            .iter()
            .map(|e| e.addr)
            .collect()
    }

    fn urls(&self) -> Vec<String> {
        vec![format!("http://{}", self.service)]
    }

    fn log_tail(&self, _n: usize) -> Option<Vec<String>> {
        None
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.gone.store(true, Ordering::SeqCst);
        self.stop.notify_waiters();
        Box::pin(async {})
    }
}
