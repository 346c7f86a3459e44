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
use crate::runtime::{deps, secrets};
use crate::spec::{self, Function, Repo, Runtime};

use super::api::{Reloaded, RolloutFailure};
use super::async_calls::AsyncCalls;
use super::function::FunctionState;
use super::table::RouteEntry;
use super::{Backend, Gateway, GatewayError};
use crate::triggers::calls::CallStore;
use crate::triggers::store::Store;

pub struct LocalBackend {
    root: PathBuf,
    /// `.cubeflash/` under the repo: shims, logs, tokens, pidfile.
    state_dir: PathBuf,
    runtimes: Arc<Runtimes>,
    probe: ProbeClient,
    /// What each running function was loaded from, to tell what a reload changes.
    loaded: Mutex<HashMap<String, Function>>,
    /// Held for a whole reload: two deploys at once roll out one after the other.
    reloading: tokio::sync::Mutex<()>,
    /// The code copy (`local::snapshot`) each serving version runs from.
    dirs: Arc<Mutex<HashMap<String, PathBuf>>>,
    /// Async calls, in `.cubeflash/calls.redb` (None when it could not be opened: async
    /// calls then answer 503).
    calls: Option<Arc<AsyncCalls>>,
    /// The NATS server queue triggers consume from (cubeflash.yaml at start).
    nats: Option<String>,
    /// The shared dependency cache (deps.rs).
    cache: PathBuf,
}

/// The async call store under the state dir.
pub const CALLS_FILE: &str = "calls.redb";

/// How long in-flight requests may take to finish before a replica is stopped anyway.
fn drain_grace(f: &Function) -> Duration {
    f.spec.timeout.value + Duration::from_secs(1)
}

impl LocalBackend {
    /// Builds the backend for the repo at `root` and installs its functions in `gateway`
    /// (with `verify`, each is started once first; see `load`). Call inside the runtime
    /// that will supervise the replicas.
    pub async fn attach(
        gateway: &Arc<Gateway>,
        repo: &Repo,
        root: &Path,
        state_dir: &Path,
        verify: bool,
    ) -> Result<(Arc<Self>, Reloaded), GatewayError> {
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
            reloading: tokio::sync::Mutex::new(()),
            nats: repo.project.nats.as_ref().map(|n| n.url.clone()),
            cache: deps::cache_root(),
            dirs: Arc::default(),
            calls: match open_call_store(repo, state_dir).and_then(|store| {
                let secret = super::tokens::file_token(
                    state_dir,
                    &state_dir.join(super::tokens::CALLBACK_SECRET_FILE),
                )?;
                Ok(AsyncCalls::new(store, secret))
            }) {
                Ok(calls) => Some(calls),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "async calls are off: their store cannot be opened");
                    None
                }
            },
        });
        // A fresh start: no replica of an earlier gateway runs from these any more.
        let _ = std::fs::remove_dir_all(state_dir.join(local::VERSIONS_DIR));
        gateway.set_backend(backend.clone());
        let report = backend.load(gateway, repo, verify).await?;
        Ok((backend, report))
    }

    /// A new version of `f`, not yet serving, that runs from `dir` (its `local::snapshot`).
    fn function_state(
        &self,
        gateway: &Gateway,
        f: &Function,
        dir: PathBuf,
        installed: Option<&deps::Installed>,
        secrets: Option<&Path>,
    ) -> Result<Arc<FunctionState>, GatewayError> {
        let mut spec = local::process_spec(&self.root, &self.runtimes, f)?;
        if let Some(dir) = secrets {
            spec.env
                .push((secrets::ENV.into(), dir.to_string_lossy().into_owned()));
        }
        if let (Some(i), Runtime::Python) = (installed, f.spec.runtime) {
            spec.env.push((
                deps::PYTHON_ENV.into(),
                i.dir.to_string_lossy().into_owned(),
            ));
        }
        let logs = Arc::new(
            LogBuffer::with_file(&local::log_path(&self.state_dir, &f.spec.name))
                .rewriting(&dir, &spec.dir),
        );
        spec.dir = dir;
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

    /// The copy of `f`'s secrets its replicas read (None: it names none).
    fn secrets(&self, f: &Function) -> Result<Option<PathBuf>, secrets::SecretError> {
        let owner = self.runtimes.sandbox.user.as_ref().map(|u| (u.uid, u.gid));
        secrets::mount(&self.state_dir, &f.spec.name, &f.spec.secrets, owner)
    }

    /// Installs `f`'s dependencies into the shared cache unless they are there (None: it
    /// has none).
    async fn dependencies(&self, f: &Function) -> Result<Option<deps::Installed>, deps::DepsError> {
        let (python, node) = self.runtimes.interpreters();
        let Some(needs) = deps::needs(f, python, node) else {
            return Ok(None);
        };
        let installed =
            deps::install(&self.cache, f, &self.root.join(&f.rel_dir), &needs, python).await?;
        for line in &installed.unpinned {
            tracing::warn!(function = %f.spec.name, requirement = %line, "a requirement without an exact version (==): the next install may resolve another one");
        }
        if !installed.cached {
            tracing::info!(function = %f.spec.name, dir = %installed.dir.display(), "dependencies installed");
        }
        Ok(Some(installed))
    }

    /// Serves `repo`'s functions. Unchanged ones keep their replicas; a changed or added
    /// one is rolled out (`roll_out`) and switched over only once its new replicas are
    /// ready, so a version that does not start leaves the one before it serving; removed
    /// ones stop. One reload at a time.
    async fn load(
        &self,
        gateway: &Gateway,
        repo: &Repo,
        verify: bool,
    ) -> Result<Reloaded, GatewayError> {
        let _one_at_a_time = self.reloading.lock().await;
        let current = gateway.routes();
        let loaded = self.loaded.lock().expect("loaded lock").clone();
        let mut report = Reloaded::default();
        let mut steps = Vec::new();
        for f in &repo.functions {
            let name = &f.spec.name;
            let step = match (loaded.get(name), current.by_name.get(name)) {
                (Some(old), Some(state)) if same_function(old, f) => {
                    // A value set since: the copy its replicas read is refreshed in place.
                    if let Err(e) = self.secrets(f) {
                        tracing::warn!(function = %name, error = %e, "its secrets could not be refreshed");
                    }
                    report.unchanged.push(name.clone());
                    Step::Keep(state.clone())
                }
                (_, old) => {
                    // Secrets and dependencies first: a secret that is not set or a failed
                    // install leaves the running version be.
                    let prepared = match self.secrets(f) {
                        Ok(mount) => self
                            .dependencies(f)
                            .await
                            .map(|i| (i, mount))
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    let (installed, mount) = match prepared {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!(function = %name, error = %e, "its secrets or dependencies are not ready: not rolled out");
                            report.failed.push(RolloutFailure {
                                name: name.clone(),
                                reason: e,
                                kept_previous: old.is_some(),
                                output: Vec::new(),
                            });
                            steps.push((f, Step::Held(old.cloned())));
                            continue;
                        }
                    };
                    let dir = local::snapshot(&self.state_dir, &self.root, f)?;
                    if let (Some(i), Runtime::Node) = (&installed, f.spec.runtime) {
                        link_modules(&dir, &i.dir).map_err(|source| {
                            local::LocalError::Snapshot {
                                function: name.clone(),
                                path: dir.join("node_modules"),
                                source,
                            }
                        })?;
                    }
                    Step::Roll {
                        old: old.cloned(),
                        new: self.function_state(
                            gateway,
                            f,
                            dir.clone(),
                            installed.as_ref(),
                            mount.as_deref(),
                        )?,
                        dir,
                    }
                }
            };
            steps.push((f, step));
        }
        let outcomes = futures::future::join_all(steps.iter().map(|(_, step)| async move {
            match step {
                Step::Keep(_) | Step::Held(_) => Ok(()),
                Step::Roll { old, new, .. } => roll_out(old.as_deref(), new, verify).await,
            }
        }))
        .await;
        let mut next = Vec::new();
        let mut now_loaded = HashMap::new();
        let mut dirs = self.dirs.lock().expect("dirs lock").clone();
        for ((f, step), outcome) in steps.into_iter().zip(outcomes) {
            let name = f.spec.name.clone();
            let mut source = f.clone();
            match (step, outcome) {
                (Step::Keep(state), _) => next.push(state),
                // Its dependencies did not install: the version before (if any) serves on,
                // and is what the next reload compares with.
                (Step::Held(Some(state)), _) => {
                    next.push(state);
                    match loaded.get(&name) {
                        Some(before) => source = before.clone(),
                        None => continue,
                    }
                }
                (Step::Held(None), _) => continue,
                (Step::Roll { old, new, dir }, Ok(())) => {
                    dirs.insert(name.clone(), dir);
                    match old {
                        Some(_) => report.changed.push(name.clone()),
                        None => report.added.push(name.clone()),
                    }
                    next.push(new);
                }
                (
                    Step::Roll {
                        old: Some(old),
                        new,
                        ..
                    },
                    Err(failure),
                ) => {
                    tracing::warn!(function = %name, reason = %failure.reason, "the new version did not start; the previous one keeps serving");
                    new.shutdown().await;
                    report.failed.push(failure);
                    next.push(old);
                    if let Some(before) = loaded.get(&name) {
                        source = before.clone();
                    }
                }
                (
                    Step::Roll {
                        old: None,
                        new,
                        dir,
                    },
                    Err(failure),
                ) => {
                    // Nothing to keep: it is served as failed, and retries on its own.
                    dirs.insert(name.clone(), dir);
                    tracing::warn!(function = %name, reason = %failure.reason, "the function did not start");
                    report.failed.push(failure);
                    next.push(new);
                }
            }
            now_loaded.insert(name, source);
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
        if let Some(calls) = &self.calls {
            calls.set_callback_hosts(repo.project.gateway.callback_hosts.clone());
            calls.set_retention(repo.project.gateway.async_retention.value);
        }
        gateway.install(next);
        *self.loaded.lock().expect("loaded lock") = now_loaded;
        dirs.retain(|name, _| repo.functions.iter().any(|f| &f.spec.name == name));
        *self.dirs.lock().expect("dirs lock") = dirs;
        self.collect_versions(repo);
        tracing::info!(added = ?report.added, changed = ?report.changed, removed = ?report.removed, failed = ?report.failed.iter().map(|f| &f.name).collect::<Vec<_>>(), "functions loaded");
        Ok(report)
    }

    /// Removes the code copies no serving version runs from, once the versions they
    /// replaced have drained (their longest drain grace, plus the stop grace).
    fn collect_versions(&self, repo: &Repo) {
        let wait = repo
            .functions
            .iter()
            .map(drain_grace)
            .max()
            .unwrap_or_default()
            + Duration::from_secs(10);
        let dirs = self.dirs.clone();
        let versions = self.state_dir.join(local::VERSIONS_DIR);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let Ok(entries) = std::fs::read_dir(&versions) else {
                return;
            };
            let in_use: Vec<PathBuf> = dirs.lock().expect("dirs lock").values().cloned().collect();
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name();
                if !in_use.contains(&path) && !name.to_string_lossy().starts_with('.') {
                    if let Err(e) = std::fs::remove_dir_all(&path) {
                        tracing::warn!(path = %path.display(), error = %e, "could not remove an unused code copy");
                    }
                }
            }
        });
    }
}

/// What a reload does with one function.
enum Step {
    Keep(Arc<FunctionState>),
    /// Not rolled out (its dependencies failed to install): what served before, if anything.
    Held(Option<Arc<FunctionState>>),
    Roll {
        old: Option<Arc<FunctionState>>,
        new: Arc<FunctionState>,
        /// The code copy it runs from.
        dir: PathBuf,
    },
}

/// Links a node function's installed dependencies into its code copy as `node_modules`.
fn link_modules(dir: &Path, modules: &Path) -> std::io::Result<()> {
    let link = dir.join("node_modules");
    match std::fs::read_link(&link) {
        Ok(to) if to == modules => Ok(()),
        Ok(_) => {
            std::fs::remove_file(&link)?;
            std::os::unix::fs::symlink(modules, &link)
        }
        Err(_) => std::os::unix::fs::symlink(modules, &link),
    }
}

/// How long a new version may take to have its replicas ready.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(75);

/// Starts `new` (not yet serving) with as many replicas as `old` runs (at least
/// `scale.min`; with `verify`, at least one, stopped again once ready) and its baseline, and
/// waits until they are ready. Err when they crash-loop or take longer than
/// `ROLLOUT_DEADLINE`. A function with no earlier version is only checked with `verify`.
async fn roll_out(
    old: Option<&FunctionState>,
    new: &FunctionState,
    verify: bool,
) -> Result<(), RolloutFailure> {
    if old.is_none() && !verify {
        // Nothing to keep serving and nothing to check: it starts as it is installed.
        return Ok(());
    }
    let scale = &new.entry.scale;
    let running = old.map_or(0, |o| o.serverless.wanted());
    let target = running.max(scale.min).min(scale.max.max(scale.min));
    let warm = if verify { target.max(1) } else { target };
    let baseline = new
        .entry
        .baseline
        .as_ref()
        .zip(new.baseline.as_ref())
        .map(|(b, pool)| (pool, b.replicas));
    if warm == 0 && baseline.is_none() {
        return Ok(());
    }
    new.serverless.scale_to(warm, true);
    if let Some((pool, n)) = baseline {
        pool.scale_to(n, true);
    }
    let pools: Vec<(&Arc<dyn ReplicaPool>, u32)> = std::iter::once((&new.serverless, warm))
        .chain(baseline)
        .collect();
    let deadline = std::time::Instant::now() + ROLLOUT_DEADLINE;
    loop {
        if pools.iter().any(|(p, _)| p.failure().is_some()) {
            return Err(failure(new, old.is_some(), None));
        }
        if pools.iter().all(|(p, n)| p.ready_count() >= *n) {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(failure(
                new,
                old.is_some(),
                Some(format!(
                    "its replicas were not ready within {}s",
                    ROLLOUT_DEADLINE.as_secs()
                )),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if warm > target {
        new.serverless.scale_to(target, false);
    }
    Ok(())
}

/// Why `new` did not start, from its own log: what cubeflash noted about the replicas of
/// the pool that failed (unless `why` says), and the output of its first attempt.
fn failure(new: &FunctionState, kept_previous: bool, why: Option<String>) -> RolloutFailure {
    let lines = new
        .serverless
        .log_tail(crate::runtime::local::LOG_LINES)
        .unwrap_or_default();
    let pool = match new.serverless.failure() {
        None if new.baseline.as_ref().is_some_and(|b| b.failure().is_some()) => {
            format!("{}-baseline", new.name())
        }
        _ => new.name().to_string(),
    };
    let mine = format!("[{pool}#");
    let noted = |l: &str| l.starts_with(&mine) && l.contains("] cubeflash: replica ");
    let attempts = lines.iter().filter(|l| noted(l)).count();
    let last = lines
        .iter()
        .rev()
        .find(|l| noted(l))
        .and_then(|l| l.split_once("] cubeflash: replica "))
        .map(|(_, what)| what.to_string());
    let reason = why.unwrap_or_else(|| match last {
        Some(what) if attempts > 1 => {
            format!("{pool} failed to start {attempts} times in a row; the last time it {what}")
        }
        Some(what) => format!("{pool} failed to start: it {what}"),
        None => format!("{pool} failed to start"),
    });
    let output = first_attempt(&lines, &pool);
    RolloutFailure {
        name: new.name().to_string(),
        reason,
        kept_previous,
        output,
    }
}

/// Lines of a failed version's output a reload reports.
const OUTPUT_LINES: usize = 20;

/// What the first replica of `pool` (a function, or `NAME-baseline`) wrote before cubeflash
/// noted how it ended, without the `[pool#1] ` prefix: the output of one failed start, not
/// five copies of it.
pub fn first_attempt(lines: &[String], pool: &str) -> Vec<String> {
    let first = format!("[{pool}#1] ");
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(&first))
        .take_while(|l| !l.starts_with("cubeflash: replica "))
        .take(OUTPUT_LINES)
        .map(str::to_string)
        .collect()
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

    fn calls(&self) -> Option<Arc<AsyncCalls>> {
        self.calls.clone()
    }

    fn reload<'a>(
        &'a self,
        gateway: &'a Arc<Gateway>,
        verify: bool,
    ) -> BoxFuture<'a, Result<Reloaded, String>> {
        Box::pin(async move {
            let repo =
                spec::load(&self.root).map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
            self.load(gateway, &repo, verify)
                .await
                .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
        })
    }

    fn start(
        self: Arc<Self>,
        gateway: Arc<Gateway>,
        _stop: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut loops = vec![tokio::spawn(schedule_loop(
            gateway.clone(),
            self.state_dir.clone(),
        ))];
        loops.extend(crate::triggers::start(
            &gateway,
            self.calls.as_ref(),
            self.nats.as_deref(),
        ));
        loops
    }

    fn shutdown(&self) {
        self.runtimes.shutdown();
    }
}

/// Fires schedule triggers: once a second, calls every due function through the engine
/// (marked `X-Cubeflash-Trigger: schedule`, which no client can send), and notes the call in
/// the function's log.
async fn schedule_loop(gateway: Arc<Gateway>, state_dir: PathBuf) {
    use crate::triggers::schedule::{ScheduleKey, Schedules};
    let mut schedules = Schedules::default();
    let store = state_dir.join(SCHEDULES_FILE);
    let mut last = read_last_firings(&store);
    let me: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    loop {
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
                                timezone: t.timezone.clone(),
                                catch_up: t.catch_up,
                            },
                            t.body.clone(),
                        )
                    })
            })
            .collect();
        let now = chrono::Utc::now();
        let fired = schedules.due(&current, now, &last);
        // Kept for the schedules that catch up (the file is written only for them).
        let kept: Vec<_> = fired.iter().filter(|f| f.key.catch_up).collect();
        for firing in &kept {
            last.insert(firing.key.id(), now);
        }
        if !kept.is_empty() {
            write_last_firings(&store, &last);
        }
        for firing in fired {
            let Some(f) = routes.by_name.get(&firing.key.function).cloned() else {
                continue;
            };
            let gateway = gateway.clone();
            tokio::spawn(async move {
                let key = &firing.key;
                let req = hyper::Request::post("/")
                    .body(Full::new(Bytes::from(firing.body.clone())))
                    .expect("a valid request");
                let resp = gateway
                    .dispatch_as(
                        f.clone(),
                        req,
                        "/",
                        me,
                        Some(super::dispatch::Via {
                            headers: hyper::header::HeaderValue::from_str(
                                &firing
                                    .due_at
                                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                            )
                            .ok()
                            .map(|v| {
                                (
                                    hyper::header::HeaderName::from_static(
                                        "x-cubeflash-scheduled-for",
                                    ),
                                    v,
                                )
                            })
                            .into_iter()
                            .collect(),
                            ..super::dispatch::Via::trigger("schedule")
                        }),
                    )
                    .await;
                let outcome = resp.status().to_string();
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                let caught_up = if firing.caught_up {
                    format!(
                        " (catching up {} run{} missed while the gateway was down)",
                        firing.runs,
                        if firing.runs == 1 { "" } else { "s" }
                    )
                } else {
                    String::new()
                };
                tracing::info!(function = %key.function, schedule = key.index + 1, cron = %key.cron, status = %outcome, missed = firing.runs.saturating_sub(1), "schedule fired");
                f.serverless.note(format!(
                    "[{}] cubeflash: schedule {} ({}) fired{caught_up}: {outcome}",
                    key.function,
                    key.index + 1,
                    key.cron
                ));
            });
        }
        // To the next firing (to the millisecond), looking at reloads at least each second.
        let wait = schedules
            .next_due()
            .map(|t| (t - chrono::Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        tokio::time::sleep(wait).await;
    }
}

/// Where the last firing of each schedule is kept, for `catchUp`.
const SCHEDULES_FILE: &str = "schedules.json";

fn read_last_firings(path: &Path) -> HashMap<String, chrono::DateTime<chrono::Utc>> {
    let Ok(bytes) = std::fs::read(path) else {
        return HashMap::new();
    };
    match serde_json::from_slice::<HashMap<String, i64>>(&bytes) {
        Ok(ms) => ms
            .into_iter()
            .filter_map(|(k, v)| Some((k, chrono::DateTime::from_timestamp_millis(v)?)))
            .collect(),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the schedules' last firings; schedules with catchUp make up for nothing this time");
            HashMap::new()
        }
    }
}

fn write_last_firings(path: &Path, last: &HashMap<String, chrono::DateTime<chrono::Utc>>) {
    let tmp = path.with_extension("json.tmp");
    let ms: HashMap<&String, i64> = last
        .iter()
        .map(|(k, v)| (k, v.timestamp_millis()))
        .collect();
    let written = serde_json::to_vec_pretty(&ms)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(file = %path.display(), error = %e, "cannot keep the schedules' last firings");
    }
}

/// The async call store cubeflash.yaml asks for: `.cubeflash/calls.redb`, or JetStream.
fn open_call_store(repo: &Repo, state_dir: &Path) -> anyhow::Result<Store> {
    match (
        repo.project.async_store(crate::spec::Target::Local),
        &repo.project.nats,
    ) {
        (crate::spec::project::AsyncStore::JetStream, Some(nats)) => Ok(Store::JetStream(
            crate::triggers::jetstream_calls::JetCalls::start(
                &nats.url,
                repo.project.gateway.async_lease.value,
            ),
        )),
        _ => Ok(Store::Redb(std::sync::Arc::new(CallStore::open(
            &state_dir.join(CALLS_FILE),
        )?))),
    }
}
