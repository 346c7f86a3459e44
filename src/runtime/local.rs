//! Local replicas: one process per replica in its own process group, on a free loopback
//! port, its output kept in a bounded per-function buffer and a log file. Knows how to start,
//! probe and stop one process; the policy (how many, when to restart) is the gateway's.

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::render::context::shim;
use crate::spec::{Function, Runtime};

/// Lines of output kept in memory per function.
pub const LOG_LINES: usize = 1000;

/// How to start one replica of a function.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub function: String,
    pub program: String,
    pub args: Vec<String>,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
}

/// Why a function cannot run locally.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("runtime `image` runs on Kubernetes only; give {function} a python, node or exec runtime to run it locally")]
    ImageRuntime { function: String },
    #[error("failed to write the runtime shim to {}", path.display())]
    Shim {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes the embedded shims under `state_dir/runtime/` so replicas can run them, and
/// returns the spec to start `f` with.
pub fn process_spec(
    root: &Path,
    state_dir: &Path,
    f: &Function,
) -> Result<ProcessSpec, LocalError> {
    let spec = &f.spec;
    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.push(("CUBEFLASH_FUNCTION".into(), spec.name.clone()));
    env.push(("CUBEFLASH_BIND".into(), "127.0.0.1".into()));
    let (program, args) = match spec.runtime {
        Runtime::Image => {
            return Err(LocalError::ImageRuntime {
                function: spec.name.clone(),
            })
        }
        Runtime::Exec => (
            "sh".to_string(),
            vec!["-c".to_string(), spec.handler.clone().unwrap_or_default()],
        ),
        rt => {
            let (file, text) = shim(rt).expect("python and node have shims");
            let dir = state_dir.join("runtime");
            let path = dir.join(file);
            let write = || -> std::io::Result<()> {
                std::fs::create_dir_all(&dir)?;
                if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
                    std::fs::write(&path, text)?;
                }
                Ok(())
            };
            write().map_err(|source| LocalError::Shim {
                path: path.clone(),
                source,
            })?;
            env.push((
                "CUBEFLASH_HANDLER".into(),
                spec.handler.clone().unwrap_or_default(),
            ));
            if rt == Runtime::Python {
                env.push(("PYTHONUNBUFFERED".into(), "1".into()));
                env.push(("PYTHONDONTWRITEBYTECODE".into(), "1".into()));
            }
            let program = if rt == Runtime::Python {
                "python3"
            } else {
                "node"
            };
            (
                program.to_string(),
                vec![path.to_string_lossy().into_owned()],
            )
        }
    };
    Ok(ProcessSpec {
        function: spec.name.clone(),
        program,
        args,
        dir: root.join(&f.rel_dir),
        env,
    })
}

/// A function's recent output, shared by its replicas.
#[derive(Debug, Default)]
pub struct LogBuffer {
    lines: Mutex<VecDeque<String>>,
    file: Option<Mutex<std::fs::File>>,
}

impl LogBuffer {
    /// A buffer that also appends to `path`.
    pub fn with_file(path: &Path) -> Self {
        let file = path
            .parent()
            .and_then(|d| std::fs::create_dir_all(d).ok())
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .ok()
            });
        Self {
            lines: Mutex::default(),
            file: file.map(Mutex::new),
        }
    }

    pub fn push(&self, line: String) {
        if let Some(f) = &self.file {
            let _ = writeln!(f.lock().expect("log file lock"), "{line}");
        }
        let mut lines = self.lines.lock().expect("log lock");
        if lines.len() == LOG_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let lines = self.lines.lock().expect("log lock");
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }
}

/// A started replica process.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    pub pgid: Pid,
}

/// A free loopback port (the small race with another binder shows up as a failed start,
/// which the supervisor retries on a new port).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts one replica in a new process group with its output going to `logs`.
pub fn spawn(spec: &ProcessSpec, replica: u64, logs: &Arc<LogBuffer>) -> std::io::Result<Process> {
    let port = free_port()?;
    let mut child = Command::new(&spec.program)
        .args(&spec.args)
        .current_dir(&spec.dir)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().expect("a just-spawned child has a pid");
    let prefix = format!("[{}#{replica}]", spec.function);
    forward(child.stdout.take(), prefix.clone(), logs.clone());
    forward(child.stderr.take(), prefix, logs.clone());
    Ok(Process {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        pgid: Pid::from_raw(pid as i32),
    })
}

fn forward<R: AsyncRead + Unpin + Send + 'static>(
    stream: Option<R>,
    prefix: String,
    logs: Arc<LogBuffer>,
) {
    let Some(stream) = stream else { return };
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            logs.push(format!("{prefix} {line}"));
        }
    });
}

/// Stops a replica's whole process group: SIGTERM, then SIGKILL after `grace`.
pub async fn stop(process: &mut Process, grace: Duration) {
    let _ = killpg(process.pgid, Signal::SIGTERM);
    if tokio::time::timeout(grace, process.child.wait())
        .await
        .is_err()
    {
        let _ = killpg(process.pgid, Signal::SIGKILL);
        let _ = process.child.wait().await;
    }
    // Children the replica left behind in its group go too.
    let _ = killpg(process.pgid, Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_buffer_keeps_the_last_lines() {
        let logs = LogBuffer::default();
        for i in 0..(LOG_LINES + 5) {
            logs.push(format!("line {i}"));
        }
        let tail = logs.tail(2);
        assert_eq!(
            tail,
            vec![
                format!("line {}", LOG_LINES + 3),
                format!("line {}", LOG_LINES + 4)
            ]
        );
        assert_eq!(logs.tail(usize::MAX).len(), LOG_LINES);
    }
}
