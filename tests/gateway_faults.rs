//! The local gateway under faults and hostile clients: clients that give up, stall their
//! bodies, hold connections or flood them; replicas that are killed, stopped or crash;
//! function code that reaches for the control plane. Real processes on loopback only, with
//! bounded request counts.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::thread;
use std::time::{Duration, Instant};

use common::gateway::{client, one_function, TestGateway, UpProcess, TOKEN};
use common::{need, repo_root, temp_tree};
use serde_json::Value;

fn handler() -> String {
    std::fs::read_to_string(repo_root().join("tests/fixtures/gateway/handler.py")).unwrap()
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// Sends `head` on a new connection and returns the connection.
fn raw(url: &str, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr(url)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// Reads until the peer closes or `limit` passes; returns what came.
fn read_all(s: &mut TcpStream, limit: Duration) -> String {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Regression: a client that gave up mid-request leaked the function's in-flight count for
/// good (released through a closure that never ran when hyper dropped the future): the
/// function never went back to zero, `scale.limit` answered 504 forever, and SIGTERM waited
/// out the grace period.
#[test]
fn clients_that_give_up_leave_in_flight_at_zero_and_the_function_goes_back_to_zero() {
    need("python3");
    let mut gw = TestGateway::start(
        "",
        &[("slow", "scale: { limit: 1, concurrency: 1, idle: 1s }\n")],
    );
    let impatient = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    // Warm it first, so the give-ups happen while requests are with a replica.
    assert_eq!(
        client()
            .get(gw.url("/function/slow/pid"))
            .send()
            .unwrap()
            .status(),
        200
    );
    for _ in 0..10 {
        assert!(impatient
            .get(gw.url("/function/slow/sleep?s=2"))
            .send()
            .is_err());
    }
    let f = gw.wait_for(
        "slow",
        "in flight back to 0",
        Duration::from_secs(10),
        |f| f["inflight"] == 0 && f["queued"] == 0,
    );
    assert_eq!(f["inflight"], 0);
    // With scale.limit 1, a leaked slot would make this wait and 504.
    let ok = client().get(gw.url("/function/slow/pid")).send().unwrap();
    assert_eq!(ok.status(), 200, "{}", ok.text().unwrap());
    gw.wait_for(
        "slow",
        "back to zero after idle",
        Duration::from_secs(15),
        |f| f["replicas"]["desired"] == 0 && f["replicas"]["ready"] == 0,
    );
    let started = Instant::now();
    gw.stop();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown waited {:?} for requests that no longer exist",
        started.elapsed()
    );
}

#[test]
fn a_stalled_body_gets_408_and_its_connection_closes() {
    need("python3");
    let gw = TestGateway::start("gateway: { bodyTimeout: 1s }\n", &[("fn", "")]);
    let mut s = raw(
        &gw.url,
        "POST /function/fn/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b",
    );
    let started = Instant::now();
    let answer = read_all(&mut s, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("bodyTimeout"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // The replica was never tied up by it: nothing in flight.
    assert_eq!(gw.function("fn")["inflight"], 0);
    // A body that stalls after more than the gateway reads ahead (it is streaming to the
    // replica by then) gets the same answer.
    let mut s = raw(
        &gw.url,
        "POST /function/fn/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
    );
    s.write_all(&[b'y'; 20_000]).unwrap();
    let answer = read_all(&mut s, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[test]
fn a_413_can_be_read_by_a_client_that_writes_its_whole_body_first() {
    need("python3");
    let gw = TestGateway::start("gateway: { maxBodySize: 1Ki }\n", &[("fn", "")]);
    let body = vec![b'x'; 200_000];
    let mut s = TcpStream::connect(addr(&gw.url)).unwrap();
    s.write_all(
        format!(
            "POST /function/fn HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(&body).unwrap();
    let answer = read_all(&mut s, Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("maxBodySize"), "{answer}");
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    need("python3");
    let gw = TestGateway::start("gateway: { idleTimeout: 1s }\n", &[("fn", "")]);
    let mut s = raw(&gw.url, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 1024];
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(s.read(&mut buf).unwrap() > 0, "the first answer came");
    let started = Instant::now();
    let rest = read_all(&mut s, Duration::from_secs(5));
    assert!(rest.is_empty(), "{rest}");
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(800) && idle < Duration::from_secs(4),
        "closed after {idle:?}"
    );
}

#[test]
fn past_max_connections_healthz_still_answers_and_requests_get_503() {
    need("python3");
    let gw = TestGateway::start("gateway: { maxConnections: 20 }\n", &[("fn", "")]);
    // 20 connections that send nothing hold every place.
    let held: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(addr(&gw.url)).unwrap())
        .collect();
    thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let health = client().get(gw.url("/healthz")).send().unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let busy = client().get(gw.url("/function/fn/pid")).send().unwrap();
    assert_eq!(busy.status(), 503);
    assert!(busy.text().unwrap().contains("maxConnections"));
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = client().get(gw.url("/function/fn/pid")).send().unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "places were not given back: {}",
            r.status()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn client_sent_cubeflash_and_forwarded_headers_do_not_reach_the_function() {
    need("python3");
    let gw = TestGateway::start("", &[("fn", "")]);
    let v: Value = client()
        .get(gw.url("/function/fn/echo"))
        .header("X-Cubeflash-Trigger", "schedule")
        .header("X-Cubeflash-Call-Id", "forged")
        .header("X-Forwarded-For", "10.9.8.7")
        .header("X-Forwarded-Proto", "https")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let h = &v["headers"];
    assert!(h.get("x-cubeflash-trigger").is_none(), "{h}");
    assert_ne!(h["x-cubeflash-call-id"], "forged");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
}

#[test]
fn gets_are_retried_on_another_replica_while_replicas_are_killed() {
    need("python3");
    let gw = TestGateway::start("", &[("fn", "scale: { min: 3, max: 3 }\n")]);
    gw.wait_for("fn", "3 ready", Duration::from_secs(20), |f| {
        f["replicas"]["ready"] == 3
    });
    let url = gw.url("/function/fn/pid");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (stop, url) = (stop.clone(), url.clone());
        thread::spawn(move || {
            let mut kills = 0;
            let deadline = Instant::now() + Duration::from_secs(20);
            while kills < 6 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(250));
                let Ok(r) = client().get(&url).send() else {
                    continue;
                };
                let Ok(v) = r.json::<Value>() else { continue };
                if let Some(pid) = v["pid"].as_i64() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    kills += 1;
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            kills
        })
    };
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            thread::spawn(move || {
                let c = client();
                let mut failed = Vec::new();
                let mut sent = 0;
                // Until the killer is done, and at most 3,000 requests per worker.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 3000 {
                    sent += 1;
                    match c.get(&url).send() {
                        Ok(r) if r.status() == 200 => {}
                        Ok(r) => {
                            failed.push(format!("{}: {}", r.status(), r.text().unwrap_or_default()))
                        }
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (sent, failed)
            })
        })
        .collect();
    let results: Vec<(usize, Vec<String>)> =
        workers.into_iter().map(|w| w.join().unwrap()).collect();
    let kills = killer.join().unwrap();
    let sent: usize = results.iter().map(|r| r.0).sum();
    let failed: Vec<&String> = results.iter().flat_map(|r| &r.1).collect();
    assert!(kills >= 5, "only {kills} replicas were killed");
    assert!(
        failed.is_empty(),
        "{} of {sent} GETs failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let f = gw.wait_for("fn", "replicas replaced", Duration::from_secs(20), |f| {
        f["replicas"]["ready"] == 3
    });
    assert_eq!(
        f["state"], "ready",
        "killed replicas are replaced, not a crash loop: {f}"
    );
}

#[test]
fn a_sigstopped_replica_is_taken_out_of_rotation_and_replaced() {
    need("python3");
    let gw = TestGateway::start("", &[("fn", "timeout: 300ms\nscale: { min: 2, max: 2 }\n")]);
    gw.wait_for("fn", "2 ready", Duration::from_secs(20), |f| {
        f["replicas"]["ready"] == 2
    });
    let pid: Value = client()
        .get(gw.url("/function/fn/pid"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let stopped = nix::unistd::Pid::from_raw(pid["pid"].as_i64().unwrap() as i32);
    nix::sys::signal::kill(stopped, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let mut timeouts = 0;
    for _ in 0..30 {
        let r = client().get(gw.url("/function/fn/pid")).send().unwrap();
        if r.status() == 504 {
            timeouts += 1;
        }
    }
    let _ = nix::sys::signal::kill(stopped, nix::sys::signal::Signal::SIGCONT);
    assert!(
        timeouts <= 3,
        "{timeouts} of 30 requests went to the stopped replica"
    );
    let r = client().get(gw.url("/function/fn/pid")).send().unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn a_crash_loop_is_cleared_at_once_by_scale_and_a_killed_replica_is_not_one() {
    need("python3");
    let flag = tempfile::NamedTempFile::new().unwrap();
    let flag_path = flag.path().to_str().unwrap().to_string();
    let gw = TestGateway::start(
        "",
        &[("fn", &format!("env: {{ FAIL_IF_EXISTS: {flag_path} }}\n"))],
    );
    std::fs::set_permissions(
        flag.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let resp = client().get(gw.url("/function/fn/pid")).send().unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(gw.function("fn")["state"], "failed");
    // Fixed (the flag is gone): `cubeflash scale` clears the failed state at once.
    drop(flag);
    let scaled = client()
        .post(gw.url("/system/functions/fn/scale"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"replicas": 1}))
        .send()
        .unwrap();
    assert_eq!(scaled.status(), 200);
    let f = gw.wait_for("fn", "serving again", Duration::from_secs(10), |f| {
        f["state"] == "ready"
    });
    assert!(f["failed"].is_null(), "{f}");
    // A replica that served and is killed, five times over, is replaced each time.
    for _ in 0..5 {
        let v: Value = client()
            .get(gw.url("/function/fn/pid"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(v["pid"].as_i64().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        gw.wait_for("fn", "replaced", Duration::from_secs(10), |f| {
            f["replicas"]["ready"] == 1 && f["state"] == "ready"
        });
    }
    let r = client().get(gw.url("/function/fn/pid")).send().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
}

#[test]
fn replicas_start_in_a_clean_environment_and_cannot_read_the_token() {
    need("python3");
    let root = one_function("fn", "python", "env: { MINE: yes }\n", &handler());
    let up = UpProcess::start(
        root.path(),
        &[
            ("CUBEFLASH_ADMIN_TOKEN", "sekrit-admin-token"),
            ("GATEWAY_ONLY", "x"),
        ],
    );
    let token_file = root.path().join(".cubeflash/read-token");
    let v: Value = client()
        .get(format!(
            "{}/function/fn/env?read={}",
            up.url,
            token_file.display()
        ))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let env = v["env"].as_object().unwrap();
    for absent in [
        "CUBEFLASH_ADMIN_TOKEN",
        "GATEWAY_ONLY",
        "CARGO",
        "RUST_BACKTRACE",
    ] {
        assert!(
            !env.contains_key(absent),
            "{absent} reached the replica: {env:?}"
        );
    }
    for present in [
        "PATH",
        "HOME",
        "PORT",
        "CUBEFLASH_FUNCTION",
        "CUBEFLASH_HANDLER",
    ] {
        assert!(env.contains_key(present), "{present} is missing: {env:?}");
    }
    assert_eq!(env["MINE"], "yes");
    if nix::unistd::geteuid().is_root() {
        assert_ne!(
            v["uid"], 0,
            "replicas of a root gateway run as an unprivileged user"
        );
        assert_eq!(
            v["readable"],
            false,
            "the replica read {}",
            token_file.display()
        );
    }
    // The token is in no log and nothing the gateway printed.
    drop(up);
    let mut logs = String::new();
    for entry in walk(&root.path().join(".cubeflash")) {
        if entry.extension().is_some_and(|e| e == "log") {
            logs.push_str(&std::fs::read_to_string(&entry).unwrap_or_default());
        }
    }
    assert!(!logs.contains("sekrit-admin-token"));
    let admin = std::fs::metadata(root.path().join(".cubeflash/read-token")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&admin.permissions()) & 0o777,
        0o600
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_sigkilled_gateway_leaves_no_replica_behind() {
    need("python3");
    need("node");
    let root = temp_tree(&[
        ("cubeflash.yaml", "namespace: test\n"),
        ("functions/py/function.yaml", "name: py\nruntime: python\nhandler: handler.py\nscale: { min: 2 }\nbaseline: { replicas: 1 }\n"),
        ("functions/py/handler.py", "def handle(req):\n    return 'py'\n"),
        ("functions/js/function.yaml", "name: js\nruntime: node\nhandler: handler.js\nscale: { min: 1 }\n"),
        ("functions/js/handler.js", "exports.handle = async () => 'js';\n"),
        ("functions/ex/function.yaml", "name: ex\nruntime: exec\nhandler: sh -c 'sleep 300 & exec sleep 301'\nscale: { min: 1 }\n"),
    ]);
    let mut up = UpProcess::start(root.path(), &[]);
    for f in ["py", "js"] {
        assert_eq!(
            client()
                .get(format!("{}/function/{f}", up.url))
                .send()
                .unwrap()
                .status(),
            200
        );
    }
    thread::sleep(Duration::from_millis(500));
    let before = common::gateway::processes_under(root.path());
    assert!(before.len() >= 5, "{before:?}");
    nix::sys::signal::kill(up.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = up.child.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = common::gateway::processes_under(root.path());
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left running after SIGKILL: {left:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn up_stops_replicas_an_earlier_gateway_of_the_repo_left_running() {
    need("python3");
    let root = one_function("fn", "python", "", &handler());
    // What a gateway killed between spawning a replica and its lifeline taking hold would
    // leave: a process group of its own, recorded under .cubeflash/replicas/.
    let orphan = std::process::Command::new("sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = orphan.id();
    let start = stat_fields(pid)[19].clone();
    let records = root.path().join(".cubeflash/replicas");
    std::fs::create_dir_all(&records).unwrap();
    std::fs::write(records.join(pid.to_string()), format!("{start}\n")).unwrap();
    // A record whose pid now belongs to another process is left alone.
    let bystander = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    std::fs::write(records.join(bystander.id().to_string()), "1\n").unwrap();
    let up = UpProcess::start(root.path(), &[]);
    let printed = up.stdout.lock().unwrap().join("\n");
    assert!(
        printed.contains("stopped 1 replica process group"),
        "{printed}"
    );
    let mut orphan = orphan;
    let status = orphan.wait().unwrap();
    assert!(!status.success(), "the orphan was killed");
    assert_alive_then_stop(bystander, "an unrelated process was killed");
}

#[test]
fn down_never_signals_a_pid_that_is_not_this_repos_gateway() {
    let root = one_function("fn", "python", "", "def handle(req):\n    return 1\n");
    let foreign = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    std::fs::create_dir_all(root.path().join(".cubeflash")).unwrap();
    std::fs::write(
        root.path().join(".cubeflash/gateway.pid"),
        format!("{}\n", foreign.id()),
    )
    .unwrap();
    let out = common::cubeflash(root.path(), &["down"]);
    assert!(out.status.success());
    assert!(common::text(&out.stdout).contains("no local platform was running"));
    thread::sleep(Duration::from_millis(100));
    assert_alive_then_stop(foreign, "down killed a process it did not start");
}

#[test]
fn the_cli_refuses_a_gateway_that_serves_another_repo() {
    need("python3");
    let a = one_function(
        "same",
        "python",
        "",
        "def handle(req):\n    return 'from a'\n",
    );
    let up = UpProcess::start(a.path(), &[]);
    let port = up.url.rsplit(':').next().unwrap().to_string();
    let b = temp_tree(&[
        (
            "cubeflash.yaml",
            &format!("namespace: test\ngateway: {{ port: {port} }}\n"),
        ),
        (
            "functions/same/function.yaml",
            "name: same\nruntime: python\nhandler: handler.py\n",
        ),
        (
            "functions/same/handler.py",
            "def handle(req):\n    return 'from b'\n",
        ),
    ]);
    for args in [&["invoke", "same"][..], &["ls"][..]] {
        let out = common::cubeflash(b.path(), args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            common::text(&out.stdout)
        );
        let err = common::text(&out.stderr);
        assert!(err.contains("serves another repo"), "{err}");
    }
    let out = common::cubeflash(a.path(), &["invoke", "same"]);
    assert_eq!(common::text(&out.stdout), "from a\n");
}

#[test]
fn deploy_reports_at_once_a_background_gateway_that_could_not_start() {
    let root = one_function("fn", "python", "", "def handle(req):\n    return 1\n");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    std::fs::create_dir_all(root.path().join(".cubeflash")).unwrap();
    std::fs::write(
        root.path().join(".cubeflash/gateway.log"),
        "an old run's line\n",
    )
    .unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cubeflash"))
        .arg("deploy")
        .current_dir(root.path())
        .env("CUBEFLASH_PORT", &port)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = common::text(&out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.contains("exited") && err.contains("failed to listen"),
        "{err}"
    );
    assert!(!err.contains("an old run's line"), "{err}");
    assert!(
        !root.path().join(".cubeflash/gateway.pid").exists(),
        "a stale pidfile was left"
    );
}

/// CPU time (user + system, in clock ticks) a process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let fields = stat_fields(pid);
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The fields of /proc/PID/stat after the command name (field 3 onwards): the name is in
/// parentheses and may hold spaces.
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Fails unless `child` still runs (nothing the test drove may have killed it), then stops it.
fn assert_alive_then_stop(mut child: std::process::Child, what: &str) {
    assert!(child.try_wait().unwrap().is_none(), "{what}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn out_of_file_descriptors_the_accept_loop_backs_off_instead_of_spinning() {
    let root = temp_tree(&[
        ("cubeflash.yaml", "namespace: test\n"),
        (
            "functions/ex/function.yaml",
            "name: ex\nruntime: exec\nhandler: sleep 300\n",
        ),
    ]);
    let bin = env!("CARGO_BIN_EXE_cubeflash");
    let mut child = std::process::Command::new("sh")
        .args(["-c", &format!("ulimit -n 48 && exec {bin} up --port 0")])
        .current_dir(root.path())
        .env("CUBEFLASH_WORKERS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let url = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("cubeflash gateway listening on ")
                .map(str::to_string)
        })
        .expect("the gateway started");
    thread::spawn(move || lines.for_each(drop));
    // More connections than it has descriptors for; each sends nothing.
    let flood: Vec<TcpStream> = (0..80)
        .filter_map(|_| TcpStream::connect(addr(&url)).ok())
        .collect();
    thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(child.id());
    thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(child.id()) - before;
    // 2 s at 100 ticks a second: a spinning loop uses ~200; backing off, a handful.
    assert!(
        used < 40,
        "the gateway used {used} ticks of CPU in 2 s out of descriptors"
    );
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if client()
            .get(format!("{url}/healthz"))
            .send()
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway did not recover");
        thread::sleep(Duration::from_millis(100));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}
