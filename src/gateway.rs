//! The gateway: routes requests to functions, holds them while a replica starts, scales
//! replicas, exports metrics and serves the admin API. `app` logic lives in `handle`; the
//! listener, graceful shutdown and the autoscaler loop in `serve`.

pub mod admin;
pub mod dispatch;
pub mod function;
pub mod kubernetes;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod scaler;
pub mod serve;
pub mod table;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::runtime::local::{self, LogBuffer};
use crate::runtime::replicas::ProbeClient;
use crate::spec::{self, Function, Repo};
use function::FunctionState;
use metrics::{label, Metrics, StateLabels};
use proxy::{full, GatewayBody};
use routes::Routes;

/// How often the autoscaler looks at every function.
pub(crate) const AUTOSCALE_EVERY: Duration = Duration::from_millis(100);

/// Everything the gateway is told at start.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub root: PathBuf,
    /// `.cubeflash/` under the repo: shims, logs, admin token, pidfile.
    pub state_dir: PathBuf,
    pub bind: IpAddr,
    pub port: u16,
    pub max_body: usize,
    pub queue_size: u32,
    pub admin_token: String,
    /// How long SIGTERM waits for in-flight requests.
    pub grace: Duration,
}

/// Why the gateway could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    Local(#[from] local::LocalError),
    #[error("failed to listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct Gateway {
    pub config: GatewayConfig,
    routes: RwLock<Arc<Routes>>,
    pub metrics: Arc<Metrics>,
    upstreams: Arc<upstream::UpstreamPool>,
    runtimes: Arc<local::Runtimes>,
    probe: ProbeClient,
    /// The runtime `new` ran on: replica supervisors and background work live there.
    main: tokio::runtime::Handle,
    calls: AtomicU64,
    call_prefix: String,
    /// The address actually bound (port 0 resolved).
    pub local_addr: RwLock<Option<SocketAddr>>,
}

/// A JSON error body: {"error": ..., "function": ...}.
pub fn json_error(
    status: StatusCode,
    message: &str,
    function: Option<&str>,
) -> Response<GatewayBody> {
    let body = serde_json::json!({ "error": message, "function": function });
    let mut resp = json_response(status, &body);
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("1"),
        );
    }
    resp
}

pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<GatewayBody> {
    let mut text = serde_json::to_string_pretty(value).expect("json serializes");
    text.push('\n');
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(full(text))
        .expect("valid response")
}

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    // Small responses would otherwise wait for delayed ACKs.
    c.set_nodelay(true);
    c.set_connect_timeout(Some(Duration::from_secs(2)));
    c
}

impl Gateway {
    /// Builds the gateway for `repo`; starts nothing yet.
    pub fn new(repo: &Repo, config: GatewayConfig) -> Result<Arc<Self>, GatewayError> {
        let runtimes = local::Runtimes::new(&config.state_dir)?;
        let probe = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector());
        let gateway = Arc::new(Self {
            config,
            routes: RwLock::new(Arc::new(Routes::default())),
            metrics: Arc::new(Metrics::default()),
            upstreams: Arc::default(),
            runtimes,
            probe,
            main: tokio::runtime::Handle::current(),
            calls: AtomicU64::new(0),
            call_prefix: format!(
                "{:x}{:x}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis()),
                std::process::id()
            ),
            local_addr: RwLock::new(None),
        });
        let functions = repo
            .functions
            .iter()
            .map(|f| gateway.function_state(f.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        *gateway.routes.write().expect("routes lock") = Arc::new(Routes::new(functions));
        Ok(gateway)
    }

    fn function_state(&self, f: Function) -> Result<Arc<FunctionState>, GatewayError> {
        let spec = local::process_spec(&self.config.root, &self.runtimes, &f)?;
        let logs = Arc::new(LogBuffer::with_file(&local::log_path(
            &self.config.state_dir,
            &f.spec.name,
        )));
        Ok(FunctionState::new(
            f,
            spec,
            logs,
            self.probe.clone(),
            self.metrics.clone(),
            self.main.clone(),
        ))
    }

    pub fn routes(&self) -> Arc<Routes> {
        self.routes.read().expect("routes lock").clone()
    }

    /// Unique per call: this gateway's start (fixed prefix) and a counter. Cheap: no
    /// syscall, one allocation.
    fn next_call_id(&self) -> String {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}", self.call_prefix)
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

    /// Answers one request.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<GatewayBody> {
        let path = req.uri().path().to_string();
        if path == "/healthz" {
            return json_response(StatusCode::OK, &serde_json::json!({ "status": "ok" }));
        }
        if path == "/metrics" {
            return self.metrics_response();
        }
        if path == "/system" || path.starts_with("/system/") {
            return self.admin(req).await;
        }
        let routes = self.routes();
        if let Some(rest) = path.strip_prefix("/function/") {
            let (name, suffix) = rest.split_once('/').map_or((rest, ""), |(n, s)| (n, s));
            return match routes.by_name.get(name) {
                Some(f) => {
                    let forward = format!("/{suffix}");
                    self.dispatch(f.clone(), req, &forward, client).await
                }
                None => json_error(
                    StatusCode::NOT_FOUND,
                    &format!("no function named {name:?}; `cubeflash list` shows them"),
                    Some(name),
                ),
            };
        }
        match routes.trigger(req.method().as_str(), &path) {
            Some(f) => self.dispatch(f, req, &path, client).await,
            None => json_error(
                StatusCode::NOT_FOUND,
                &format!("nothing is routed at {} {path}", req.method()),
                None,
            ),
        }
    }

    fn metrics_response(&self) -> Response<GatewayBody> {
        for f in self.routes().functions() {
            let name = f.name().to_string();
            let set = |state: &'static str, v: u32| {
                self.metrics
                    .replicas
                    .get_or_create(&StateLabels {
                        function: name.clone(),
                        state,
                    })
                    .set(i64::from(v));
            };
            let ready = f.serverless.ready_count();
            set("ready", ready);
            set("starting", f.serverless.running().saturating_sub(ready));
            set(
                "baseline",
                f.baseline.as_ref().map_or(0, |b| b.ready_count()),
            );
            self.metrics
                .inflight
                .get_or_create(&label(&name))
                .set(i64::from(f.inflight.load(Ordering::Relaxed)));
            self.metrics
                .queued
                .get_or_create(&label(&name))
                .set(i64::from(f.queued.load(Ordering::Relaxed)));
        }
        self.metrics.upstream_idle.set(self.upstreams.idle() as i64);
        Response::builder()
            .header(
                hyper::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(full(self.metrics.encode()))
            .expect("valid response")
    }

    /// Reloads the repo from disk: new functions start, removed ones drain and stop,
    /// changed ones get new replicas before the old ones drain.
    pub async fn reload(self: &Arc<Self>) -> Result<serde_json::Value, GatewayError> {
        let repo = spec::load(&self.config.root)?;
        let old = self.routes();
        let (mut added, mut changed, mut kept) = (Vec::new(), Vec::new(), Vec::new());
        let mut next = Vec::new();
        for f in &repo.functions {
            match old.by_name.get(&f.spec.name) {
                Some(existing) if same_function(&existing.function, f) => {
                    kept.push(f.spec.name.clone());
                    next.push(existing.clone());
                }
                Some(_) => {
                    changed.push(f.spec.name.clone());
                    next.push(self.function_state(f.clone())?);
                }
                None => {
                    added.push(f.spec.name.clone());
                    next.push(self.function_state(f.clone())?);
                }
            }
        }
        for f in &next {
            if !kept.iter().any(|k| k == f.name()) {
                f.start();
            }
        }
        let retired: Vec<Arc<FunctionState>> = old
            .functions()
            .into_iter()
            .filter(|f| !kept.iter().any(|k| k == f.name()))
            .collect();
        let removed: Vec<String> = retired
            .iter()
            .filter(|f| !changed.iter().any(|c| c == f.name()))
            .map(|f| f.name().to_string())
            .collect();
        self.runtimes
            .warm(next.iter().map(|f| f.function.spec.runtime));
        *self.routes.write().expect("routes lock") = Arc::new(Routes::new(next));
        for f in retired {
            self.main.spawn(async move { f.shutdown().await });
        }
        Ok(serde_json::json!({ "added": added, "changed": changed, "removed": removed }))
    }
}

/// Same spec (ignoring where keys were written) and same code.
fn same_function(a: &Function, b: &Function) -> bool {
    let strip = |f: &Function| {
        let mut s = f.spec.clone();
        s.locs = Default::default();
        s
    };
    strip(a) == strip(b) && a.files == b.files
}

/// The admin token: CUBEFLASH_ADMIN_TOKEN, else `.cubeflash/admin-token`, generated (mode
/// 0600) on first start. Returns the token and whether it was just generated.
pub fn admin_token(state_dir: &Path) -> std::io::Result<(String, bool)> {
    if let Ok(token) = std::env::var("CUBEFLASH_ADMIN_TOKEN") {
        if !token.is_empty() {
            return Ok((token, false));
        }
    }
    let path = state_dir.join("admin-token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_string();
        if !token.is_empty() {
            return Ok((token, false));
        }
    }
    std::fs::create_dir_all(state_dir)?;
    let mut bytes = [0u8; 24];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)?;
    use std::io::Write;
    writeln!(file, "{token}")?;
    Ok((token, true))
}
