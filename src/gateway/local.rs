//! The local backend: functions loaded from the repo on disk, each a pair of process replica
//! sets (`runtime::replicas`), reloaded on `deploy`; schedule triggers fired by the gateway
//! itself; the warm interpreter pool. Routing, queueing and forwarding are the engine's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::runtime::local::{self, LogBuffer, Runtimes};
use crate::runtime::pool::ReplicaPool;
use crate::runtime::replicas::{ProbeClient, ReplicaSet};
use crate::spec::{self, Function, Repo};

use super::api::Reloaded;
use super::function::FunctionState;
use super::table::RouteEntry;
use super::{Backend, Gateway, GatewayError};

pub struct LocalBackend {
    root: PathBuf,
    /// `.cubeflash/` under the repo: shims, logs, tokens, pidfile.
    state_dir: PathBuf,
    runtimes: Arc<Runtimes>,
    probe: ProbeClient,
    /// What each running function was loaded from, to tell what a reload changes.
    loaded: Mutex<HashMap<String, Function>>,
}

/// How long in-flight requests may take to finish before a replica is stopped anyway.
fn drain_grace(f: &Function) -> Duration {
    f.spec.timeout.value + Duration::from_secs(1)
}

impl LocalBackend {
    /// Builds the backend for the repo at `root` and installs its functions in `gateway`.
    /// Call inside the runtime that will supervise the replicas.
    pub fn attach(
        gateway: &Arc<Gateway>,
        repo: &Repo,
        root: &Path,
        state_dir: &Path,
    ) -> Result<Arc<Self>, GatewayError> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let probe = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        let backend = Arc::new(Self {
            root: root.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            runtimes: Runtimes::new(state_dir)?,
            probe,
            loaded: Mutex::default(),
        });
        gateway.set_backend(backend.clone());
        backend.load(gateway, repo)?;
        Ok(backend)
    }

    fn function_state(
        &self,
        gateway: &Gateway,
        f: &Function,
    ) -> Result<Arc<FunctionState>, GatewayError> {
        let spec = local::process_spec(&self.root, &self.runtimes, f)?;
        let logs = Arc::new(LogBuffer::with_file(&local::log_path(
            &self.state_dir,
            &f.spec.name,
        )));
        let handle = tokio::runtime::Handle::current();
        let grace = drain_grace(f);
        let serverless: Arc<dyn ReplicaPool> = ReplicaSet::new(
            spec.clone(),
            logs.clone(),
            grace,
            self.probe.clone(),
            handle.clone(),
        );
        let baseline = f.spec.baseline.as_ref().map(|_| {
            let mut spec = spec.clone();
            spec.function = format!("{}-baseline", f.spec.name);
            ReplicaSet::new(spec, logs.clone(), grace, self.probe.clone(), handle)
                as Arc<dyn ReplicaPool>
        });
        Ok(FunctionState::new(
            RouteEntry::new("local", f),
            serverless,
            baseline,
            gateway.metrics.clone(),
        ))
    }

    /// Serves `repo`'s functions: unchanged ones keep their replicas, changed ones get new
    /// replicas before the old ones drain, removed ones stop.
    fn load(&self, gateway: &Gateway, repo: &Repo) -> Result<Reloaded, GatewayError> {
        let current = gateway.routes();
        let mut loaded = self.loaded.lock().expect("loaded lock");
        let mut report = Reloaded::default();
        let mut next = Vec::new();
        for f in &repo.functions {
            let name = &f.spec.name;
            match (loaded.get(name), current.by_name.get(name)) {
                (Some(old), Some(state)) if same_function(old, f) => next.push(state.clone()),
                (Some(_), Some(_)) => {
                    report.changed.push(name.clone());
                    next.push(self.function_state(gateway, f)?);
                }
                _ => {
                    report.added.push(name.clone());
                    next.push(self.function_state(gateway, f)?);
                }
            }
        }
        report.removed = current
            .functions()
            .iter()
            .map(|f| f.name().to_string())
            .filter(|n| !repo.functions.iter().any(|f| &f.spec.name == n))
            .collect();
        // Every function whose replicas are kept: `deploy` clears a crash loop at once.
        for f in &next {
            if current
                .by_name
                .get(f.name())
                .is_some_and(|c| Arc::ptr_eq(c, f))
                && f.serverless.failure().is_some()
            {
                f.serverless
                    .scale_to(f.entry.scale.min.max(f.serverless.wanted()), true);
            }
        }
        self.runtimes
            .warm(repo.functions.iter().map(|f| f.spec.runtime));
        gateway.install(next);
        *loaded = repo
            .functions
            .iter()
            .map(|f| (f.spec.name.clone(), f.clone()))
            .collect();
        tracing::info!(added = ?report.added, changed = ?report.changed, removed = ?report.removed, "functions loaded");
        Ok(report)
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

impl Backend for LocalBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn repo(&self) -> Option<String> {
        Some(self.root.display().to_string())
    }

    fn trouble(&self) -> Option<String> {
        None
    }

    fn reload<'a>(&'a self, gateway: &'a Arc<Gateway>) -> BoxFuture<'a, Result<Reloaded, String>> {
        Box::pin(async move {
            let repo =
                spec::load(&self.root).map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
            self.load(gateway, &repo)
                .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
        })
    }

    fn start(
        self: Arc<Self>,
        gateway: Arc<Gateway>,
        _stop: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        vec![tokio::spawn(schedule_loop(gateway))]
    }

    fn shutdown(&self) {
        self.runtimes.shutdown();
    }
}

/// Fires schedule triggers: once a second, calls every due function through the engine
/// (marked `X-Cubeflash-Trigger: schedule`, which no client can send), and notes the call in
/// the function's log.
async fn schedule_loop(gateway: Arc<Gateway>) {
    use crate::triggers::schedule::{ScheduleKey, Schedules};
    let mut schedules = Schedules::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let me: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    loop {
        tick.tick().await;
        let routes = gateway.routes();
        let current: Vec<(ScheduleKey, String)> = routes
            .functions()
            .iter()
            .flat_map(|f| {
                let name = f.name().to_string();
                f.entry
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
            let gateway = gateway.clone();
            tokio::spawn(async move {
                let req = hyper::Request::post("/")
                    .body(Full::new(Bytes::from(body)))
                    .expect("a valid request");
                let resp = gateway
                    .dispatch_as(f.clone(), req, "/", me, Some("schedule"))
                    .await;
                let outcome = resp.status().to_string();
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                tracing::info!(function = %key.function, schedule = key.index + 1, cron = %key.cron, status = %outcome, "schedule fired");
                f.serverless.note(format!(
                    "[{}] cubeflash: schedule {} ({}) fired: {outcome}",
                    key.function,
                    key.index + 1,
                    key.cron
                ));
            });
        }
    }
}
