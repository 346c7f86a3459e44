//! The local platform end to end: a real gateway on 127.0.0.1:0 with real python replicas.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::gateway::{
    assert_no_process_under, client, one_function, processes_under, Platform, TestGateway, TOKEN,
};
use common::{need, repo_root, temp_tree};
use serde_json::Value;

#[test]
fn cold_start_then_warm() {
    need("python3");
    let gw = TestGateway::start("", &[("fn", "")]);
    assert_eq!(
        gw.function("fn")["replicas"]["desired"],
        0,
        "scale.min 0 starts at zero"
    );
    let first = client().get(gw.url("/function/fn/pid")).send().unwrap();
    assert_eq!(first.status(), 200);
    let cold: u64 = first.headers()["x-cubeflash-cold-start"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(cold > 0);
    assert!(first.headers().contains_key("x-cubeflash-call-id"));
    let second = client().get(gw.url("/function/fn/pid")).send().unwrap();
    assert_eq!(second.status(), 200);
    assert!(
        !second.headers().contains_key("x-cubeflash-cold-start"),
        "a warm request carries no cold-start header"
    );
    let metrics = gw.metrics();
    assert!(
        metrics.contains("cubeflash_cold_starts_total{function=\"fn\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("cubeflash_request_duration_seconds_count{function=\"fn\",start=\"cold\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("cubeflash_request_duration_seconds_count{function=\"fn\",start=\"warm\"} 1"),
        "{metrics}"
    );
    for phase in ["spawn", "readiness", "first_byte"] {
        assert!(
            metrics.contains(&format!(
                "cubeflash_cold_start_phase_seconds_count{{function=\"fn\",phase=\"{phase}\"}} 1"
            )),
            "{phase}: {metrics}"
        );
    }
    assert!(
        metrics.contains("cubeflash_gateway_overhead_seconds_count{function=\"fn\"} 1"),
        "{metrics}"
    );
    // Replica-seconds are accounted by the autoscaler's 100 ms tick.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = gw.metrics();
        if metrics.contains("cubeflash_replica_seconds_total{function=\"fn\",kind=\"serverless\"}")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no replica-seconds: {metrics}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Regression: pooled node replicas exited when the gateway closed their stdin.
#[test]
fn node_functions_cold_start_from_the_warm_pool_and_keep_serving() {
    common::need("node");
    let root = one_function(
        "js",
        "node",
        "",
        "exports.handle = async (req) => ({ path: req.path, pid: process.pid });\n",
    );
    let gw = TestGateway::serve(root);
    for _ in 0..2 {
        client()
            .post(gw.url("/system/functions/js/scale"))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({"replicas": 0}))
            .send()
            .unwrap();
        gw.wait_for("js", "scaled to zero", Duration::from_secs(10), |f| {
            f["replicas"]["ready"] == 0
        });
        let first = client().get(gw.url("/function/js/a")).send().unwrap();
        assert_eq!(first.status(), 200, "{}", first.text().unwrap());
        thread::sleep(Duration::from_millis(300));
        let again: Value = client()
            .get(gw.url("/function/js/b"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(again["path"], "/b", "the pooled replica is still serving");
    }
    assert!(gw.function("js")["failed"].is_null());
}

#[test]
fn a_burst_of_50_at_zero_is_one_cold_start_and_50_successes() {
    need("python3");
    let gw = TestGateway::start("", &[("fn", "scale: { max: 10, concurrency: 10 }\n")]);
    let url = gw.url("/function/fn/pid");
    let barrier = Arc::new(std::sync::Barrier::new(50));
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            thread::spawn(move || {
                let c = client();
                barrier.wait();
                c.get(url).send().unwrap().status().as_u16()
            })
        })
        .collect();
    let codes: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    assert_eq!(gw.function("fn")["coldStarts"], 1);
}

#[test]
fn scales_up_under_load_then_down_to_zero_after_idle() {
    need("python3");
    let gw = TestGateway::start(
        "",
        &[(
            "fn",
            "scale: { max: 4, concurrency: 1, limit: 1, idle: 1s }\n",
        )],
    );
    let url = gw.url("/function/fn/sleep?s=1.5");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || {
                client().get(url).send().unwrap().json::<Value>().unwrap()["pid"]
                    .as_u64()
                    .unwrap()
            })
        })
        .collect();
    gw.wait_for(
        "fn",
        "more than one replica under load",
        Duration::from_secs(10),
        |f| f["replicas"]["ready"].as_u64() >= Some(2),
    );
    let pids: std::collections::HashSet<u64> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(pids.len() >= 2, "requests spread over replicas: {pids:?}");
    let idle_connections = || -> u64 {
        let metrics = gw.metrics();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("cubeflash_upstream_idle_connections "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no idle-connection gauge: {metrics}"))
    };
    assert!(
        idle_connections() > 0,
        "connections to the replicas are pooled"
    );
    gw.wait_for(
        "fn",
        "back to zero after idle",
        Duration::from_secs(20),
        |f| f["replicas"]["desired"] == 0 && f["replicas"]["ready"] == 0,
    );
    // Regression: pooled connections to stopped replicas were never closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while idle_connections() > 0 {
        assert!(
            Instant::now() < deadline,
            "connections to stopped replicas stay in the pool"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_crashed_replica_restarts_and_serving_goes_on() {
    need("python3");
    let gw = TestGateway::start("", &[("fn", "scale: { min: 1 }\n")]);
    let pid = |r: reqwest::blocking::Response| r.json::<Value>().unwrap()["pid"].as_u64().unwrap();
    let before = pid(client().get(gw.url("/function/fn/pid")).send().unwrap());
    let crash = client().get(gw.url("/function/fn/crash")).send().unwrap();
    assert_eq!(crash.status(), 502, "the crash surfaces as a bad gateway");
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        let r = client().get(gw.url("/function/fn/pid")).send().unwrap();
        if r.status() == 200 {
            break pid(r);
        }
        assert!(Instant::now() < deadline, "no replica came back");
        thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(before, after, "a new process serves after the crash");
    assert!(
        client()
            .get(gw.url("/healthz"))
            .send()
            .unwrap()
            .status()
            .is_success(),
        "the gateway is still up"
    );
}

#[test]
fn a_crash_loop_fails_the_function_with_its_last_output() {
    need("python3");
    let root = one_function(
        "broken",
        "python",
        "",
        "raise SystemExit('broken on purpose')\n",
    );
    let gw = TestGateway::serve(root);
    let resp = client().get(gw.url("/function/broken")).send().unwrap();
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("failed to start 5 times"), "{error}");
    let log: Vec<&str> = body["log"]
        .as_array()
        .expect("the log comes as an array of lines")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        log.iter().any(|l| l.contains("broken on purpose")),
        "{log:?}"
    );
    assert_eq!(body["function"], "broken");
    let again = client().get(gw.url("/function/broken")).send().unwrap();
    assert_eq!(again.status(), 502, "a failed function answers at once");
}

#[test]
fn not_found_too_large_timeout_and_full_queue_are_json_errors() {
    need("python3");
    let gw = TestGateway::start(
        "gateway: { maxBodySize: 1Ki, queueSize: 2 }\n",
        &[("fast", "timeout: 500ms\n")],
    );
    // A function that never becomes ready, for the cold-start timeout and the queue (added
    // without the rollout's check, which would report it failed).
    let stuck = gw.root.path().join("functions/stuck");
    std::fs::create_dir_all(&stuck).unwrap();
    std::fs::write(
        stuck.join("function.yaml"),
        "name: stuck\nruntime: exec\nhandler: sleep 60\nscale: { coldStartTimeout: 1s }\n",
    )
    .unwrap();
    let reload = client()
        .post(gw.url("/system/reload?verify=false"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(reload.status(), 200, "{}", reload.text().unwrap());

    let check = |resp: reqwest::blocking::Response, status: u16, needle: &str| {
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let v: Value = resp.json().unwrap();
        assert!(v["error"].as_str().unwrap().contains(needle), "{v}");
        v
    };
    check(
        client().get(gw.url("/function/nope")).send().unwrap(),
        404,
        "no function named \"nope\"",
    );
    check(
        client().get(gw.url("/not/routed")).send().unwrap(),
        404,
        "nothing is routed",
    );
    let v = check(
        client()
            .post(gw.url("/function/fast"))
            .body(vec![b'x'; 2048])
            .send()
            .unwrap(),
        413,
        "larger than",
    );
    assert_eq!(v["function"], "fast");
    let timed_out_at = Instant::now();
    check(
        client()
            .get(gw.url("/function/fast/sleep?s=3"))
            .send()
            .unwrap(),
        504,
        "within its timeout of 500ms",
    );

    let url = gw.url("/function/stuck");
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || {
                let r = client().get(url).send().unwrap();
                (
                    r.status().as_u16(),
                    r.headers().get("retry-after").is_some(),
                )
            })
        })
        .collect();
    let results: Vec<(u16, bool)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        results.iter().filter(|r| r.0 == 429).count(),
        1,
        "{results:?}"
    );
    assert!(
        results.contains(&(429, true)),
        "429 carries Retry-After: {results:?}"
    );
    assert_eq!(
        results.iter().filter(|r| r.0 == 504).count(),
        2,
        "{results:?}"
    );
    // The handler that timed out finishes later into a connection the gateway closed: no
    // traceback from the shim for that in the function's log.
    thread::sleep(Duration::from_millis(3500).saturating_sub(timed_out_at.elapsed()));
    let logs = gw.admin("/system/functions/fast/logs?lines=200");
    let text = logs["lines"].to_string();
    assert!(
        !text.contains("Traceback") && !text.contains("BrokenPipe"),
        "{text}"
    );
}

#[test]
fn requests_and_responses_pass_through_intact() {
    need("python3");
    let gw = TestGateway::start(
        "",
        &[(
            "fn",
            "triggers:\n  - http: { path: /api/*, methods: [POST] }\n",
        )],
    );
    let v: Value = client()
        .post(gw.url("/function/fn/a/b?x=1&y=two"))
        .header("X-Custom", "yes")
        .header("Connection", "keep-alive, x-hop")
        .header("X-Hop", "must not pass")
        .body("payload")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["query"]["y"], "two");
    assert_eq!(v["body"], "payload");
    assert_eq!(v["headers"]["x-custom"], "yes");
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");
    assert!(v["headers"]["x-cubeflash-call-id"].is_string());
    assert!(
        v["headers"].get("x-hop").is_none(),
        "headers named by Connection are hop-by-hop"
    );

    let r = client()
        .get(gw.url("/function/fn/status?code=418"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 418);
    assert_eq!(r.headers()["x-reply"], "custom");
    assert_eq!(r.text().unwrap(), "status body");

    let routed: Value = client()
        .post(gw.url("/api/thing"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        routed["path"], "/api/thing",
        "a trigger path is forwarded whole"
    );
    let wrong = client().get(gw.url("/api/thing")).send().unwrap();
    assert_eq!(wrong.status(), 405, "GET is not a method of that trigger");
    assert_eq!(wrong.headers()["allow"], "POST");
}

#[test]
fn the_admin_api_needs_the_token() {
    need("python3");
    let gw = TestGateway::start("", &[("fn", "baseline: { replicas: 1 }\n")]);
    let no = client().get(gw.url("/system/functions")).send().unwrap();
    assert_eq!(no.status(), 401);
    let wrong = client()
        .get(gw.url("/system/functions"))
        .bearer_auth("nope")
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let f = gw.wait_for("fn", "baseline ready", Duration::from_secs(10), |f| {
        f["baselineUrl"].is_string()
    });
    let baseline = client()
        .get(format!("{}/pid", f["baselineUrl"].as_str().unwrap()))
        .send()
        .unwrap();
    assert_eq!(
        baseline.status(),
        200,
        "the baseline answers on its own port"
    );
    let scaled: Value = client()
        .post(gw.url("/system/functions/fn/scale"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"replicas": 2}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(scaled["replicas"]["desired"], 2);
    let logs: Value = gw.admin("/system/functions/fn/logs?lines=5");
    assert!(logs["lines"].is_array());
    let deleted = client()
        .delete(gw.url("/system/functions/fn"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(
        client()
            .get(gw.url("/function/fn"))
            .send()
            .unwrap()
            .status(),
        404
    );
}

#[test]
fn reload_adds_removes_and_rolls_changed_functions() {
    need("python3");
    let gw = TestGateway::start(
        "",
        &[
            ("keep", "scale: { min: 1 }\n"),
            ("change", "scale: { min: 1 }\n"),
            ("drop", ""),
        ],
    );
    let version = |name: &str| {
        client()
            .get(gw.url(&format!("/function/{name}/pid")))
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap()
    };
    let keep_pid = version("keep")["pid"].clone();
    assert_eq!(version("change")["version"], "v1");
    let root = gw.root.path();
    std::fs::remove_dir_all(root.join("functions/drop")).unwrap();
    let handler = std::fs::read_to_string(root.join("functions/change/handler.py")).unwrap();
    std::fs::write(
        root.join("functions/change/handler.py"),
        handler.replace("VERSION = \"v1\"", "VERSION = \"v2\""),
    )
    .unwrap();
    copy_function(root, "keep", "added");
    let summary: Value = client()
        .post(gw.url("/system/reload"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(summary["added"], serde_json::json!(["added"]));
    assert_eq!(summary["changed"], serde_json::json!(["change"]));
    assert_eq!(summary["removed"], serde_json::json!(["drop"]));
    assert_eq!(version("change")["version"], "v2");
    assert_eq!(
        version("keep")["pid"],
        keep_pid,
        "an unchanged function keeps its replicas"
    );
    assert_eq!(
        client()
            .get(gw.url("/function/drop"))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        client()
            .get(gw.url("/function/added/pid"))
            .send()
            .unwrap()
            .status(),
        200
    );
}

fn copy_function(root: &Path, from: &str, to: &str) {
    let dir = root.join("functions").join(to);
    std::fs::create_dir_all(&dir).unwrap();
    let yaml =
        std::fs::read_to_string(root.join("functions").join(from).join("function.yaml")).unwrap();
    std::fs::write(
        dir.join("function.yaml"),
        yaml.replace(&format!("name: {from}"), &format!("name: {to}")),
    )
    .unwrap();
    std::fs::copy(
        root.join("functions").join(from).join("handler.py"),
        dir.join("handler.py"),
    )
    .unwrap();
}

#[test]
fn sigterm_stops_the_gateway_and_leaves_no_process_behind() {
    need("python3");
    let root = temp_tree(&[
        ("cubeflash.yaml", "namespace: test\n"),
        ("functions/a/function.yaml", "name: a\nruntime: python\nhandler: handler.py\nscale: { min: 2 }\nbaseline: { replicas: 1 }\n"),
        ("functions/b/function.yaml", "name: b\nruntime: exec\nhandler: sh -c 'sleep 300 & exec python3 -m http.server $PORT'\n"),
    ]);
    std::fs::copy(
        repo_root().join("tests/fixtures/gateway/handler.py"),
        root.path().join("functions/a/handler.py"),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cubeflash"))
        .args(["up", "--port", "0"])
        .current_dir(root.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    let url = first.rsplit(' ').next().unwrap().to_string();
    assert_eq!(
        client()
            .get(format!("{url}/function/a/pid"))
            .send()
            .unwrap()
            .status(),
        200
    );
    // http.server has no /_/ready: b never becomes ready, but its processes run.
    thread::sleep(Duration::from_millis(500));
    assert!(
        processes_under(root.path()).len() >= 4,
        "{:?}",
        processes_under(root.path())
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the gateway did not stop on SIGTERM"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(child.wait().unwrap().success());
    assert_no_process_under(root.path());
}

#[test]
fn deploy_starts_the_platform_then_reloads_it_and_down_stops_it() {
    need("python3");
    let p = Platform::new(one_function(
        "greet",
        "python",
        "",
        "def handle(req):\n    return 'v1'\n",
    ));
    let run = |args: &[&str]| p.run(args);

    let (code, out, err) = run(&["deploy"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("started the local platform at http://127.0.0.1:"),
        "{out}"
    );
    assert!(out.contains("/function/greet"), "{out}");
    let (code, out, _) = run(&["invoke", "greet"]);
    assert_eq!((code, out.as_str()), (Some(0), "v1\n"));

    std::fs::write(
        p.path().join("functions/greet/handler.py"),
        "def handle(req):\n    return 'v2'\n",
    )
    .unwrap();
    let (code, out, err) = run(&["deploy"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("rolled the repo out on the local platform")
            && out
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["changed", "greet"]),
        "{out}"
    );
    let (_, out, _) = run(&["invoke", "greet"]);
    assert_eq!(out, "v2\n");
    let (code, out, _) = run(&["ls"]);
    assert_eq!(code, Some(0));
    assert!(
        out.lines()
            .any(|l| l.starts_with("greet") && l.contains("python")),
        "{out}"
    );
    let (code, _, err) = run(&["invoke", "missing"]);
    assert_eq!(code, Some(1), "a 404 is a failed invocation: {err}");
    let (code, out, _) = run(&["logs", "greet", "-n", "5"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("[greet#"), "{out}");

    let (code, out, _) = run(&["down"]);
    assert_eq!((code, out.trim()), (Some(0), "stopped the local platform"));
    assert_no_process_under(p.path());
    let (code, _, err) = run(&["invoke", "greet"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot reach the gateway"), "{err}");
}

/// Schedule triggers fire on the local platform (UTC, once per match). Waits for the next
/// minute boundary, so it takes up to a minute.
#[test]
fn schedule_triggers_fire_on_the_local_platform() {
    need("python3");
    let root = one_function("tick", "python", "triggers:\n  - schedule: { cron: \"* * * * *\", body: tick-body }\n", "def handle(req):\n    print('got', req.text, req.headers.get('x-cubeflash-trigger'))\n    return 'ok'\n");
    let gw = TestGateway::serve(root);
    let deadline = Instant::now() + Duration::from_secs(75);
    loop {
        let logs = gw.admin("/system/functions/tick/logs?lines=50");
        let lines: Vec<&str> = logs["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if lines.iter().any(|l| l.contains("got tick-body schedule")) {
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains("schedule 1 (* * * * *) fired: 200 OK")),
                "{lines:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the schedule never fired: {lines:?}"
        );
        thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_baseline_answers_through_the_gateway_without_waking_the_function() {
    need("python3");
    let gw = TestGateway::start(
        "",
        &[
            (
                "fn",
                "scale: {min: 0, max: 2, idle: 30s}\nbaseline: {replicas: 1}\n",
            ),
            ("plain", ""),
        ],
    );
    let info = gw.wait_for("fn", "a ready baseline", Duration::from_secs(30), |f| {
        f["baselineReplicas"]["ready"] == 1
    });
    let baseline_pid = info["baselinePids"][0]
        .as_u64()
        .expect("a local baseline has a pid");
    for _ in 0..20 {
        let r = client().get(gw.url("/baseline/fn/pid")).send().unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().unwrap();
        assert_eq!(
            body["pid"].as_u64(),
            Some(baseline_pid),
            "served by the baseline"
        );
    }
    // Not the function's traffic: the serverless side stays at zero, no cold start.
    thread::sleep(Duration::from_millis(300));
    let f = gw.function("fn");
    assert_eq!(f["replicas"]["desired"], 0, "{f}");
    assert_eq!(f["coldStarts"], 0, "{f}");
    let none = client().get(gw.url("/baseline/plain/pid")).send().unwrap();
    assert_eq!(none.status(), 404);
    let why: Value = none.json().unwrap();
    assert!(
        why["error"].as_str().unwrap().contains("has no baseline"),
        "{why}"
    );
    let typo = client().get(gw.url("/baseline/fm/pid")).send().unwrap();
    assert_eq!(typo.status(), 404);
    assert!(typo.text().unwrap().contains("did you mean \\\"fn\\\""));
}
