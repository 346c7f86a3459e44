//! What the dashboard (`ui.rs`) reads on top of the admin API, the same on every backend:
//! the overview (functions, last-minute rates, provenance, recent actions) as JSON and as a
//! server-sent event stream, each function's history, its test events, and who a token is.
//! One loop computes the overview 4 times a second while a page is open and shares the JSON
//! with every open stream; it samples the history every 5 s whether a page is open or not.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::watch;

use super::api::{self, ActionLine, Overview, Provenance};
use super::history;
use super::proxy::GatewayBody;
use super::{json_error, json_response, Gateway};

/// How often an open page's table can change.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// A stream with nothing new sends a comment this often, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often provenance (git, `render --check`) is read while someone looks.
const PROVENANCE_EVERY: Duration = Duration::from_secs(10);
/// What the overview channel holds once the gateway drains: every stream ends.
const DRAINED: &str = "drained";
/// Actions kept for the page.
const ACTIONS_KEPT: usize = 50;

/// The dashboard's shared state inside the gateway.
pub struct DashboardState {
    /// The overview's JSON, as the open streams send it ("" before the first, DRAINED once
    /// the gateway drains).
    overview: watch::Sender<Arc<str>>,
    actions: Mutex<VecDeque<ActionLine>>,
    provenance: Mutex<Option<Provenance>>,
    /// When an overview was last asked for, in ms since the epoch.
    viewed_ms: AtomicU64,
    /// Open links to bench reports.
    pub(super) tickets: super::bench_runs::Tickets,
}

impl Default for DashboardState {
    fn default() -> Self {
        Self {
            overview: watch::Sender::new(Arc::from("")),
            actions: Mutex::default(),
            provenance: Mutex::default(),
            viewed_ms: AtomicU64::new(0),
            tickets: Default::default(),
        }
    }
}

/// The routes of the dashboard's API (under /system/), given the bearer's access.
pub(super) enum Route<'a> {
    Overview,
    Stream,
    Whoami {
        admin: bool,
    },
    History(&'a str),
    Events(&'a str),
    /// The handler `cubeflash new` writes for a runtime.
    Scaffold(String),
    BenchRuns,
    BenchLink(&'a str),
}

impl Gateway {
    /// Publishes the overview while a stream is open; samples the history every bucket;
    /// refreshes provenance while someone looks.
    pub(super) async fn dashboard_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PUBLISH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ticks_per_bucket = (history::BUCKET.as_millis() / PUBLISH_EVERY.as_millis()) as u64;
        let mut n: u64 = 0;
        let mut provenance_read: Option<tokio::time::Instant> = None;
        // The baseline every function's first point counts from.
        self.history.sample(
            &self.metrics,
            self.routes().functions(),
            crate::triggers::calls::now_ms(),
        );
        loop {
            tick.tick().await;
            n += 1;
            if n.is_multiple_of(ticks_per_bucket) {
                self.history.sample(
                    &self.metrics,
                    self.routes().functions(),
                    crate::triggers::calls::now_ms(),
                );
            }
            let watched = crate::triggers::calls::now_ms()
                .saturating_sub(self.dashboard.viewed_ms.load(Ordering::Relaxed))
                < 30_000;
            let due = provenance_read.is_none_or(|at| at.elapsed() >= PROVENANCE_EVERY);
            if watched && due {
                provenance_read = Some(tokio::time::Instant::now());
                if let Some(root) = self.backend().and_then(|b| b.repo()) {
                    let found =
                        tokio::task::spawn_blocking(move || read_provenance(Path::new(&root)))
                            .await
                            .ok();
                    *self.dashboard.provenance.lock().expect("provenance lock") = found;
                }
            }
            if self.dashboard.overview.receiver_count() > 0 && !self.is_draining() {
                let text = serde_json::to_string(&self.overview()).expect("json serializes");
                self.dashboard.overview.send_if_modified(|current| {
                    if **current == *text {
                        return false;
                    }
                    *current = Arc::from(text);
                    true
                });
            }
        }
    }

    /// Ends every open stream (the gateway is draining).
    pub(super) fn end_streams(&self) {
        self.dashboard.overview.send_replace(Arc::from(DRAINED));
    }

    /// Records an action for the page's event log (and the gateway's log).
    pub fn note_action(&self, action: String, command: String) {
        tracing::info!(action = %action, command = %command, "dashboard action");
        let mut actions = self.dashboard.actions.lock().expect("actions lock");
        if actions.len() == ACTIONS_KEPT {
            actions.pop_front();
        }
        actions.push_back(ActionLine {
            at_ms: crate::triggers::calls::now_ms(),
            action,
            command,
        });
    }

    /// What the dashboard's table shows.
    pub fn overview(&self) -> Overview {
        self.dashboard
            .viewed_ms
            .store(crate::triggers::calls::now_ms(), Ordering::Relaxed);
        let routes = self.routes();
        let backend = self.backend();
        Overview {
            backend: backend.as_ref().map_or("none", |b| b.kind()).to_string(),
            gateway_url: self.url(),
            provenance: self
                .dashboard
                .provenance
                .lock()
                .expect("provenance lock")
                .clone(),
            functions: routes
                .functions()
                .iter()
                .map(|f| self.describe(f))
                .collect(),
            rates: self.history.rates(),
            actions: self
                .dashboard
                .actions
                .lock()
                .expect("actions lock")
                .iter()
                .cloned()
                .collect(),
        }
    }

    /// Answers one of the dashboard's routes.
    pub(super) fn dashboard(&self, route: Route<'_>) -> Response<GatewayBody> {
        match route {
            Route::Overview => json_response(StatusCode::OK, &self.overview()),
            Route::Stream => self.stream(),
            Route::Whoami { admin } => {
                let backend = self.backend();
                json_response(
                    StatusCode::OK,
                    &api::Whoami {
                        access: if admin { "admin" } else { "read-only" }.into(),
                        backend: backend.as_ref().map_or("none", |b| b.kind()).into(),
                        repo: backend.as_ref().and_then(|b| b.repo()),
                    },
                )
            }
            Route::History(name) => match self.routes().by_name.get(name) {
                Some(_) => json_response(
                    StatusCode::OK,
                    &api::History {
                        function: name.to_string(),
                        bucket_ms: history::BUCKET.as_millis() as u64,
                        points: self.history.points(name).unwrap_or_default(),
                    },
                ),
                None => self.routes().no_such_function(name),
            },
            Route::Events(name) => {
                if !self.routes().by_name.contains_key(name) {
                    return self.routes().no_such_function(name);
                }
                let Some(root) = self.backend().and_then(|b| b.repo()) else {
                    return json_error(
                        StatusCode::NOT_IMPLEMENTED,
                        "test events live in the repo (functions/NAME/events/): run them with `cubeflash invoke NAME --event EVENT --target kubernetes`",
                        Some(name),
                    );
                };
                match crate::spec::events::list(Path::new(&root), name) {
                    Ok(events) => json_response(StatusCode::OK, &events),
                    Err(e) => {
                        json_error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string(), Some(name))
                    }
                }
            }
            Route::BenchRuns | Route::BenchLink(_) => {
                let Some(root) = self.backend().and_then(|b| b.repo()) else {
                    return json_error(
                        StatusCode::NOT_IMPLEMENTED,
                        "bench runs are kept where the bench ran (bench/results/ in the repo): open them there, or `cubeflash bench compare RUN_A RUN_B`",
                        None,
                    );
                };
                let root = Path::new(&root);
                match route {
                    Route::BenchLink(run) => self.bench_link(root, run),
                    _ => match super::bench_runs::list(root) {
                        Ok(runs) => json_response(StatusCode::OK, &runs),
                        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e, None),
                    },
                }
            }
            Route::Scaffold(runtime) => match scaffold_handler(&runtime) {
                Ok(s) => json_response(StatusCode::OK, &s),
                Err(e) => json_error(StatusCode::BAD_REQUEST, &e, None),
            },
        }
    }

    /// POST /system/functions: writes functions/NAME/ as `cubeflash new` does (with the
    /// page's handler), renders generated/ and reloads. Nothing is left behind when the
    /// repo then does not load or render; a function that does not start stays in the repo
    /// (its files are the user's to fix) and the answer says why.
    pub(super) async fn create_function<B>(
        self: &Arc<Self>,
        req: Request<B>,
    ) -> Response<GatewayBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<super::body::BoxError>,
    {
        let Some(root) = self.backend().and_then(|b| b.repo()) else {
            return json_error(
                StatusCode::NOT_IMPLEMENTED,
                "in a cluster, git and `cubeflash deploy` are the source of truth: run `cubeflash new NAME`, commit, then `cubeflash deploy --target kubernetes`",
                None,
            );
        };
        let body = match Limited::new(req.into_body(), 256 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "a new function's request is at most 256 KiB (name, runtime, handler)",
                    None,
                )
            }
        };
        let new: api::NewFunction = match serde_json::from_slice(&body) {
            Ok(n) => n,
            Err(e) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("send {{\"name\": ..., \"runtime\": \"python\" or \"node\", \"handler\": ...}}: {e}"),
                    None,
                )
            }
        };
        let name = new.name.clone();
        let made =
            tokio::task::spawn_blocking(move || write_function(Path::new(&root), &new)).await;
        let files = match made {
            Ok(Ok(files)) => files,
            Ok(Err((status, message))) => return json_error(status, &message, Some(&name)),
            Err(e) => {
                return json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("writing the function failed: {e}"),
                    Some(&name),
                )
            }
        };
        match self.reload(true).await {
            Ok(summary) => {
                if let Some(f) = summary.failed.iter().find(|f| f.name == name) {
                    return json_error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &format!(
                            "functions/{name}/ was written but did not start: {}; fix it and deploy ({})",
                            f.reason,
                            f.output.join(" | ")
                        ),
                        Some(&name),
                    );
                }
            }
            Err(e) => {
                return json_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &format!("functions/{name}/ was written but the reload failed: {e}"),
                    Some(&name),
                )
            }
        }
        let command = format!("cubeflash new {name} && cubeflash deploy");
        self.note_action(format!("created {name}"), command.clone());
        json_response(
            StatusCode::CREATED,
            &api::Created {
                url: format!("{}/function/{name}", self.url()),
                name,
                files,
                command,
            },
        )
    }

    /// A link that opens run `run`'s report for a while, without a token.
    fn bench_link(&self, root: &Path, run: &str) -> Response<GatewayBody> {
        let dir = match super::bench_runs::run_dir(root, run) {
            Ok(d) => d,
            Err(e) => return json_error(StatusCode::NOT_FOUND, &e, None),
        };
        match self.dashboard.tickets.issue(dir) {
            Ok(ticket) => json_response(
                StatusCode::OK,
                &api::BenchLink {
                    url: format!("/ui/bench/{ticket}/{}", crate::bench::report::REPORT_FILE),
                    expires_in_s: super::bench_runs::LINK_LIFETIME.as_secs(),
                },
            ),
            Err(e) => json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot make a link: {e}"),
                None,
            ),
        }
    }

    /// A bench run's file through a ticket (`/ui/bench/TICKET/FILE`), or None.
    pub(super) fn bench_file(&self, ticket: &str, file: &str) -> Option<(Vec<u8>, &'static str)> {
        let dir = self.dashboard.tickets.dir(ticket)?;
        super::bench_runs::read(&dir, file)
    }

    /// GET /system/stream: `overview` events as the table changes, until the client goes or
    /// the gateway drains.
    fn stream(&self) -> Response<GatewayBody> {
        let rx = self.dashboard.overview.subscribe();
        let frames = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
            let mut first = first;
            loop {
                if !first {
                    match tokio::time::timeout(KEEP_ALIVE, rx.changed()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return None,
                        Err(_) => {
                            let ping = Frame::data(Bytes::from_static(b": keep-alive\n\n"));
                            return Some((Ok(ping), (rx, false)));
                        }
                    }
                }
                first = false;
                let text = rx.borrow_and_update().clone();
                if &*text == DRAINED {
                    return None;
                }
                if text.is_empty() {
                    // Nothing published yet: the first overview comes within a tick.
                    continue;
                }
                let event = format!("event: overview\ndata: {text}\n\n");
                return Some((Ok(Frame::data(Bytes::from(event))), (rx, false)));
            }
        });
        let draining = self.is_draining();
        let body: GatewayBody = if draining {
            super::proxy::full("")
        } else {
            StreamBody::new(frames).boxed()
        };
        Response::builder()
            .status(StatusCode::OK)
            .header(hyper::header::CONTENT_TYPE, "text/event-stream")
            .header(hyper::header::CACHE_CONTROL, "no-store")
            .header("x-accel-buffering", "no")
            .body(body)
            .expect("valid response")
    }
}

/// The dashboard route `parts` (after /system/) names, if any.
pub(super) fn route<'a>(
    method: &Method,
    parts: &[&'a str],
    query: &str,
    admin: bool,
) -> Option<Route<'a>> {
    if *method != Method::GET {
        return None;
    }
    Some(match parts {
        ["overview"] => Route::Overview,
        ["stream"] => Route::Stream,
        ["whoami"] => Route::Whoami { admin },
        ["functions", name, "history"] => Route::History(name),
        ["functions", name, "events"] => Route::Events(name),
        ["bench"] => Route::BenchRuns,
        ["bench", run, "link"] => Route::BenchLink(run),
        ["scaffold"] => Route::Scaffold(
            form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "runtime")
                .map_or_else(|| "python".to_string(), |(_, v)| v.into_owned()),
        ),
        _ => return None,
    })
}

/// The repo's commit, whether its tree is dirty, and whether generated/ is stale.
fn read_provenance(root: &Path) -> Provenance {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let mut notes = Vec::new();
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    if commit.is_none() {
        notes.push("not a git repository (or no commit yet)".to_string());
    }
    let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
    let stale = match crate::spec::repo::load(root) {
        Ok(repo) => match crate::render::render(&repo) {
            Ok(rendered) => match crate::render::output::diff(root, &rendered) {
                Ok(diffs) => !diffs.is_empty(),
                Err(e) => {
                    notes.push(format!("cannot compare generated/: {e}"));
                    true
                }
            },
            Err(e) => {
                notes.push(format!("the repo does not render: {e}"));
                true
            }
        },
        Err(e) => {
            notes.push(format!("the repo does not load: {e}"));
            true
        }
    };
    Provenance {
        commit,
        dirty,
        generated_stale: stale,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

/// The handler file `cubeflash new` writes for `runtime`.
fn scaffold_handler(runtime: &str) -> Result<api::Scaffold, String> {
    let known = crate::spec::Runtime::parse(runtime)
        .filter(|r| matches!(r, crate::spec::Runtime::Python | crate::spec::Runtime::Node));
    let Some(runtime) = known else {
        return Err(format!(
            "the form makes python and node functions, not {runtime:?}"
        ));
    };
    let prefix = format!("runtimes/{}/new/", runtime.as_str());
    crate::scaffold::files(&prefix, &[("name", "NAME")])
        .into_iter()
        .find(|(rel, _)| rel != "function.yaml")
        .map(|(file, handler)| api::Scaffold {
            runtime,
            file,
            handler,
        })
        .ok_or_else(|| format!("no scaffold handler for {}", runtime.as_str()))
}

/// Writes functions/NAME/ and generated/; on any refusal, removes what it wrote.
fn write_function(
    root: &Path,
    new: &api::NewFunction,
) -> Result<Vec<String>, (StatusCode, String)> {
    use crate::scaffold::ScaffoldError;
    if !matches!(
        new.runtime,
        crate::spec::Runtime::Python | crate::spec::Runtime::Node
    ) {
        return Err((
            StatusCode::BAD_REQUEST,
            "the form makes python and node functions; write an exec or image function's function.yaml by hand".into(),
        ));
    }
    let written = crate::scaffold::new_function(root, &new.name, new.runtime).map_err(|e| {
        let status = match e {
            ScaffoldError::Exists { .. } => StatusCode::CONFLICT,
            ScaffoldError::BadName(_) | ScaffoldError::NoScaffold => StatusCode::BAD_REQUEST,
            ScaffoldError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, format!("{:#}", anyhow::Error::from(e)))
    })?;
    let dir = root.join(crate::spec::repo::FUNCTIONS_DIR).join(&new.name);
    let undo = |status: StatusCode, message: String| {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove a refused new function");
        }
        (status, message)
    };
    if let Some(handler) = &new.handler {
        let file = written
            .iter()
            .find(|p| p.file_name().is_some_and(|n| n != "function.yaml"));
        if let Some(file) = file {
            if let Err(e) = std::fs::write(file, handler) {
                return Err(undo(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("failed to write {}: {e}", file.display()),
                ));
            }
        }
    }
    let repo = crate::spec::repo::load(root).map_err(|e| {
        undo(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the repo does not load with the new function (nothing was kept): {e}"),
        )
    })?;
    let rendered = crate::render::render(&repo).map_err(|e| {
        undo(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the repo does not render with the new function (nothing was kept): {e}"),
        )
    })?;
    let summary = crate::render::output::write_atomically(root, &rendered).map_err(|e| {
        undo(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "failed to write generated/ (nothing was kept): {:#}",
                anyhow::Error::from(e)
            ),
        )
    })?;
    let generated = summary
        .added
        .iter()
        .chain(&summary.changed)
        .map(|p| format!("{}/{p}", crate::render::GENERATED_DIR));
    let mut files: Vec<String> = written
        .iter()
        .map(|p| p.strip_prefix(root).unwrap_or(p).display().to_string())
        .chain(generated)
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}
