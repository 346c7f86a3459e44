//! `cubeflash gateway`: the gateway with a Kubernetes backend, as the rendered gateway
//! Deployment runs it. It reads the route table from the routes ConfigMap (and reloads it
//! when it changes), learns each function's ready replicas from a kube-runtime watcher on the
//! Deployments, scales them through the scale subresource with the same decision as the local
//! autoscaler (`scaler::decide`), and proxies to each function's Service. Requests for a
//! function at zero wait in a bounded queue while it scales up, as on the local platform.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Notify;

use super::metrics::{label, CodeLabels, KindLabels, Metrics, StartLabels};
use super::proxy::{GatewayBody, COLD_START};
use super::scaler;
use super::{json_error, json_response};
use crate::names::labels;
use crate::spec::values::parse_duration;

/// The field manager of the gateway's scale patches.
mod admin;

pub const SCALE_MANAGER: &str = "cubeflash-gateway";
const ROUTES_KEY: &str = "routes.json";

#[derive(Debug, Clone, Deserialize)]
struct RouteTable {
    functions: Vec<RouteEntry>,
}

#[derive(Debug, Clone, Deserialize)]
struct RouteEntry {
    name: String,
    deployment: String,
    service: String,
    #[serde(default)]
    baseline: Option<BaselineEntry>,
    #[serde(default)]
    triggers: Vec<serde_json::Value>,
    scale: ScaleEntry,
    timeout: String,
}

#[derive(Debug, Clone, Deserialize)]
struct BaselineEntry {
    deployment: String,
    service: String,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ScaleEntry {
    min: u32,
    max: u32,
    concurrency: u32,
    idle: String,
    cold_start_timeout: String,
}

/// One function as the Kubernetes gateway tracks it.
struct Function {
    entry: RouteEntry,
    idle: Duration,
    cold_start_timeout: Duration,
    timeout: Duration,
    /// Kept across route-table reloads while the Deployment stays the same, so that requests
    /// waiting for a scale-up are woken whichever table is current.
    live: Arc<Live>,
}

/// What the gateway knows and counts of a function's Deployment.
struct Live {
    ready: AtomicU32,
    /// Replicas the gateway last asked for (or, before it asked, saw in the Deployment's spec).
    desired: AtomicU32,
    /// Whether `desired` is known: the gateway owns the count from its first scale or sight
    /// on, so that a stale watch event cannot undo a scale-up it just made.
    known: std::sync::atomic::AtomicBool,
    inflight: AtomicU32,
    queued: AtomicU32,
    /// Ready replicas of the function's always-on baseline Deployment.
    baseline_ready: AtomicU32,
    cold_starts: AtomicU32,
    last_request: Mutex<Option<Instant>>,
    below_since: Mutex<Option<Instant>>,
    became_ready: Notify,
}

/// What `cubeflash gateway` needs.
#[derive(Debug, Clone)]
pub struct KubeGatewayConfig {
    pub namespace: String,
    pub routes_configmap: String,
    pub queue_size: u32,
    pub max_body_size: u64,
    /// Bearer token of the admin API under /system/ (none: the admin API is off).
    pub admin_token: Option<String>,
}

pub struct KubeGateway {
    client: Client,
    config: KubeGatewayConfig,
    functions: RwLock<Arc<HashMap<String, Arc<Function>>>>,
    metrics: Metrics,
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

fn dur(text: &str, fallback: Duration) -> Duration {
    parse_duration(text).unwrap_or(fallback)
}

impl KubeGateway {
    pub fn new(client: Client, config: KubeGatewayConfig) -> Arc<Self> {
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        Arc::new(Self {
            client,
            config,
            functions: RwLock::new(Arc::new(HashMap::new())),
            metrics: Metrics::default(),
            http,
        })
    }

    fn functions(&self) -> Arc<HashMap<String, Arc<Function>>> {
        self.functions.read().expect("functions lock").clone()
    }

    /// Installs a route table, keeping the counters of functions that stay.
    fn install(&self, text: &str) -> Result<usize, serde_json::Error> {
        let table: RouteTable = serde_json::from_str(text)?;
        let old = self.functions();
        let mut next = HashMap::new();
        for entry in table.functions {
            let live = old
                .get(&entry.name)
                .filter(|f| f.entry.deployment == entry.deployment)
                .map(|f| f.live.clone())
                .unwrap_or_else(|| Arc::new(Live::new()));
            next.insert(entry.name.clone(), Arc::new(Function::new(entry, live)));
        }
        let n = next.len();
        *self.functions.write().expect("functions lock") = Arc::new(next);
        Ok(n)
    }

    /// Loads the route table once, then keeps it, the readiness and the scale up to date.
    pub async fn run(self: &Arc<Self>) -> Result<(), kube::Error> {
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let cm = cms.get(&self.config.routes_configmap).await?;
        if let Some(text) = cm.data.as_ref().and_then(|d| d.get(ROUTES_KEY)) {
            if let Err(e) = self.install(text) {
                eprintln!("cubeflash gateway: the route table is not valid JSON: {e}");
            }
        }
        let me = self.clone();
        tokio::spawn(async move { me.watch_routes().await });
        let me = self.clone();
        tokio::spawn(async move { me.watch_deployments().await });
        let me = self.clone();
        tokio::spawn(async move { me.autoscale_loop().await });
        Ok(())
    }

    async fn watch_routes(self: Arc<Self>) {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let cfg = watcher::Config::default()
            .fields(&format!("metadata.name={}", self.config.routes_configmap));
        let mut stream = watcher(api, cfg)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(item) = stream.next().await {
            let cm = match item {
                Ok(cm) => cm,
                Err(e) => {
                    eprintln!("cubeflash gateway: watching the route table: {e}");
                    continue;
                }
            };
            {
                if let Some(text) = cm.data.as_ref().and_then(|d| d.get(ROUTES_KEY)) {
                    match self.install(text) {
                        Ok(n) => eprintln!("cubeflash gateway: route table loaded: {n} functions"),
                        Err(e) => {
                            eprintln!("cubeflash gateway: ignoring an invalid route table: {e}")
                        }
                    }
                }
            }
        }
    }

    async fn watch_deployments(self: Arc<Self>) {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let cfg = watcher::Config::default().labels(&format!(
            "{}={}",
            labels::MANAGED_BY,
            labels::MANAGER
        ));
        let mut stream = watcher(api, cfg)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(item) = stream.next().await {
            let d = match item {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("cubeflash gateway: watching deployments: {e}");
                    continue;
                }
            };
            let name = d.metadata.name.clone().unwrap_or_default();
            let functions = self.functions();
            let ready = d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0)
                .max(0) as u32;
            let baseline_of = |f: &&Arc<Function>| {
                f.entry
                    .baseline
                    .as_ref()
                    .is_some_and(|b| b.deployment == name)
            };
            if let Some(f) = functions.values().find(baseline_of) {
                f.live.baseline_ready.store(ready, Ordering::Relaxed);
                continue;
            }
            let Some(f) = functions.values().find(|f| f.entry.deployment == name) else {
                continue;
            };
            f.live.ready.store(ready, Ordering::Release);
            if let Some(spec) = d.spec.as_ref().and_then(|s| s.replicas) {
                if !f.live.known.swap(true, Ordering::AcqRel) {
                    let _ = f.live.desired.compare_exchange(
                        0,
                        spec.max(0) as u32,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
            }
            if ready > 0 {
                f.live.became_ready.notify_waiters();
            }
        }
    }

    /// Scales from `from` to `to` replicas, unless someone else (the autoscaler, another
    /// request) changed the count first: exactly one scale-up per cold start.
    async fn scale(&self, f: &Function, from: u32, to: u32) {
        if f.live
            .desired
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        f.live.known.store(true, Ordering::Release);
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let pp = PatchParams {
            field_manager: Some(SCALE_MANAGER.into()),
            ..Default::default()
        };
        let patch = Patch::Merge(json!({ "spec": { "replicas": to } }));
        if let Err(e) = api.patch_scale(&f.entry.deployment, &pp, &patch).await {
            eprintln!(
                "cubeflash gateway: failed to scale {} to {to}: {e}",
                f.entry.deployment
            );
            let _ = f
                .live
                .desired
                .compare_exchange(to, from, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    async fn autoscale_loop(self: Arc<Self>) {
        let every = Duration::from_millis(500);
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            for f in self.functions().values() {
                for (kind, n) in [
                    ("serverless", f.live.desired.load(Ordering::Relaxed)),
                    ("baseline", f.live.baseline_ready.load(Ordering::Relaxed)),
                ] {
                    if n > 0 {
                        let labels = KindLabels {
                            function: f.entry.name.clone(),
                            kind,
                        };
                        self.metrics
                            .replica_seconds
                            .get_or_create(&labels)
                            .inc_by(f64::from(n) * every.as_secs_f64());
                    }
                }
                let current = f.live.desired.load(Ordering::Relaxed);
                let demand =
                    f.live.inflight.load(Ordering::Relaxed) + f.live.queued.load(Ordering::Relaxed);
                let s = &f.entry.scale;
                let bounds = scaler::Bounds {
                    min: s.min,
                    max: s.max,
                    concurrency: s.concurrency,
                    idle: f.idle,
                };
                let desired = scaler::tick(
                    bounds,
                    current,
                    demand,
                    f.since_request(),
                    &f.live.below_since,
                );
                if desired != current {
                    self.scale(f, current, desired).await;
                }
            }
        }
    }

    fn route(&self, path: &str) -> Option<(Arc<Function>, String)> {
        let functions = self.functions();
        if let Some(rest) = path.strip_prefix("/function/") {
            let (name, tail) = rest
                .split_once('/')
                .map_or((rest, "/".to_string()), |(n, t)| (n, format!("/{t}")));
            return functions.get(name).map(|f| (f.clone(), tail));
        }
        for f in functions.values() {
            for t in &f.entry.triggers {
                let Some(p) = t["http"]["path"].as_str() else {
                    continue;
                };
                match p.strip_suffix("/*") {
                    Some(prefix) if path == prefix || path.starts_with(&format!("{prefix}/")) => {
                        return Some((f.clone(), path.to_string()));
                    }
                    None if p == path => return Some((f.clone(), path.to_string())),
                    _ => {}
                }
            }
        }
        None
    }

    /// Answers one request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<GatewayBody> {
        let path = req.uri().path().to_string();
        if path == "/healthz" {
            return json_response(
                StatusCode::OK,
                &json!({"status": "ok", "backend": "kubernetes"}),
            );
        }
        if path == "/metrics" {
            return self.metrics_response();
        }
        if path.starts_with("/system/") {
            return self.admin(req).await;
        }
        let started = Instant::now();
        let Some((f, tail)) = self.route(&path) else {
            return json_error(
                StatusCode::NOT_FOUND,
                &format!("no function serves {path}"),
                None,
            );
        };
        let (response, cold) = self.call(&f, req, &tail, client).await;
        let function = f.entry.name.clone();
        self.metrics
            .requests
            .get_or_create(&CodeLabels {
                function: function.clone(),
                code: response.status().as_u16(),
            })
            .inc();
        let start = if cold { "cold" } else { "warm" };
        self.metrics
            .duration
            .get_or_create(&StartLabels { function, start })
            .observe(started.elapsed().as_secs_f64());
        response
    }

    /// Waits for a replica if there is none (scaling up from zero), then forwards; says
    /// whether the request waited for a cold start.
    async fn call(
        &self,
        f: &Arc<Function>,
        req: Request<Incoming>,
        tail: &str,
        client: SocketAddr,
    ) -> (Response<GatewayBody>, bool) {
        let reject = |status, msg: &str| (json_error(status, msg, Some(&f.entry.name)), false);
        *f.live.last_request.lock().expect("last request lock") = Some(Instant::now());
        let name = f.entry.name.clone();
        let mut waited = None;
        if f.live.ready.load(Ordering::Acquire) == 0 {
            if f.live.queued.load(Ordering::Relaxed) >= self.config.queue_size {
                return reject(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many requests are waiting for this function to scale up",
                );
            }
            f.live.queued.fetch_add(1, Ordering::Relaxed);
            let start = Instant::now();
            self.scale(f, 0, 1).await;
            let ready = tokio::time::timeout(f.cold_start_timeout, async {
                loop {
                    let notified = f.live.became_ready.notified();
                    if f.live.ready.load(Ordering::Acquire) > 0 {
                        return;
                    }
                    notified.await;
                }
            })
            .await;
            f.live.queued.fetch_sub(1, Ordering::Relaxed);
            if ready.is_err() {
                return reject(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "{name} had no ready replica within its cold start timeout ({})",
                        f.entry.scale.cold_start_timeout
                    ),
                );
            }
            waited = Some(start.elapsed());
        }
        f.live.inflight.fetch_add(1, Ordering::Relaxed);
        let response = self.forward(f, req, tail, client).await;
        f.live.inflight.fetch_sub(1, Ordering::Relaxed);
        let mut response =
            response.unwrap_or_else(|(status, msg)| json_error(status, &msg, Some(&name)));
        if let Some(w) = waited {
            f.live.cold_starts.fetch_add(1, Ordering::Relaxed);
            self.metrics.cold_starts.get_or_create(&label(&name)).inc();
            if let Ok(v) = hyper::header::HeaderValue::from_str(&w.as_millis().to_string()) {
                response.headers_mut().insert(COLD_START, v);
            }
        }
        (response, waited.is_some())
    }

    async fn forward(
        &self,
        f: &Function,
        req: Request<Incoming>,
        tail: &str,
        client: SocketAddr,
    ) -> Result<Response<GatewayBody>, (StatusCode, String)> {
        let (mut parts, body) = req.into_parts();
        let body = http_body_util::Limited::new(body, self.config.max_body_size as usize)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    return (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the request body is larger than the gateway's limit of {} bytes (gateway.maxBodySize)", self.config.max_body_size),
                    );
                }
                (
                    StatusCode::BAD_REQUEST,
                    format!("failed to read the request body: {e}"),
                )
            })?
            .to_bytes();
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let uri = format!("{}{tail}{query}", f.entry.service.trim_end_matches('/'));
        parts.uri = uri.parse().map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("cannot forward to {uri}: {e}"),
            )
        })?;
        super::proxy::strip_hop_by_hop(&mut parts.headers);
        super::proxy::add_forwarded(&mut parts.headers, client);
        let upstream = Request::from_parts(parts, Full::new(body));
        let resp = tokio::time::timeout(f.timeout, self.http.request(upstream))
            .await
            .map_err(|_| {
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "the function did not answer within its timeout of {}",
                        f.entry.timeout
                    ),
                )
            })?
            .map_err(|e| {
                (
                    StatusCode::BAD_GATEWAY,
                    format!("the function's service did not answer: {e}"),
                )
            })?;
        let (mut head, body) = resp.into_parts();
        super::proxy::strip_hop_by_hop(&mut head.headers);
        let bytes = body
            .collect()
            .await
            .map_err(|e| {
                (
                    StatusCode::BAD_GATEWAY,
                    format!("the answer broke off: {e}"),
                )
            })?
            .to_bytes();
        Ok(Response::from_parts(
            head,
            Full::new(bytes)
                .map_err(|never: Infallible| match never {})
                .boxed(),
        ))
    }
}

impl Live {
    /// A function just loaded counts as just requested: it gets its idle time before the
    /// gateway scales it down (a restarted gateway does not drop replicas serving traffic).
    fn new() -> Self {
        Self {
            ready: AtomicU32::new(0),
            desired: AtomicU32::new(0),
            known: std::sync::atomic::AtomicBool::new(false),
            inflight: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            baseline_ready: AtomicU32::new(0),
            cold_starts: AtomicU32::new(0),
            last_request: Mutex::new(Some(Instant::now())),
            below_since: Mutex::new(None),
            became_ready: Notify::new(),
        }
    }
}

impl Function {
    fn new(entry: RouteEntry, live: Arc<Live>) -> Self {
        Self {
            idle: dur(&entry.scale.idle, Duration::from_secs(60)),
            cold_start_timeout: dur(&entry.scale.cold_start_timeout, Duration::from_secs(30)),
            timeout: dur(&entry.timeout, Duration::from_secs(30)),
            live,
            entry,
        }
    }

    fn since_request(&self) -> Duration {
        self.live
            .last_request
            .lock()
            .expect("last request lock")
            .map_or(Duration::MAX, |t| t.elapsed())
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    gateway: Arc<KubeGateway>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => return,
        };
        let Ok((stream, peer)): Result<(tokio::net::TcpStream, SocketAddr), _> = accepted else {
            continue;
        };
        let gw = gateway.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(gw.handle(req, peer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}
