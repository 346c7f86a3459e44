//! Local replicas: one process per replica in its own process group, on a free loopback
//! port, its output kept in a bounded per-function buffer and a log file. Knows how to start,
//! probe and stop one process; the policy (how many, when to restart) is the gateway's.

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use super::sandbox::{Sandbox, SandboxError};
use crate::render::context::shim;
use crate::spec::{Function, Runtime};

/// Lines of output kept in memory per function.
pub const LOG_LINES: usize = 1000;

/// How to start one replica of a function.
#[derive(Clone)]
pub struct ProcessSpec {
    pub function: String,
    pub program: String,
    pub args: Vec<String>,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
    /// Pre-started interpreters to take a replica from, when the runtime has them.
    pub pool: Option<Arc<WarmPool>>,
    /// Clean environment, user, lifeline and process-group records.
    pub sandbox: Arc<Sandbox>,
}

impl std::fmt::Debug for ProcessSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessSpec")
            .field("function", &self.function)
            .field("program", &self.program)
            .field("args", &self.args)
            .field("pooled", &self.pool.is_some())
            .finish()
    }
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
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The gateway runs as root and replicas as an unprivileged user who cannot read the code.
    #[error("{} is not readable by the user {user}, whom replicas run as because the gateway runs as root: make the repo readable by others (chmod o+rX on it and on every folder above it), run the gateway as an ordinary user, or set CUBEFLASH_REPLICA_USER to a user who can read it", dir.display())]
    Unreadable { dir: PathBuf, user: String },
    /// A version's copy of its code could not be written.
    #[error("failed to write the copy of {function}'s code that its replicas run from, {}", path.display())]
    Snapshot {
        function: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No interpreter the replica user can run.
    #[error("no {program} that the user {user} can run: {found} is in a folder that user cannot enter; install {program} system-wide (e.g. `apt-get install {program}`) or set CUBEFLASH_REPLICA_USER")]
    NoInterpreter {
        program: &'static str,
        found: String,
        user: String,
    },
}

/// The language runtimes on this machine: shims written under `.cubeflash/runtime/`,
/// interpreters resolved, and a warm pool per language.
pub struct Runtimes {
    python: (PathBuf, Arc<WarmPool>),
    node: (PathBuf, Arc<WarmPool>),
    pub sandbox: Arc<Sandbox>,
    /// Interpreters the replica user can run (None: not found; said at load).
    python_path: Result<String, String>,
    node_path: Result<String, String>,
}

impl Runtimes {
    /// Must be called within the runtime that will own warm processes.
    pub fn new(state_dir: &Path) -> Result<Arc<Self>, LocalError> {
        let handle = tokio::runtime::Handle::current();
        let sandbox = Arc::new(Sandbox::new(state_dir)?);
        // The state folder may be entered (not listed) by the replica user, who must read
        // the shims; tokens and logs inside it are 0600 / 0700.
        let _ = std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o711));
        let dir = state_dir.join("runtime");
        let write = |rt| -> Result<PathBuf, LocalError> {
            let (file, text) = shim(rt).expect("python and node have shims");
            let path = dir.join(file);
            let io = |source| LocalError::Shim {
                path: path.clone(),
                source,
            };
            std::fs::create_dir_all(&dir).map_err(io)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
                std::fs::write(&path, text).map_err(io)?;
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).map_err(io)?;
            Ok(path)
        };
        let py = write(Runtime::Python)?;
        let js = write(Runtime::Node)?;
        let python_path = runnable(&sandbox, "python3", python());
        let node_path = runnable(&sandbox, "node", node());
        let pool_of = |path: &Result<String, String>, shim: &Path| {
            WarmPool::new(
                path.as_deref().unwrap_or("/nonexistent"),
                shim,
                handle.clone(),
                sandbox.clone(),
                state_dir,
            )
        };
        Ok(Arc::new(Self {
            python: (py.clone(), pool_of(&python_path, &py)),
            node: (js.clone(), pool_of(&node_path, &js)),
            sandbox: sandbox.clone(),
            python_path,
            node_path,
        }))
    }

    fn pool(&self, rt: Runtime) -> Option<&Arc<WarmPool>> {
        match rt {
            Runtime::Python => Some(&self.python.1),
            Runtime::Node => Some(&self.node.1),
            _ => None,
        }
    }

    /// Tops up the warm pool of each runtime in `used` that has an interpreter.
    pub fn warm(&self, used: impl IntoIterator<Item = Runtime>) {
        for rt in used {
            let usable = match rt {
                Runtime::Python => self.python_path.is_ok(),
                Runtime::Node => self.node_path.is_ok(),
                _ => false,
            };
            if let (true, Some(pool)) = (usable, self.pool(rt)) {
                pool.fill();
            }
        }
    }

    /// The python3 and node the replicas run (and dependencies are installed for).
    pub fn interpreters(&self) -> (&str, &str) {
        (
            self.python_path.as_deref().unwrap_or("python3"),
            self.node_path.as_deref().unwrap_or("node"),
        )
    }

    /// Stops every warm process.
    pub fn shutdown(&self) {
        self.python.1.shutdown();
        self.node.1.shutdown();
    }
}

/// How to start replicas of `f`.
pub fn process_spec(
    root: &Path,
    runtimes: &Runtimes,
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
    let dir = root.join(&f.rel_dir);
    if !runtimes.sandbox.can_read(&dir) {
        return Err(LocalError::Unreadable {
            dir,
            user: runtimes.sandbox.user_name(),
        });
    }
    let mut pool = None;
    let (program, args) = match spec.runtime {
        Runtime::Image => {
            return Err(LocalError::ImageRuntime {
                function: spec.name.clone(),
            })
        }
        Runtime::Exec => {
            let command = spec.handler.clone().unwrap_or_default();
            // Under the guard, the program dies with the gateway (see `guard`).
            match std::env::current_exe() {
                Ok(exe) if runtimes.sandbox.can_run(&exe) => (
                    exe.to_string_lossy().into_owned(),
                    vec![super::guard::ARG.into(), "sh".into(), "-c".into(), command],
                ),
                _ => ("sh".to_string(), vec!["-c".to_string(), command]),
            }
        }
        rt => {
            env.push((
                "CUBEFLASH_HANDLER".into(),
                spec.handler.clone().unwrap_or_default(),
            ));
            let (program, shim, prefix) = match rt {
                Runtime::Python => {
                    env.push(("PYTHONUNBUFFERED".into(), "1".into()));
                    env.push(("PYTHONDONTWRITEBYTECODE".into(), "1".into()));
                    (&runtimes.python_path, &runtimes.python.0, "PYTHON")
                }
                _ => (&runtimes.node_path, &runtimes.node.0, "NODE_"),
            };
            let program = program.clone().map_err(|found| LocalError::NoInterpreter {
                program: if rt == Runtime::Python {
                    "python3"
                } else {
                    "node"
                },
                found,
                user: runtimes.sandbox.user_name(),
            })?;
            // Variables that shape the interpreter itself only work on a fresh start.
            if !spec.env.keys().any(|k| k.starts_with(prefix)) {
                pool = runtimes.pool(rt).cloned();
            }
            (
                program.to_string(),
                vec![shim.to_string_lossy().into_owned()],
            )
        }
    };
    Ok(ProcessSpec {
        function: spec.name.clone(),
        program,
        args,
        dir,
        env,
        pool,
        sandbox: runtimes.sandbox.clone(),
    })
}

/// Where the versions' code copies live, under the state dir.
pub const VERSIONS_DIR: &str = "versions";

/// The folder a version of `f` runs from: a copy of its code as it was loaded, named by
/// its content, so a version that is kept serving after a failed deploy never runs files
/// edited since (a new replica of it reads the copy, not functions/). Written once, into a
/// temporary folder renamed into place; file modes (an exec program's x bit) come from
/// functions/; a `node_modules/` there is linked, not copied.
pub fn snapshot(state_dir: &Path, root: &Path, f: &Function) -> Result<PathBuf, LocalError> {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for file in &f.files {
        hash.update((file.path.len() as u64).to_le_bytes());
        hash.update(file.path.as_bytes());
        hash.update((file.bytes.len() as u64).to_le_bytes());
        hash.update(&file.bytes);
    }
    let digest = hash.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let versions = state_dir.join(VERSIONS_DIR);
    let dir = versions.join(format!("{}-{hex}", f.spec.name));
    if dir.is_dir() {
        return Ok(dir);
    }
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        let function = f.spec.name.clone();
        move |source| LocalError::Snapshot {
            function,
            path,
            source,
        }
    };
    let open = std::fs::Permissions::from_mode(0o755);
    std::fs::create_dir_all(&versions).map_err(fail(&versions))?;
    std::fs::set_permissions(&versions, open.clone()).map_err(fail(&versions))?;
    let tmp = versions.join(format!(".{}-{hex}.{}", f.spec.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let source = root.join(&f.rel_dir);
    let written = (|| -> std::io::Result<()> {
        std::fs::create_dir(&tmp)?;
        std::fs::set_permissions(&tmp, open.clone())?;
        for file in &f.files {
            let to = tmp.join(&file.path);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
                std::fs::set_permissions(parent, open.clone())?;
            }
            std::fs::write(&to, &file.bytes)?;
            let mode = std::fs::metadata(source.join(&file.path))
                .map(|m| m.permissions().mode() & 0o755)
                .unwrap_or(0o644)
                | 0o444;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
        }
        let modules = source.join("node_modules");
        // With a lock file, node_modules comes from the dependency cache (deps.rs).
        let locked = f.files.iter().any(|c| c.path == super::deps::PACKAGE_LOCK);
        if modules.is_dir() && !locked {
            std::os::unix::fs::symlink(&modules, tmp.join("node_modules"))?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(fail(&dir)(e));
    }
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another gateway of this repo wrote the same content first.
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(fail(&dir)(e))
        }
    }
}

/// `resolved` if the replica user can run it, else the first system-wide interpreter that
/// user can run; Err names what was found.
fn runnable(sandbox: &Sandbox, name: &str, resolved: &str) -> Result<String, String> {
    let candidates = [
        resolved.to_string(),
        format!("/usr/local/bin/{name}"),
        format!("/usr/bin/{name}"),
    ];
    candidates
        .iter()
        .find(|c| Path::new(c).is_file() && sandbox.can_run(Path::new(c)))
        .cloned()
        .ok_or_else(|| resolved.to_string())
}

/// The interpreter's own path: version managers (pyenv, nvm, asdf) put a script on PATH
/// that costs tens of milliseconds on every start, which is most of a cold start.
fn resolve(program: &'static str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| program.to_string())
}

fn python() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| resolve("python3", &["-c", "import sys; print(sys.executable)"]))
}

fn node() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| resolve("node", &["-p", "process.execPath"]))
}

/// Where a function's output is kept: `<state dir>/logs/<name>.log`.
pub fn log_path(state_dir: &Path, function: &str) -> PathBuf {
    state_dir.join("logs").join(format!("{function}.log"))
}

/// A function's recent output, shared by its replicas.
#[derive(Debug, Default)]
pub struct LogBuffer {
    lines: Mutex<Lines>,
    file: Option<Mutex<std::fs::File>>,
    /// A path in the output shown as another (a version's code copy as functions/NAME).
    rewrite: Option<(String, String)>,
}

impl LogBuffer {
    /// A buffer that also appends to `path`.
    /// Folder 0700 and file 0600: a function's output is for its owner, not other replicas.
    pub fn with_file(path: &Path) -> Self {
        use std::os::unix::fs::OpenOptionsExt;
        let file = path
            .parent()
            .and_then(|d| {
                std::fs::create_dir_all(d).ok()?;
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).ok()
            })
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .ok()
            });
        Self {
            lines: Mutex::default(),
            file: file.map(Mutex::new),
            rewrite: None,
        }
    }

    /// Shows `from` as `to` wherever a line has it: a replica runs from its version's copy
    /// of the code, and its tracebacks then name the files the user edits.
    pub fn rewriting(mut self, from: &Path, to: &Path) -> Self {
        self.rewrite = Some((from.display().to_string(), to.display().to_string()));
        self
    }

    pub fn push(&self, line: String) {
        let line = match &self.rewrite {
            Some((from, to)) if line.contains(from.as_str()) => line.replace(from.as_str(), to),
            _ => line,
        };
        if let Some(f) = &self.file {
            let _ = writeln!(f.lock().expect("log file lock"), "{line}");
        }
        let mut lines = self.lines.lock().expect("log lock");
        if lines.kept.len() == LOG_LINES {
            lines.kept.pop_front();
        }
        lines.kept.push_back(line);
        lines.next += 1;
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let lines = self.lines.lock().expect("log lock");
        let kept = &lines.kept;
        kept.iter()
            .skip(kept.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// The last `n` lines numbered above `after` that `keep` accepts, oldest first, and the
    /// number to pass as `after` next time to see only lines written since (lines are
    /// numbered from 1 as they arrive). An `after` past the last line (a new buffer since)
    /// starts from the beginning.
    pub fn since(&self, after: u64, n: usize, keep: &dyn Fn(&str) -> bool) -> (Vec<String>, u64) {
        let lines = self.lines.lock().expect("log lock");
        let first = lines.next - lines.kept.len() as u64 + 1;
        let after = if after > lines.next { 0 } else { after };
        let skip = after.saturating_sub(first - 1).min(lines.kept.len() as u64) as usize;
        let mut picked: Vec<String> = lines
            .kept
            .iter()
            .skip(skip)
            .filter(|l| keep(l))
            .cloned()
            .collect();
        if picked.len() > n {
            picked.drain(..picked.len() - n);
        }
        (picked, lines.next)
    }
}

/// Lines kept and how many were ever written.
#[derive(Debug, Default)]
struct Lines {
    kept: VecDeque<String>,
    next: u64,
}

/// A started replica process.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    pub pgid: Pid,
    /// The record of its process group (removed when it is stopped).
    record: Option<PathBuf>,
    /// The write end of the replica's stdin: it closes when the gateway dies, and the
    /// replica (shim or guard) exits.
    _lifeline: Option<tokio::process::ChildStdin>,
}

/// A free loopback port (the small race with another binder shows up as a failed start,
/// which the supervisor retries on a new port).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where a process's output lines go: set at spawn, or when a warm process becomes a replica.
type LogTarget = Arc<Mutex<Option<(String, Arc<LogBuffer>)>>>;

fn command(program: &str, args: &[String]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

fn pgid_of(child: &Child) -> Pid {
    Pid::from_raw(child.id().expect("a just-spawned child has a pid") as i32)
}

/// Starts one replica in a new process group with its output going to `logs`: a warm
/// process from the runtime's pool when there is one, else a fresh process.
pub async fn spawn(
    spec: &ProcessSpec,
    replica: u64,
    logs: &Arc<LogBuffer>,
) -> std::io::Result<Process> {
    let port = free_port()?;
    let prefix = format!("[{}#{replica}]", spec.function);
    if let Some(pool) = &spec.pool {
        let warm = pool.take();
        pool.fill();
        if let Some(mut warm) = warm {
            let mut env: serde_json::Map<String, serde_json::Value> = spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            env.insert("PORT".into(), port.to_string().into());
            let job = serde_json::json!({ "dir": spec.dir, "env": env });
            let mut line = serde_json::to_vec(&job).expect("json serializes");
            line.push(b'\n');
            *warm.target.lock().expect("log target lock") = Some((prefix.clone(), logs.clone()));
            if warm.stdin.write_all(&line).await.is_ok() {
                let pgid = pgid_of(&warm.child);
                return Ok(Process {
                    child: warm.child,
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    pgid,
                    record: warm.record,
                    _lifeline: Some(warm.stdin),
                });
            }
            // The warm process died meanwhile: start afresh below.
        }
    }
    let mut cmd = command(&spec.program, &spec.args);
    let mut env = spec.env.clone();
    env.push(("PORT".into(), port.to_string()));
    spec.sandbox.apply(&mut cmd, &env);
    let mut child = cmd.current_dir(&spec.dir).stdin(Stdio::piped()).spawn()?;
    let target: LogTarget = Arc::new(Mutex::new(Some((prefix, logs.clone()))));
    forward(child.stdout.take(), target.clone());
    forward(child.stderr.take(), target);
    let pgid = pgid_of(&child);
    Ok(Process {
        record: spec.sandbox.record(pgid),
        _lifeline: child.stdin.take(),
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        pgid,
    })
}

fn forward<R: AsyncRead + Unpin + Send + 'static>(stream: Option<R>, target: LogTarget) {
    let Some(stream) = stream else { return };
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let to = target.lock().expect("log target lock").clone();
            if let Some((prefix, logs)) = to {
                logs.push(format!("{prefix} {line}"));
            }
        }
    });
}

/// An interpreter with the shim loaded, waiting on stdin to be told which function to be.
struct Warm {
    child: Child,
    stdin: tokio::process::ChildStdin,
    target: LogTarget,
    record: Option<PathBuf>,
}

/// Pre-started interpreters of one runtime (Fission's warm pool): a cold start then costs
/// loading the handler, not starting the interpreter. One is kept ready; it is replaced as
/// soon as it is taken.
pub struct WarmPool {
    /// Warm processes and their log forwarders belong to this (the gateway's main) runtime.
    handle: tokio::runtime::Handle,
    program: String,
    shim: PathBuf,
    idle: Mutex<Vec<Warm>>,
    stopped: std::sync::atomic::AtomicBool,
    sandbox: Arc<Sandbox>,
    /// Where the pool's processes start: the state folder (a replica takes its own later).
    dir: PathBuf,
}

/// Warm processes kept per runtime.
const WARM_SIZE: usize = 1;

impl WarmPool {
    fn new(
        program: &str,
        shim: &Path,
        handle: tokio::runtime::Handle,
        sandbox: Arc<Sandbox>,
        dir: &Path,
    ) -> Arc<Self> {
        Arc::new(Self {
            handle,
            program: program.to_string(),
            shim: shim.to_path_buf(),
            idle: Mutex::default(),
            stopped: Default::default(),
            sandbox,
            dir: dir.join("runtime"),
        })
    }

    fn take(&self) -> Option<Warm> {
        let mut idle = self.idle.lock().expect("pool lock");
        // Skip any that died while waiting.
        while let Some(mut w) = idle.pop() {
            if matches!(w.child.try_wait(), Ok(None)) {
                return Some(w);
            }
        }
        None
    }

    /// Starts warm processes until `WARM_SIZE` wait. Needs a Tokio runtime.
    pub fn fill(&self) {
        if self.stopped.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let _runtime = self.handle.enter();
        let mut idle = self.idle.lock().expect("pool lock");
        while idle.len() < WARM_SIZE {
            let args = [
                self.shim.to_string_lossy().into_owned(),
                "--pool".to_string(),
            ];
            let mut cmd = command(&self.program, &args);
            self.sandbox.apply(&mut cmd, &[]);
            let Ok(mut child) = cmd.current_dir(&self.dir).stdin(Stdio::piped()).spawn() else {
                return;
            };
            let target: LogTarget = Arc::default();
            forward(child.stdout.take(), target.clone());
            forward(child.stderr.take(), target.clone());
            let stdin = child.stdin.take().expect("stdin is piped");
            let record = self.sandbox.record(pgid_of(&child));
            idle.push(Warm {
                child,
                stdin,
                target,
                record,
            });
        }
    }

    /// Kills every waiting process (their process groups included).
    pub fn shutdown(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for w in self.idle.lock().expect("pool lock").drain(..) {
            let _ = killpg(pgid_of(&w.child), Signal::SIGKILL);
            if let Some(r) = w.record {
                let _ = std::fs::remove_file(r);
            }
        }
    }
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
    if let Some(r) = process.record.take() {
        let _ = std::fs::remove_file(r);
    }
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

    #[test]
    fn log_lines_resume_after_the_last_seen_without_repeats() {
        let logs = LogBuffer::default();
        let all = |_: &str| true;
        assert_eq!(logs.since(0, 10, &all), (vec![], 0));
        for i in 1..=5 {
            logs.push(format!("[call c{}] line {i}", i % 2));
        }
        let (first, next) = logs.since(0, 3, &all);
        assert_eq!(
            first,
            ["[call c1] line 3", "[call c0] line 4", "[call c1] line 5"]
        );
        assert_eq!(next, 5);
        assert_eq!(logs.since(next, 10, &all), (vec![], 5));
        logs.push("[call c0] line 6".into());
        assert_eq!(
            logs.since(next, 10, &all),
            (vec!["[call c0] line 6".to_string()], 6)
        );
        let one_call = |l: &str| l.contains("[call c0]");
        assert_eq!(logs.since(0, 10, &one_call).0.len(), 3);
        // A number from an earlier buffer (past this one's end) starts over.
        assert_eq!(logs.since(99, 10, &all).0.len(), 6);
        for i in 0..LOG_LINES {
            logs.push(format!("more {i}"));
        }
        let (lines, next) = logs.since(2, usize::MAX, &all);
        assert_eq!(lines.len(), LOG_LINES, "only what is still kept");
        assert_eq!(next, (6 + LOG_LINES) as u64);
    }
}
