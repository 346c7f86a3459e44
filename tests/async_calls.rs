//! Async calls on the local platform: POST /async-function/NAME answers 202 only once the
//! call is stored, the gateway delivers it through the engine with retries, and
//! /system/calls shows it. Each case runs against both stores: redb under .cubeflash/ and
//! NATS JetStream (a real nats-server on a free loopback port, as in a cluster). Real
//! gateway, real python replicas, loopback only.

mod common;

use std::time::{Duration, Instant};

use common::gateway::{client, TestGateway, UpProcess, TOKEN};
use common::{need, repo_root, temp_tree, NatsServer};
use serde_json::Value;

const POLICY: &str = "async: { retries: 2, minBackoff: 100ms, maxBackoff: 200ms, maxAge: 1m }\n";

/// Where the calls are stored: redb, or a nats-server of the test's own.
struct Backing {
    nats: Option<NatsServer>,
}

impl Backing {
    fn redb() -> Self {
        Self { nats: None }
    }

    fn jetstream() -> Self {
        Self {
            nats: Some(NatsServer::start()),
        }
    }

    /// cubeflash.yaml, with `gateway` settings added.
    fn project(&self, gateway: &str) -> String {
        match &self.nats {
            None => format!("namespace: test\ngateway: {{ {gateway} }}\n"),
            Some(n) => format!(
                "namespace: test\nnats: {{ url: \"{}\" }}\ngateway: {{ asyncStore: jetstream, {gateway} }}\n",
                n.url
            ),
        }
    }

    fn repo(&self, extra: &str) -> tempfile::TempDir {
        self.repo_with(extra, "")
    }

    fn repo_with(&self, extra: &str, gateway: &str) -> tempfile::TempDir {
        let handler =
            std::fs::read_to_string(repo_root().join("tests/fixtures/async/handler.py")).unwrap();
        let yaml = format!("name: job\nruntime: python\nhandler: handler.py\n{extra}");
        let project = self.project(gateway);
        temp_tree(&[
            ("cubeflash.yaml", project.as_str()),
            ("functions/job/function.yaml", yaml.as_str()),
            ("functions/job/handler.py", handler.as_str()),
        ])
    }

    /// SIGKILLs the nats-server (if any) and starts it again on its port and store.
    fn restart_nats(&mut self) {
        if let Some(n) = self.nats.take() {
            let port = n.port;
            let store = n.kill();
            self.nats = Some(NatsServer::start_on(port, store));
        }
    }
}

/// Each case, once on each store.
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod redb {
            $(#[test]
            fn $case() {
                super::$case(&mut super::Backing::redb());
            })*
        }
        mod jetstream {
            $(#[test]
            fn $case() {
                super::common::need("nats-server");
                super::$case(&mut super::Backing::jetstream());
            })*
        }
    };
}

on_both_stores!(
    an_async_call_is_stored_then_delivered_with_its_id_and_shown,
    failures_are_retried_with_backoff_until_the_function_succeeds,
    a_4xx_fails_at_once_and_used_up_retries_are_dead_until_redriven,
    refused_calls_are_never_stored,
    an_idempotency_key_answers_with_the_first_calls_id,
    an_accepted_call_survives_a_killed_gateway,
    retry_gaps_follow_the_policy_within_twenty_percent,
    two_hundred_calls_survive_a_gateway_killed_mid_drain,
    a_callback_gets_the_signed_result_and_is_retried_on_500,
);

/// Only JetStream leases run out (another gateway, or this one restarted, takes the call
/// over); a redb lease is only looked at after a restart.
#[test]
fn a_call_three_times_longer_than_its_lease_runs_once() {
    need("python3");
    let s = Backing::jetstream();
    let gw = TestGateway::serve(s.repo_with(POLICY, "asyncLease: 1s"));
    let (_, accepted) = post(&gw.url(""), "/slow?s=3.5", "long", None);
    let done = call(&gw.url(""), accepted["callId"].as_str().unwrap(), "30s");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        done["attempts"].as_array().unwrap().len(),
        1,
        "the lease was kept, not run out: {done}"
    );
    assert_eq!(result_body(&done)["attempt"], "1");
}

/// POSTs an async call; its status and JSON answer.
fn post(base: &str, rest: &str, body: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = client()
        .post(format!("{base}/async-function/job{rest}"))
        .body(body.to_string());
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// GET /system/calls/ID, waiting up to `wait` for it to finish.
fn call(base: &str, id: &str, wait: &str) -> Value {
    client()
        .get(format!("{base}/system/calls/{id}?wait={wait}"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// The status of an admin API request with the admin token.
fn admin_status(gw: &TestGateway, method: reqwest::Method, path: &str) -> u16 {
    client()
        .request(method, gw.url(path))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

fn result_body(call: &Value) -> Value {
    serde_json::from_str(call["result"]["body"].as_str().unwrap()).unwrap()
}

fn an_async_call_is_stored_then_delivered_with_its_id_and_shown(s: &mut Backing) {
    need("python3");
    let gw = TestGateway::serve(s.repo(POLICY));
    let resp = client()
        .post(gw.url("/async-function/job/ok?x=1"))
        .body("hello")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.headers()["x-cubeflash-call-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        resp.headers()["location"],
        format!("/system/calls/{id}").as_str()
    );
    let accepted: Value = resp.json().unwrap();
    assert_eq!(accepted["callId"], id.as_str());
    let done = call(&gw.url(""), &id, "20s");
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["attempts"].as_array().unwrap().len(), 1);
    let seen = result_body(&done);
    assert_eq!(
        seen["call"],
        id.as_str(),
        "the handler sees the call's own id"
    );
    assert_eq!(seen["attempt"], "1");
    assert_eq!(seen["trigger"], "async");
    assert_eq!(seen["body"], "hello");
    assert_eq!(seen["query"]["x"], "1");
    // Listed, and counted.
    let list = gw.admin("/system/calls?function=job");
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let metrics = gw.metrics();
    assert!(
        metrics.contains("cubeflash_async_delivered_total{function=\"job\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cubeflash_async_attempt_duration_seconds_count{function=\"job\"} 1"),
        "{metrics}"
    );
    let store = if s.nats.is_some() {
        "jetstream"
    } else {
        "redb"
    };
    assert_eq!(gw.function("job")["asyncStore"], store);
}

fn failures_are_retried_with_backoff_until_the_function_succeeds(s: &mut Backing) {
    need("python3");
    let gw = TestGateway::serve(s.repo(POLICY));
    let (status, accepted) = post(&gw.url(""), "/flaky?fail=2", "k1", None);
    assert_eq!(status, 202);
    let done = call(&gw.url(""), accepted["callId"].as_str().unwrap(), "20s");
    assert_eq!(done["state"], "succeeded", "{done}");
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{done}");
    assert_eq!(attempts[0]["status"], 503);
    assert_eq!(result_body(&done)["attempt"], "3");
}

fn a_4xx_fails_at_once_and_used_up_retries_are_dead_until_redriven(s: &mut Backing) {
    need("python3");
    let gw = TestGateway::serve(s.repo(POLICY));
    let base = gw.url("");
    let (_, bad) = post(&base, "/status?code=422", "x", None);
    let failed = call(&base, bad["callId"].as_str().unwrap(), "20s");
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(
        failed["attempts"].as_array().unwrap().len(),
        1,
        "a 4xx is not retried"
    );
    let (_, down) = post(&base, "/status?code=500", "y", None);
    let id = down["callId"].as_str().unwrap().to_string();
    let dead = call(&base, &id, "20s");
    assert_eq!(dead["state"], "dead", "{dead}");
    assert_eq!(
        dead["attempts"].as_array().unwrap().len(),
        3,
        "1 + async.retries (2)"
    );
    assert!(
        dead["error"]
            .as_str()
            .unwrap()
            .contains("async.retries is 2"),
        "{dead}"
    );
    let listed = gw.admin("/system/calls?state=dead");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    // Redrive: a fresh budget of 1 + 2 attempts.
    assert_eq!(
        admin_status(
            &gw,
            reqwest::Method::POST,
            &format!("/system/calls/{id}/redrive")
        ),
        200
    );
    let again = call(&base, &id, "20s");
    assert_eq!(again["state"], "dead", "{again}");
    assert_eq!(again["attempts"].as_array().unwrap().len(), 6, "{again}");
    // A call that is not dead cannot be redriven; purge removes it.
    let (_, ok) = post(&base, "/ok", "z", None);
    let ok_id = ok["callId"].as_str().unwrap();
    call(&base, ok_id, "20s");
    assert_eq!(
        admin_status(
            &gw,
            reqwest::Method::POST,
            &format!("/system/calls/{ok_id}/redrive")
        ),
        409
    );
    assert_eq!(
        admin_status(&gw, reqwest::Method::DELETE, &format!("/system/calls/{id}")),
        200
    );
    assert_eq!(
        admin_status(&gw, reqwest::Method::GET, &format!("/system/calls/{id}")),
        404
    );
}

fn refused_calls_are_never_stored(s: &mut Backing) {
    need("python3");
    let gw = TestGateway::serve(s.repo(POLICY));
    let r = client()
        .post(gw.url("/async-function/nope"))
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client().get(gw.url("/async-function/job")).send().unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let big = vec![b'x'; 7 * 1024 * 1024];
    let r = client()
        .post(gw.url("/async-function/job"))
        .body(big)
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    // Calls are for the admin's eyes: no token, no list.
    let r = client().get(gw.url("/system/calls")).send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(gw.admin("/system/calls"), serde_json::json!([]));
    if let Some(nats) = s.nats.take() {
        // Under the gateway's limit but over what NATS carries: refused, and why.
        let r = client()
            .post(gw.url("/async-function/job"))
            .body(vec![b'x'; 2 * 1024 * 1024])
            .send()
            .unwrap();
        assert_eq!(r.status(), 413);
        assert!(r.text().unwrap().contains("max_payload"));
        // The store gone: 503, never a 202 that will not run.
        let store = nats.kill();
        let r = client()
            .post(gw.url("/async-function/job"))
            .body("x")
            .send()
            .unwrap();
        assert_eq!(r.status(), 503);
        drop(store);
    }
}

fn an_idempotency_key_answers_with_the_first_calls_id(s: &mut Backing) {
    need("python3");
    let gw = TestGateway::serve(s.repo(POLICY));
    let base = gw.url("");
    let (_, first) = post(&base, "/ok", "a", Some("order-17"));
    let (_, second) = post(&base, "/ok", "a", Some("order-17"));
    assert_eq!(first["callId"], second["callId"]);
    assert_eq!(second["duplicate"], true);
    let (_, other) = post(&base, "/ok", "a", Some("order-18"));
    assert_ne!(first["callId"], other["callId"]);
    call(&base, first["callId"].as_str().unwrap(), "20s");
    call(&base, other["callId"].as_str().unwrap(), "20s");
    assert_eq!(gw.admin("/system/calls").as_array().unwrap().len(), 2);
}

fn an_accepted_call_survives_a_killed_gateway(s: &mut Backing) {
    need("python3");
    let root = s.repo(POLICY);
    let env = [("CUBEFLASH_ADMIN_TOKEN", TOKEN)];
    let mut up = UpProcess::start(root.path(), &env);
    let base = up.url.clone();
    let (status, accepted) = post(&base, "/slow?s=3", "durable", None);
    assert_eq!(status, 202);
    let id = accepted["callId"].as_str().unwrap().to_string();
    // Kill it mid-attempt: the call is running, its lease held by a gateway that is gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    while call(&base, &id, "0s")["state"] != "running" {
        assert!(Instant::now() < deadline, "never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(up.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = up.child.wait();
    let up = UpProcess::start(root.path(), &env);
    let done = call(&up.url, &id, "30s");
    assert_eq!(done["state"], "succeeded", "{done}");
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        2,
        "the interrupted attempt is recorded: {done}"
    );
    assert!(
        attempts[0]["error"]
            .as_str()
            .unwrap()
            .contains("gateway stopped"),
        "{done}"
    );
    assert_eq!(
        result_body(&done)["attempt"],
        "2",
        "a redelivery says so: {done}"
    );
    assert_eq!(result_body(&done)["body"], "durable");
    drop(up);
}

#[test]
fn the_cli_sends_async_calls_and_follows_them() {
    need("python3");
    let p = common::gateway::Platform::new(Backing::redb().repo(POLICY));
    let (code, out, err) = p.run(&["deploy"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, id, err) = p.run(&["invoke", "job", "--async", "-d", "from the cli"]);
    assert_eq!(code, Some(0), "{err}");
    let id = id.trim().to_string();
    assert!(err.contains(&format!("cubeflash calls show {id}")), "{err}");
    let (code, shown, err) = p.run(&["calls", "show", &id, "--wait", "20s"]);
    assert_eq!(code, Some(0), "{err}");
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["state"], "succeeded", "{shown}");
    assert_eq!(result_body(&shown)["body"], "from the cli");
    let (code, ls, _) = p.run(&["ls"]);
    assert_eq!(code, Some(0));
    let header: Vec<&str> = ls
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let row: Vec<&str> = ls
        .lines()
        .find(|l| l.starts_with("job "))
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let col = header
        .iter()
        .position(|h| *h == "TRIGGERS")
        .expect("a TRIGGERS column");
    assert_eq!(row.get(col), Some(&"http"), "{ls}");
    let (code, listed, _) = p.run(&["calls", "job"]);
    assert_eq!(code, Some(0));
    let row = listed
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_default();
    assert!(row.contains("succeeded"), "{listed}");
    let (code, _, err) = p.run(&["invoke", "job", "--async", "-X", "GET"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("an async call is a POST"), "{err}");
    let (code, _, err) = p.run(&["calls", "show", "no-such-call"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no async call \"no-such-call\""), "{err}");
    let (code, _, err) = p.run(&["calls", "redrive", &id]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("only a dead or failed call can be redriven"),
        "{err}"
    );
}

fn retry_gaps_follow_the_policy_within_twenty_percent(s: &mut Backing) {
    need("python3");
    let gw = TestGateway::serve(
        s.repo("async: { retries: 3, minBackoff: 300ms, maxBackoff: 1200ms }\n"),
    );
    let (_, accepted) = post(&gw.url(""), "/status?code=500", "g", None);
    let dead = call(&gw.url(""), accepted["callId"].as_str().unwrap(), "30s");
    assert_eq!(dead["state"], "dead", "{dead}");
    let attempts = dead["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4);
    let at = |i: usize, key: &str| attempts[i][key].as_u64().unwrap();
    for (i, policy) in [(0, 300u64), (1, 600), (2, 1200)] {
        let gap = at(i + 1, "startedAt") - (at(i, "startedAt") + at(i, "durationMs"));
        assert!(
            gap + 10 >= policy * 8 / 10 && gap <= policy + 100,
            "gap {} was {gap} ms, the policy says {policy} ms (−20%): {dead}",
            i + 1
        );
    }
}

fn two_hundred_calls_survive_a_gateway_killed_mid_drain(s: &mut Backing) {
    need("python3");
    let root = s.repo(&format!("{POLICY}scale: {{ max: 2, concurrency: 4 }}\n"));
    let env = [("CUBEFLASH_ADMIN_TOKEN", TOKEN)];
    let mut up = UpProcess::start(root.path(), &env);
    let http = client();
    let ids: Vec<String> = (0..200)
        .map(|i| {
            let r = http
                .post(format!("{}/async-function/job/slow?s=0.05", up.url))
                .body(format!("call {i}"))
                .send()
                .unwrap();
            assert_eq!(r.status(), 202);
            r.headers()["x-cubeflash-call-id"]
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // Some are done, some running, most queued: kill it there.
    nix::sys::signal::kill(up.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = up.child.wait();
    // The NATS server too, when it is the store: nothing stored is lost.
    s.restart_nats();
    let up = UpProcess::start(root.path(), &env);
    let mut redelivered = 0;
    for id in &ids {
        let c = call(&up.url, id, "60s");
        assert_eq!(c["state"], "succeeded", "none lost: {c}");
        if c["attempts"].as_array().unwrap().len() > 1 {
            redelivered += 1;
        }
    }
    let listed = client()
        .get(format!("{}/system/calls?limit=1000", up.url))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap();
    assert_eq!(
        listed.as_array().unwrap().len(),
        200,
        "no call stored twice"
    );
    // At least once: the ones running at the kill ran again (at most the parallel budget).
    assert!(redelivered <= 8, "{redelivered} delivered twice");
    eprintln!("{redelivered} of 200 calls were delivered twice after the kill");
}

/// A callback receiver on loopback: answers `statuses` in turn (then 200), and keeps each
/// request's head and body.
fn receiver(statuses: Vec<u16>) -> (u16, std::sync::mpsc::Receiver<(String, Vec<u8>)>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut statuses = statuses.into_iter();
        for conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let status = statuses.next().unwrap_or(200);
            let mut conn = conn;
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = tx.send((head, body));
        }
    });
    (port, rx)
}

fn a_callback_gets_the_signed_result_and_is_retried_on_500(s: &mut Backing) {
    need("python3");
    let (port, got) = receiver(vec![500]);
    let root = s.repo_with(POLICY, &format!("callbackHosts: [\"127.0.0.1:{port}\"]"));
    let gw = TestGateway::serve(root);
    // A host that is not allowed is refused before anything is stored.
    let r = client()
        .post(gw.url("/async-function/job/ok"))
        .header("X-Callback-Url", "http://169.254.169.254/latest/meta-data")
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("gateway.callbackHosts"));
    assert_eq!(gw.admin("/system/calls"), serde_json::json!([]));
    let r = client()
        .post(gw.url("/async-function/job/ok"))
        .header("X-Callback-Url", format!("http://127.0.0.1:{port}/hook"))
        .body("called back")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.headers()["x-cubeflash-call-id"]
        .to_str()
        .unwrap()
        .to_string();
    let first = got.recv_timeout(Duration::from_secs(20)).unwrap();
    let second = got.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(first.0.starts_with("POST /hook"), "{}", first.0);
    assert_eq!(first.1, second.1, "the retry sends the same result");
    let sent: Value = serde_json::from_slice(&second.1).unwrap();
    assert_eq!(sent["id"], id.as_str());
    assert_eq!(sent["state"], "succeeded");
    assert_eq!(result_body(&sent)["body"], "called back");
    assert!(
        !sent["headers"].to_string().contains("x-callback-url"),
        "the function never sees where its result goes"
    );
    // The signature verifies with the secret in .cubeflash/callback-secret.
    use hmac::Mac;
    let secret =
        std::fs::read_to_string(gw.root.path().join(".cubeflash/callback-secret")).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.trim().as_bytes()).unwrap();
    mac.update(&second.1);
    let want: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let signature = second
        .0
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-cubeflash-signature:")
                .map(|v| v.trim().to_string())
        })
        .unwrap();
    assert_eq!(signature, format!("sha256={want}"));
    // Recorded with the call.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = call(&gw.url(""), &id, "0s");
        if c["callback"]["delivered"] == true {
            assert_eq!(c["callback"]["attempts"], 2, "{c}");
            break;
        }
        assert!(Instant::now() < deadline, "{c}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn finished_calls_are_kept_for_the_retention_and_dead_ones_until_purged() {
    need("python3");
    let gw = TestGateway::serve(Backing::redb().repo_with(
        "async: { retries: 0, minBackoff: 100ms, maxBackoff: 100ms }\n",
        "asyncRetention: 2s",
    ));
    let base = gw.url("");
    let (_, ok) = post(&base, "/ok", "kept a while", None);
    let (_, dead) = post(&base, "/status?code=500", "dead", None);
    let ok = ok["callId"].as_str().unwrap().to_string();
    let dead = dead["callId"].as_str().unwrap().to_string();
    assert_eq!(call(&base, &ok, "20s")["state"], "succeeded");
    assert_eq!(call(&base, &dead, "20s")["state"], "dead");
    let deadline = Instant::now() + Duration::from_secs(15);
    while admin_status(&gw, reqwest::Method::GET, &format!("/system/calls/{ok}")) != 404 {
        assert!(
            Instant::now() < deadline,
            "a finished call outlived its retention"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        call(&base, &dead, "0s")["state"],
        "dead",
        "dead calls stay until purged"
    );
}

#[test]
fn the_kubernetes_target_refuses_async_calls_without_nats_and_redb() {
    let function = "name: job\nruntime: python\nhandler: handler.py\nasync: { retries: 2 }\n";
    let load = |project: &str| {
        let root = temp_tree(&[
            ("cubeflash.yaml", project),
            ("functions/job/function.yaml", function),
            (
                "functions/job/handler.py",
                "def handle(req):\n    return 1\n",
            ),
        ]);
        cubeflash::spec::load(root.path()).map(|_| ())
    };
    let err = format!(
        "{:#}",
        load("namespace: test\ntarget: kubernetes\n").unwrap_err()
    );
    assert!(
        err.contains("functions/job/function.yaml:4:8") && err.contains("NATS JetStream"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        load("namespace: test\ntarget: kubernetes\nnats: { url: \"nats://nats:4222\" }\ngateway: { asyncStore: redb }\n").unwrap_err()
    );
    assert!(err.contains("not a durable queue"), "{err}");
    load("namespace: test\ntarget: kubernetes\nnats: { url: \"nats://nats:4222\" }\n").unwrap();
    load("namespace: test\n").unwrap();
}

/// What a JetStream accept that failed after claiming its Idempotency-Key would leave: the
/// key naming a call that was never stored. A retry with the key must store the call, not
/// answer 202 with an id that will never run.
#[test]
fn an_idempotency_key_of_a_call_never_stored_is_taken_over() {
    need("python3");
    use sha2::Digest;
    let s = Backing::jetstream();
    let url = s.nats.as_ref().unwrap().url.clone();
    let gw = TestGateway::serve(s.repo(POLICY));
    let base = gw.url("");
    // The store is set up once a first call went through.
    let (_, warm) = post(&base, "/ok", "warm", None);
    call(&base, warm["callId"].as_str().unwrap(), "20s");
    let hex: String = sha2::Sha256::digest(b"order-99")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let far = 4_000_000_000_000u64;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
            let kv = js.get_key_value("CUBEFLASH_CALLS").await.unwrap();
            kv.put(format!("i.job.{hex}"), format!("ghost-1\0{far}").into())
                .await
                .unwrap();
        });
    let (status, accepted) = post(&base, "/ok", "real", Some("order-99"));
    assert_eq!(status, 202);
    assert_eq!(accepted["duplicate"], false, "{accepted}");
    assert_ne!(accepted["callId"], "ghost-1");
    let done = call(&base, accepted["callId"].as_str().unwrap(), "20s");
    assert_eq!(done["state"], "succeeded", "{done}");
    // And from now on the key answers with that call.
    let (_, again) = post(&base, "/ok", "real", Some("order-99"));
    assert_eq!(again["callId"], accepted["callId"]);
}
