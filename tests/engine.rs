//! The gateway engine's behaviour as one table of cases, run against two backends: a fake
//! one (replica pools in this file, the engine called through `Gateway::handle` with an
//! in-memory request body and no listener; upstreams are an echo server on loopback) and the
//! local one (real python replicas through a real listener). The Kubernetes backend's own
//! cases are in tests/kubernetes_gateway.rs.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cubeflash::gateway::api::Reloaded;
use cubeflash::gateway::function::FunctionState;
use cubeflash::gateway::table::RouteEntry;
use cubeflash::gateway::{Backend, ConnectionLimits, Gateway, GatewayConfig};
use cubeflash::runtime::pool::{Endpoint, ReplicaPool, Slot, StartTimes, Waiters};
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use common::gateway::{TestGateway, TOKEN};
use common::{need, repo_root, temp_tree};

/// One request and what every backend must answer.
struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: usize,
    status: u16,
    check: fn(&Answer),
}

/// What came back.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn nothing(_: &Answer) {}

const CASES: &[Case] = &[
    Case {
        name: "a function by name",
        method: "GET",
        path: "/function/fn/echo",
        headers: &[],
        body: 0,
        status: 200,
        check: |a| assert_eq!(a.body["path"], "/echo", "{}", a.body),
    },
    Case {
        name: "a trigger path, forwarded whole",
        method: "GET",
        path: "/items",
        headers: &[],
        body: 0,
        status: 200,
        check: |a| assert_eq!(a.body["path"], "/items"),
    },
    Case {
        name: "a method the trigger does not take",
        method: "DELETE",
        path: "/items",
        headers: &[],
        body: 0,
        status: 405,
        check: |a| assert_eq!(a.header("allow"), Some("GET, HEAD")),
    },
    Case {
        name: "nothing routed",
        method: "GET",
        path: "/nothing",
        headers: &[],
        body: 0,
        status: 404,
        check: |a| assert!(a.body["function"].is_null() && a.body["error"].is_string()),
    },
    Case {
        name: "an unknown function",
        method: "GET",
        path: "/function/nope",
        headers: &[],
        body: 0,
        status: 404,
        check: |a| assert_eq!(a.body["function"], "nope"),
    },
    Case {
        name: "a body over maxBodySize",
        method: "POST",
        path: "/function/fn/echo",
        headers: &[],
        body: 2000,
        status: 413,
        check: |a| assert!(a.body["error"].as_str().unwrap().contains("maxBodySize")),
    },
    Case {
        name: "a function that never becomes ready",
        method: "GET",
        path: "/function/stuck",
        headers: &[],
        body: 0,
        status: 504,
        check: |a| {
            assert!(a.body["error"]
                .as_str()
                .unwrap()
                .contains("coldStartTimeout"))
        },
    },
    Case {
        name: "client-sent internal and forwarded headers",
        method: "GET",
        path: "/function/fn/echo",
        headers: &[
            ("x-cubeflash-trigger", "schedule"),
            ("x-forwarded-for", "10.1.2.3"),
        ],
        body: 0,
        status: 200,
        check: |a| {
            let h = &a.body["headers"];
            assert!(h.get("x-cubeflash-trigger").is_none(), "{h}");
            assert_eq!(h["x-forwarded-for"], "127.0.0.1");
            assert!(h["x-cubeflash-call-id"].is_string());
        },
    },
    Case {
        name: "a call id on every answer",
        method: "GET",
        path: "/function/fn/echo",
        headers: &[],
        body: 0,
        status: 200,
        check: |a| assert!(a.header("x-cubeflash-call-id").is_some()),
    },
    Case {
        name: "health",
        method: "GET",
        path: "/healthz",
        headers: &[],
        body: 0,
        status: 200,
        check: |a| assert_eq!(a.body["status"], "ok"),
    },
    Case {
        name: "the admin API without a token",
        method: "GET",
        path: "/system/functions",
        headers: &[],
        body: 0,
        status: 401,
        check: nothing,
    },
    Case {
        name: "the admin API with the token",
        method: "GET",
        path: "/system/functions",
        headers: &[("authorization", "Bearer test-token")],
        body: 0,
        status: 200,
        check: |a| assert_eq!(a.body.as_array().unwrap().len(), 2),
    },
];

/// The repo both backends serve.
fn repo() -> tempfile::TempDir {
    let handler =
        std::fs::read_to_string(repo_root().join("tests/fixtures/gateway/handler.py")).unwrap();
    temp_tree(&[
        ("cubeflash.yaml", "namespace: test\ngateway: { maxBodySize: 1Ki, queueSize: 2 }\n"),
        ("functions/fn/function.yaml", "name: fn\nruntime: python\nhandler: handler.py\ntriggers:\n  - http: { path: /items, methods: [GET] }\n"),
        ("functions/fn/handler.py", &handler),
        ("functions/stuck/function.yaml", "name: stuck\nruntime: exec\nhandler: sleep 60\nscale: { coldStartTimeout: 500ms }\n"),
    ])
}

// ---- the fake backend ----

/// Replicas that are the echo server below, ready `delay` after a scale-up (never: None).
struct FakePool {
    endpoint: Arc<Endpoint>,
    ready: Arc<AtomicU32>,
    wanted: AtomicU32,
    waiters: Arc<Waiters>,
    delay: Option<Duration>,
}

impl ReplicaPool for FakePool {
    fn acquire(&self, limit: u32) -> Option<Slot> {
        let ready = self.ready.load(Ordering::SeqCst);
        let full = limit > 0 && self.endpoint.inflight.load(Ordering::SeqCst) >= limit * ready;
        (ready > 0 && !full).then(|| Slot::take(self.endpoint.clone(), self.waiters.clone()))
    }
    fn ready_count(&self) -> u32 {
        self.ready.load(Ordering::SeqCst)
    }
    fn wanted(&self) -> u32 {
        self.wanted.load(Ordering::SeqCst)
    }
    fn scale_to(&self, n: u32, _clear: bool) {
        self.wanted.store(n, Ordering::SeqCst);
        if n == 0 {
            self.ready.store(0, Ordering::SeqCst);
            return;
        }
        if let Some(delay) = self.delay {
            let (ready, waiters) = (self.ready.clone(), self.waiters.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                ready.store(n, Ordering::SeqCst);
                waiters.wake();
            });
        }
    }
    fn failure(&self) -> Option<String> {
        None
    }
    fn waiters(&self) -> &Arc<Waiters> {
        &self.waiters
    }
    fn unreachable(&self, _: &Endpoint) -> bool {
        false
    }
    fn addrs(&self) -> Vec<SocketAddr> {
        vec![self.endpoint.addr]
    }
    fn log_tail(&self, _: usize) -> Option<Vec<String>> {
        None
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

struct FakeBackend;

impl Backend for FakeBackend {
    fn kind(&self) -> &'static str {
        "fake"
    }
    fn trouble(&self) -> Option<String> {
        None
    }
    fn reload<'a>(
        &'a self,
        _: &'a Arc<Gateway>,
        _: bool,
    ) -> BoxFuture<'a, Result<Reloaded, String>> {
        Box::pin(async { Ok(Reloaded::default()) })
    }
    fn start(
        self: Arc<Self>,
        _: Arc<Gateway>,
        _: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        Vec::new()
    }
}

/// An HTTP/1.1 server on loopback that answers every request with its path and headers.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || echo(conn));
        }
    });
    addr
}

fn echo(conn: TcpStream) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut writer = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .split('?')
            .next()
            .unwrap()
            .to_string();
        let mut headers = serde_json::Map::new();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_lowercase(), v.trim().to_string());
                if k == "content-length" {
                    length = v.parse().unwrap_or(0);
                }
                headers.insert(k, Value::String(v));
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let out = serde_json::json!({ "path": path, "headers": headers }).to_string();
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{out}",
            out.len()
        );
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn fake_engine(root: &std::path::Path) -> Arc<Gateway> {
    let repo = cubeflash::spec::load(root).unwrap();
    let gw = Gateway::new(GatewayConfig {
        bind: [127, 0, 0, 1].into(),
        port: 0,
        max_body: repo.project.gateway.max_body_size as usize,
        queue_size: repo.project.gateway.queue_size,
        admin_token: Some(TOKEN.into()),
        read_token: None,
        grace: Duration::from_secs(1),
        limits: ConnectionLimits::from_settings(&repo.project.gateway),
    });
    gw.set_backend(Arc::new(FakeBackend));
    let echo = echo_server();
    let functions = repo
        .functions
        .iter()
        .map(|f| {
            let pool = FakePool {
                endpoint: Arc::new(Endpoint::new(1, echo, StartTimes::default())),
                ready: Arc::default(),
                wanted: AtomicU32::new(0),
                waiters: Arc::default(),
                delay: (f.spec.name != "stuck").then_some(Duration::from_millis(20)),
            };
            FunctionState::new(
                RouteEntry::new("test", f),
                Arc::new(pool),
                None,
                gw.metrics.clone(),
            )
        })
        .collect();
    gw.install(functions);
    gw
}

async fn ask_engine(gw: &Arc<Gateway>, case: &Case) -> Answer {
    let mut req = hyper::Request::builder().method(case.method).uri(case.path);
    for (k, v) in case.headers {
        req = req.header(*k, *v);
    }
    if case.body > 0 {
        req = req.header("content-length", case.body.to_string());
    }
    let req = req
        .body(Full::new(Bytes::from(vec![b'x'; case.body])))
        .unwrap();
    let resp = gw.handle(req, "127.0.0.1:1".parse().unwrap()).await;
    let status = resp.status().as_u16();
    let headers = pairs(resp.headers());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn ask_http(base: &str, case: &Case) -> Answer {
    let client = reqwest::blocking::Client::new();
    let mut req = client.request(case.method.parse().unwrap(), format!("{base}{}", case.path));
    for (k, v) in case.headers {
        req = req.header(*k, *v);
    }
    if case.body > 0 {
        req = req.body(vec![b'x'; case.body]);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let headers = pairs(resp.headers());
    Answer {
        status,
        headers,
        body: resp.json().unwrap_or(Value::Null),
    }
}

fn pairs(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect()
}

/// Of three waiters with room for two in the queue, exactly one got 429 with Retry-After.
fn one_refused_with_retry_after(answers: &[Answer]) {
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(refused.len(), 1, "{statuses:?}");
    assert_eq!(refused[0].header("retry-after"), Some("1"));
}

fn judge(backend: &str, case: &Case, answer: &Answer) {
    assert_eq!(
        answer.status, case.status,
        "{backend}: {}: {}",
        case.name, answer.body
    );
    (case.check)(answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_against_the_fake_backend_without_a_listener() {
    let root = repo();
    let gw = fake_engine(root.path());
    for case in CASES {
        let answer = ask_engine(&gw, case).await;
        judge("fake", case, &answer);
    }
    // A full queue: three waiters for a function that never starts, queueSize 2.
    let stuck = &CASES[6];
    let answers = futures::future::join_all((0..3).map(|_| ask_engine(&gw, stuck))).await;
    one_refused_with_retry_after(&answers);
}

#[test]
fn every_case_against_the_local_backend() {
    need("python3");
    let gw = TestGateway::serve(repo());
    for case in CASES {
        let answer = ask_http(&gw.url, case);
        judge("local", case, &answer);
    }
    let stuck = &CASES[6];
    let url = gw.url.clone();
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..3).map(|_| s.spawn(|| ask_http(&url, stuck))).collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    one_refused_with_retry_after(&answers);
}
