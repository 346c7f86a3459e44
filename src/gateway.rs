//! The gateway: routes requests to functions, holds them while a replica starts, scales
//! replicas, exports metrics and serves the admin API. `app` logic lives in `handle`; the
//! listener, graceful shutdown and the autoscaler loop in `serve`.

pub mod admin;
pub mod dispatch;
pub mod function;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod scaler;
pub mod upstream;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::runtime::local::{self, LogBuffer};
use crate::runtime::replicas::ProbeClient;
use crate::spec::{self, Function, Repo};
use function::FunctionState;
use metrics::{label, Metrics, StateLabels};
use proxy::{full, GatewayBody};
use routes::Routes;

/// How often the autoscaler looks at every function.
const AUTOSCALE_EVERY: Duration = Duration::from_millis(100);

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
        let logs = Arc::new(LogBuffer::with_file(
            &self
                .config
                .state_dir
                .join("logs")
                .join(format!("{}.log", f.spec.name)),
        ));
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

    /// Serves on `listener` until `shutdown` resolves, then drains in-flight requests
    /// (bounded by `grace`) and stops every replica.
    ///
    /// Requests are served by one single-threaded runtime per core, each accepting on the
    /// same socket (the nginx model): a connection and the replica connections it uses stay
    /// on one thread, with no work stealing and no cross-thread wake-ups on the hot path.
    /// `CUBEFLASH_WORKERS` sets their number.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        *self.local_addr.write().expect("addr lock") = listener.local_addr().ok();
        for f in self.routes().functions() {
            f.start();
        }
        self.runtimes.warm(
            self.routes()
                .functions()
                .iter()
                .map(|f| f.function.spec.runtime),
        );
        let scaler = tokio::spawn(autoscale_loop(self.clone()));
        let scheduler = tokio::spawn(schedule_loop(self.clone()));
        let workers = std::env::var("CUBEFLASH_WORKERS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let std_listener = listener.into_std().expect("a bound listener converts");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut threads = Vec::new();
        for i in 0..workers {
            let listener = std_listener
                .try_clone()
                .expect("the listening socket can be shared");
            let gateway = self.clone();
            let stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("cubeflash-http-{i}"))
                .spawn(move || gateway.serve_worker(listener, stopped))
                .expect("worker threads start");
            threads.push(thread);
        }
        drop(std_listener);
        shutdown.await;
        let _ = stop.send(true);
        for t in threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        scaler.abort();
        scheduler.abort();
        self.runtimes.shutdown();
        let functions = self.routes().functions();
        let stops = functions.iter().map(|f| f.shutdown());
        futures_join_all(stops).await;
    }

    /// One serving thread: accepts and serves connections until told to stop, then lets
    /// in-flight requests finish (bounded by `grace`).
    fn serve_worker(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a worker runtime starts");
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener).expect("a non-blocking listener");
            let graceful = hyper_util::server::graceful::GracefulShutdown::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, client)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        let gateway = self.clone();
                        let service = service_fn(move |req| {
                            let gateway = gateway.clone();
                            async move { Ok::<_, std::convert::Infallible>(gateway.handle(req, client).await) }
                        });
                        let conn = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(Duration::from_secs(30))
                            .serve_connection(TokioIo::new(stream), service);
                        let conn = graceful.watch(conn);
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                    }
                    _ = stopped.changed() => break,
                }
            }
            drop(listener);
            let _ = tokio::time::timeout(self.config.grace, graceful.shutdown()).await;
        });
    }
}

/// Awaits every future (a tiny join_all, to avoid a dependency for one call).
async fn futures_join_all<F: Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let handles: Vec<_> = futures.collect();
    for f in handles {
        f.await;
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

async fn autoscale_loop(gateway: Arc<Gateway>) {
    let mut tick = tokio::time::interval(AUTOSCALE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        tick.tick().await;
        let now = Instant::now();
        let dt = (now - last).as_secs_f64();
        last = now;
        for f in gateway.routes().functions() {
            f.autoscale();
            let held = f.serverless.running() + f.baseline.as_ref().map_or(0, |b| b.running());
            if held > 0 {
                gateway
                    .metrics
                    .replica_seconds
                    .get_or_create(&label(f.name()))
                    .inc_by(f64::from(held) * dt);
            }
        }
    }
}

/// Fires schedule triggers: once a second, calls every due function through the gateway
/// itself, and notes the call in the function's log.
async fn schedule_loop(gateway: Arc<Gateway>) {
    use crate::triggers::schedule::{ScheduleKey, Schedules};
    let client = reqwest::Client::new();
    let mut schedules = Schedules::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let routes = gateway.routes();
        let current: Vec<(ScheduleKey, String)> = routes
            .functions()
            .iter()
            .flat_map(|f| {
                let name = f.name().to_string();
                f.function
                    .spec
                    .schedule_triggers()
                    .enumerate()
                    .map(move |(index, t)| {
                        (
                            ScheduleKey {
                                function: name.clone(),
                                index,
                                cron: t.cron.clone(),
                            },
                            t.body.clone(),
                        )
                    })
            })
            .collect();
        for (key, body) in schedules.due(&current, chrono::Utc::now()) {
            let Some(f) = routes.by_name.get(&key.function).cloned() else {
                continue;
            };
            let request = client
                .post(format!("{}/function/{}", gateway.url(), key.function))
                .header("X-Cubeflash-Trigger", "schedule")
                .body(body);
            tokio::spawn(async move {
                let outcome = match request.send().await {
                    Ok(resp) => resp.status().to_string(),
                    Err(e) => format!("failed: {e}"),
                };
                f.logs.push(format!(
                    "[{}] cubeflash: schedule {} ({}) fired: {outcome}",
                    key.function,
                    key.index + 1,
                    key.cron
                ));
            });
        }
    }
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
