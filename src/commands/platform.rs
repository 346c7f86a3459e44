//! The verbs that talk to the local platform: up, deploy, down, list, describe, invoke,
//! logs, scale, delete.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::{load, repo_root, Outcome};
use crate::cli::{GatewayArgs, LogFormat};
use crate::deploy::local as target;
use crate::gateway::{self, Gateway, GatewayConfig};

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
    let repo = load(&root)?;
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
        gateway::local::LocalBackend::attach(&gw, &repo, &root, &state_dir)?;
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

/// `cubeflash deploy` to the local target.
pub fn deploy(out: &mut impl Write, dir: Option<PathBuf>) -> Result<Outcome> {
    let root = repo_root(dir)?;
    load(&root)?;
    let exe = std::env::current_exe().context("failed to find the cubeflash binary")?;
    let rt = runtime()?;
    rt.block_on(async {
        let client = client();
        let running = target::running_pid(&root).and(target::recorded_url(&root));
        let url = match running {
            Some(url) => {
                let summary = target::reload(&url, &token(&root)?, &client).await?;
                writeln!(out, "reloaded the local platform at {url}: {}", brief(&summary))?;
                url
            }
            None => {
                let url = target::start_background(&root, &exe, &client).await?;
                writeln!(out, "started the local platform at {url} (log: .cubeflash/gateway.log, stop: cubeflash down)")?;
                url
            }
        };
        let functions = wait_ready(&client, &url, &token(&root)?).await?;
        print_urls(out, &url, &functions)?;
        Ok(Outcome::Success)
    })
}

/// Waits (30 s at most) until every always-on replica (baseline and `scale.min`) is ready,
/// and returns the functions as the admin API lists them.
pub(super) async fn wait_ready(client: &reqwest::Client, url: &str, token: &str) -> Result<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let functions = admin_get(client, url, token, "/system/functions").await?;
        let pending: Vec<String> = functions
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| {
                let min = f["scale"]["min"].as_u64().unwrap_or(0);
                let base = &f["baselineReplicas"];
                f["failed"].is_null()
                    && (f["replicas"]["ready"].as_u64().unwrap_or(0) < min
                        || base["ready"].as_u64() < base["desired"].as_u64())
            })
            .filter_map(|f| f["name"].as_str().map(str::to_string))
            .collect();
        if pending.is_empty() || std::time::Instant::now() > deadline {
            if !pending.is_empty() {
                eprintln!(
                    "cubeflash: still starting after 30s: {} (see `cubeflash logs <name>`)",
                    pending.join(", ")
                );
            }
            return Ok(functions);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn brief(summary: &Value) -> String {
    ["added", "changed", "removed"]
        .iter()
        .map(|k| {
            let names: Vec<&str> = summary[k]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!("{k} [{}]", names.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_urls(out: &mut impl Write, url: &str, functions: &Value) -> Result<()> {
    for f in functions.as_array().into_iter().flatten() {
        let name = f["name"].as_str().unwrap_or("?");
        writeln!(out, "  {name:<20} {}", f["url"].as_str().unwrap_or(""))?;
        for t in f["triggers"].as_array().into_iter().flatten() {
            if let Some(path) = t["http"]["path"].as_str() {
                writeln!(out, "  {:<20} {url}{path}", "")?;
            }
        }
        if let Some(b) = f["baselineUrl"].as_str() {
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

async fn admin_get(client: &reqwest::Client, url: &str, token: &str, path: &str) -> Result<Value> {
    admin(client.get(format!("{url}{path}")).bearer_auth(token), url).await
}

async fn admin(req: reqwest::RequestBuilder, url: &str) -> Result<Value> {
    let resp = req.send().await.with_context(|| {
        format!(
            "cannot reach the gateway at {url}: is it running? (`make deploy` or `cubeflash up`)"
        )
    })?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "the gateway answered {status}: {}",
            body["error"].as_str().unwrap_or("no detail")
        );
    }
    Ok(body)
}

fn with_admin<T>(
    dir: Option<PathBuf>,
    args: &GatewayArgs,
    f: impl AsyncFnOnce(reqwest::Client, String, String) -> Result<T>,
) -> Result<T> {
    let root = repo_root(dir)?;
    let url = gateway_url(&root, args)?;
    let token = token(&root)?;
    runtime()?.block_on(f(client(), url, token))
}

pub fn list(out: &mut impl Write, dir: Option<PathBuf>, args: GatewayArgs) -> Result<Outcome> {
    let functions = with_admin(dir, &args, async |c, url, token| {
        admin_get(&c, &url, &token, "/system/functions").await
    })?;
    writeln!(
        out,
        "{:<20} {:<8} {:>8} {:>8} {:>6} {:>6}  {:<40} BASELINE",
        "NAME", "RUNTIME", "READY", "INFLIGHT", "QUEUED", "COLD", "URL"
    )?;
    for f in functions.as_array().into_iter().flatten() {
        writeln!(
            out,
            "{:<20} {:<8} {:>8} {:>8} {:>6} {:>6}  {:<40} {}",
            f["name"].as_str().unwrap_or("?"),
            f["runtime"].as_str().unwrap_or("?"),
            format!("{}/{}", f["replicas"]["ready"], f["replicas"]["desired"]),
            f["inflight"].to_string(),
            f["queued"].to_string(),
            f["coldStarts"].to_string(),
            f["url"].as_str().unwrap_or(""),
            f["baselineUrl"].as_str().unwrap_or("-"),
        )?;
    }
    Ok(Outcome::Success)
}

pub fn describe(
    out: &mut impl Write,
    dir: Option<PathBuf>,
    name: &str,
    args: GatewayArgs,
) -> Result<Outcome> {
    let f = with_admin(dir, &args, async |c, url, token| {
        admin_get(&c, &url, &token, &format!("/system/functions/{name}")).await
    })?;
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
    let f = with_admin(dir, &args, async |c, url, token| {
        let req = c
            .post(format!("{url}/system/functions/{name}/scale"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "replicas": replicas }));
        admin(req, &url).await
    })?;
    writeln!(
        out,
        "{name}: {} replicas wanted, {} ready",
        f["replicas"]["desired"], f["replicas"]["ready"]
    )?;
    Ok(Outcome::Success)
}

pub fn delete(
    out: &mut impl Write,
    dir: Option<PathBuf>,
    name: &str,
    args: GatewayArgs,
) -> Result<Outcome> {
    with_admin(dir, &args, async |c, url, token| {
        admin(
            c.delete(format!("{url}/system/functions/{name}"))
                .bearer_auth(&token),
            &url,
        )
        .await
    })?;
    writeln!(out, "deleted {name} from the running platform (it comes back on the next deploy while functions/{name}/ exists)")?;
    Ok(Outcome::Success)
}

/// `cubeflash invoke`: prints the body to stdout; a non-2xx answer is exit code 1.
pub fn invoke(
    out: &mut impl Write,
    dir: Option<PathBuf>,
    name: &str,
    data: Option<String>,
    headers: Vec<String>,
    method: Option<String>,
    args: GatewayArgs,
) -> Result<Outcome> {
    let url = match &args.gateway {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => gateway_url(&repo_root(dir)?, &args)?,
    };
    let body = read_body(data.as_deref())?;
    let method = method.unwrap_or_else(|| {
        if body.is_some() {
            "POST".into()
        } else {
            "GET".into()
        }
    });
    let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes())
        .map_err(|_| anyhow!("{method:?} is not an HTTP method"))?;
    let (status, bytes) = runtime()?.block_on(async {
        let mut req = client().request(method, format!("{url}/function/{name}"));
        for h in &headers {
            let (k, v) = h.split_once(':').ok_or_else(|| anyhow!("header {h:?} must look like `Name: value`"))?;
            req = req.header(k.trim(), v.trim());
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the gateway at {url}: is it running? (`make deploy` or `cubeflash up`)"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("failed to read the answer")?;
        Ok::<_, anyhow::Error>((status, bytes))
    })?;
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
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no logs for {name} yet ({} does not exist): has it run?",
            path.display()
        )
    })?;
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
