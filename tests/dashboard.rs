//! The dashboard at /ui and the API it reads, against a real gateway with real python
//! replicas; the browser test drives Debian's headless Chromium through chromedriver
//! (WebDriver, fantoccini) with every host but loopback unresolvable.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::browser::{click, sign_in, type_into, until, Driver};
use common::gateway::{client, TestGateway, READ_TOKEN, TOKEN};
use common::{temp_tree, text};
use serde_json::{json, Value};

const HANDLER: &str = r#"
import time

def handle(req):
    print("handling", req.path)
    if req.path == "/slow":
        time.sleep(0.2)
    print("done", req.path)
    return {"quote": "Simplicity is prerequisite for reliability.", "path": req.path}
"#;

fn repo() -> tempfile::TempDir {
    temp_tree(&[
        ("cubeflash.yaml", "namespace: dash\n"),
        (
            "functions/quote/function.yaml",
            "name: quote\nruntime: python\nhandler: handler.py\nscale:\n  idle: 1h\n",
        ),
        ("functions/quote/handler.py", HANDLER),
        (
            "bench/results/20261201T000000Z/index.html",
            "<!doctype html><html><head><style>h1{color:teal}</style></head><body><h1>cubeflash bench 20261201T000000Z</h1><script>document.title='ran'</script></body></html>",
        ),
        (
            "bench/results/20261201T000000Z/conclusion.txt",
            "Serverless costs 2.0x latency at concurrency 1.\n",
        ),
        (
            "functions/quote/events/hello.json",
            r#"{"method": "POST", "path": "/hello", "headers": {"X-Event": "yes"}, "body": {"name": "ada"}}"#,
        ),
    ])
}

fn get(gw: &TestGateway, path: &str, token: &str) -> (u16, Value) {
    let resp = client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

#[test]
fn the_page_is_small_strict_and_needs_no_token_but_its_data_does() {
    let gw = TestGateway::serve(repo());
    let page = client().get(gw.url("/ui")).send().unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let html = page.text().unwrap();
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "no inline script or style"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from elsewhere"
    );
    let mut total = html.len();
    for asset in ["/ui/app.js", "/ui/app.css"] {
        let r = client().get(gw.url(asset)).send().unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        total += r.bytes().unwrap().len();
    }
    assert!(
        total < 100 * 1024,
        "page, script and styles are {total} bytes"
    );
    let root = client().get(gw.url("/")).send().unwrap();
    assert_eq!(
        root.url().path(),
        "/ui",
        "GET / with nothing routed there leads to the dashboard"
    );

    for path in ["/system/overview", "/system/stream", "/system/whoami"] {
        let r = client().get(gw.url(path)).send().unwrap();
        assert_eq!(r.status(), 401, "{path} without a token");
    }
    assert_eq!(get(&gw, "/system/whoami", TOKEN).1["access"], "admin");
    assert_eq!(
        get(&gw, "/system/whoami", READ_TOKEN).1["access"],
        "read-only"
    );
    let (status, overview) = get(&gw, "/system/overview", READ_TOKEN);
    assert_eq!(status, 200);
    assert_eq!(overview["functions"][0]["name"], "quote");

    // The read-only token sees everything and changes nothing.
    let refused = client()
        .post(gw.url("/system/functions"))
        .bearer_auth(READ_TOKEN)
        .json(&json!({"name": "nope", "runtime": "python"}))
        .send()
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert!(!gw.root.path().join("functions/nope").exists());
    let events = get(&gw, "/system/functions/quote/events", READ_TOKEN).1;
    assert_eq!(events[0]["name"], "hello");
    assert_eq!(events[0]["body"]["name"], "ada");
}

/// quote's log lines for a logs query (`call=ID`, `after=N`...).
fn log_lines(gw: &TestGateway, query: &str) -> Vec<String> {
    log_lines_of(gw, "quote", query)
}

fn log_lines_of(gw: &TestGateway, function: &str, query: &str) -> Vec<String> {
    let logs = get(
        gw,
        &format!("/system/functions/{function}/logs?{query}"),
        READ_TOKEN,
    )
    .1;
    serde_json::from_value(logs["lines"].clone()).unwrap()
}

/// Reads server-sent events from /system/stream until `check` accepts an overview.
/// Returns when it saw it.
fn wait_in_stream(gw: &TestGateway, limit: Duration, check: impl Fn(&Value) -> bool) -> Instant {
    let started = Instant::now();
    let mut resp = client()
        .get(gw.url("/system/stream"))
        .bearer_auth(READ_TOKEN)
        .timeout(limit + Duration::from_secs(2))
        .send()
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut buffer = String::new();
    let mut chunk = [0u8; 65536];
    loop {
        assert!(
            started.elapsed() < limit,
            "no matching overview within {limit:?}: {buffer:.2000}"
        );
        let n = resp.read(&mut chunk).unwrap();
        assert!(n > 0, "the stream ended");
        buffer.push_str(&String::from_utf8_lossy(&chunk[..n]));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                let overview: Value = serde_json::from_str(data).unwrap();
                if check(&overview) {
                    return Instant::now();
                }
            }
        }
    }
}

#[test]
fn the_stream_shows_a_scale_within_a_second_and_logs_carry_call_ids() {
    let gw = TestGateway::serve(repo());
    let replicas =
        |o: &Value, which: &str| o["functions"][0]["replicas"][which].as_u64().unwrap_or(99);
    wait_in_stream(&gw, Duration::from_secs(5), |o| replicas(o, "desired") == 0);

    let waiter = {
        let url = gw.url("");
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let r = client()
                .post(format!("{url}/system/functions/quote/scale"))
                .bearer_auth(TOKEN)
                .json(&json!({"replicas": 1}))
                .send()
                .unwrap();
            assert_eq!(r.status(), 200);
            Instant::now()
        })
    };
    // An open page sees the change within a second of the scale's answer.
    let seen = wait_in_stream(&gw, Duration::from_secs(5), |o| replicas(o, "desired") == 1);
    let scaled = waiter.join().unwrap();
    let lag = seen.saturating_duration_since(scaled);
    assert!(
        lag < Duration::from_secs(1),
        "the stream showed it {lag:?} after"
    );
    wait_in_stream(&gw, Duration::from_secs(20), |o| replicas(o, "ready") == 1);

    // Concurrent calls: each call's lines, and only those, come back for its id.
    let ids: Vec<String> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..6)
            .map(|i| {
                let url = gw.url(&format!("/function/quote/slow{i}"));
                s.spawn(move || {
                    let r = client().get(url).send().unwrap();
                    assert_eq!(r.status(), 200);
                    r.headers()["x-cubeflash-call-id"]
                        .to_str()
                        .unwrap()
                        .to_string()
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    std::thread::sleep(Duration::from_millis(300));
    for (i, id) in ids.iter().enumerate() {
        let lines = log_lines(&gw, &format!("call={id}"));
        assert_eq!(lines.len(), 2, "{id}: {lines:?}");
        assert!(
            lines
                .iter()
                .all(|l| l.contains(&format!("[call {id}]")) && l.contains(&format!("/slow{i}"))),
            "{lines:?}"
        );
    }
    // Resuming after the last line seen repeats nothing.
    let all = get(&gw, "/system/functions/quote/logs?lines=1000", READ_TOKEN).1;
    let next = all["next"].as_u64().unwrap();
    let again = get(
        &gw,
        &format!("/system/functions/quote/logs?after={next}"),
        READ_TOKEN,
    )
    .1;
    assert_eq!(again["lines"].as_array().unwrap().len(), 0, "{again}");
    client().get(gw.url("/function/quote/once")).send().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let more = log_lines(&gw, &format!("after={next}"));
    assert_eq!(more.len(), 2, "{more:?}");
    assert!(more.iter().all(|l| l.contains("/once")), "{more:?}");
    let mine = log_lines(&gw, "replica=quote%231");
    assert!(
        !mine.is_empty() && mine.iter().all(|l| l.starts_with("[quote#1] ")),
        "{mine:?}"
    );
    assert!(log_lines(&gw, "replica=quote%239").is_empty());
    let filtered = get(
        &gw,
        "/system/functions/quote/logs?q=DONE%20%2Fslow3",
        READ_TOKEN,
    )
    .1;
    assert_eq!(filtered["lines"].as_array().unwrap().len(), 1, "{filtered}");

    // The console's timing split.
    let r = client()
        .get(gw.url("/function/quote/"))
        .header("X-Cubeflash-Timing", "1")
        .send()
        .unwrap();
    let timing = r.headers()["server-timing"].to_str().unwrap();
    assert!(
        timing.contains("function;dur=") && timing.contains("gateway;dur="),
        "{timing}"
    );
    let plain = client().get(gw.url("/function/quote/")).send().unwrap();
    assert!(
        plain.headers().get("server-timing").is_none(),
        "only when asked"
    );

    // A history point within a bucket or two, counting what was answered.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let h = get(&gw, "/system/functions/quote/history", READ_TOKEN).1;
        let answered: u64 = h["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["requests"].as_u64().unwrap())
            .sum();
        if answered >= 9 {
            let p = h["points"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["requests"].as_u64() > Some(0))
                .unwrap();
            assert!(p["p50Ms"].as_f64().unwrap() > 0.0, "{p}");
            break;
        }
        assert!(Instant::now() < deadline, "no history of the 9 calls: {h}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_new_function_form_writes_what_cubeflash_new_would_or_nothing() {
    let gw = TestGateway::serve(repo());
    let post = |body: Value| {
        let r = client()
            .post(gw.url("/system/functions"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().unwrap())
    };
    let scaffold = get(&gw, "/system/scaffold?runtime=python", TOKEN).1;
    assert_eq!(scaffold["file"], "handler.py");
    let (status, made) = post(json!({"name": "scratch", "runtime": "python",
        "handler": "def handle(req):\n    return 'made in the browser'\n"}));
    assert_eq!(status, 201, "{made}");
    let files: Vec<&str> = made["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        files.contains(&"functions/scratch/function.yaml")
            && files.contains(&"functions/scratch/handler.py"),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.starts_with("generated/scratch/")),
        "{files:?}"
    );
    let answer = client().get(made["url"].as_str().unwrap()).send().unwrap();
    assert_eq!(answer.text().unwrap(), "made in the browser");
    let check = common::cubeflash(gw.root.path(), &["render", "--check"]);
    assert!(
        check.status.success(),
        "generated/ was rendered: {}",
        text(&check.stderr)
    );

    let (status, again) = post(json!({"name": "scratch", "runtime": "python"}));
    assert_eq!(status, 409, "{again}");
    let (status, bad) = post(json!({"name": "Bad_Name", "runtime": "python"}));
    assert_eq!(status, 400, "{bad}");
    assert!(
        bad["error"].as_str().unwrap().contains("try \"bad-name\""),
        "{bad}"
    );
    assert!(!gw.root.path().join("functions/Bad_Name").exists());
    // A function.yaml the scaffold writes is fine, but a repo that then does not load
    // (a clashing http path) keeps nothing.
    std::fs::write(
        gw.root.path().join("functions/quote/function.yaml"),
        "name: quote\nruntime: python\nhandler: handler.py\ntriggers:\n  - http: {path: /clash}\n  - http: {path: /clash}\n",
    )
    .unwrap();
    let (status, refused) = post(json!({"name": "second", "runtime": "node"}));
    assert_eq!(status, 422, "{refused}");
    assert!(
        !gw.root.path().join("functions/second").exists(),
        "nothing is left behind"
    );
}

#[test]
fn bench_reports_open_through_a_short_lived_link_for_that_run_only() {
    let gw = TestGateway::serve(repo());
    std::fs::write(gw.root.path().join("secret.txt"), "not a report").unwrap();
    let runs = get(&gw, "/system/bench", READ_TOKEN).1;
    assert_eq!(runs[0]["name"], "20261201T000000Z", "{runs}");
    assert_eq!(
        runs[0]["conclusion"][0],
        "Serverless costs 2.0x latency at concurrency 1."
    );
    let (status, _) = get(&gw, "/system/bench/..%2F..%2F/link", READ_TOKEN);
    assert_eq!(status, 404);
    let (status, missing) = get(&gw, "/system/bench/nope/link", READ_TOKEN);
    assert_eq!(status, 404, "{missing}");
    let link = get(&gw, "/system/bench/20261201T000000Z/link", READ_TOKEN).1;
    let url = link["url"].as_str().unwrap();
    assert!(
        url.starts_with("/ui/bench/") && url.ends_with("/index.html"),
        "{link}"
    );
    // No token needed: the link is the capability, for that run's files only.
    let report = client().get(gw.url(url)).send().unwrap();
    assert_eq!(report.status(), 200);
    let csp = report.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("sandbox") && !csp.contains("script-src"),
        "{csp}"
    );
    assert!(report
        .text()
        .unwrap()
        .contains("cubeflash bench 20261201T000000Z"));
    let ticket = url.split('/').nth(3).unwrap();
    for bad in [
        format!("/ui/bench/{ticket}/../../../secret.txt"),
        format!("/ui/bench/{ticket}/..%2F..%2F..%2Fsecret.txt"),
        format!("/ui/bench/{ticket}/missing.html"),
        "/ui/bench/guessed-ticket/index.html".to_string(),
        format!("/ui/bench/{ticket}x/index.html"),
    ] {
        let r = client().get(gw.url(&bad)).send().unwrap();
        assert_eq!(r.status(), 404, "{bad}");
    }
    let unauthenticated = client().get(gw.url("/system/bench")).send().unwrap();
    assert_eq!(unauthenticated.status(), 401);
}

#[test]
fn invoke_runs_a_test_event_from_the_repo() {
    let gw = TestGateway::serve(repo());
    let run = |args: &[&str]| {
        let out = common::cubeflash(gw.root.path(), args);
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, out, err) = run(&["invoke", "quote", "--event", "hello", "--gateway", &gw.url]);
    assert_eq!(code, Some(0), "{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["path"], "/hello", "{out}");
    let (code, _, err) = run(&["invoke", "quote", "--event", "nope", "--gateway", &gw.url]);
    assert_eq!(code, Some(2), "a usage error");
    assert!(
        err.contains("no test event \"nope\" (it has hello)"),
        "{err}"
    );
}

#[test]
fn a_browser_signs_in_invokes_at_zero_creates_deletes_and_cannot_with_a_read_token() {
    let gw = TestGateway::serve(repo());
    let driver = Driver::start();
    let shots = common::repo_root().join("target/dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = driver.session().await;
        sign_in(&c, &gw.url, TOKEN).await;
        until(&c, "the functions table", "return document.querySelector('#functions tbody tr[data-name=quote]') !== null", Duration::from_secs(10)).await;
        let cells = until(&c, "quote at zero", "const r = document.querySelector('#functions tbody tr[data-name=quote]'); return r && r.children[4].textContent === '0/0' && r.children[3].textContent", Duration::from_secs(10)).await;
        assert_eq!(cells, "at zero");

        // Invoke at zero: the answer shows the cold start; the table shows 1 replica.
        c.execute("document.querySelector('#functions tbody tr[data-name=quote]').click()", vec![]).await.unwrap();
        until(&c, "the detail panel", "return !document.getElementById('detail').hidden", Duration::from_secs(5)).await;
        c.execute("document.getElementById('invoke-form').requestSubmit()", vec![]).await.unwrap();
        let timing = until(&c, "the answer", "const t = document.getElementById('res-timing').textContent; return t.includes('cold start') && t", Duration::from_secs(20)).await;
        assert!(timing.as_str().unwrap().contains("function"), "{timing}");
        until(&c, "0 -> 1 replica", "const r = document.querySelector('#functions tbody tr[data-name=quote]'); return r && r.children[4].textContent === '1/1'", Duration::from_secs(5)).await;
        let body = c.execute("return document.getElementById('res-body').textContent", vec![]).await.unwrap();
        assert!(body.as_str().unwrap().contains("Simplicity"), "{body}");
        let logs = until(&c, "this call's log lines", "const t = document.getElementById('res-logs').textContent; return t.includes('[call ') && t", Duration::from_secs(5)).await;
        let call = c.execute("return document.getElementById('res-call').textContent", vec![]).await.unwrap();
        let logs = logs.as_str().unwrap();
        assert_eq!(logs.lines().count(), 2, "{logs}");
        assert!(logs.lines().all(|l| l.contains(call.as_str().unwrap())), "{logs}");

        // A test event from the repo.
        until(&c, "the test events", "return document.querySelectorAll('#inv-event option').length > 1", Duration::from_secs(5)).await;
        c.execute("const s = document.getElementById('inv-event'); s.value = 'hello'; s.dispatchEvent(new Event('change'))", vec![]).await.unwrap();
        click(&c, "inv-run-event").await;
        let header = c.execute("const [k, v] = document.querySelectorAll('#inv-headers input'); return [k.value, v.value]", vec![]).await.unwrap();
        assert_eq!(header, json!(["X-Event", "yes"]), "the event's headers fill the header rows");
        click(&c, "inv-curl").await;
        let curl = c.execute("return document.getElementById('curl-text').value", vec![]).await.unwrap();
        let curl = curl.as_str().unwrap();
        assert!(curl.contains("-X POST") && curl.contains("-H 'X-Event: yes'") && curl.contains("/function/quote/hello"), "{curl}");
        until(&c, "the event's answer", "return document.getElementById('res-body').textContent.includes('/hello')", Duration::from_secs(10)).await;
        // The log panel follows.
        until(&c, "the followed logs", "return document.getElementById('logs').textContent.includes('/hello')", Duration::from_secs(5)).await;
        c.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
        c.screenshot().await.map(|png| std::fs::write(shots.join("dashboard-1280.png"), png).unwrap()).unwrap();

        // Scale to zero from the page.
        click(&c, "act-zero").await;
        until(&c, "scaled to zero", "const r = document.querySelector('#functions tbody tr[data-name=quote]'); return r && r.children[4].textContent === '0/0'", Duration::from_secs(10)).await;

        // The seed's deploy button: a new function, called at its URL.
        click(&c, "tab-new").await;
        type_into(&c, "new-name", "scratch").await;
        until(&c, "the scaffold", "return document.getElementById('new-handler').value.includes('def handle')", Duration::from_secs(5)).await;
        c.execute("document.getElementById('new-form').requestSubmit()", vec![]).await.unwrap();
        let made = until(&c, "the new function", "const t = document.getElementById('new-result').textContent; return t.startsWith('Serving at') && t", Duration::from_secs(30)).await;
        assert!(made.as_str().unwrap().contains("functions/scratch/handler.py"), "{made}");
        let answer = reqwest::get(gw.url("/function/scratch/")).await.unwrap();
        assert_eq!(answer.status(), 200);

        // Delete it, typing its name.
        c.execute("document.querySelector('.tab[data-view=functions]').click()", vec![]).await.unwrap();
        until(&c, "scratch in the table", "return document.querySelector('#functions tbody tr[data-name=scratch]') !== null", Duration::from_secs(5)).await;
        c.execute("document.querySelector('#functions tbody tr[data-name=scratch]').click()", vec![]).await.unwrap();
        click(&c, "act-delete").await;
        type_into(&c, "delete-name", "scratc").await;
        let disabled = c.execute("return document.getElementById('delete-confirm').disabled", vec![]).await.unwrap();
        assert_eq!(disabled, Value::Bool(true), "a wrong name cannot confirm");
        type_into(&c, "delete-name", "scratch").await;
        click(&c, "delete-confirm").await;
        until(&c, "scratch gone", "return document.querySelector('#functions tbody tr[data-name=scratch]') === null", Duration::from_secs(10)).await;

        // A bench run's report, in a tab of its own, with its styles and without its script.
        c.execute("document.getElementById('tab-bench').click()", vec![]).await.unwrap();
        until(&c, "the bench runs", "return document.getElementById('bench-runs').textContent.includes('Serverless costs 2.0x')", Duration::from_secs(5)).await;
        let page = c.window().await.unwrap();
        c.execute("document.querySelector('#bench-runs button').click()", vec![]).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let report = loop {
            let windows = c.windows().await.unwrap();
            if let Some(w) = windows.into_iter().find(|w| *w != page) {
                break w;
            }
            assert!(Instant::now() < deadline, "no report tab");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        c.switch_to_window(report).await.unwrap();
        let heading = until(&c, "the report", "const h = document.querySelector('h1'); return h && location.pathname.startsWith('/ui/bench/') && [h.textContent, getComputedStyle(h).color, document.title]", Duration::from_secs(10)).await;
        assert_eq!(heading[0], "cubeflash bench 20261201T000000Z");
        assert_eq!(heading[1], "rgb(0, 128, 128)", "its own styles apply");
        assert_ne!(heading[2], "ran", "its script does not run");
        c.close_window().await.unwrap();
        c.switch_to_window(page).await.unwrap();
        c.execute("document.querySelector('.tab[data-view=functions]').click()", vec![]).await.unwrap();

        // Phone width.
        c.set_window_size(390, 844).await.unwrap();
        c.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.screenshot().await.map(|png| std::fs::write(shots.join("dashboard-390.png"), png).unwrap()).unwrap();

        // Every request the page made went to the gateway.
        let urls = c.execute("return performance.getEntriesByType('resource').map(e => e.name).concat([location.href])", vec![]).await.unwrap();
        for u in urls.as_array().unwrap() {
            assert!(u.as_str().unwrap().starts_with(&gw.url)
                || u.as_str().unwrap().starts_with("blob:"), "the page fetched {u}");
        }

        // The read-only token: actions disabled, and refused if sent anyway.
        click(&c, "signout").await;
        type_into(&c, "token", READ_TOKEN).await;
        c.execute("document.getElementById('login-form').requestSubmit()", vec![]).await.unwrap();
        until(&c, "read-only", "return document.getElementById('access').textContent === 'read-only'", Duration::from_secs(5)).await;
        c.execute("document.querySelector('#functions tbody tr[data-name=quote]').click()", vec![]).await.unwrap();
        let disabled = c.execute("return document.getElementById('act-delete').disabled && document.getElementById('tab-new').hidden", vec![]).await.unwrap();
        assert_eq!(disabled, Value::Bool(true));
        let status = c.execute_async(
            "const done = arguments[arguments.length - 1]; fetch('/system/functions/quote', {method: 'DELETE', headers: {Authorization: 'Bearer ' + sessionStorage.getItem('cubeflash-token')}}).then(r => done(r.status))",
            vec![],
        ).await.unwrap();
        assert_eq!(status, json!(403));
        c.close().await.unwrap();
    });
    assert!(shots.join("dashboard-1280.png").exists());
}

/// Concurrent calls to one replica, each writing before and after a pause: every line the
/// handler wrote carries its own call's id, and a call's query returns its two lines only.
fn each_line_carries_its_call(runtime: &str, source: &str) {
    let gw = TestGateway::serve(common::gateway::one_function(
        "tagged",
        runtime,
        "scale:\n  min: 1\n  max: 1\n",
        source,
    ));
    gw.wait_for("tagged", "a replica", Duration::from_secs(20), |f| {
        f["replicas"]["ready"] == 1
    });
    let ids: Vec<(usize, String)> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let url = gw.url(&format!("/function/tagged/c{i}"));
                s.spawn(move || {
                    let r = client().get(url).send().unwrap();
                    assert_eq!(r.status(), 200);
                    let id = r.headers()["x-cubeflash-call-id"]
                        .to_str()
                        .unwrap()
                        .to_string();
                    (i, id)
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    std::thread::sleep(Duration::from_millis(400));
    let logs = get(&gw, "/system/functions/tagged/logs?lines=1000", READ_TOKEN).1;
    let all: Vec<String> = serde_json::from_value(logs["lines"].clone()).unwrap();
    for (i, id) in &ids {
        let mine: Vec<&String> = all
            .iter()
            .filter(|l| l.contains(&format!("/c{i} ")))
            .collect();
        assert_eq!(mine.len(), 2, "{runtime}: /c{i}: {all:#?}");
        assert!(
            mine.iter().all(|l| l.contains(&format!("[call {id}] "))),
            "{runtime}: {mine:?}"
        );
        let asked = log_lines_of(&gw, "tagged", &format!("call={id}"));
        assert_eq!(asked.len(), 2, "{runtime}: {asked:?}");
    }
    // What the replica wrote outside a call is not tagged.
    assert!(
        all.iter()
            .any(|l| l.contains("serving") && !l.contains("[call ")),
        "{all:#?}"
    );
}

#[test]
fn python_lines_carry_their_call_under_concurrency() {
    each_line_carries_its_call(
        "python",
        "import time\n\ndef handle(req):\n    print('start', req.path, '')\n    time.sleep(0.1)\n    print('end', req.path, '')\n    return 'ok'\n",
    );
}

#[test]
fn node_lines_carry_their_call_across_awaits() {
    each_line_carries_its_call(
        "node",
        "module.exports = async (req) => {\n  console.log('start', req.path, '');\n  await new Promise((r) => setTimeout(r, 100));\n  console.error('end', req.path, '');\n  return 'ok';\n};\n",
    );
}
