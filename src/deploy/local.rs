//! The local target: a background `cubeflash up` with its pidfile, URL file and log under
//! .cubeflash/, reloaded through the admin API when it is already running.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub const STATE_DIR: &str = ".cubeflash";
pub const PID_FILE: &str = "gateway.pid";
pub const URL_FILE: &str = "gateway.url";
pub const LOG_FILE: &str = "gateway.log";

/// Why the local platform could not be started, reached or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LocalDeployError {
    #[error("failed to {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the gateway did not come up within {}s; its log ({}) ends with:\n{tail}", .waited.as_secs(), .log.display())]
    NotUp {
        waited: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("the gateway at {url} refused the reload: {detail}")]
    Reload { url: String, detail: String },
    #[error("cannot reach the gateway at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

pub fn state_dir(root: &Path) -> PathBuf {
    root.join(STATE_DIR)
}

/// The pid of the background gateway, if its pidfile names a live process.
pub fn running_pid(root: &Path) -> Option<Pid> {
    let text = std::fs::read_to_string(state_dir(root).join(PID_FILE)).ok()?;
    let pid = Pid::from_raw(text.trim().parse().ok()?);
    kill(pid, None).is_ok().then_some(pid)
}

/// The URL the running gateway recorded.
pub fn recorded_url(root: &Path) -> Option<String> {
    std::fs::read_to_string(state_dir(root).join(URL_FILE))
        .ok()
        .map(|s| s.trim().to_string())
}

async fn healthy(client: &reqwest::Client, url: &str) -> bool {
    client
        .get(format!("{url}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Starts `cubeflash up` in the background (its own session, output to .cubeflash/gateway.log)
/// and waits until it answers /healthz. Returns its URL.
pub async fn start_background(
    root: &Path,
    exe: &Path,
    client: &reqwest::Client,
) -> Result<String, LocalDeployError> {
    let dir = state_dir(root);
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| LocalDeployError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let log_path = dir.join(LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io("open", &log_path))?;
    let err_log = log.try_clone().map_err(io("open", &log_path))?;
    let _ = std::fs::remove_file(dir.join(URL_FILE));
    let child = std::process::Command::new(exe)
        .arg("-C")
        .arg(root)
        .arg("up")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .process_group(0)
        .spawn()
        .map_err(io("start", exe))?;
    let pid_path = dir.join(PID_FILE);
    std::fs::write(&pid_path, format!("{}\n", child.id())).map_err(io("write", &pid_path))?;
    let waited = Duration::from_secs(30);
    let deadline = Instant::now() + waited;
    while Instant::now() < deadline {
        if let Some(url) = recorded_url(root) {
            if healthy(client, &url).await {
                return Ok(url);
            }
        }
        if running_pid(root).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
    let tail: Vec<&str> = tail.lines().rev().take(15).collect();
    Err(LocalDeployError::NotUp {
        waited,
        log: log_path,
        tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

/// Asks the running gateway to reload the repo; returns what changed.
pub async fn reload(
    url: &str,
    token: &str,
    client: &reqwest::Client,
) -> Result<serde_json::Value, LocalDeployError> {
    let resp = client
        .post(format!("{url}/system/reload"))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|source| LocalDeployError::Unreachable {
            url: url.to_string(),
            source,
        })?;
    let ok = resp.status().is_success();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if ok {
        Ok(body)
    } else {
        let detail = body
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("no detail")
            .to_string();
        Err(LocalDeployError::Reload {
            url: url.to_string(),
            detail,
        })
    }
}

/// Stops what a gateway of this repo that was killed left running; returns how many
/// replica process groups that was.
pub fn reap_orphans(root: &Path) -> usize {
    crate::runtime::sandbox::reap(&state_dir(root))
}

/// Stops the background gateway (SIGTERM, then waits up to `wait`); false if none ran.
pub async fn stop(root: &Path, wait: Duration) -> bool {
    let Some(pid) = running_pid(root) else {
        let _ = std::fs::remove_file(state_dir(root).join(PID_FILE));
        return false;
    };
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline && kill(pid, None).is_ok() {
        // Reap it if it is our own child (a `deploy` earlier in this process).
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if kill(pid, None).is_ok() {
        let _ = kill(pid, Signal::SIGKILL);
    }
    let _ = std::fs::remove_file(state_dir(root).join(PID_FILE));
    let _ = std::fs::remove_file(state_dir(root).join(URL_FILE));
    true
}
