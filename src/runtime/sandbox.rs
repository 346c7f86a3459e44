//! What keeps a local replica from reaching the gateway that starts it: a clean environment
//! (never the gateway's own, which holds its token), an unprivileged user when the gateway
//! runs as root (as pods run as non-root), a lifeline (the replica's stdin, a pipe only the
//! gateway holds: the shims and the exec guard exit when it closes, however the gateway
//! died), and a record of each replica's process group under `.cubeflash/replicas/`, so a
//! gateway that was SIGKILLed leaves nothing a new `up` cannot find and stop.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Pid, User};
use tokio::process::Command;

/// Who replicas run as.
#[derive(Debug, Clone)]
pub struct ReplicaUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Why replicas cannot be started as configured.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("CUBEFLASH_REPLICA_USER names {0:?}, which is not a user on this machine: name an existing unprivileged user (the default is nobody), or `root` to run replicas as root")]
    NoSuchUser(String),
    #[error("failed to prepare {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct Sandbox {
    pub user: Option<ReplicaUser>,
    records: PathBuf,
    base_env: Vec<(String, String)>,
}

/// The environment variables a replica gets from the gateway's own, and only these.
const PASSED: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ"];

impl Sandbox {
    /// Replicas run as `CUBEFLASH_REPLICA_USER` when the gateway runs as root (default
    /// nobody; `root` keeps them as root), as the gateway's user otherwise.
    pub fn new(state_dir: &Path) -> Result<Self, SandboxError> {
        let user = if nix::unistd::geteuid().is_root() {
            let wanted =
                std::env::var("CUBEFLASH_REPLICA_USER").unwrap_or_else(|_| "nobody".into());
            if wanted == "root" || wanted == "0" {
                None
            } else {
                let found = match wanted.parse::<u32>() {
                    Ok(uid) => User::from_uid(uid.into()).ok().flatten(),
                    Err(_) => User::from_name(&wanted).ok().flatten(),
                };
                let u = found.ok_or_else(|| SandboxError::NoSuchUser(wanted.clone()))?;
                Some(ReplicaUser {
                    name: u.name,
                    uid: u.uid.as_raw(),
                    gid: u.gid.as_raw(),
                    home: u.dir,
                })
            }
        } else {
            None
        };
        let records = state_dir.join("replicas");
        std::fs::create_dir_all(&records)
            .and_then(|()| {
                std::fs::set_permissions(&records, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|source| SandboxError::Io {
                path: records.clone(),
                source,
            })?;
        let home = match &user {
            Some(u) => u.home.display().to_string(),
            None => std::env::var("HOME").unwrap_or_else(|_| "/".into()),
        };
        let mut base_env: Vec<(String, String)> = PASSED
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        base_env.push(("HOME".into(), home));
        // The shims watch their stdin, which the gateway holds (see the module doc).
        base_env.push(("CUBEFLASH_LIFELINE".into(), "stdin".into()));
        Ok(Self {
            user,
            records,
            base_env,
        })
    }

    /// Who replicas run as, by name ("" when as the gateway's own user).
    pub fn user_name(&self) -> String {
        self.user
            .as_ref()
            .map(|u| u.name.clone())
            .unwrap_or_default()
    }

    /// Gives `cmd` the replica's environment (the base and `env`, nothing else) and user.
    pub fn apply(&self, cmd: &mut Command, env: &[(String, String)]) {
        cmd.env_clear();
        cmd.envs(self.base_env.iter().map(|(k, v)| (k, v)));
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        if let Some(u) = &self.user {
            // std drops root's supplementary groups when it sets the uid as root.
            cmd.uid(u.uid).gid(u.gid);
        }
    }

    /// Whether the replica user can read `path` (a folder: list and enter it).
    pub fn can_read(&self, path: &Path) -> bool {
        self.user.as_ref().is_none_or(|u| reachable(path, u, true))
    }

    /// Whether the replica user can run the program at `path`.
    pub fn can_run(&self, path: &Path) -> bool {
        self.user.as_ref().is_none_or(|u| reachable(path, u, false))
    }

    /// Notes a replica's process group; the file goes when the replica is stopped.
    pub fn record(&self, pgid: Pid) -> Option<PathBuf> {
        let start = start_time(pgid)?;
        let path = self.records.join(pgid.as_raw().to_string());
        std::fs::write(&path, format!("{start}\n")).ok()?;
        Some(path)
    }
}

/// Whether every folder on the way to `path` lets `u` through and `path` itself lets it read
/// (`read`) or run it, judged by the mode bits that apply to `u`.
fn reachable(path: &Path, u: &ReplicaUser, read: bool) -> bool {
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let allows = |p: &Path, bit: u32| {
        std::fs::metadata(p).is_ok_and(|m| {
            let mode = m.permissions().mode();
            let shift = if m.uid() == u.uid {
                6
            } else if m.gid() == u.gid {
                3
            } else {
                0
            };
            (mode >> shift) & bit == bit
        })
    };
    let dirs_ok = path.ancestors().skip(1).all(|d| allows(d, 0o1));
    let is_dir = path.is_dir();
    let need = match (read, is_dir) {
        (true, true) => 0o5,
        (true, false) => 0o4,
        (false, _) => 0o1,
    };
    dirs_ok && allows(&path, need)
}

/// A process's start time (clock ticks since boot), which tells a live process from a
/// later one that was given the same pid.
fn start_time(pid: Pid) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw())).ok()?;
    // Field 22; the command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Stops the process groups of replicas that an earlier gateway of this repo recorded and
/// did not stop (it was killed); returns how many were still running.
pub fn reap(state_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(state_dir.join("replicas")) else {
        return 0;
    };
    let mut reaped = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let pgid = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
            .map(Pid::from_raw);
        let recorded = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        if let (Some(pgid), Some(recorded)) = (pgid, recorded) {
            if start_time(pgid) == Some(recorded) && killpg(pgid, Signal::SIGKILL).is_ok() {
                tracing::info!(
                    pgid = pgid.as_raw(),
                    "stopped a replica left by an earlier gateway"
                );
                reaped += 1;
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    reaped
}
