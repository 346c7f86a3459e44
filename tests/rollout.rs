//! Deploys to a running local platform are rollouts: a new version serves only once it has
//! started, and one that does not start leaves the version before it serving, with a
//! non-zero exit and the new version's own output. Real `cubeflash deploy` processes, real
//! replicas, loopback only.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::gateway::{assert_no_process_under, client, one_function, Platform};
use common::{need, text};

/// The words of the `deploy` line that reports `name` (e.g. ["changed", "greet"]).
fn report_line<'a>(out: &'a str, name: &str) -> Option<Vec<&'a str>> {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.len() >= 2 && w[1].trim_end_matches(':') == name)
}

fn deploy_ok(p: &Platform) -> String {
    let (code, out, err) = p.run(&["deploy"]);
    assert_eq!(code, Some(0), "{out}{err}");
    out
}

#[test]
fn a_python_version_that_crashes_on_start_leaves_the_previous_one_serving() {
    need("python3");
    let p = Platform::new(one_function(
        "greet",
        "python",
        "",
        "def handle(req):\n    return 'v1'\n",
    ));
    deploy_ok(&p);
    assert_eq!(p.run(&["invoke", "greet"]).1, "v1\n");
    // Valid python that fails at import: only starting it can tell.
    p.write(
        "functions/greet/handler.py",
        "raise RuntimeError('boom: the database is not configured')\n\ndef handle(req):\n    return 'v2'\n",
    );
    let (code, out, err) = p.run(&["deploy"]);
    assert_eq!(
        code,
        Some(1),
        "a failed rollout is a failed deploy: {out}{err}"
    );
    let line = report_line(&out, "greet").unwrap_or_default();
    assert_eq!(line.first(), Some(&"failed"), "{out}");
    assert!(out.contains("the previous version keeps serving"), "{out}");
    assert!(
        out.contains("RuntimeError: boom: the database is not configured"),
        "the new version's own output, as lines: {out}"
    );
    assert!(
        out.contains("functions/greet/handler.py\", line 1"),
        "the user's file as the user knows it: {out}"
    );
    assert!(
        !out.contains("shim.py") && !out.contains("<frozen"),
        "no runtime internals: {out}"
    );
    assert!(!out.contains("\\n"), "lines, not escaped text: {out}");
    assert!(err.contains("greet did not start"), "{err}");
    // The old version still answers, warm and (after scale 0) from a cold start.
    assert_eq!(p.run(&["invoke", "greet"]).1, "v1\n");
    assert_eq!(p.run(&["scale", "greet", "0"]).0, Some(0));
    assert_eq!(p.run(&["invoke", "greet"]).1, "v1\n");
    // Fixed: the next deploy switches over.
    p.write(
        "functions/greet/handler.py",
        "def handle(req):\n    return 'v3'\n",
    );
    let out = deploy_ok(&p);
    assert_eq!(report_line(&out, "greet").unwrap()[0], "changed", "{out}");
    assert_eq!(p.run(&["invoke", "greet"]).1, "v3\n");
}

#[test]
fn a_node_version_that_throws_on_load_leaves_the_previous_one_serving() {
    need("node");
    let p = Platform::new(one_function(
        "hi",
        "node",
        "",
        "exports.handle = async () => 'v1';\n",
    ));
    deploy_ok(&p);
    assert_eq!(p.run(&["invoke", "hi"]).1, "v1\n");
    p.write(
        "functions/hi/handler.js",
        "throw new Error('boom at load');\nexports.handle = async () => 'v2';\n",
    );
    let (code, out, _) = p.run(&["deploy"]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(report_line(&out, "hi").unwrap()[0], "failed", "{out}");
    assert!(out.contains("Error: boom at load"), "{out}");
    assert!(
        !out.contains("node:internal") && !out.contains("shim.js"),
        "{out}"
    );
    assert_eq!(p.run(&["invoke", "hi"]).1, "v1\n");
}

#[test]
fn a_function_at_zero_is_started_once_before_it_is_switched() {
    need("python3");
    let p = Platform::new(one_function(
        "lazy",
        "python",
        "",
        "def handle(req):\n    return 'v1'\n",
    ));
    deploy_ok(&p);
    // Never called: at zero. A broken new version is caught by starting it once.
    p.write(
        "functions/lazy/handler.py",
        "import sys\nsys.exit(3)\n\ndef handle(req):\n    return 'v2'\n",
    );
    let (code, out, _) = p.run(&["deploy"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("exit status: 3"), "{out}");
    assert_eq!(p.run(&["invoke", "lazy"]).1, "v1\n");
    // A good version is started once, then stopped: still at zero, no cold start counted.
    p.write(
        "functions/lazy/handler.py",
        "def handle(req):\n    return 'v2'\n",
    );
    p.run(&["scale", "lazy", "0"]);
    let out = deploy_ok(&p);
    assert_eq!(report_line(&out, "lazy").unwrap()[0], "changed", "{out}");
    let info: serde_json::Value = serde_json::from_str(&p.run(&["describe", "lazy"]).1).unwrap();
    assert_eq!(info["replicas"]["desired"], 0, "{info}");
    // --no-verify switches without starting it: the broken version is then what serves.
    p.write(
        "functions/lazy/handler.py",
        "import sys\nsys.exit(4)\n\ndef handle(req):\n    return 'v3'\n",
    );
    let (code, out, err) = p.run(&["deploy", "--no-verify"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(report_line(&out, "lazy").unwrap()[0], "changed", "{out}");
    let (code, _, _) = p.run(&["invoke", "lazy"]);
    assert_eq!(code, Some(1));
}

#[test]
fn a_rollout_under_load_loses_no_request() {
    need("python3");
    let p = Platform::new(one_function(
        "busy",
        "python",
        "scale: { min: 1, max: 2 }\n",
        "import time\n\ndef handle(req):\n    time.sleep(0.01)\n    return 'v1'\n",
    ));
    deploy_ok(&p);
    let url = format!("{}/function/busy", p.url());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            thread::spawn(move || {
                let http = client();
                let mut answers = Vec::new();
                // Bounded: at most 3,000 requests per client.
                while !stop.load(Ordering::Relaxed) && answers.len() < 3000 {
                    let r = http.post(&url).body("x").send().unwrap();
                    let status = r.status().as_u16();
                    answers.push((status, r.text().unwrap()));
                }
                answers
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    p.write(
        "functions/busy/handler.py",
        "import time\n\ndef handle(req):\n    time.sleep(0.01)\n    return 'v2'\n",
    );
    let out = deploy_ok(&p);
    assert_eq!(report_line(&out, "busy").unwrap()[0], "changed", "{out}");
    // Until the old replica has drained and the new one serves for a while.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let per_client: Vec<Vec<(u16, String)>> =
        clients.into_iter().map(|c| c.join().unwrap()).collect();
    // Once a client got v2, it never got v1 again: the switch is one moment.
    for answers in &per_client {
        let first_v2 = answers.iter().position(|(_, b)| b == "v2");
        if let Some(i) = first_v2 {
            assert!(answers[i..].iter().all(|(_, b)| b != "v1"), "v1 after v2");
        }
    }
    let answers: Vec<(u16, String)> = per_client.into_iter().flatten().collect();
    let failed: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(5)]
    );
    let v1 = answers.iter().filter(|(_, b)| b == "v1").count();
    let v2 = answers.iter().filter(|(_, b)| b == "v2").count();
    assert!(v1 > 0 && v2 > 0, "v1 {v1}, v2 {v2}");
    assert_eq!(v1 + v2, answers.len());
    let (code, _, _) = p.run(&["down"]);
    assert_eq!(code, Some(0));
    assert_no_process_under(p.path());
}

#[test]
fn the_cli_says_what_is_true() {
    need("python3");
    let p = Platform::new(common::temp_tree(&[
        ("cubeflash.yaml", "namespace: test\n"),
        (
            "functions/lazy/function.yaml",
            "name: lazy\nruntime: python\nhandler: handler.py\n",
        ),
        (
            "functions/lazy/handler.py",
            "def handle(req):\n    return 'ok'\n",
        ),
        (
            "functions/warm/function.yaml",
            "name: warm\nruntime: python\nhandler: handler.py\nscale: { min: 1, max: 3 }\n",
        ),
        (
            "functions/warm/handler.py",
            "def handle(req):\n    return 'ok'\n",
        ),
        (
            "functions/broken/function.yaml",
            "name: broken\nruntime: python\nhandler: handler.py\nscale: { min: 1 }\n",
        ),
        (
            "functions/broken/handler.py",
            "raise SystemExit('broken: no config')\n\ndef handle(req):\n    return 'never'\n",
        ),
    ]));
    let (code, out, _) = p.run(&["deploy"]);
    assert_eq!(
        code,
        Some(1),
        "a function that crash-loops on the first deploy: {out}"
    );
    assert!(out.contains("broken: no config"), "its first output: {out}");
    // ls: a STATE per function, columns aligned.
    let (_, ls, _) = p.run(&["ls"]);
    let state = |name: &str| {
        let header = ls.lines().next().unwrap();
        let col = header.find("STATE").unwrap();
        let row = ls.lines().find(|l| l.starts_with(name)).unwrap();
        row[col..].split_whitespace().next().unwrap().to_string()
    };
    assert_eq!(state("lazy"), "idle", "{ls}");
    assert_eq!(state("warm"), "ready", "{ls}");
    assert_eq!(state("broken"), "failed", "{ls}");
    // A name that is not a function: the nearest one, from every verb.
    let (code, out, err) = p.run(&["invoke", "lazzy"]);
    assert_eq!(code, Some(1));
    assert!(out.is_empty(), "no JSON on stdout: {out}");
    assert!(err.contains("did you mean \"lazy\""), "{err}");
    let (code, _, err) = p.run(&["logs", "wram"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("no function named \"wram\"; did you mean \"warm\""),
        "{err}"
    );
    assert!(!err.contains("os error"), "{err}");
    let (code, _, err) = p.run(&["scale", "wram", "1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("did you mean \"warm\""), "{err}");
    assert!(
        !err.contains("answered 404"),
        "a CLI message, not API wording: {err}"
    );
    // A function that has not run has no output yet, and says so.
    let (code, _, err) = p.run(&["logs", "lazy"]);
    assert_eq!(code, Some(0));
    assert!(err.contains("lazy has not written any output yet"), "{err}");
    // scale beyond scale.max, said as a CLI message.
    let (code, _, err) = p.run(&["scale", "warm", "9"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("warm can run at most 3 replicas (its scale.max), not 9"),
        "{err}"
    );
    let (_, out, _) = p.run(&["scale", "warm", "1"]);
    assert!(out.starts_with("warm: scaling to 1 replica "), "{out}");
    // The crash loop's answer: the message, then the output as lines.
    let (code, out, err) = p.run(&["invoke", "broken"]);
    assert_eq!(code, Some(1));
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("  | ") && err.contains("broken: no config"),
        "{err}"
    );
    assert!(!err.contains("\\n") && !err.contains("\"log\""), "{err}");
    assert_eq!(
        err.matches("SystemExit: broken: no config").count(),
        1,
        "five failed starts, one copy of their output: {err}"
    );
}

#[test]
fn init_says_when_there_is_no_git_repository_and_makes_one_when_asked() {
    let parent = tempfile::tempdir().unwrap();
    let out = common::cubeflash(parent.path(), &["init", "plain"]);
    assert_eq!(out.status.code(), Some(0));
    let said = text(&out.stdout);
    assert!(said.contains("is not in a git repository"), "{said}");
    assert!(!parent.path().join("plain/.git").exists());
    let yaml = std::fs::read_to_string(parent.path().join("plain/cubeflash.yaml")).unwrap();
    assert!(
        !yaml.contains("https://"),
        "no address that does not exist: {yaml}"
    );
    let out = common::cubeflash(parent.path(), &["init", "tracked", "--git"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(parent.path().join("tracked/.git").is_dir());
    assert!(text(&out.stdout).contains("initialized a git repository"));
}

#[test]
fn deploy_warns_of_a_stale_generated_folder_and_renders_it_when_asked() {
    need("python3");
    let p = Platform::new(one_function(
        "g",
        "python",
        "",
        "def handle(req):\n    return 'v1'\n",
    ));
    assert_eq!(p.run(&["render"]).0, Some(0));
    let (code, _, err) = p.run(&["deploy"]);
    assert_eq!(code, Some(0));
    assert!(!err.contains("out of date"), "{err}");
    p.write(
        "functions/g/handler.py",
        "def handle(req):\n    return 'v2'\n",
    );
    let (code, _, err) = p.run(&["deploy"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: generated/ is out of date (g/configmap.yaml"),
        "{err}"
    );
    assert_eq!(
        p.run(&["render", "--check"]).0,
        Some(1),
        "a warning, not a render"
    );
    p.write(
        "functions/g/handler.py",
        "def handle(req):\n    return 'v3'\n",
    );
    let (code, out, err) = p.run(&["deploy", "--render"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("re-rendered generated/"), "{out}");
    assert_eq!(p.run(&["render", "--check"]).0, Some(0));
    assert_eq!(p.run(&["invoke", "g"]).1, "v3\n");
}

#[test]
fn a_handler_exception_is_logged_without_the_runtime_frames() {
    need("python3");
    need("node");
    let p = Platform::new(common::temp_tree(&[
        ("cubeflash.yaml", "namespace: test\n"),
        (
            "functions/py/function.yaml",
            "name: py\nruntime: python\nhandler: handler.py\n",
        ),
        (
            "functions/py/handler.py",
            "def handle(req):\n    return 1 / 0\n",
        ),
        (
            "functions/js/function.yaml",
            "name: js\nruntime: node\nhandler: handler.js\n",
        ),
        (
            "functions/js/handler.js",
            "exports.handle = async () => { throw new Error('node boom'); };\n",
        ),
    ]));
    let (code, out, err) = p.run(&["deploy"]);
    assert_eq!(code, Some(0), "{out}{err}");
    for (name, error, file) in [
        (
            "py",
            "ZeroDivisionError: division by zero",
            "functions/py/handler.py",
        ),
        ("js", "Error: node boom", "functions/js/handler.js"),
    ] {
        let (code, _, _) = p.run(&["invoke", name]);
        assert_eq!(code, Some(1));
        let (_, log, _) = p.run(&["logs", name]);
        assert!(log.contains(error), "{log}");
        assert!(
            log.contains(file),
            "the handler's own frame, as the user knows the file: {log}"
        );
        assert!(
            !log.contains("shim.py") && !log.contains("shim.js") && !log.contains("node:internal"),
            "no runtime frames: {log}"
        );
    }
}
