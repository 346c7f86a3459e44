//! The local target: a background `cubeflash up` with its pidfile, URL file and log under
//! .cubeflash/, reloaded through the admin API when it is already running.

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::gateway::api::{Health, Reloaded};
use crate::gateway::client::{AdminClient, ClientError};

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
    #[error("the gateway exited ({status}) before it was up; its log ({}) says:\n{tail}", .log.display())]
    Exited {
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("the reload failed")]
    Reload(#[source] ClientError),
}

pub fn state_dir(root: &Path) -> PathBuf {
    root.join(STATE_DIR)
}

/// The pid of the background gateway, if its pidfile names a live process that is this
/// repo's gateway (`cubeflash -C ROOT up`): a pid reused by anything else is never signalled.
pub fn running_pid(root: &Path) -> Option<Pid> {
    let text = std::fs::read_to_string(state_dir(root).join(PID_FILE)).ok()?;
    let pid = Pid::from_raw(text.trim().parse().ok()?);
    (kill(pid, None).is_ok() && is_gateway_of(pid, root)).then_some(pid)
}

/// Whether `pid` runs `cubeflash ... up` for the repo at `root`.
fn is_gateway_of(pid: Pid, root: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", pid.as_raw())) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_cubeflash = args
        .first()
        .and_then(|a| {
            Path::new(std::str::from_utf8(a).ok()?)
                .file_name()
                .map(|n| n.to_os_string())
        })
        .is_some_and(|n| n.to_string_lossy().starts_with("cubeflash"));
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let names_root = args.windows(2).any(|w| {
        w[0] == b"-C"
            && Path::new(std::str::from_utf8(w[1]).unwrap_or(""))
                .canonicalize()
                .ok()
                == Some(root.clone())
    });
    is_cubeflash && names_root && args.iter().any(|a| *a == b"up")
}

/// The URL the running gateway recorded.
pub fn recorded_url(root: &Path) -> Option<String> {
    std::fs::read_to_string(state_dir(root).join(URL_FILE))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether the gateway at `url` is up and serves the repo at `root`.
async fn healthy(url: &str, root: &Path) -> bool {
    AdminClient::new(url, None)
        .health()
        .await
        .is_ok_and(|h| h.reason.is_none() && serves(&h, root))
}

/// Whether a gateway's /healthz says it serves the repo at `root`.
pub fn serves(health: &Health, root: &Path) -> bool {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    health
        .repo
        .as_deref()
        .is_some_and(|r| Path::new(r).canonicalize().ok().as_deref() == Some(root.as_path()))
}

/// Starts `cubeflash up` in the background (its own session, output to .cubeflash/gateway.log)
/// and waits until it answers /healthz. Returns its URL.
pub async fn start_background(root: &Path, exe: &Path) -> Result<String, LocalDeployError> {
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
    // 0600: .cubeflash/ may be entered by the replica user (for the shims), not this log.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(io("open", &log_path))?;
    // One written by an older cubeflash may be more open.
    let _ = log.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600));
    let err_log = log.try_clone().map_err(io("open", &log_path))?;
    // Only this run's lines are shown if it fails.
    let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(dir.join(URL_FILE));
    let mut child = std::process::Command::new(exe)
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
    let mut exited = None;
    while Instant::now() < deadline {
        if let Some(url) = recorded_url(root) {
            if healthy(&url, root).await {
                return Ok(url);
            }
        }
        // Our own child: a zombie still answers kill(0), so ask wait.
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_file(&pid_path);
    let text = std::fs::read(&log_path).unwrap_or_default();
    let text = String::from_utf8_lossy(text.get(offset as usize..).unwrap_or_default());
    let tail: Vec<&str> = text.lines().rev().take(15).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    Err(match exited {
        Some(status) => LocalDeployError::Exited {
            status: status.to_string(),
            log: log_path,
            tail,
        },
        None => LocalDeployError::NotUp {
            waited,
            log: log_path,
            tail,
        },
    })
}

/// Asks the running gateway to reload the repo; returns what changed.
pub async fn reload(client: &AdminClient, verify: bool) -> Result<Reloaded, LocalDeployError> {
    client
        .reload(verify)
        .await
        .map_err(LocalDeployError::Reload)
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
