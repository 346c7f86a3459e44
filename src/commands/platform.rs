//! The verbs that talk to the local platform: up, deploy, down, list, describe, invoke,
//! logs, scale, delete.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::{load, repo_root, Outcome};
use crate::cli::{GatewayArgs, LogFormat};
use crate::deploy::local as target;
use crate::gateway::api::{FunctionInfo, Reloaded, RolloutFailure};
use crate::gateway::client::AdminClient;
use crate::gateway::{self, Gateway, GatewayConfig};
use crate::runtime::pool::PoolState;

pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")
}

/// `cubeflash up`: serve in the foreground until SIGINT or SIGTERM.
pub fn up(
    out: &mut impl Write,
    dir: Option<PathBuf>,
    bind: IpAddr,
    port: Option<u16>,
    log_format: LogFormat,
) -> Result<Outcome> {
    let root = repo_root(dir)?;
    let repo = super::load_checked(&root, true)?;
    init_logging(log_format);
    raise_fd_limit();
    let state_dir = target::state_dir(&root);
    let tokens = gateway::tokens::Tokens::load_or_create(&state_dir)
        .context("failed to read or create the admin tokens")?;
    let port = port.unwrap_or(repo.project.gateway.port as u16);
    let config = GatewayConfig {
        bind,
        port,
        max_body: repo.project.gateway.max_body_size as usize,
        queue_size: repo.project.gateway.queue_size,
        admin_token: Some(tokens.admin.clone()),
        read_token: Some(tokens.read_only.clone()),
        grace: Duration::from_secs(10),
        limits: gateway::ConnectionLimits::from_settings(&repo.project.gateway),
    };
    let rt = runtime()?;
    rt.block_on(async {
        let gw = Gateway::new(config);
        let addr = SocketAddr::new(bind, port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| gateway::GatewayError::Bind { addr, source })
            .context("is another gateway running? `cubeflash down` stops the one `deploy` started, or pass --port")?;
        *gw.local_addr.write().expect("addr lock") = listener.local_addr().ok();
        let reaped = target::reap_orphans(&root);
        if reaped > 0 {
            writeln!(out, "stopped {reaped} replica process group(s) left by a gateway of this repo that did not exit cleanly")?;
        }
        // Serving starts at once: a function at zero is first started by its first call
        // (a deploy to a running platform starts it once before switching it).
        let (_, loaded) = gateway::local::LocalBackend::attach(&gw, &repo, &root, &state_dir, false).await?;
        for failed in &loaded.failed {
            write_failure(out, failed)?;
        }
        let url = gw.url();
        std::fs::write(state_dir.join(target::URL_FILE), format!("{url}\n")).context("failed to write .cubeflash/gateway.url")?;
        writeln!(out, "cubeflash gateway listening on {url}")?;
        if !bind.is_loopback() {
            let bound = gw.local_addr.read().expect("addr lock").map(|a| a.to_string()).unwrap_or_default();
            writeln!(out, "warning: listening on {bound}, not only on loopback: anyone who can reach this address can call the functions (the admin API still needs its token)")?;
        }
        writeln!(out, "admin token: {} (read-only: {})", tokens.admin_path.display(), tokens.read_only_path.display())?;
        for f in gw.routes().functions() {
            writeln!(out, "  {:<20} {url}/function/{}", f.name(), f.name())?;
            for http in f.entry.http_triggers() {
                writeln!(out, "  {:<20} {url}{} {}", "", http.path, if http.methods.is_empty() { "(any method)".into() } else { http.methods.join(",") })?;
            }
        }
        out.flush()?;
        gw.serve(listener, shutdown_signal()).await;
        let _ = std::fs::remove_file(state_dir.join(target::URL_FILE));
        writeln!(out, "cubeflash gateway stopped")?;
        Ok(Outcome::Success)
    })
}

/// Event log lines on stderr: human lines, or JSON lines for a collector.
pub(super) fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CUBEFLASH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Every connection and replica pipe is a file descriptor; a default soft limit of 1,024 is
/// too few for a busy gateway. Raise it to the hard limit, as nginx's worker_rlimit_nofile does.
pub(super) fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

pub(super) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub(super) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

pub(super) fn token(root: &Path) -> Result<String> {
    Ok(
        gateway::tokens::Tokens::load_or_create(&target::state_dir(root))
            .context("failed to read the admin token")?
            .admin,
    )
}

/// What `deploy` to the local target may do besides reloading.
#[derive(Debug, Clone, Copy)]
pub struct DeployOptions {
    /// Start a function at zero once before switching it to a new version.
    pub verify: bool,
    /// Re-render a stale generated/ first.
    pub render: bool,
}

/// `cubeflash deploy` to the local target: starts the platform or rolls the repo out on
/// it; a line per function; exit code 1 when any function's new version did not start.
pub fn deploy(
    out: &mut impl Write,
    dir: Option<PathBuf>,
    options: DeployOptions,
) -> Result<Outcome> {
    let root = repo_root(dir)?;
    let repo = super::load_checked(&root, true)?;
    check_generated(out, &root, &repo, options.render)?;
    // Installed here, with progress, into the cache the gateway then finds them in; a failed
    // install is reported again by the gateway's rollout, which keeps the running version.
    super::deps::install_all(out, &repo.functions.iter().collect::<Vec<_>>(), &root)?;
    let exe = std::env::current_exe().context("failed to find the cubeflash binary")?;
    let rt = runtime()?;
    rt.block_on(async {
        let running = target::running_pid(&root).and(target::recorded_url(&root));
        let (url, report) = match running {
            Some(url) => {
                let client = own_gateway(&root, &url, Some(token(&root)?)).await?;
                let report = target::reload(&client, options.verify).await?;
                writeln!(out, "rolled the repo out on the local platform at {url}")?;
                (url, Some(report))
            }
            None => {
                let url = target::start_background(&root, &exe).await?;
                writeln!(out, "started the local platform at {url} (log: .cubeflash/gateway.log, stop: cubeflash down)")?;
                (url, None)
            }
        };
        let client = AdminClient::new(&url, Some(token(&root)?));
        let functions = wait_ready(&client).await?;
        let report = match report {
            Some(report) => report,
            None => first_start_report(&client, &functions, &repo, &target::state_dir(&root)).await,
        };
        write_report(out, &report)?;
        print_urls(out, &url, &functions)?;
        if !report.failed.is_empty() {
            out.flush()?;
            let names: Vec<&str> = report.failed.iter().map(|f| f.name.as_str()).collect();
            eprintln!(
                "cubeflash: {} did not start (see above, and `cubeflash logs NAME`)",
                names.join(", ")
            );
            return Ok(Outcome::Failed);
        }
        Ok(Outcome::Success)
    })
}

/// What a first start did, as a rollout report: every function added, or failed (a crash
/// loop of a function with replicas) with the output of its first start.
async fn first_start_report(
    client: &AdminClient,
    functions: &[FunctionInfo],
    repo: &crate::spec::Repo,
    state_dir: &Path,
) -> Reloaded {
    let mut report = Reloaded::default();
    // Not loaded at all: a secret not set, or dependencies that did not install.
    for f in repo
        .functions
        .iter()
        .filter(|f| !functions.iter().any(|i| i.name == f.spec.name))
    {
        let reason = f
            .spec
            .secrets
            .iter()
            .find(|s| {
                !state_dir
                    .join(crate::runtime::secrets::SECRETS_DIR)
                    .join(s)
                    .is_dir()
            })
            .map(|s| {
                crate::runtime::secrets::SecretError::Unset {
                    function: f.spec.name.clone(),
                    secret: s.clone(),
                }
                .to_string()
            })
            .unwrap_or_else(|| "it was not loaded: see .cubeflash/gateway.log".into());
        report.failed.push(RolloutFailure {
            name: f.spec.name.clone(),
            reason,
            kept_previous: false,
            output: Vec::new(),
        });
    }
    for f in functions {
        let Some(why) = &f.failed else {
            report.added.push(f.name.clone());
            continue;
        };
        let lines = client
            .logs(&f.name, 200)
            .await
            .map(|l| l.lines)
            .unwrap_or_default();
        let mut output = gateway::local::first_attempt(&lines, &f.name);
        if output.is_empty() {
            output = gateway::local::first_attempt(&lines, &format!("{}-baseline", f.name));
        }
        report.failed.push(RolloutFailure {
            name: f.name.clone(),
            reason: why.clone(),
            kept_previous: false,
            output,
        });
    }
    report
}

/// The local platform runs functions/ itself, not generated/; a stale generated/ is still
/// what a reviewer reads, so say so (or render it, when asked).
fn check_generated(
    out: &mut impl Write,
    root: &Path,
    repo: &crate::spec::Repo,
    render: bool,
) -> Result<()> {
    let rendered = crate::render::render(repo)?;
    let diffs = crate::render::output::diff(root, &rendered)?;
    if diffs.is_empty() {
        return Ok(());
    }
    let files = diffs
        .iter()
        .map(|d| d.path.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if render {
        crate::render::output::write_atomically(root, &rendered)?;
        writeln!(
            out,
            "re-rendered generated/ ({files}); review and commit it"
        )?;
    } else {
        out.flush()?;
        eprintln!(
            "warning: generated/ is out of date ({files}): the local platform runs functions/ as it is, but a reviewer reads generated/; run `cubeflash render` (or `cubeflash deploy --render`) and commit it"
        );
    }
    Ok(())
}

/// A line per function: what the rollout did with it.
fn write_report(out: &mut impl Write, report: &Reloaded) -> Result<()> {
    let mut rows: Vec<(&str, &str)> = Vec::new();
    for (word, names) in [
        ("added", &report.added),
        ("changed", &report.changed),
        ("unchanged", &report.unchanged),
        ("removed", &report.removed),
    ] {
        rows.extend(names.iter().map(|n| (word, n.as_str())));
    }
    rows.sort_by_key(|(_, n)| *n);
    for (word, name) in rows {
        writeln!(out, "  {word:<10} {name}")?;
    }
    for failed in &report.failed {
        write_failure(out, failed)?;
    }
    Ok(())
}

/// `failed` and why, with the first lines the new version wrote.
fn write_failure(out: &mut impl Write, failed: &RolloutFailure) -> Result<()> {
    let kept = if failed.kept_previous {
        "; the previous version keeps serving"
    } else {
        ""
    };
    writeln!(
        out,
        "  {:<10} {}: {}{kept}",
        "failed", failed.name, failed.reason
    )?;
    for line in &failed.output {
        writeln!(out, "  {:<10} | {line}", "")?;
    }
    Ok(())
}

/// Waits (30 s at most) until every always-on replica (baseline and `scale.min`) is ready,
/// and returns the functions as the admin API lists them.
pub(super) async fn wait_ready(client: &AdminClient) -> Result<Vec<FunctionInfo>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let functions = client.functions().await?;
        let pending: Vec<&str> = functions
            .iter()
            .filter(|f| {
                let base = f.baseline_replicas;
                f.failed.is_none()
                    && (f.replicas.ready < f.scale.min || base.is_some_and(|b| b.ready < b.desired))
            })
            .map(|f| f.name.as_str())
            .collect();
        if pending.is_empty() || std::time::Instant::now() > deadline {
            if !pending.is_empty() {
                tracing::warn!(
                    "still starting after 30s: {} (see `cubeflash logs <name>`)",
                    pending.join(", ")
                );
            }
            return Ok(functions);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn print_urls(out: &mut impl Write, url: &str, functions: &[FunctionInfo]) -> Result<()> {
    for f in functions {
        writeln!(out, "  {:<20} {}", f.name, f.url)?;
        for t in &f.triggers {
            if let crate::spec::Trigger::Http(h) = t {
                writeln!(out, "  {:<20} {url}{}", "", h.path)?;
            }
        }
        if let Some(b) = &f.baseline_url {
            writeln!(out, "  {:<20} {b} (always-on baseline)", "")?;
        }
    }
    Ok(())
}

/// `cubeflash down`.
pub fn down(out: &mut impl Write, dir: Option<PathBuf>) -> Result<Outcome> {
    let root = repo_root(dir)?;
    let stopped = runtime()?.block_on(target::stop(&root, Duration::from_secs(30)));
    writeln!(
        out,
        "{}",
        if stopped {
            "stopped the local platform"
        } else {
            "no local platform was running"
        }
    )?;
    Ok(Outcome::Success)
}

pub(super) fn gateway_url(root: &Path, args: &GatewayArgs) -> Result<String> {
    if let Some(url) = &args.gateway {
        return Ok(url.trim_end_matches('/').to_string());
    }
    if let Some(url) = target::recorded_url(root) {
        return Ok(url);
    }
    let repo = load(root)?;
    Ok(format!("http://127.0.0.1:{}", repo.project.gateway.port))
}

/// The admin client of the gateway at `url`, after checking that it serves the repo at
/// `root` (a local gateway of another repo on the same port is refused, not used).
async fn own_gateway(root: &Path, url: &str, token: Option<String>) -> Result<AdminClient> {
    let client = AdminClient::new(url, token);
    let health = client.health().await?;
    if health.backend == "local" && !target::serves(&health, root) {
        bail!(
            "the gateway at {url} serves another repo ({}), not {}: stop it (`cubeflash -C {} down`) or give this repo another gateway.port in cubeflash.yaml",
            health.repo.as_deref().unwrap_or("unknown"),
            root.display(),
            health.repo.as_deref().unwrap_or("THAT_REPO")
        );
    }
    Ok(client)
}

fn with_admin<T>(
    dir: Option<PathBuf>,
    args: &GatewayArgs,
    f: impl AsyncFnOnce(AdminClient) -> Result<T>,
) -> Result<T> {
    let root = repo_root(dir)?;
    let url = gateway_url(&root, args)?;
    let token = token(&root)?;
    runtime()?.block_on(async {
        let client = if args.gateway.is_some() {
            AdminClient::new(&url, Some(token))
        } else {
            own_gateway(&root, &url, Some(token)).await?
        };
        f(client).await
    })
}

pub fn list(out: &mut impl Write, dir: Option<PathBuf>, args: GatewayArgs) -> Result<Outcome> {
    let functions = with_admin(dir, &args, async |c| Ok(c.functions().await?))?;
    let rows: Vec<[String; 11]> = functions
        .iter()
        .map(|f| {
            [
                f.name.clone(),
                f.runtime.as_str().to_string(),
                state_word(f).to_string(),
                triggers_word(f),
                format!("{}/{}", f.replicas.ready, f.replicas.desired),
                f.inflight.to_string(),
                f.queued.to_string(),
                f.async_pending.to_string(),
                f.cold_starts.to_string(),
                f.url.clone(),
                f.baseline_url.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = [
        "NAME", "RUNTIME", "STATE", "TRIGGERS", "READY", "INFLIGHT", "QUEUED", "ASYNC", "COLD",
        "URL", "BASELINE",
    ];
    write_table(out, &header, &rows)?;
    Ok(Outcome::Success)
}

/// A function's triggers for `ls`: `http`, `schedule`, and each queue trigger with its
/// consumer's state (`queue:consuming`, `queue:disconnected`).
fn triggers_word(f: &FunctionInfo) -> String {
    let words: Vec<String> = f
        .triggers
        .iter()
        .map(|t| match t {
            crate::spec::Trigger::Http(_) => "http".to_string(),
            crate::spec::Trigger::Schedule(_) => "schedule".to_string(),
            crate::spec::Trigger::Queue(q) => {
                let state = f
                    .queues
                    .iter()
                    .find(|s| s.subject == q.subject)
                    .map_or("starting", |s| s.state.as_str());
                format!("queue:{state}")
            }
        })
        .collect();
    if words.is_empty() {
        // Every function answers at /function/NAME.
        "http".into()
    } else {
        words.join(",")
    }
}

/// A function's state in a word for `ls`.
fn state_word(f: &FunctionInfo) -> &'static str {
    match f.state {
        PoolState::Ready => "ready",
        PoolState::Idle => "idle",
        PoolState::Scaling => "scaling",
        PoolState::Failed => "failed",
    }
}

/// Columns as wide as their widest cell, two spaces apart; the last one unpadded.
pub(super) fn write_table<const N: usize>(
    out: &mut impl Write,
    header: &[&str; N],
    rows: &[[String; N]],
) -> Result<()> {
    let mut width = header.map(str::len);
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  ", w = width[i]));
            }
        }
        text.trim_end().to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

pub fn describe(
    out: &mut impl Write,
    dir: Option<PathBuf>,
    name: &str,
    args: GatewayArgs,
) -> Result<Outcome> {
    let f = with_admin(dir, &args, async |c| Ok(c.function(name).await?))?;
    writeln!(out, "{}", serde_json::to_string_pretty(&f)?)?;
    Ok(Outcome::Success)
}

pub fn scale(
    out: &mut impl Write,
    dir: Option<PathBuf>,
    name: &str,
    replicas: u32,
    args: GatewayArgs,
) -> Result<Outcome> {
    let f = with_admin(dir, &args, async |c| Ok(c.scale(name, replicas).await?))?;
    let plural = |n: u32| if n == 1 { "replica" } else { "replicas" };
    writeln!(
        out,
        "{name}: scaling to {} {} ({} ready now; `cubeflash ls` shows progress)",
        f.replicas.desired,
        plural(f.replicas.desired),
        f.replicas.ready
    )?;
    Ok(Outcome::Success)
}

pub fn delete(
    out: &mut impl Write,
    dir: Option<PathBuf>,
    name: &str,
    args: GatewayArgs,
) -> Result<Outcome> {
    with_admin(dir, &args, async |c| Ok(c.delete(name).await?))?;
    writeln!(out, "deleted {name} from the running platform (it comes back on the next deploy while functions/{name}/ exists)")?;
    Ok(Outcome::Success)
}

/// What `invoke` sends.
pub struct InvokeArgs {
    pub data: Option<String>,
    pub headers: Vec<String>,
    pub method: Option<String>,
    pub is_async: bool,
    pub event: Option<String>,
}

/// `cubeflash invoke`: prints the body to stdout (with `--async`, the call id); a non-2xx
/// answer is exit code 1.
pub fn invoke(
    out: &mut impl Write,
    dir: Option<PathBuf>,
    name: &str,
    call: InvokeArgs,
    args: GatewayArgs,
) -> Result<Outcome> {
    let InvokeArgs {
        data,
        mut headers,
        mut method,
        is_async,
        event,
    } = call;
    if is_async
        && method
            .as_deref()
            .is_some_and(|m| !m.eq_ignore_ascii_case("POST"))
    {
        bail!("an async call is a POST: drop -X, or call it without --async");
    }
    let root = repo_root(dir).ok();
    let url = match (&args.gateway, &root) {
        (Some(u), _) => u.trim_end_matches('/').to_string(),
        (None, root) => {
            let root = root.clone().map_or_else(|| repo_root(None), Ok)?;
            let url = gateway_url(&root, &args)?;
            runtime()?.block_on(own_gateway(&root, &url, None))?;
            url
        }
    };
    let mut body = read_body(data.as_deref())?;
    let mut suffix = String::new();
    if let Some(event) = &event {
        let Some(root) = &root else {
            bail!("--event reads functions/{name}/events/{event}.json from the repo: run it inside one, or pass --dir");
        };
        let e = crate::spec::events::load(root, name, event)?;
        if let Some((bytes, kind)) = e.body_bytes() {
            if !e
                .headers
                .keys()
                .any(|k| k.eq_ignore_ascii_case("content-type"))
            {
                headers.insert(0, format!("Content-Type: {kind}"));
            }
            body = Some(bytes);
        }
        // The event's own headers, then those -H adds.
        let own: Vec<String> = e.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        headers.splice(0..0, own);
        method = Some(e.method.clone());
        suffix = if e.path == "/" {
            String::new()
        } else {
            e.path.clone()
        };
    }
    let method = method.unwrap_or_else(|| {
        if body.is_some() || is_async {
            "POST".into()
        } else {
            "GET".into()
        }
    });
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes())
        .map_err(|_| anyhow!("{method:?} is not an HTTP method"))?;
    let (status, from_gateway, bytes) = runtime()?.block_on(async {
        let route = if is_async { "async-function" } else { "function" };
        let mut req = client().request(method, format!("{url}/{route}/{name}{suffix}"));
        for h in &headers {
            let (k, v) = h.split_once(':').ok_or_else(|| anyhow!("header {h:?} must look like `Name: value`"))?;
            req = req.header(k.trim(), v.trim());
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the gateway at {url}: is it running? (`make deploy` or `cubeflash up`)"))?;
        let status = resp.status();
        let from_gateway = resp.headers().get(crate::gateway::proxy::ORIGIN).is_some_and(|v| v == "gateway");
        let bytes = resp.bytes().await.context("failed to read the answer")?;
        Ok::<_, anyhow::Error>((status, from_gateway, bytes))
    })?;
    // The gateway's own refusal (no such function, crash loop, timeout): said as a CLI
    // message, the function's output as lines.
    if let (true, Ok(e)) = (
        from_gateway,
        serde_json::from_slice::<crate::gateway::api::ErrorBody>(&bytes),
    ) {
        let hint = match (status, &root) {
            (reqwest::StatusCode::NOT_FOUND, Some(root)) => repo_hint(root, name),
            _ => String::new(),
        };
        eprintln!("cubeflash: {} ({status}){hint}", e.error);
        if let Some(log) = e.log.filter(|l| !l.is_empty()) {
            eprintln!("its last output:");
            for line in log {
                eprintln!("  | {line}");
            }
        }
        return Ok(Outcome::Failed);
    }
    if is_async && status == reqwest::StatusCode::ACCEPTED {
        let accepted: crate::gateway::api::Accepted = serde_json::from_slice(&bytes).context(
            "the gateway's 202 is not what this cubeflash expects: is it another version?",
        )?;
        writeln!(out, "{}", accepted.call_id)?;
        out.flush()?;
        eprintln!(
            "{} call {} for {name}: follow it with `cubeflash calls show {} --wait 30s`",
            if accepted.duplicate {
                "an earlier (same Idempotency-Key)"
            } else {
                "accepted"
            },
            accepted.call_id,
            accepted.call_id
        );
        return Ok(Outcome::Success);
    }
    out.write_all(&bytes)?;
    if !bytes.ends_with(b"\n") {
        writeln!(out)?;
    }
    if status.is_success() {
        Ok(Outcome::Success)
    } else {
        out.flush()?;
        eprintln!("cubeflash: {name} answered {status}");
        Ok(Outcome::Failed)
    }
}

/// `cubeflash calls`: list, show, redrive, purge async calls.
pub fn calls(
    out: &mut impl Write,
    dir: Option<PathBuf>,
    action: Option<crate::cli::CallsAction>,
    function: Option<String>,
    state: Option<String>,
    limit: usize,
    args: GatewayArgs,
) -> Result<Outcome> {
    use crate::cli::CallsAction;
    match action {
        Some(CallsAction::Show { id, wait, gateway }) => {
            let call = with_admin(dir, &gateway, async |c| Ok(c.async_call(&id, wait).await?))?;
            writeln!(out, "{}", serde_json::to_string_pretty(&call)?)?;
        }
        Some(CallsAction::Redrive { id, gateway }) => {
            let call = with_admin(dir, &gateway, async |c| Ok(c.redrive(&id).await?))?;
            writeln!(
                out,
                "{}: back in {}'s queue with a fresh retry budget",
                call.id, call.function
            )?;
        }
        Some(CallsAction::Purge { id, gateway }) => {
            with_admin(dir, &gateway, async |c| {
                Ok(c.purge(&id).await.map(|_| ())?)
            })?;
            writeln!(out, "{id}: purged")?;
        }
        None => {
            let list = with_admin(dir, &args, async |c| {
                Ok(c.calls(function.as_deref(), state.as_deref(), limit)
                    .await?)
            })?;
            let now = crate::triggers::calls::now_ms();
            let rows: Vec<[String; 6]> = list
                .iter()
                .map(|c| {
                    let last = c.attempts.last();
                    [
                        c.id.clone(),
                        c.function.clone(),
                        serde_json::to_value(c.state)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                        c.attempts.len().to_string(),
                        format!("{}s ago", now.saturating_sub(c.accepted_at) / 1000),
                        c.error
                            .clone()
                            .or_else(|| last.and_then(|a| a.status).map(|s| s.to_string()))
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            write_table(
                out,
                &["ID", "FUNCTION", "STATE", "ATTEMPTS", "ACCEPTED", "LAST"],
                &rows,
            )?;
        }
    }
    Ok(Outcome::Success)
}

/// What the repo says about a name the gateway does not serve (the gateway names the
/// nearest one it has): a folder that is not deployed yet.
fn repo_hint(root: &Path, name: &str) -> String {
    let Ok(repo) = crate::spec::load(root) else {
        return String::new();
    };
    let names: Vec<&str> = repo
        .functions
        .iter()
        .map(|f| f.spec.name.as_str())
        .collect();
    if names.contains(&name) {
        return format!("\nfunctions/{name}/ exists but is not deployed on this gateway: run `cubeflash deploy`");
    }
    String::new()
}

/// A request body as `--data` gives it: text, `@file`, or `-` for standard input.
pub(super) fn read_body(data: Option<&str>) -> Result<Option<Vec<u8>>> {
    Ok(match data {
        None => None,
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("failed to read the body from standard input")?;
            Some(buf)
        }
        Some(d) if d.starts_with('@') => {
            Some(std::fs::read(&d[1..]).with_context(|| format!("failed to read {}", &d[1..]))?)
        }
        Some(d) => Some(d.as_bytes().to_vec()),
    })
}

/// `cubeflash logs`: reads .cubeflash/logs/<name>.log, so it works with the platform down too.
pub fn logs(
    out: &mut impl Write,
    dir: Option<PathBuf>,
    name: &str,
    follow: bool,
    lines: usize,
) -> Result<Outcome> {
    let root = repo_root(dir)?;
    let path = crate::runtime::local::log_path(&target::state_dir(&root), name);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let repo = load(&root)?;
            let names: Vec<&str> = repo
                .functions
                .iter()
                .map(|f| f.spec.name.as_str())
                .collect();
            if !names.contains(&name) {
                let near = crate::spec::decode::closest(name, &names)
                    .map(|n| format!("; did you mean {n:?}?"))
                    .unwrap_or_else(|| format!("; it has: {}", names.join(", ")));
                bail!("this repo has no function named {name:?}{near}");
            }
            bail!("{name} has not run on the local platform yet, so it has no log ({} does not exist): call it, or `cubeflash deploy` first", path.display());
        }
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
    };
    if text.is_empty() && !follow {
        out.flush()?;
        eprintln!("{name} has not written any output yet");
    }
    let all: Vec<&str> = text.lines().collect();
    for line in &all[all.len().saturating_sub(lines)..] {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    if follow {
        let mut file = std::fs::File::open(&path)?;
        let mut pos = file.seek(SeekFrom::End(0))?;
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let len = file.metadata()?.len();
            if len < pos {
                pos = 0;
            }
            if len > pos {
                file.seek(SeekFrom::Start(pos))?;
                let mut buf = Vec::new();
                file.read_to_end(&mut buf)?;
                pos += buf.len() as u64;
                out.write_all(&buf)?;
                out.flush()?;
            }
        }
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::write_table;

    #[test]
    fn table_columns_stay_aligned_however_long_a_name_is() {
        let rows = [
            [
                "a-function-with-a-very-long-name".to_string(),
                "1/1".to_string(),
                "http://x".to_string(),
            ],
            ["b".to_string(), "10/10".to_string(), "http://y".to_string()],
        ];
        let mut out = Vec::new();
        write_table(&mut out, &["NAME", "READY", "URL"], &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let column = |l: &str, word: &str| l.find(word).unwrap();
        assert_eq!(column(lines[0], "READY"), column(lines[1], "1/1"), "{text}");
        assert_eq!(
            column(lines[0], "READY"),
            column(lines[2], "10/10"),
            "{text}"
        );
        assert_eq!(
            column(lines[0], "URL"),
            column(lines[2], "http://y"),
            "{text}"
        );
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{text}");
    }
}
