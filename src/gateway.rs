//! The gateway engine: one `Gateway` type owns routing, body limits, the cold-start queue,
//! in-flight accounting, the autoscaler loop, forwarding, metrics, the admin API and the
//! listener, for every target. A `Backend` supplies what differs between targets: the
//! replica pools of each function (`runtime::pool::ReplicaPool`), its health, reload and
//! its background work (local: supervision and schedules; Kubernetes: watches).
//!
//! The request path (`handle`) takes any body type, so tests call it without a listener.

pub mod admin;
pub mod api;
pub mod async_calls;
pub mod bench_runs;
pub mod body;
pub mod client;
pub mod dashboard;
pub mod dispatch;
pub mod function;
pub mod history;
pub mod kubernetes;
pub mod local;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod scaler;
pub mod serve;
pub mod table;
pub mod tokens;
pub mod ui;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use hyper::body::Body;
use hyper::{Request, Response, StatusCode};

use function::FunctionState;
use metrics::Metrics;
use proxy::{full, GatewayBody};
use routes::{Match, Routes};

/// How often the autoscaler looks at every function.
pub(crate) const AUTOSCALE_EVERY: Duration = Duration::from_millis(100);

/// What the engine is told at start, the same on every target.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub bind: IpAddr,
    pub port: u16,
    pub max_body: usize,
    pub queue_size: u32,
    /// Bearer tokens of the admin API: the admin one may change things, the read-only one
    /// may look. None: that kind of access is off.
    pub admin_token: Option<String>,
    pub read_token: Option<String>,
    /// How long SIGTERM waits for in-flight requests.
    pub grace: Duration,
    pub limits: ConnectionLimits,
}

/// What one client may hold of the gateway.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open client connections served at once; past it, new ones get only a short answer.
    pub max_connections: usize,
    /// The request head must arrive within this.
    pub header_timeout: Duration,
    /// A request body that sends nothing for this long gets 408.
    pub body_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    pub fn from_settings(g: &crate::spec::project::GatewaySettings) -> Self {
        Self {
            max_connections: g.max_connections as usize,
            header_timeout: g.header_timeout.value,
            body_timeout: g.body_timeout.value,
            idle_timeout: g.idle_timeout.value,
        }
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 2048,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
        }
    }
}

/// Why the gateway could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    Local(#[from] crate::runtime::local::LocalError),
    #[error("failed to listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What differs between targets, beyond each function's replica pools.
pub trait Backend: Send + Sync + 'static {
    /// "local" or "kubernetes", as /healthz says.
    fn kind(&self) -> &'static str;
    /// The repo this gateway serves (local: its root), so a CLI can tell it is its own.
    fn repo(&self) -> Option<String> {
        None
    }
    /// Why the backend cannot watch or scale now, if so.
    fn trouble(&self) -> Option<String>;
    /// Loads the functions again (local: from disk, each changed function rolled out and,
    /// with `verify`, one at zero started once before it is switched; Kubernetes: the
    /// route ConfigMap).
    fn reload<'a>(
        &'a self,
        gateway: &'a Arc<Gateway>,
        verify: bool,
    ) -> BoxFuture<'a, Result<api::Reloaded, String>>;
    /// Where this backend keeps async calls, if it can.
    fn calls(&self) -> Option<Arc<async_calls::AsyncCalls>> {
        None
    }
    /// Starts the backend's own loops; they stop when `stop` fires.
    fn start(
        self: Arc<Self>,
        gateway: Arc<Gateway>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>>;
    /// Runs after the listener closed and every function stopped.
    fn shutdown(&self) {}
}

pub struct Gateway {
    pub config: GatewayConfig,
    routes: RwLock<Arc<Routes>>,
    pub metrics: Arc<Metrics>,
    upstreams: Arc<upstream::UpstreamPool>,
    backend: RwLock<Option<Arc<dyn Backend>>>,
    calls: AtomicU64,
    call_prefix: String,
    /// SIGTERM arrived: /healthz says so while in-flight requests finish.
    draining: AtomicBool,
    /// The address actually bound (port 0 resolved).
    pub local_addr: RwLock<Option<SocketAddr>>,
    /// The dashboard's charts and its live table (`dashboard.rs`).
    pub history: history::History,
    dashboard: dashboard::DashboardState,
}

/// A JSON error body: {"error": ..., "function": ...}.
pub fn json_error(
    status: StatusCode,
    message: &str,
    function: Option<&str>,
) -> Response<GatewayBody> {
    error_response(
        status,
        &api::ErrorBody {
            error: message.to_string(),
            function: function.map(str::to_string),
            log: None,
        },
    )
}

/// An answer the gateway itself gives (not a function's), marked `X-Cubeflash-Origin:
/// gateway` so a client (`cubeflash invoke`) can tell it from a function's own error.
pub fn error_response(status: StatusCode, body: &api::ErrorBody) -> Response<GatewayBody> {
    let mut resp = json_response(status, body);
    let headers = resp.headers_mut();
    headers.insert(proxy::ORIGIN, proxy::ORIGIN_GATEWAY);
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("1"),
        );
    }
    resp
}

pub fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<GatewayBody> {
    let mut text = serde_json::to_string_pretty(value).expect("json serializes");
    text.push('\n');
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(full(text))
        .expect("valid response")
}

impl Gateway {
    /// An engine with no functions and no backend yet (`set_backend`, then `install`).
    pub fn new(config: GatewayConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            routes: RwLock::new(Arc::new(Routes::default())),
            metrics: Arc::new(Metrics::default()),
            upstreams: Arc::default(),
            backend: RwLock::new(None),
            calls: AtomicU64::new(0),
            call_prefix: format!(
                "{:x}{:x}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis()),
                std::process::id()
            ),
            draining: AtomicBool::new(false),
            local_addr: RwLock::new(None),
            history: history::History::default(),
            dashboard: dashboard::DashboardState::default(),
        })
    }

    pub fn set_backend(&self, backend: Arc<dyn Backend>) {
        *self.backend.write().expect("backend lock") = Some(backend);
    }

    pub fn backend(&self) -> Option<Arc<dyn Backend>> {
        self.backend.read().expect("backend lock").clone()
    }

    pub fn routes(&self) -> Arc<Routes> {
        self.routes.read().expect("routes lock").clone()
    }

    /// Serves `functions` from now on: new ones start, those no longer listed drain and
    /// stop. A function kept from the current table is passed in as the same `Arc`.
    pub fn install(&self, functions: Vec<Arc<FunctionState>>) {
        let old = self.routes();
        let next = Routes::new(functions);
        for f in next.functions() {
            let kept = old.by_name.get(f.name()).is_some_and(|o| Arc::ptr_eq(o, f));
            if !kept {
                f.start();
            }
        }
        let retired: Vec<Arc<FunctionState>> = old
            .functions()
            .iter()
            .filter(|o| {
                !next
                    .by_name
                    .get(o.name())
                    .is_some_and(|n| Arc::ptr_eq(n, o))
            })
            .cloned()
            .collect();
        let next = Arc::new(next);
        *self.routes.write().expect("routes lock") = next.clone();
        for f in retired {
            f.mark_retired();
            let successor = next.by_name.get(f.name()).cloned();
            tokio::spawn(async move { f.retire(successor.as_deref()).await });
        }
    }

    /// Takes `name` out of the table; its replicas stop.
    pub async fn remove(&self, name: &str) -> bool {
        let found = {
            let mut routes = self.routes.write().expect("routes lock");
            let Some(found) = routes.by_name.get(name).cloned() else {
                return false;
            };
            let rest: Vec<_> = routes
                .functions()
                .iter()
                .filter(|f| f.name() != name)
                .cloned()
                .collect();
            *routes = Arc::new(Routes::new(rest));
            found
        };
        found.mark_retired();
        found.shutdown().await;
        true
    }

    /// Unique per call: this gateway's start (fixed prefix) and a counter in hex. Cheap: no
    /// syscall, no formatting machinery, one allocation shared by the request's and the
    /// answer's header.
    fn next_call_id(&self) -> hyper::header::HeaderValue {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let mut id = String::with_capacity(self.call_prefix.len() + 17);
        id.push_str(&self.call_prefix);
        id.push('-');
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
        for shift in (0..digits).rev() {
            let d = ((n >> (shift * 4)) & 0xf) as u8;
            id.push(char::from(if d < 10 { b'0' + d } else { b'a' + d - 10 }));
        }
        hyper::header::HeaderValue::from_maybe_shared(Bytes::from(id))
            .expect("a call id is a valid header value")
    }

    /// The base URL clients reach the gateway at.
    pub fn url(&self) -> String {
        let addr = self
            .local_addr
            .read()
            .expect("addr lock")
            .unwrap_or(SocketAddr::new(self.config.bind, self.config.port));
        let ip = if addr.ip().is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            addr.ip()
        };
        format!("http://{}", SocketAddr::new(ip, addr.port()))
    }

    /// SIGTERM arrived: requests in flight are finishing.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Why the gateway is not ready to serve (draining, or the backend's trouble).
    pub fn not_ready(&self) -> Option<String> {
        if self.draining.load(Ordering::Relaxed) {
            return Some("the gateway is shutting down".into());
        }
        self.backend().and_then(|b| b.trouble())
    }

    /// Answers one request.
    pub async fn handle<B>(
        self: &Arc<Self>,
        req: Request<B>,
        client: SocketAddr,
    ) -> Response<GatewayBody>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<body::BoxError>,
    {
        let path = req.uri().path();
        if path == "/healthz" || path == "/readyz" {
            return self.health();
        }
        // Alive, whatever the backend can do: a liveness probe must not restart the gateway
        // over a refusal it reports in /readyz.
        if path == "/livez" {
            return json_response(StatusCode::OK, &serde_json::json!({ "status": "alive" }));
        }
        if path == "/metrics" {
            return self.metrics_response();
        }
        if path == "/system" || path.starts_with("/system/") {
            // Boxed: off the request path, and kept out of every request's future.
            return Box::pin(self.admin(req)).await;
        }
        let routes = self.routes();
        if let Some(rest) = path.strip_prefix("/function/") {
            let (name, forward) = split_function_path(rest);
            return match routes.by_name.get(name) {
                Some(f) => {
                    let forward = forward.to_string();
                    self.dispatch(f.clone(), req, &forward, client).await
                }
                None => routes.no_such_function(name),
            };
        }
        if let Some(rest) = path.strip_prefix("/baseline/") {
            let (name, forward) = split_function_path(rest);
            return match routes.by_name.get(name) {
                Some(f) => {
                    let forward = forward.to_string();
                    self.dispatch_baseline(f.clone(), req, &forward, client)
                        .await
                }
                None => routes.no_such_function(name),
            };
        }
        if let Some(rest) = path.strip_prefix("/async-function/") {
            let rest = rest.to_string();
            return Box::pin(self.accept_async(req, &rest)).await;
        }
        if path == "/ui" || path.starts_with("/ui/") {
            return ui::serve(self, &req);
        }
        match routes.trigger(req.method().as_str(), path) {
            Match::Found(f) => {
                let path = path.to_string();
                self.dispatch(f, req, &path, client).await
            }
            Match::MethodNotAllowed(allowed) => {
                let mut resp = json_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &format!(
                        "{path} does not take {}; it takes {}",
                        req.method(),
                        allowed.join(", ")
                    ),
                    None,
                );
                if let Ok(v) = hyper::header::HeaderValue::from_str(&allowed.join(", ")) {
                    resp.headers_mut().insert(hyper::header::ALLOW, v);
                }
                resp
            }
            Match::NotFound if path == "/" && req.method() == hyper::Method::GET => {
                ui::to_dashboard()
            }
            Match::NotFound => json_error(
                StatusCode::NOT_FOUND,
                &format!("nothing is routed at {} {path}", req.method()),
                None,
            ),
        }
    }

    fn health(&self) -> Response<GatewayBody> {
        let backend = self.backend();
        let body = api::Health {
            status: if self.not_ready().is_some() {
                "unavailable"
            } else {
                "ok"
            }
            .into(),
            backend: backend.as_ref().map_or("none", |b| b.kind()).into(),
            repo: backend.as_ref().and_then(|b| b.repo()),
            reason: self.not_ready(),
            pid: std::process::id(),
        };
        let status = if body.reason.is_some() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        json_response(status, &body)
    }

    fn metrics_response(&self) -> Response<GatewayBody> {
        self.metrics
            .refresh(self.routes().functions(), self.upstreams.idle());
        Response::builder()
            .header(
                hyper::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(full(self.metrics.encode()))
            .expect("valid response")
    }

    /// Asks the backend to load the functions again.
    pub async fn reload(self: &Arc<Self>, verify: bool) -> Result<api::Reloaded, String> {
        match self.backend() {
            Some(b) => b.reload(self, verify).await,
            None => Err("the gateway has no backend".into()),
        }
    }
}

/// `NAME/rest` of `/function/NAME/rest`: the name, and the path forwarded (from its slash,
/// or `/`).
fn split_function_path(rest: &str) -> (&str, &str) {
    let name = rest.split_once('/').map_or(rest, |(n, _)| n);
    let forward = match &rest[name.len()..] {
        "" => "/",
        tail => tail,
    };
    (name, forward)
}
