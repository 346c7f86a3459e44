//! `cubeflash gateway`, the engine with the Kubernetes backend, as a process against the
//! in-process fake API server, with local test servers standing in for the functions'
//! Services: scale from zero and back, routing and methods, scale.limit, what the gateway
//! says when the API server refuses or goes away, deleted Deployments, Services that lag
//! behind readiness, and drain on SIGTERM.

mod common;

mod fake_kube;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cubeflash, text, TestServer};
use fake_kube::{deploy, FakeApi, Seen};
use serde_json::{json, Value};

const HANDLER: &str = "def handle(req):\n    return 'hi'\n";
const APPS: &str = "/apis/apps/v1/namespaces/demo";
const NS: &str = "/api/v1/namespaces/demo";

/// `cubeflash gateway` started as a process against the fake API; killed when dropped.
struct KubeGatewayProcess {
    child: std::process::Child,
    url: String,
}

impl Drop for KubeGatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway(dir: &Path, kubeconfig: &Path) -> KubeGatewayProcess {
    start_gateway_with(dir, kubeconfig, &[])
}

fn start_gateway_with(dir: &Path, kubeconfig: &Path, extra: &[&str]) -> KubeGatewayProcess {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cubeflash"))
        .args([
            "gateway",
            "--namespace",
            "demo",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--max-body-size",
            "1000",
        ])
        .args(extra)
        .current_dir(dir)
        .env("KUBECONFIG", kubeconfig)
        .env("CUBEFLASH_ADMIN_TOKEN", "secret-token")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(stdout);
    reader.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    KubeGatewayProcess { child, url }
}

#[test]
fn the_kubernetes_gateway_scales_a_function_from_zero_routes_to_its_service_and_back_to_zero() {
    let api = FakeApi::start();
    let dir = common::temp_tree(&[
        ("cubeflash.yaml", "namespace: demo\n"),
        ("functions/a/function.yaml", "name: a\nruntime: python\nhandler: handler.py\nscale: {min: 0, max: 2, idle: 2s}\ntriggers:\n  - http: {path: /hello}\n"),
        ("functions/a/handler.py", HANDLER),
    ]);
    assert!(cubeflash(dir.path(), &["render"]).status.success());
    let kc = api.kubeconfig(dir.path());
    assert!(deploy(dir.path(), &kc, &["--no-wait"]).status.success());
    // The function's Service, here a real server on loopback: the route table says where.
    let replica = common::TestServer::start(Arc::new(|_| (200, Duration::from_millis(5))));
    point_service(
        &mut api.state.lock().unwrap(),
        "http://a.demo.svc:8080",
        &replica.url(""),
    );
    api.clear_seen();
    let gw = start_gateway(dir.path(), &kc);

    let started = Instant::now();
    let resp = reqwest::blocking::get(format!("{}/function/a", gw.url)).unwrap_or_else(|e| {
        panic!(
            "{e}: {:#?}",
            api.state
                .lock()
                .unwrap()
                .seen
                .iter()
                .map(|s| format!("{} {} {:?}", s.method, s.path, s.query))
                .collect::<Vec<_>>()
        )
    });
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().contains_key("x-cubeflash-cold-start"),
        "the answer says it waited for a cold start"
    );
    assert_eq!(resp.text().unwrap(), "ok\n");
    let seen = api.seen();
    let scale: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.method == "PATCH" && s.path.ends_with("/scale"))
        .collect();
    assert_eq!(scale.len(), 1, "one scale-up: {scale:?}");
    assert_eq!(scale[0].path, format!("{APPS}/deployments/a/scale"));
    assert_eq!(scale[0].body, json!({"spec": {"replicas": 1}}));
    assert_eq!(
        scale[0].query.get("fieldManager").map(String::as_str),
        Some("cubeflash-gateway")
    );
    // The admin API and /metrics, as on the local platform.
    let admin = |method: reqwest::Method, path: &str, token: &str| {
        reqwest::blocking::Client::new()
            .request(method, format!("{}{path}", gw.url))
            .bearer_auth(token)
            .json(&json!({"replicas": 2}))
            .send()
            .unwrap()
    };
    assert_eq!(
        admin(reqwest::Method::GET, "/system/functions", "wrong").status(),
        401
    );
    let a: Value = admin(reqwest::Method::GET, "/system/functions/a", "secret-token")
        .json()
        .unwrap();
    assert_eq!(a["replicas"], json!({"desired": 1, "ready": 1}), "{a}");
    assert_eq!(a["coldStarts"], 1, "{a}");
    let metrics = reqwest::blocking::get(format!("{}/metrics", gw.url))
        .unwrap()
        .text()
        .unwrap();
    for line in [
        "cubeflash_requests_total{function=\"a\",code=\"200\"} 1",
        "cubeflash_cold_starts_total{function=\"a\"} 1",
        "cubeflash_replicas{function=\"a\",state=\"ready\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    let ls = std::process::Command::new(env!("CARGO_BIN_EXE_cubeflash"))
        .args(["ls", "--gateway", &gw.url])
        .current_dir(dir.path())
        .env("CUBEFLASH_ADMIN_TOKEN", "secret-token")
        .output()
        .unwrap();
    assert!(ls.status.success(), "{}", text(&ls.stderr));
    assert!(
        text(&ls.stdout).contains("/function/a"),
        "{}",
        text(&ls.stdout)
    );
    let too_many = reqwest::blocking::Client::new()
        .post(format!("{}/system/functions/a/scale", gw.url))
        .bearer_auth("secret-token")
        .json(&json!({"replicas": 99}))
        .send()
        .unwrap();
    assert_eq!(too_many.status(), 400);
    assert!(too_many
        .text()
        .unwrap()
        .contains("a can run at most 2 replicas (its scale.max), not 99"));
    let scaled = admin(
        reqwest::Method::POST,
        "/system/functions/a/scale",
        "secret-token",
    );
    assert_eq!(scaled.status(), 200);
    // The pool's patcher sends it: within moments, not before the answer.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !api.seen().iter().any(|s| {
        s.path.ends_with("/deployments/a/scale") && s.body == json!({"spec": {"replicas": 2}})
    }) {
        assert!(Instant::now() < deadline, "no scale to 2: {:?}", api.seen());
        std::thread::sleep(Duration::from_millis(20));
    }
    // A trigger path routes to the same function, now warm: no second scale-up.
    let resp = reqwest::blocking::get(format!("{}/hello", gw.url)).unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key("x-cubeflash-cold-start"));
    // Bodies over gateway.maxBodySize are refused, as on the local platform.
    let big = reqwest::blocking::Client::new()
        .post(format!("{}/function/a", gw.url))
        .body(vec![b'x'; 2000])
        .send()
        .unwrap();
    assert_eq!(big.status(), 413);
    // Unknown paths are 404 JSON, as on the local platform.
    let resp = reqwest::blocking::get(format!("{}/nothing", gw.url)).unwrap();
    assert_eq!(resp.status(), 404);
    // A changed route table (a redeploy patches the ConfigMap) is picked up by the watch.
    {
        let mut st = api.state.lock().unwrap();
        let collection = format!("{NS}/configmaps");
        let mut cm = st.objects[&collection]["cubeflash-routes"].clone();
        st.version += 1;
        cm["metadata"]["resourceVersion"] = json!(st.version.to_string());
        let routes = cm["data"]["routes.json"]
            .as_str()
            .unwrap()
            .replace("\"/hello\"", "\"/bonjour\"");
        cm["data"]["routes.json"] = json!(routes);
        st.objects
            .get_mut(&collection)
            .unwrap()
            .insert("cubeflash-routes".into(), cm.clone());
        st.notify(&collection, &cm);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_of(&format!("{}/bonjour", gw.url)) != 200 {
        assert!(
            Instant::now() < deadline,
            "the new route table was not loaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status_of(&format!("{}/hello", gw.url)), 404);

    // Idle for longer than scale.idle (2s): back to zero through the scale subresource.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let down = api.seen().iter().any(|s| {
            s.method == "PATCH"
                && s.path.ends_with("/deployments/a/scale")
                && s.body == json!({"spec": {"replicas": 0}})
        });
        if down {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a was not scaled to zero: {:?}",
            api.seen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before the idle time"
    );
}

/// A deployed repo in namespace `demo` whose functions' Services are the given local test
/// servers (the route table in the fake's ConfigMap is pointed at them).
fn deployed(api: &FakeApi, functions: &[(&str, &str, &str)]) -> tempfile::TempDir {
    let mut files = vec![(
        "cubeflash.yaml".to_string(),
        "namespace: demo\n".to_string(),
    )];
    for (name, extra, _) in functions {
        files.push((
            format!("functions/{name}/function.yaml"),
            format!("name: {name}\nruntime: python\nhandler: handler.py\n{extra}"),
        ));
        files.push((format!("functions/{name}/handler.py"), HANDLER.to_string()));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let dir = common::temp_tree(&refs);
    assert!(cubeflash(dir.path(), &["render"]).status.success());
    let kc = api.kubeconfig(dir.path());
    let o = deploy(dir.path(), &kc, &["--no-wait"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut st = api.state.lock().unwrap();
    for (name, _, url) in functions {
        point_service(&mut st, &format!("http://{name}.demo.svc:8080"), url);
    }
    drop(st);
    dir
}

/// Points the route table's `service` address at `url` (a local server standing in for it).
fn point_service(st: &mut fake_kube::State, service: &str, url: &str) {
    let cm = st
        .objects
        .get_mut(&format!("{NS}/configmaps"))
        .unwrap()
        .get_mut("cubeflash-routes")
        .unwrap();
    let routes = cm["data"]["routes.json"]
        .as_str()
        .unwrap()
        .replace(service, url);
    cm["data"]["routes.json"] = json!(routes);
}

/// `deployed` with one function `a` (`extra` in its function.yaml, its Service at `url`),
/// and the gateway serving it.
fn one_function(api: &FakeApi, extra: &str, url: &str) -> (tempfile::TempDir, KubeGatewayProcess) {
    let dir = deployed(api, &[("a", extra, url)]);
    let gw = start_gateway(dir.path(), &api.kubeconfig(dir.path()));
    (dir, gw)
}

/// The status of a GET of `url`.
fn status_of(url: &str) -> reqwest::StatusCode {
    reqwest::blocking::get(url).unwrap().status()
}

fn server(status: u16, delay_ms: u64) -> TestServer {
    TestServer::start(Arc::new(move |_| (status, Duration::from_millis(delay_ms))))
}

fn scale_patches(api: &FakeApi, deployment: &str) -> Vec<Value> {
    api.seen()
        .into_iter()
        .filter(|s: &Seen| {
            s.method == "PATCH" && s.path == format!("{APPS}/deployments/{deployment}/scale")
        })
        .map(|s| s.body)
        .collect()
}

#[test]
fn routes_are_chosen_by_method_and_longest_prefix_deterministically() {
    let api = FakeApi::start();
    let (a, b) = (server(201, 0), server(202, 0));
    let dir = deployed(
        &api,
        &[
            ("a", "scale: { min: 1 }\ntriggers:\n  - http: { path: /items, methods: [GET] }\n  - http: { path: /api/* }\n", &a.url("")),
            ("b", "scale: { min: 1 }\ntriggers:\n  - http: { path: /items, methods: [POST] }\n  - http: { path: /api/v1/* }\n", &b.url("")),
        ],
    );
    let gw = start_gateway(dir.path(), &api.kubeconfig(dir.path()));
    let c = reqwest::blocking::Client::new();
    let status =
        |m: reqwest::Method, path: &str| c.request(m, format!("{}{path}", gw.url)).send().unwrap();
    assert_eq!(status(reqwest::Method::GET, "/items").status(), 201);
    assert_eq!(status(reqwest::Method::POST, "/items").status(), 202);
    assert_eq!(status(reqwest::Method::GET, "/api/v1/x").status(), 202);
    assert_eq!(status(reqwest::Method::GET, "/api/v2").status(), 201);
    assert_eq!(status(reqwest::Method::GET, "/apixyz").status(), 404);
    let refused = status(reqwest::Method::DELETE, "/items");
    assert_eq!(refused.status(), 405);
    assert_eq!(refused.headers()["allow"], "GET, POST, HEAD");
}

#[test]
fn scale_limit_holds_requests_beyond_the_cap_in_the_queue() {
    let api = FakeApi::start();
    let slow = server(200, 600);
    let (_dir, gw) = one_function(
        &api,
        "scale: { min: 1, max: 1, concurrency: 1, limit: 1 }\n",
        &slow.url(""),
    );
    let url = format!("{}/function/a", gw.url);
    // Warm (min 1 is ready in the fake at once).
    assert_eq!(reqwest::blocking::get(&url).unwrap().status(), 200);
    let started = Instant::now();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let s = reqwest::blocking::get(&url).unwrap().status();
                (s, Instant::now())
            })
        })
        .collect();
    let mut done: Vec<(reqwest::StatusCode, Instant)> =
        calls.into_iter().map(|c| c.join().unwrap()).collect();
    done.sort_by_key(|d| d.1);
    assert!(done.iter().all(|d| d.0 == 200), "{done:?}");
    let last = done[2].1 - started;
    assert!(
        last >= Duration::from_millis(1700),
        "three calls at limit 1 took only {last:?}"
    );
}

#[test]
fn a_refused_scale_is_named_in_healthz_and_in_the_504_of_a_waiting_request() {
    let api = FakeApi::start();
    let s = server(200, 0);
    let dir = deployed(
        &api,
        &[("a", "scale: { coldStartTimeout: 2s }\n", &s.url(""))],
    );
    api.state.lock().unwrap().forbid = Some(("PATCH".into(), "deployments/scale".into()));
    let gw = start_gateway(dir.path(), &api.kubeconfig(dir.path()));
    let resp = reqwest::blocking::get(format!("{}/function/a", gw.url)).unwrap();
    assert_eq!(resp.status(), 504);
    let body: Value = resp.json().unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("403") && error.contains("patch") && error.contains("deployments/scale"),
        "{error}"
    );
    let health = reqwest::blocking::get(format!("{}/healthz", gw.url)).unwrap();
    assert_eq!(health.status(), 503);
    let h: Value = health.json().unwrap();
    assert!(
        h["reason"]
            .as_str()
            .unwrap()
            .contains("kubectl auth can-i patch deployments/scale"),
        "{h}"
    );
    // Allowed again: the patcher's retry succeeds and the gateway is ready.
    api.state.lock().unwrap().forbid = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_of(&format!("{}/healthz", gw.url)) != 200 {
        assert!(Instant::now() < deadline, "healthz stayed unavailable");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_api_server_that_goes_away_makes_healthz_unavailable() {
    let api = FakeApi::start();
    let s = server(200, 0);
    let (_dir, gw) = one_function(&api, "", &s.url(""));
    assert_eq!(status_of(&format!("{}/healthz", gw.url)), 200);
    drop(api);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let h = reqwest::blocking::get(format!("{}/healthz", gw.url)).unwrap();
        if h.status() == 503 {
            let h: Value = h.json().unwrap();
            assert!(
                h["reason"]
                    .as_str()
                    .unwrap()
                    .contains("cannot reach the API server"),
                "{h}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "healthz still says ok with no API server"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_deleted_deployment_is_no_longer_scaled() {
    let api = FakeApi::start();
    let s = server(200, 0);
    let (_dir, gw) = one_function(
        &api,
        "scale: { idle: 1s, coldStartTimeout: 1s }\n",
        &s.url(""),
    );
    assert_eq!(status_of(&format!("{}/function/a", gw.url)), 200);
    let port = api.port;
    let deleted = reqwest::blocking::Client::new()
        .delete(format!("http://127.0.0.1:{port}{APPS}/deployments/a"))
        .send()
        .unwrap();
    assert_eq!(deleted.status(), 200);
    std::thread::sleep(Duration::from_millis(500));
    let before = scale_patches(&api, "a").len();
    // Requests and idle time that would scale it both ways.
    for _ in 0..3 {
        let r = reqwest::blocking::get(format!("{}/function/a", gw.url)).unwrap();
        assert_eq!(r.status(), 504);
        assert!(r.text().unwrap().contains("was deleted"));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        scale_patches(&api, "a").len(),
        before,
        "the gateway kept scaling a deleted Deployment"
    );
}

#[test]
fn a_cold_start_waits_for_a_service_that_lags_behind_readiness_instead_of_502() {
    let api = FakeApi::start();
    // The Service's address refuses connections until kube-proxy "catches up".
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_dir, gw) = one_function(&api, "", &format!("http://127.0.0.1:{port}"));
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        server_on(port)
    });
    let resp = reqwest::blocking::get(format!("{}/function/a", gw.url)).unwrap();
    let _server = late.join().unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().unwrap_or_default());
}

fn server_on(port: u16) -> TestServer {
    TestServer::start_on(port, Arc::new(|_| (200, Duration::ZERO)))
}

#[test]
fn sigterm_lets_requests_in_flight_finish() {
    let api = FakeApi::start();
    let slow = server(200, 1000);
    let (_dir, gw) = one_function(&api, "scale: { min: 1 }\n", &slow.url(""));
    let url = format!("{}/function/a", gw.url);
    let call = std::thread::spawn(move || reqwest::blocking::get(&url).map(|r| r.status()));
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gw.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = call.join().unwrap().expect("the request in flight was cut");
    assert_eq!(status, 200);
}

#[test]
fn replicas_set_by_someone_else_are_adopted_and_owned_again() {
    let api = FakeApi::start();
    let s = server(200, 0);
    let (_dir, gw) = one_function(&api, "scale: { max: 3, idle: 2s }\n", &s.url(""));
    assert_eq!(status_of(&format!("{}/function/a", gw.url)), 200);
    // A `kubectl scale --replicas=3` (or a deploy that resets the count): the Deployment changes
    // under the gateway.
    {
        let mut st = api.state.lock().unwrap();
        let collection = format!("{APPS}/deployments");
        let mut d = st.objects[&collection]["a"].clone();
        st.version += 1;
        d["metadata"]["resourceVersion"] = json!(st.version.to_string());
        d["spec"]["replicas"] = json!(3);
        d["status"]["readyReplicas"] = json!(3);
        st.objects
            .get_mut(&collection)
            .unwrap()
            .insert("a".into(), d.clone());
        st.notify(&collection, &d);
    }
    let admin = |path: &str| -> Value {
        reqwest::blocking::Client::new()
            .get(format!("{}{path}", gw.url))
            .bearer_auth("secret-token")
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin("/system/functions/a")["replicas"]["desired"] != 3 {
        assert!(
            Instant::now() < deadline,
            "the new count was not adopted: {}",
            admin("/system/functions/a")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // It applies the count as its own (field manager cubeflash-gateway)...
    let deadline = Instant::now() + Duration::from_secs(5);
    while !scale_patches(&api, "a").contains(&json!({"spec": {"replicas": 3}})) {
        assert!(
            Instant::now() < deadline,
            "no scale patch took the count over: {:?}",
            scale_patches(&api, "a")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...and the autoscaler goes on from there: idle, back to zero.
    let deadline = Instant::now() + Duration::from_secs(15);
    while scale_patches(&api, "a").last() != Some(&json!({"spec": {"replicas": 0}})) {
        assert!(
            Instant::now() < deadline,
            "not scaled back to zero: {:?}",
            scale_patches(&api, "a")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_kubernetes_gateway_stores_async_calls_in_jetstream_and_delivers_them() {
    common::need("nats-server");
    let api = FakeApi::start();
    let replica = server(200, 0);
    let dir = deployed(
        &api,
        &[("a", "scale: {min: 0, max: 1}\n", &replica.url(""))],
    );
    let kc = api.kubeconfig(dir.path());
    // Without NATS the gateway says async calls are off, and how to turn them on.
    let gw = start_gateway(dir.path(), &kc);
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/async-function/a", gw.url))
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().unwrap().contains("nats"), "says how");
    drop(gw);
    let nats = common::NatsServer::start();
    let gw = start_gateway_with(dir.path(), &kc, &["--nats-url", &nats.url]);
    let http = reqwest::blocking::Client::new();
    let r = http
        .post(format!("{}/async-function/a", gw.url))
        .body("in the cluster")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.headers()["x-cubeflash-call-id"]
        .to_str()
        .unwrap()
        .to_string();
    let done: Value = http
        .get(format!("{}/system/calls/{id}?wait=20s", gw.url))
        .bearer_auth("secret-token")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done}");
    let info: Value = http
        .get(format!("{}/system/functions/a", gw.url))
        .bearer_auth("secret-token")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(info["asyncStore"], "jetstream", "{info}");
}

/// A gateway pod for the fake: labelled as the gateway Service selects, ready, its `http`
/// port 8080; its port-forward reaches `addr` (the local gateway process standing in for it).
fn gateway_pod(api: &FakeApi, name: &str, ready: bool, addr: Option<std::net::SocketAddr>) {
    let mut st = api.state.lock().unwrap();
    let selector =
        st.objects[&format!("{NS}/services")]["cubeflash-gateway"]["spec"]["selector"].clone();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "labels": selector},
        "spec": {"containers": [{"name": "gateway", "image": "cubeflash", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": if ready {
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]})
        } else {
            json!({"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]})
        },
    });
    st.objects
        .entry(format!("{NS}/pods"))
        .or_default()
        .insert(name.into(), pod);
    if let Some(addr) = addr {
        st.forwards.insert(name.into(), addr);
    }
}

/// `cubeflash bench --target kubernetes` of `plan` in `dir`, results under `out`; the admin
/// token comes from the cluster (CUBEFLASH_ADMIN_TOKEN is removed).
fn kube_bench(dir: &Path, kubeconfig: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cubeflash"))
        .args(["bench", "--target", "kubernetes", "plan.yaml", "--out"])
        .arg(out)
        .args(extra)
        .current_dir(dir)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("CUBEFLASH_ADMIN_TOKEN")
        .env_remove("CUBEFLASH_GATEWAY")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap()
}

type CsvRow = common::SummaryRow;

const KUBE_PLAN: &str = "targets:\n  - function: a\n    baseline: gateway\nsteps:\n  - closed: {concurrency: [2], duration: 1500ms}\n  - cold: {samples: 2}\ntimeout: 5s\n";

#[test]
fn bench_against_a_cluster_goes_through_a_port_forward_and_reads_replicas_and_cpu_from_the_api() {
    let api = FakeApi::start();
    let function = server(200, 2);
    let baseline = server(200, 1);
    let dir = deployed(
        &api,
        &[(
            "a",
            "scale: {idle: 30s}\nbaseline: {replicas: 1}\n",
            &function.url(""),
        )],
    );
    std::fs::write(dir.path().join("plan.yaml"), KUBE_PLAN).unwrap();
    let kc = api.kubeconfig(dir.path());
    {
        let mut st = api.state.lock().unwrap();
        point_service(
            &mut st,
            "http://a-baseline.demo.svc:8080",
            &baseline.url(""),
        );
        // The admin token, where the rendered gateway Deployment reads it.
        st.objects.entry(format!("{NS}/secrets")).or_default().insert(
            "cubeflash-admin".into(),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cubeflash-admin", "namespace": "demo"},
                   "data": {"token": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "secret-token")}}),
        );
        // metrics-server's view: the baseline pod uses half a core, the function's a quarter.
        st.metrics = true;
        let metrics = |pod: &str, component: &str, cpu: &str| {
            json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics",
                   "metadata": {"name": pod, "namespace": "demo", "labels": {
                       "app.kubernetes.io/managed-by": "cubeflash", "cubeflash.io/function": "a",
                       "app.kubernetes.io/component": component}},
                   "window": "15s", "containers": [{"name": "function", "usage": {"cpu": cpu, "memory": "20Mi"}}]})
        };
        let collection = st
            .objects
            .entry("/apis/metrics.k8s.io/v1beta1/namespaces/demo/pods".into())
            .or_default();
        collection.insert(
            "a-baseline-1".into(),
            metrics("a-baseline-1", "baseline", "500m"),
        );
        collection.insert("a-1".into(), metrics("a-1", "function", "250000000n"));
    }
    let gw = start_gateway(dir.path(), &kc);
    let gw_addr: std::net::SocketAddr = gw.url.trim_start_matches("http://").parse().unwrap();
    // An old pod that is not ready, and the ready one the port-forward must pick.
    gateway_pod(&api, "cubeflash-gateway-old", false, None);
    gateway_pod(&api, "cubeflash-gateway-7d9f-x2x4z", true, Some(gw_addr));
    api.clear_seen();

    let out = dir.path().join("results");
    let o = kube_bench(dir.path(), &kc, &out, &[]);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", text(&o.stderr));
    assert!(
        stdout.contains("through a port-forward to pod cubeflash-gateway-7d9f-x2x4z"),
        "{stdout}"
    );
    let seen = api.seen();
    let forwards = seen
        .iter()
        .filter(|s| s.path == format!("{NS}/pods/cubeflash-gateway-7d9f-x2x4z/portforward"))
        .count();
    // The probe, the generator's connections, the admin API's.
    assert!(forwards >= 3, "{forwards} port-forward streams");
    assert!(
        !seen
            .iter()
            .any(|s| s.path.contains("cubeflash-gateway-old")),
        "the pod that is not ready was chosen"
    );
    // Cold samples scaled a to zero through the gateway's admin API, which patched the scale
    // subresource.
    assert!(
        scale_patches(&api, "a").contains(&json!({"spec": {"replicas": 0}})),
        "{:?}",
        scale_patches(&api, "a")
    );
    let run = out.join("latest");
    let rows = common::summary_csv(&run);
    let find = |target: &str, mode: &str| {
        rows.iter()
            .find(|r| r["target"] == target && r["mode"] == mode)
            .unwrap_or_else(|| panic!("no {target} {mode} row in {rows:?}"))
    };
    for target in ["a", "a-baseline-gw"] {
        for mode in ["closed", "cold"] {
            let r = find(target, mode);
            assert_eq!(r["errors"], "0", "{r:?}");
            assert!(r["requests"].parse::<u64>().unwrap() > 0, "{r:?}");
        }
    }
    assert!(
        !rows.iter().any(|r| r["target"] == "a-baseline"),
        "baseline: gateway asks for no direct target"
    );
    // Replicas from the Deployments: the baseline's 1 throughout, the function's up under load.
    let closed = find("a-baseline-gw", "closed");
    assert_eq!(
        (
            closed["replicas_min"].as_str(),
            closed["replicas_max"].as_str()
        ),
        ("1", "1"),
        "{closed:?}"
    );
    assert_eq!(
        find("a", "closed")["replicas_max"],
        "1",
        "{:?}",
        find("a", "closed")
    );
    // CPU from the metrics API: half a core over the step, give or take the sampling.
    let step = |r: &CsvRow| {
        r["step_end_s"].parse::<f64>().unwrap() - r["step_start_s"].parse::<f64>().unwrap()
    };
    let cpu: f64 = closed["cpu_seconds"]
        .parse()
        .unwrap_or_else(|_| panic!("{closed:?}"));
    assert!(
        (cpu - 0.5 * step(closed)).abs() <= 0.2,
        "{cpu} CPU seconds over {} s at 500m",
        step(closed)
    );
    let conclusion = std::fs::read_to_string(run.join("conclusion.txt")).unwrap();
    assert!(
        conclusion.contains(
            "Measured on Kubernetes, namespace demo, the gateway reached through a port-forward"
        ),
        "{conclusion}"
    );
}

#[test]
fn bench_against_a_cluster_refuses_before_running_when_it_cannot_reach_the_gateway() {
    let api = FakeApi::start();
    let function = server(200, 0);
    let dir = deployed(
        &api,
        &[("a", "baseline: {replicas: 1}\n", &function.url(""))],
    );
    std::fs::write(dir.path().join("plan.yaml"), KUBE_PLAN).unwrap();
    let kc = api.kubeconfig(dir.path());
    let out = dir.path().join("results");
    // The rendered Deployment's pod is not ready yet.
    gateway_pod(&api, "cubeflash-gateway-1", false, None);
    let o = kube_bench(dir.path(), &kc, &out, &[]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("no ready pod behind Service cubeflash-gateway in namespace demo")
            && err.contains("kubectl -n demo get pods -l"),
        "{err}"
    );
    // RBAC without pods/portforward.
    gateway_pod(
        &api,
        "cubeflash-gateway-1",
        true,
        Some("127.0.0.1:9".parse().unwrap()),
    );
    api.state.lock().unwrap().forbid = Some(("CREATE".into(), "pods/portforward".into()));
    let o = kube_bench(dir.path(), &kc, &out, &[]);
    let err = text(&o.stderr);
    assert!(
        !o.status.success() && err.contains("refused to create pods/portforward in namespace demo"),
        "{err}"
    );
    // No admin token anywhere.
    api.state.lock().unwrap().forbid = None;
    let o = kube_bench(dir.path(), &kc, &out, &[]);
    let err = text(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("cubeflash-admin")
            && err.contains("CUBEFLASH_ADMIN_TOKEN"),
        "{err}"
    );
    // No cluster at all.
    let home = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_cubeflash"))
        .args(["bench", "--target", "kubernetes", "plan.yaml", "--out"])
        .arg(&out)
        .current_dir(dir.path())
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", home.path())
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no Kubernetes cluster is configured"),
        "{err}"
    );
    assert!(!out.exists(), "nothing was run, no results written");
}

/// The dashboard on the Kubernetes gateway: the same page and API, what only the local
/// target can do answered as such, and the page's list, scale and redeploy notice in a
/// browser.
#[test]
fn the_dashboard_runs_on_the_kubernetes_gateway() {
    let api = FakeApi::start();
    let svc = server(200, 0);
    let (_dir, gw) = one_function(&api, "scale: {min: 0, max: 3}\n", &svc.url(""));
    let http = reqwest::blocking::Client::new();
    let get = |path: &str| {
        let r = http
            .get(format!("{}{path}", gw.url))
            .bearer_auth("secret-token")
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap_or(Value::Null))
    };
    assert_eq!(status_of(&format!("{}/ui", gw.url)), 200);
    let (status, overview) = get("/system/overview");
    assert_eq!(status, 200);
    assert_eq!(overview["backend"], "kubernetes");
    assert_eq!(overview["functions"][0]["name"], "a", "{overview}");
    assert!(overview["provenance"].is_null(), "no repo in a cluster");
    assert_eq!(get("/system/whoami").1["repo"], Value::Null);
    // What needs the repo or the replicas' output says where to look instead.
    for (path, needle) in [
        ("/system/functions/a/events", "cubeflash invoke"),
        ("/system/functions/a/logs", "kubectl logs"),
        ("/system/bench", "bench/results"),
    ] {
        let (status, body) = get(path);
        assert_eq!(status, 501, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{path}: {body}"
        );
    }
    let create = http
        .post(format!("{}/system/functions", gw.url))
        .bearer_auth("secret-token")
        .json(&json!({"name": "b", "runtime": "python"}))
        .send()
        .unwrap();
    assert_eq!(create.status(), 501);
    assert!(create
        .text()
        .unwrap()
        .contains("cubeflash deploy --target kubernetes"));

    let driver = common::browser::Driver::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use common::browser::{click, sign_in, until};
        let c = driver.session().await;
        sign_in(&c, &gw.url, "secret-token").await;
        until(&c, "a in the table", "const r = document.querySelector('#functions tbody tr[data-name=a]'); return r && r.children[4].textContent === '0/0'", Duration::from_secs(10)).await;
        let hidden = c.execute("return document.getElementById('tab-new').hidden && document.getElementById('tab-bench').hidden", vec![]).await.unwrap();
        assert_eq!(hidden, json!(true), "no new-function form or bench runs in a cluster");
        c.execute("document.querySelector('#functions tbody tr[data-name=a]').click()", vec![]).await.unwrap();
        until(&c, "the detail panel", "return !document.getElementById('detail').hidden", Duration::from_secs(5)).await;
        c.execute("document.getElementById('act-n').value = '2'", vec![]).await.unwrap();
        click(&c, "act-scale").await;
        until(&c, "2 replicas wanted", "const r = document.querySelector('#functions tbody tr[data-name=a]'); return r && r.children[4].textContent.endsWith('/2')", Duration::from_secs(10)).await;
        click(&c, "act-redeploy").await;
        let notice = until(&c, "the redeploy notice", "const t = document.getElementById('notice').textContent; return t.includes('source of truth') && t", Duration::from_secs(5)).await;
        assert!(notice.as_str().unwrap().contains("cubeflash deploy --target kubernetes"), "{notice}");
        let logs = until(&c, "the logs pane says why it is empty", "const t = document.getElementById('logs').textContent; return t.includes('kubectl logs') && t", Duration::from_secs(5)).await;
        assert!(logs.as_str().unwrap().contains("keeps no logs"), "{logs}");
        c.close().await.unwrap();
    });
    let patches = scale_patches(&api, "a");
    assert!(
        patches.iter().any(|p| p["spec"]["replicas"] == 2),
        "the page's scale reached the Deployment: {patches:?}"
    );
}
