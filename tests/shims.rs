//! The python and node runtime shims, started as real processes with test handlers and
//! called over HTTP on loopback.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{repo_root, start_shim};
use reqwest::blocking::Client;

fn fixtures(runtime: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(runtime)
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// Runs `check` against a shim of `runtime`, or says why it cannot.
fn with_shim(runtime: &str, handler: &str, check: impl FnOnce(&common::Replica)) {
    // Fails, never skips, when the interpreter is missing (scripts/test-deps.sh installs it).
    common::need(common::interpreter(runtime));
    let replica = start_shim(runtime, &fixtures(runtime), handler).expect("shim starts");
    check(&replica);
}

fn results_come_back_in_every_shape(runtime: &str, handler: &str) {
    with_shim(runtime, handler, |r| {
        let c = client();
        let resp = c
            .post(r.url("/json?a=1&b=two"))
            .header("X-Test", "hdr")
            .body("payload")
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let v: serde_json::Value = resp.json().unwrap();
        assert_eq!(v["method"], "POST");
        assert_eq!(v["query"]["a"], "1");
        assert_eq!(v["query"]["b"], "two");
        assert_eq!(v["body"], "payload");
        assert_eq!(v["header"], "hdr");

        let resp = c.get(r.url("/text")).send().unwrap();
        assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(resp.text().unwrap(), "plain text");

        let resp = c.get(r.url("/bytes")).send().unwrap();
        assert_eq!(resp.headers()["content-type"], "application/octet-stream");
        assert_eq!(resp.bytes().unwrap().as_ref(), &[0u8, 1, 2]);

        let resp = c.get(r.url("/tuple")).send().unwrap();
        assert_eq!(resp.status(), 201);
        assert_eq!(resp.headers()["x-custom"], "yes");
        assert_eq!(resp.headers()["content-type"], "text/csv");
        assert_eq!(resp.text().unwrap(), "a,b\n");

        let resp = c.get(r.url("/pair")).send().unwrap();
        assert_eq!(resp.status(), 418);
        assert_eq!(resp.json::<serde_json::Value>().unwrap()["teapot"], true);

        let resp = c.get(r.url("/none")).send().unwrap();
        assert_eq!(resp.status(), 204);
        assert_eq!(resp.text().unwrap(), "");

        let resp = c.head(r.url("/text")).send().unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-length"], "10");
    });
}

fn an_exception_is_a_json_500_and_the_replica_keeps_serving(
    runtime: &str,
    handler: &str,
    paths: &[&str],
) {
    with_shim(runtime, handler, |r| {
        let c = client();
        for path in paths {
            let resp = c.get(r.url(path)).send().unwrap();
            assert_eq!(resp.status(), 500, "{path}");
            let v: serde_json::Value = resp.json().unwrap();
            assert_eq!(v["function"], "test-fn");
            assert!(
                v["error"].as_str().unwrap().contains("Error")
                    || v["error"].as_str().unwrap().contains("boom"),
                "{v}"
            );
        }
        assert_eq!(
            c.get(r.url("/text")).send().unwrap().text().unwrap(),
            "plain text"
        );
        assert_eq!(c.get(r.url("/_/ready")).send().unwrap().status(), 200);
    });
}

fn requests_are_served_concurrently(runtime: &str, handler: &str) {
    with_shim(runtime, handler, |r| {
        let url = r.url("/barrier");
        let handles: Vec<_> = (0..5)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || {
                    let resp = client().get(url).send().unwrap();
                    (resp.status().as_u16(), resp.text().unwrap())
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), (200, "together".to_string()));
        }
    });
}

fn keep_alive_connections_serve_many_requests(runtime: &str, handler: &str) {
    with_shim(runtime, handler, |r| {
        let c = Client::builder()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        for i in 0..50 {
            let resp = c.get(r.url(&format!("/json?i={i}"))).send().unwrap();
            assert_eq!(
                resp.json::<serde_json::Value>().unwrap()["query"]["i"],
                i.to_string()
            );
        }
    });
}

fn a_handler_that_cannot_load_exits_with_its_error(runtime: &str, handler: &str, needle: &str) {
    common::need(common::interpreter(runtime));
    let err = start_shim(runtime, &fixtures(runtime), handler)
        .err()
        .expect("the shim must exit");
    assert!(err.contains(needle), "{err}");
}

#[test]
fn python_results_come_back_in_every_shape() {
    results_come_back_in_every_shape("python", "handler.py");
}

#[test]
fn node_results_come_back_in_every_shape() {
    results_come_back_in_every_shape("node", "handler.js");
}

#[test]
fn python_exception_is_a_json_500_and_serving_goes_on() {
    an_exception_is_a_json_500_and_the_replica_keeps_serving(
        "python",
        "handler.py",
        &["/throw", "/unserializable"],
    );
}

#[test]
fn node_exception_is_a_json_500_and_serving_goes_on() {
    an_exception_is_a_json_500_and_the_replica_keeps_serving(
        "node",
        "handler.js",
        &["/throw", "/reject"],
    );
}

#[test]
fn python_serves_requests_concurrently() {
    requests_are_served_concurrently("python", "handler.py");
}

#[test]
fn node_serves_requests_concurrently() {
    requests_are_served_concurrently("node", "handler.js");
}

#[test]
fn python_keep_alive() {
    keep_alive_connections_serve_many_requests("python", "handler.py");
}

#[test]
fn node_keep_alive() {
    keep_alive_connections_serve_many_requests("node", "handler.js");
}

#[test]
fn python_async_handler_result_is_awaited() {
    with_shim("python", "handler.py", |r| {
        let v: serde_json::Value = client()
            .get(r.url("/async"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(v["async"], true);
    });
}

#[test]
fn python_unloadable_handler_exits() {
    a_handler_that_cannot_load_exits_with_its_error(
        "python",
        "broken.py",
        "cannot even be imported",
    );
    a_handler_that_cannot_load_exits_with_its_error(
        "python",
        "handler.py:missing",
        "defines no function missing",
    );
}

#[test]
fn node_unloadable_handler_exits() {
    a_handler_that_cannot_load_exits_with_its_error("node", "broken.js", "cannot even be loaded");
    a_handler_that_cannot_load_exits_with_its_error(
        "node",
        "handler.js:missing",
        "exports no function missing",
    );
}

#[test]
fn shims_exit_on_sigterm() {
    for (runtime, handler) in [("python", "handler.py"), ("node", "handler.js")] {
        common::need(common::interpreter(runtime));
        let mut r = start_shim(runtime, &fixtures(runtime), handler).unwrap();
        let pid = r.child.id().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = r.child.try_wait().unwrap() {
                assert!(
                    status.success() || status.code().is_none(),
                    "{runtime}: {status}"
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{runtime} ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Warm-pool mode: the shim starts with no function, then becomes the one named on stdin.
#[test]
fn pooled_shims_become_the_function_named_on_stdin() {
    use std::io::Write;
    for (runtime, handler) in [("python", "handler.py"), ("node", "handler.js")] {
        let program = common::interpreter(runtime);
        common::need(program);
        let port = common::free_port();
        let mut child = std::process::Command::new(program)
            .arg(common::shim(runtime))
            .arg("--pool")
            .current_dir("/")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let job = serde_json::json!({
            "dir": fixtures(runtime),
            "env": { "PORT": port.to_string(), "CUBEFLASH_HANDLER": handler, "CUBEFLASH_BIND": "127.0.0.1", "CUBEFLASH_FUNCTION": "pooled" },
        });
        // As the gateway does: write the job, then close stdin.
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{job}").unwrap();
        drop(stdin);
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let text = loop {
            if let Ok(r) = client().get(format!("{url}/text")).send() {
                break r.text().unwrap();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{runtime}: pooled shim never served"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(text, "plain text", "{runtime}");
        let err: serde_json::Value = client()
            .get(format!("{url}/throw"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(
            err["function"], "pooled",
            "{runtime}: the function name comes from the job"
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}
