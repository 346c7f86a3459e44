//! Helpers shared by the black-box tests: the built binary, temporary repos, and runtime
//! shims started as real processes on loopback ports.
#![allow(dead_code)]

pub mod browser;
pub mod gateway;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the cubeflash binary in `dir`.
pub fn cubeflash(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cubeflash"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("cubeflash runs")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether a program is on PATH; tests that need it skip with a message when it is not.
pub fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A function replica started as a real process; killed when dropped.
pub struct Replica {
    pub child: Child,
    pub base: String,
}

impl Replica {
    /// Starts `program args` in `dir` with PORT set, and waits until GET /_/ready answers 200.
    pub fn start(
        dir: &Path,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let port = free_port();
        let mut child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .env("PORT", port.to_string())
            .env("CUBEFLASH_BIND", "127.0.0.1")
            .env("CUBEFLASH_FUNCTION", "test-fn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                child.stderr.take().unwrap().read_to_string(&mut err).ok();
                return Err(format!("{program} exited with {status}: {err}"));
            }
            if client
                .get(format!("{base}/_/ready"))
                .send()
                .is_ok_and(|r| r.status() == 200)
            {
                return Ok(Self { child, base });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        Err(format!("{program} did not become ready on port {port}"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // The whole group: `sh -c prog` leaves `prog` behind otherwise.
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// The python or node shim as shipped in templates/runtimes/.
pub fn shim(runtime: &str) -> PathBuf {
    let file = if runtime == "python" {
        "shim.py"
    } else {
        "shim.js"
    };
    repo_root()
        .join("templates/runtimes")
        .join(runtime)
        .join(file)
}

pub fn interpreter(runtime: &str) -> &'static str {
    if runtime == "python" {
        "python3"
    } else {
        "node"
    }
}

/// Starts a shim serving `handler` from `dir`.
pub fn start_shim(runtime: &str, dir: &Path, handler: &str) -> Result<Replica, String> {
    let shim = shim(runtime);
    Replica::start(
        dir,
        interpreter(runtime),
        &[shim.to_str().unwrap()],
        &[("CUBEFLASH_HANDLER", handler)],
    )
}

/// Fails the test when `program` is missing: `make test` installs what tests need
/// (scripts/test-deps.sh), and a test never passes by skipping.
pub fn need(program: &str) {
    assert!(
        have(program),
        "{program} is not installed: run scripts/test-deps.sh (make test does)"
    );
}

/// Writes `files` (path, content) under a new temporary folder, readable by others (a
/// gateway running as root runs replicas as nobody, who must read the code).
pub fn temp_tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (path, content) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    dir
}

/// Every file under `dir` with its bytes, to prove a failed command changed nothing.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    if !dir.exists() {
        return out;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// What the test server does with a request path: (status, delay before answering).
pub type Behaviour = Arc<dyn Fn(&str) -> (u16, Duration) + Send + Sync>;

/// A keep-alive HTTP/1.1 server on 127.0.0.1, a thread per connection.
pub struct TestServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl TestServer {
    pub fn start(behaviour: Behaviour) -> Self {
        Self::start_on(0, behaviour)
    }

    /// On a given port (0: any free one).
    pub fn start_on(port: u16, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let behaviour = behaviour.clone();
                thread::spawn(move || serve(conn, behaviour));
            }
        });
        Self { port, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, behaviour: Behaviour) {
    let _ = conn.set_nodelay(true);
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut writer = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
        }
        let (status, delay) = behaviour(&path);
        thread::sleep(delay);
        let body = "ok\n";
        let answer = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// A nats-server with JetStream on a free loopback port and a temporary store, stopped when
/// dropped (SIGKILL: it loses nothing stored).
pub struct NatsServer {
    pub child: Child,
    pub url: String,
    pub port: u16,
    pub store: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> Self {
        need("nats-server");
        let store = tempfile::tempdir().unwrap();
        Self::start_on(free_port(), store)
    }

    /// Starts (or starts again) on `port` with the store at `store`.
    pub fn start_on(port: u16, store: tempfile::TempDir) -> Self {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            port,
            store,
        }
    }
}

impl NatsServer {
    /// SIGKILLs the server and hands back its store, to start it again on.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.store, tempfile::tempdir().unwrap())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One row of a bench run's summary.csv, by column name.
pub type SummaryRow = std::collections::BTreeMap<String, String>;

/// Every row of `<run>/summary.csv`.
pub fn summary_csv(run: &Path) -> Vec<SummaryRow> {
    let mut r = csv::Reader::from_path(run.join("summary.csv")).unwrap();
    let headers = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}
