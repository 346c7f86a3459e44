//! The gateway as tests drive it: an in-process gateway on 127.0.0.1:0 serving a temporary
//! repo (`TestGateway`), a `cubeflash up` process (`UpProcess`), and the process table.

use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cubeflash::gateway::local::LocalBackend;
use cubeflash::gateway::{ConnectionLimits, Gateway, GatewayConfig};
use reqwest::blocking::Client;
use serde_json::Value;

use super::{repo_root, temp_tree, text};

pub const TOKEN: &str = "test-token";
pub const READ_TOKEN: &str = "read-token";

/// A gateway serving a temporary repo from a runtime of its own; stopped when dropped.
pub struct TestGateway {
    pub url: String,
    pub root: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TestGateway {
    /// `functions`: (name, function.yaml body after name/runtime/handler). All use the
    /// gateway test handler.
    pub fn start(project: &str, functions: &[(&str, &str)]) -> Self {
        let handler =
            std::fs::read_to_string(repo_root().join("tests/fixtures/gateway/handler.py")).unwrap();
        let mut files = vec![(
            "cubeflash.yaml".to_string(),
            format!("namespace: test\n{project}"),
        )];
        for (name, extra) in functions {
            files.push((
                format!("functions/{name}/function.yaml"),
                format!("name: {name}\nruntime: python\nhandler: handler.py\n{extra}"),
            ));
            files.push((format!("functions/{name}/handler.py"), handler.clone()));
        }
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let root = temp_tree(&refs);
        Self::serve(root)
    }

    pub fn serve(root: tempfile::TempDir) -> Self {
        let repo = cubeflash::spec::load(root.path()).expect("test repo is valid");
        let config = GatewayConfig {
            bind: [127, 0, 0, 1].into(),
            port: 0,
            max_body: repo.project.gateway.max_body_size as usize,
            queue_size: repo.project.gateway.queue_size,
            admin_token: Some(TOKEN.into()),
            read_token: Some(READ_TOKEN.into()),
            grace: Duration::from_secs(5),
            limits: ConnectionLimits::from_settings(&repo.project.gateway),
        };
        let dir = root.path().to_path_buf();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (url_tx, url_rx) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let gw: Arc<Gateway> = Gateway::new(config);
                LocalBackend::attach(&gw, &repo, &dir, &dir.join(".cubeflash"), false)
                    .await
                    .unwrap();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                url_tx
                    .send(format!("http://{}", listener.local_addr().unwrap()))
                    .unwrap();
                gw.serve(listener, async {
                    let _ = stopped.await;
                })
                .await;
            });
        });
        let url = url_rx.recv().unwrap();
        Self {
            url,
            root,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub fn admin(&self, path: &str) -> Value {
        client()
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    pub fn metrics(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    pub fn function(&self, name: &str) -> Value {
        self.admin(&format!("/system/functions/{name}"))
    }

    /// Waits until `check` holds for the function's admin view, or fails with `what`.
    pub fn wait_for(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let f = self.function(name);
            if check(&f) {
                return f;
            }
            assert!(Instant::now() < deadline, "{what}: still {f}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A repo with one function `name` of `runtime` whose handler (handler.py or handler.js)
/// is `source`; `extra` is appended to its function.yaml.
pub fn one_function(name: &str, runtime: &str, extra: &str, source: &str) -> tempfile::TempDir {
    let file = if runtime == "node" {
        "handler.js"
    } else {
        "handler.py"
    };
    temp_tree(&[
        ("cubeflash.yaml", "namespace: test\n"),
        (
            &format!("functions/{name}/function.yaml"),
            &format!("name: {name}\nruntime: {runtime}\nhandler: {file}\n{extra}"),
        ),
        (&format!("functions/{name}/{file}"), source),
    ])
}

pub fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Fails if any process still runs under `dir` shortly after the gateway stopped.
pub fn assert_no_process_under(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = processes_under(dir);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "orphans left behind: {left:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Processes whose working folder is under `dir`: replicas run in their function's folder.
pub fn processes_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) {
            if cwd.starts_with(dir) {
                let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                found.push(format!("{name}: {}", text(&cmd).replace('\0', " ")));
            }
        }
    }
    found
}

/// `cubeflash up` as a process on a free port, with `env` added; killed when dropped.
pub struct UpProcess {
    pub child: std::process::Child,
    pub url: String,
    /// Every line it printed so far (read on by a thread, so it never blocks on stdout).
    pub stdout: Arc<std::sync::Mutex<Vec<String>>>,
}

impl UpProcess {
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cubeflash"))
            .args(["up", "--port", "0"])
            .current_dir(dir)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stdout = Vec::new();
        let url = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("cubeflash up ended: {stdout:?}"))
                .unwrap();
            stdout.push(line.clone());
            if let Some(url) = line.strip_prefix("cubeflash gateway listening on ") {
                break url.trim().to_string();
            }
        };
        let stdout = Arc::new(std::sync::Mutex::new(stdout));
        let sink = stdout.clone();
        thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, url, stdout }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A repo's background platform, stopped when dropped.
pub struct Platform {
    root: tempfile::TempDir,
}

impl Platform {
    pub fn new(root: tempfile::TempDir) -> Self {
        Self { root }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// `cubeflash ARGS` in the repo: exit code, stdout, stderr.
    pub fn run(&self, args: &[&str]) -> (Option<i32>, String, String) {
        self.run_env(args, &[])
    }

    /// `run` with extra environment variables (which a gateway it starts inherits).
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
        // Port 0: the background gateway picks a free port and records it.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cubeflash"))
            .args(args)
            .current_dir(self.path())
            .env("CUBEFLASH_PORT", "0")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            super::text(&out.stdout),
            super::text(&out.stderr),
        )
    }

    pub fn write(&self, rel: &str, content: &str) {
        std::fs::write(self.path().join(rel), content).unwrap();
    }

    pub fn url(&self) -> String {
        std::fs::read_to_string(self.path().join(".cubeflash/gateway.url"))
            .unwrap()
            .trim()
            .to_string()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}
