//! `cubeflash bench` as a user runs it: the real binary against real servers on loopback
//! (a test server with a known delay, one that freezes once, one that answers errors), and
//! its outputs read back (summary.csv, .hgrm checked line by line against HdrHistogram's own
//! Java HistogramLogProcessor, the interval log decoded to the recorded counts).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cubeflash, text, TestServer};

/// Runs `cubeflash bench` with `args` into a fresh results folder; returns the run folder.
fn bench(args: &[&str]) -> (tempfile::TempDir, PathBuf, String) {
    let out = tempfile::tempdir().unwrap();
    let results = out.path().join("results");
    let mut all = vec!["bench", "--out", results.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = cubeflash(out.path(), &all);
    let stdout = text(&o.stdout);
    assert!(
        o.status.success(),
        "bench failed: {}\n{stdout}",
        text(&o.stderr)
    );
    let run = std::fs::canonicalize(results.join("latest")).unwrap();
    (out, run, stdout)
}

type Row = common::SummaryRow;

fn summary(run: &Path) -> Vec<Row> {
    common::summary_csv(run)
}

fn row<'a>(rows: &'a [Row], mode: &str) -> &'a Row {
    rows.iter()
        .find(|r| r["mode"] == mode)
        .unwrap_or_else(|| panic!("no {mode} row in {rows:?}"))
}

fn num(r: &Row, col: &str) -> f64 {
    r[col]
        .parse()
        .unwrap_or_else(|_| panic!("{col} = {:?}", r[col]))
}

#[test]
fn p50_against_a_fixed_delay_is_right_within_a_millisecond() {
    let server = TestServer::start(Arc::new(|_| (200, Duration::from_millis(20))));
    let (_tmp, run, stdout) = bench(&["--url", &server.url("/"), "-c", "4", "-n", "200"]);
    let rows = summary(&run);
    let closed = row(&rows, "closed");
    assert_eq!(closed["target"], "url");
    assert_eq!(closed["concurrency"], "4");
    assert_eq!(num(closed, "requests"), 200.0);
    assert_eq!(num(closed, "errors"), 0.0);
    let p50 = num(closed, "p50_ms");
    assert!(
        (20.0..21.0).contains(&p50),
        "p50 {p50} ms for a 20 ms server"
    );
    // Four workers, 20 ms each: about 200 requests/s.
    let rps = num(closed, "rps");
    assert!((120.0..205.0).contains(&rps), "rps {rps}");
    assert!(stdout.contains("report: "), "{stdout}");
    let html = std::fs::read_to_string(run.join("index.html")).unwrap();
    assert!(html.contains("<svg"), "the report has charts");
}

#[test]
fn summary_csv_has_the_documented_columns() {
    let server = TestServer::start(Arc::new(|_| (200, Duration::ZERO)));
    let (_tmp, run, _) = bench(&["--url", &server.url("/"), "-c", "2", "-n", "50"]);
    let mut r = csv::Reader::from_path(run.join("summary.csv")).unwrap();
    let headers: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(
        &headers[..13],
        &[
            "target",
            "mode",
            "concurrency",
            "rate",
            "requests",
            "errors",
            "rps",
            "mean_ms",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "p99_9_ms",
            "max_ms"
        ]
    );
    for rec in r.records() {
        assert_eq!(rec.unwrap().len(), headers.len());
    }
}

#[test]
fn errors_are_classified_and_kept_out_of_latency() {
    let n = Arc::new(Mutex::new(0u32));
    let server = TestServer::start(Arc::new(move |_| {
        let mut n = n.lock().unwrap();
        *n += 1;
        match *n % 4 {
            0 => (429, Duration::ZERO),
            1 => (503, Duration::ZERO),
            2 => (404, Duration::ZERO),
            _ => (200, Duration::from_millis(30)),
        }
    }));
    let (_tmp, run, _) = bench(&["--url", &server.url("/"), "-c", "1", "-n", "40"]);
    let rows = summary(&run);
    let closed = row(&rows, "closed");
    assert_eq!(
        num(closed, "requests"),
        10.0,
        "only the 200s have a latency"
    );
    assert_eq!(num(closed, "errors"), 30.0);
    assert_eq!(num(closed, "errors_429"), 10.0);
    assert_eq!(num(closed, "errors_502_504"), 10.0);
    assert_eq!(num(closed, "errors_4xx"), 10.0);
    // The fast error answers would have pulled the latency down had they been mixed in.
    assert!(num(closed, "p50_ms") >= 30.0, "{closed:?}");
}

#[test]
fn open_loop_shows_a_server_stall_in_the_corrected_histogram_only() {
    // The server freezes for 500 ms once, about a second into the run.
    let first = Arc::new(Mutex::new(None::<Instant>));
    let frozen_until = Arc::new(Mutex::new(None::<Instant>));
    let server = TestServer::start(Arc::new(move |_| {
        let now = Instant::now();
        let start = *first.lock().unwrap().get_or_insert(now);
        let mut until = frozen_until.lock().unwrap();
        if until.is_none() && now.duration_since(start) > Duration::from_secs(1) {
            *until = Some(now + Duration::from_millis(500));
        }
        let wait = until.map_or(Duration::ZERO, |u| u.saturating_duration_since(now));
        (200, wait)
    }));
    let (_tmp, run, stdout) = bench(&[
        "--url",
        &server.url("/"),
        "--rate",
        "200",
        "-z",
        "3s",
        "-c",
        "4",
    ]);
    let rows = summary(&run);
    let corrected = row(&rows, "open");
    let uncorrected = row(&rows, "open-uncorrected");
    assert_eq!(corrected["rate"], "200");
    // Requests due during the stall waited for it: their latency counts from the due time.
    assert!(num(corrected, "max_ms") >= 450.0, "{corrected:?}");
    assert!(num(corrected, "p99_ms") >= 300.0, "{corrected:?}");
    // Many requests carry part of it: the stall moves even the 90th percentile...
    assert!(num(corrected, "p90_ms") >= 50.0, "{corrected:?}");
    // ...while the uncorrected view, timed from the late send, hides it but for the few
    // requests in flight when it began.
    assert!(num(uncorrected, "p90_ms") < 20.0, "{uncorrected:?}");
    assert!(num(uncorrected, "max_ms") >= 400.0, "{uncorrected:?}");
    // Whether the generator kept up is reported.
    assert!(num(corrected, "achieved_rate") > 150.0, "{corrected:?}");
    assert!(num(corrected, "max_late_ms") >= 300.0, "{corrected:?}");
    // Most requests went out on time: the median lateness is the generator's timer tick.
    assert!(num(corrected, "late_p50_ms") < 5.0, "{corrected:?}");
    assert!(stdout.contains("asked 200/s"), "{stdout}");
    assert!(stdout.contains("ms median"), "{stdout}");
}

#[test]
fn the_interval_log_decodes_to_the_recorded_counts_and_java_agrees_with_the_hgrm() {
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;
    let server = TestServer::start(Arc::new(|_| (200, Duration::from_millis(1))));
    let (_tmp, run, _) = bench(&["--url", &server.url("/"), "-c", "3", "-z", "2500ms"]);
    let rows = summary(&run);
    let recorded = num(row(&rows, "closed"), "requests") as u64;
    let log = std::fs::read(run.join("run.hlog")).unwrap();
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("#[Histogram log format version 1.3]"));
    let mut total = 0u64;
    let mut intervals = 0;
    let mut de = Deserializer::new();
    for entry in IntervalLogIterator::new(&log) {
        if let LogEntry::Interval(h) = entry.expect("every log line parses") {
            assert_eq!(h.tag().map(|t| t.as_str()), Some("url/closed/c3"));
            let bytes = base64_decode(h.encoded_histogram());
            let hist: hdrhistogram::Histogram<u64> = de.deserialize(&mut bytes.as_slice()).unwrap();
            total += hist.len();
            intervals += 1;
        }
    }
    assert_eq!(total, recorded, "the intervals hold every recorded latency");
    assert!(
        intervals >= 2,
        "a 2.5 s run at 1 s intervals has 3 intervals"
    );

    // HdrHistogram's Java HistogramLogProcessor reads the log and prints the same distribution.
    let jar = Path::new("/usr/share/java/hdrhistogram.jar");
    common::need("java");
    assert!(
        jar.exists(),
        "{} is missing: scripts/test-deps.sh installs libhdrhistogram-java",
        jar.display()
    );
    let out = run.join("java");
    let status = Command::new("java")
        .args([
            "-cp",
            jar.to_str().unwrap(),
            "org.HdrHistogram.HistogramLogProcessor",
        ])
        .args(["-i", run.join("run.hlog").to_str().unwrap()])
        .args(["-tag", "url/closed/c3", "-outputValueUnitRatio", "1000"])
        .args(["-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", text_of(&status.stderr));
    let java = std::fs::read_to_string(run.join("java.hgrm")).unwrap();
    // The processor adds two comment lines of its own on top.
    let java: Vec<&str> = java
        .lines()
        .filter(|l| !l.starts_with("#[Overall") && !l.starts_with("#[StartTime"))
        .collect();
    let ours = std::fs::read_to_string(run.join("url_closed_c3.hgrm")).unwrap();
    let ours: Vec<&str> = ours.lines().collect();
    assert_eq!(
        ours.len(),
        java.len(),
        "ours:\n{}\njava:\n{}",
        ours.join("\n"),
        java.join("\n")
    );
    for (i, (a, b)) in ours.iter().zip(&java).enumerate() {
        assert_eq!(a, b, "line {} differs", i + 1);
    }
}

fn text_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn an_unreachable_target_fails_fast_with_a_clear_message() {
    let port = common::free_port();
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let o = cubeflash(
        tmp.path(),
        &[
            "bench",
            "--url",
            &format!("http://127.0.0.1:{port}/"),
            "-z",
            "30s",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("cannot reach target url"), "{err}");
    assert!(err.contains("is it running?"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_bad_plan_gets_located_errors_and_no_results() {
    let tmp = common::temp_tree(&[(
        "plan.yaml",
        "targets:\n  - url: http://127.0.0.1:1/\n    methd: GET\nsteps:\n  - closed: {concurrency: [1, 0]}\n",
    )]);
    let o = cubeflash(tmp.path(), &["bench", "plan.yaml", "--out", "results"]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("plan.yaml:3:5"), "{err}");
    assert!(err.contains("did you mean `method`"), "{err}");
    assert!(err.contains("steps[0].closed.concurrency[1]"), "{err}");
    assert!(!tmp.path().join("results").exists(), "nothing written");
}

#[test]
fn a_plan_benchmarks_a_function_against_its_baseline_on_the_local_platform() {
    common::need("python3");
    let repo = common::temp_tree(&[
        ("cubeflash.yaml", "namespace: demo\n"),
        (
            "functions/fast/function.yaml",
            "name: fast\nruntime: python\nhandler: handler.py\nscale: {min: 0, max: 2, idle: 30s}\nbaseline: {replicas: 1}\n",
        ),
        ("functions/fast/handler.py", "def handle(req):\n    return 'hi'\n"),
        (
            "bench/plan.yaml",
            "targets:\n  - function: fast\nsteps:\n  - closed: {concurrency: [1, 2], requests: 400, warmup: 200ms}\n  - open: {rate: 40, duration: 1s, connections: 2}\n  - cold: {samples: 2}\n",
        ),
    ]);
    let o = cubeflash(repo.path(), &["bench"]);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{}\n{stdout}", text(&o.stderr));
    assert!(stdout.contains("starting the local platform"), "{stdout}");
    assert!(
        stdout.contains("stopped the local platform this run started"),
        "{stdout}"
    );
    assert!(
        common::text(
            &std::fs::read(repo.path().join(".cubeflash/gateway.log")).unwrap_or_default()
        )
        .contains("listening"),
        "the platform ran"
    );
    assert!(
        !repo.path().join(".cubeflash/gateway.pid").exists(),
        "and was stopped"
    );
    let run = std::fs::canonicalize(repo.path().join("bench/results/latest")).unwrap();
    let rows = summary(&run);
    let find = |target: &str, mode: &str, param: (&str, &str)| {
        rows.iter()
            .find(|r| r["target"] == target && r["mode"] == mode && r[param.0] == param.1)
            .unwrap_or_else(|| panic!("no {target} {mode} {param:?} row in {rows:?}"))
    };
    // Interleaved: every step ran for the serverless target and its baseline, called
    // directly and through the gateway.
    for target in ["fast", "fast-baseline", "fast-baseline-gw"] {
        for c in ["1", "2"] {
            let r = find(target, "closed", ("concurrency", c));
            assert_eq!(num(r, "requests") + num(r, "errors"), 400.0, "{r:?}");
            find(target, "closed-warmup", ("concurrency", c));
        }
        find(target, "open", ("rate", "40"));
        let cold = find(target, "cold", ("rate", ""));
        assert_eq!(num(cold, "requests"), 2.0, "{cold:?}");
    }
    // Scaled to zero before each sample, the serverless first request pays a process start.
    let cold = find("fast", "cold", ("rate", ""));
    let warm = find("fast-baseline", "cold", ("rate", ""));
    assert!(
        num(cold, "p50_ms") > num(warm, "p50_ms"),
        "{cold:?} vs {warm:?}"
    );
    assert!(
        stdout.contains("replica-seconds held by fast-baseline"),
        "{stdout}"
    );
    let html = std::fs::read_to_string(run.join("index.html")).unwrap();
    for part in [
        "Serverless / baseline",
        "Cold starts",
        "replica-seconds",
        "<svg",
    ] {
        assert!(html.contains(part), "index.html lacks {part:?}");
    }
    let order: Vec<String> = rows
        .iter()
        .filter(|r| r["mode"] == "closed")
        .map(|r| format!("{} c{}", r["target"], r["concurrency"]))
        .collect();
    assert_eq!(
        order,
        [
            "fast c1",
            "fast-baseline c1",
            "fast-baseline-gw c1",
            "fast c2",
            "fast-baseline c2",
            "fast-baseline-gw c2"
        ]
    );
    // What each step held, sampled from the gateway: the baseline one replica throughout,
    // with CPU time from the process table (400 requests: more than the 10 ms clock tick
    // of /proc's counters).
    for target in ["fast-baseline", "fast-baseline-gw"] {
        let r = find(target, "closed", ("concurrency", "2"));
        assert_eq!(
            (&r["replicas_min"][..], &r["replicas_max"][..]),
            ("1", "1"),
            "{r:?}"
        );
        assert!(num(r, "cpu_seconds") > 0.0, "{r:?}");
        assert!(num(r, "step_end_s") > num(r, "step_start_s"), "{r:?}");
    }
    let serverless = find("fast", "closed", ("concurrency", "1"));
    assert!(num(serverless, "replicas_max") >= 1.0, "{serverless:?}");
    // The gateway hop is the difference of the two baseline targets, both in the summary.
    let conclusion = std::fs::read_to_string(run.join("conclusion.txt")).unwrap();
    assert!(stdout.contains("In short:"), "{stdout}");
    for line in conclusion.lines() {
        assert!(
            stdout.contains(line),
            "the terminal shows {line:?}:\n{stdout}"
        );
    }
    let (s1, b1, g1) = (
        find("fast", "closed", ("concurrency", "1")),
        find("fast-baseline", "closed", ("concurrency", "1")),
        find("fast-baseline-gw", "closed", ("concurrency", "1")),
    );
    let expect = format!(
        "latency at low concurrency (closed c1): p50 {} ms against {} ms ({:.2}x), p99 {} ms against {} ms ({:.2}x)",
        s1["p50_ms"],
        b1["p50_ms"],
        num(s1, "p50_ms") / num(b1, "p50_ms"),
        s1["p99_ms"],
        b1["p99_ms"],
        num(s1, "p99_ms") / num(b1, "p99_ms"),
    );
    assert!(conclusion.contains(&expect), "{expect}\n{conclusion}");
    let hop = format!(
        "the gateway hop is {:.3} ms",
        num(g1, "p50_ms") - num(b1, "p50_ms")
    );
    assert!(conclusion.contains(&hop), "{hop}\n{conclusion}");
    assert!(conclusion.contains("a cold start (cold)"), "{conclusion}");
    assert!(conclusion.contains("compute held"), "{conclusion}");
    let timeline = std::fs::read_to_string(run.join("timeline.csv")).unwrap();
    assert!(timeline.lines().count() > 5, "{timeline}");
    assert!(html.contains("In short") && html.contains("Replicas over the run"));
}

#[test]
fn hgrm_files_match_javas_for_distributions_that_hit_percentile_boundaries() {
    use cubeflash::bench::{hist, output::RunDir};
    let jar = Path::new("/usr/share/java/hdrhistogram.jar");
    common::need("java");
    assert!(
        jar.exists(),
        "{} is missing: scripts/test-deps.sh installs libhdrhistogram-java",
        jar.display()
    );
    // A small deterministic generator (xorshift) for repeatable "random" latencies.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let cases: Vec<(&str, Vec<u64>)> = vec![
        ("uniform", (1..=10_000).collect()),
        // 6,400 values: many percentile levels land exactly on a cumulative count.
        (
            "boundaries",
            (0..6_400).map(|i| 100 + (i % 64) * 7).collect(),
        ),
        (
            "tail",
            (0..5_000)
                .map(|_| {
                    let r = next();
                    if r % 100 == 0 {
                        1_000_000 + r % 4_000_000
                    } else {
                        200 + r % 3_000
                    }
                })
                .collect(),
        ),
        ("single", vec![1_234]),
        ("powers", (0..4_096).map(|i| 1u64 << (i % 22)).collect()),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let mut dir = RunDir::create(tmp.path()).unwrap();
    let mut ours = Vec::new();
    for (tag, values) in &cases {
        let mut h = hist::new();
        for v in values {
            hist::record(&mut h, *v);
        }
        dir.interval(tag, dir.started, Duration::from_secs(1), &h)
            .unwrap();
        ours.push((tag, hist::hgrm(&h)));
    }
    dir.flush().unwrap();
    let log = dir.dir.join("run.hlog");
    for (tag, mine) in ours {
        let out = dir.dir.join(format!("java-{tag}"));
        let o = Command::new("java")
            .args([
                "-cp",
                jar.to_str().unwrap(),
                "org.HdrHistogram.HistogramLogProcessor",
            ])
            .args([
                "-i",
                log.to_str().unwrap(),
                "-tag",
                tag,
                "-outputValueUnitRatio",
                "1000",
            ])
            .args(["-o", out.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text_of(&o.stderr));
        let java = std::fs::read_to_string(format!("{}.hgrm", out.display())).unwrap();
        let java: Vec<&str> = java
            .lines()
            .filter(|l| !l.starts_with("#[Overall") && !l.starts_with("#[StartTime"))
            .collect();
        let mine: Vec<&str> = mine.lines().collect();
        assert_eq!(
            mine.len(),
            java.len(),
            "{tag}: ours\n{}\njava\n{}",
            mine.join("\n"),
            java.join("\n")
        );
        for (i, (a, b)) in mine.iter().zip(&java).enumerate() {
            assert_eq!(a, b, "{tag}: line {} differs", i + 1);
        }
    }
}

#[test]
fn async_and_queue_modes_time_calls_and_messages_through_a_function() {
    common::need("python3");
    let nats = common::NatsServer::start();
    // A free port, so that it runs beside the other platform test.
    let project = format!(
        "namespace: demo\ngateway: {{ port: {} }}\nnats: {{ url: \"{}\" }}\n",
        common::free_port(),
        nats.url
    );
    let repo = common::temp_tree(&[
        ("cubeflash.yaml", project.as_str()),
        (
            "functions/noop/function.yaml",
            "name: noop\nruntime: python\nhandler: handler.py\nscale: {min: 1, max: 1, concurrency: 8}\ntriggers:\n  - queue: { subject: bench.noop, concurrency: 8 }\n",
        ),
        ("functions/noop/handler.py", "def handle(req):\n    return ''\n"),
    ]);
    let o = cubeflash(
        repo.path(),
        &["bench", "--async", "noop", "-n", "60", "-c", "4"],
    );
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{}\n{stdout}", text(&o.stderr));
    assert!(
        stdout.contains("async end to end: 60 calls (60 succeeded)"),
        "{stdout}"
    );
    let figures =
        std::fs::read_to_string(repo.path().join("bench/results/latest/triggers.csv")).unwrap();
    assert!(figures.contains("calls,60"), "{figures}");
    // The accept itself is the load's summary: 60 requests answered 202.
    let rows = summary(&std::fs::canonicalize(repo.path().join("bench/results/latest")).unwrap());
    assert_eq!(num(&rows[0], "requests"), 60.0, "{rows:?}");
    let o = cubeflash(repo.path(), &["bench", "--queue", "noop", "-n", "300"]);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{}\n{stdout}", text(&o.stderr));
    assert!(
        stdout.contains("queue: 300 messages published")
            && stdout.contains("messages/s end to end"),
        "{stdout}"
    );
    let o = cubeflash(
        repo.path(),
        &["bench", "--queue", "noop", "-n", "10", "--rate", "5"],
    );
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("give -n"), "{}", text(&o.stderr));
    // An open loop without -z runs for 10 s rather than refusing the default count.
    let o = cubeflash(repo.path(), &["bench", "--async", "noop", "--rate", "100"]);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{}\n{stdout}", text(&o.stderr));
    assert!(stdout.contains("async end to end: 1000 calls"), "{stdout}");
    // A function that is not there is refused, by name.
    let o = cubeflash(repo.path(), &["bench", "--async", "nope", "-n", "1"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("nope"), "{}", text(&o.stderr));
}

#[test]
fn a_trace_shows_serverless_falling_to_zero_in_the_gaps_and_a_cold_start_per_burst() {
    common::need("python3");
    let project = format!(
        "namespace: demo\ngateway: {{ port: {} }}\n",
        common::free_port()
    );
    let repo = common::temp_tree(&[
        ("cubeflash.yaml", project.as_str()),
        (
            "functions/fast/function.yaml",
            "name: fast\nruntime: python\nhandler: handler.py\nscale: {min: 0, max: 2, idle: 2s}\nbaseline: {replicas: 1}\n",
        ),
        ("functions/fast/handler.py", "def handle(req):\n    return 'hi'\n"),
        (
            "bench/plan.yaml",
            "targets:\n  - function: fast\n    baseline: direct\nsteps:\n  - trace: {rate: 20, burst: 2s, gap: 5s, bursts: 2, connections: 4}\n",
        ),
    ]);
    let o = cubeflash(repo.path(), &["bench"]);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{}\n{stdout}", text(&o.stderr));
    let run = std::fs::canonicalize(repo.path().join("bench/results/latest")).unwrap();
    let rows = summary(&run);
    let trace = |t: &str| {
        rows.iter()
            .find(|r| r["target"] == t && r["mode"] == "trace")
            .unwrap_or_else(|| panic!("no {t} trace row in {rows:?}"))
            .clone()
    };
    let (s, b) = (trace("fast"), trace("fast-baseline"));
    // 2 bursts of 2 s at 20/s.
    assert_eq!(num(&s, "requests") + num(&s, "errors"), 80.0, "{s:?}");
    assert_eq!(num(&s, "errors"), 0.0, "{s:?}");
    assert_eq!(&s["replicas_min"][..], "0", "{s:?}");
    assert_eq!(&b["replicas_min"][..], "1", "{b:?}");
    assert!(
        num(&s, "replica_seconds") < num(&b, "replica_seconds"),
        "{s:?} vs {b:?}"
    );
    // In the gap (from 4 s after the first burst ended to the second's start) no serverless
    // replica is held; each burst is one cold start.
    let start = num(&s, "step_start_s");
    let mut r = csv::Reader::from_path(run.join("timeline.csv")).unwrap();
    let samples: Vec<(f64, u32, u64)> = r
        .records()
        .map(|x| x.unwrap())
        .filter(|x| &x[1] == "fast")
        .map(|x| {
            (
                x[0].parse().unwrap(),
                x[2].parse().unwrap(),
                x[6].parse().unwrap(),
            )
        })
        .collect();
    let in_gap: Vec<_> = samples
        .iter()
        .filter(|(t, _, _)| *t > start + 6.0 && *t < start + 6.8)
        .collect();
    assert!(!in_gap.is_empty(), "{samples:?}");
    assert!(in_gap.iter().all(|(_, n, _)| *n == 0), "{in_gap:?}");
    let colds = |from: f64, to: f64| {
        let at = |t: f64| samples.iter().rfind(|s| s.0 <= t).map_or(0, |s| s.2);
        at(to) - at(from)
    };
    assert_eq!(colds(start - 0.5, num(&s, "step_end_s")), 2, "{samples:?}");
    let conclusion = std::fs::read_to_string(run.join("conclusion.txt")).unwrap();
    assert!(
        conclusion.contains("falling to zero replicas in the silences"),
        "{conclusion}"
    );
    let html = std::fs::read_to_string(run.join("index.html")).unwrap();
    assert!(html.contains("Trace: bursts and silences"), "index.html");
}

#[test]
fn bad_traces_get_located_errors_and_nothing_runs() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("rec.csv"), "0.5\n1.0\nlater\n").unwrap();
    std::fs::write(
        tmp.path().join("plan.yaml"),
        "targets:\n  - url: http://127.0.0.1:9/\nsteps:\n  - trace: {file: rec.csv}\n  - trace: {rate: 0, burst: 1s}\n  - trace: {rate: 5, burst: 2h}\n  - open: {rate: 5, duration: 90m}\n  - trace: {phases: [{rate: 0, for: 1s}]}\n",
    )
    .unwrap();
    let o = cubeflash(
        tmp.path(),
        &[
            "bench",
            "plan.yaml",
            "--out",
            tmp.path().join("results").to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("rec.csv:3:1") && err.contains("is not a number"),
        "{err}"
    );
    assert!(err.contains("steps[1].trace.rate"), "{err}");
    assert!(
        err.contains("steps[2].trace.burst") && err.contains("an hour at most"),
        "{err}"
    );
    assert!(err.contains("steps[3].open.duration"), "{err}");
    assert!(err.contains("the phases send no request"), "{err}");
    assert!(err.contains("nothing was run"), "{err}");
    assert!(!tmp.path().join("results").exists(), "nothing written");
}

#[test]
fn compare_shows_ratios_of_one_for_a_run_with_itself_and_the_change_between_two() {
    let fast = TestServer::start(Arc::new(|_| (200, Duration::from_millis(5))));
    let slow = TestServer::start(Arc::new(|_| (200, Duration::from_millis(20))));
    let out = tempfile::tempdir().unwrap();
    let results = out.path().join("results");
    let mut runs = Vec::new();
    for server in [&fast, &slow] {
        let o = cubeflash(
            out.path(),
            &[
                "bench",
                "--out",
                results.to_str().unwrap(),
                "--url",
                &server.url("/"),
                "-c",
                "2",
                "-n",
                "100",
            ],
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
        runs.push(std::fs::canonicalize(results.join("latest")).unwrap());
        std::thread::sleep(Duration::from_millis(1100)); // run folders are named by the second
    }
    let compare = |a: &Path, b: &Path| {
        cubeflash(
            out.path(),
            &[
                "bench",
                "--out",
                results.to_str().unwrap(),
                "compare",
                a.to_str().unwrap(),
                b.to_str().unwrap(),
            ],
        )
    };
    let same = compare(&runs[0], &runs[0]);
    assert!(same.status.success(), "{}", text(&same.stderr));
    let table = text(&same.stdout);
    let line = table
        .lines()
        .find(|l| l.starts_with("url "))
        .unwrap_or_else(|| panic!("{table}"));
    assert_eq!(line.matches(" 1.00").count(), 3, "{line}");
    let change = compare(&runs[0], &runs[1]);
    assert!(change.status.success(), "{}", text(&change.stderr));
    let table = text(&change.stdout);
    let line = table.lines().find(|l| l.starts_with("url ")).unwrap();
    let ratios: Vec<f64> = line
        .split_whitespace()
        .filter_map(|c| c.parse::<f64>().ok())
        .collect();
    // A p50, B p50, B/A: a 20 ms server against a 5 ms one, about 4x slower.
    assert!((3.0..4.5).contains(&ratios[2]), "{line}");
    let page = table.lines().last().unwrap().trim_start_matches("report: ");
    let html = std::fs::read_to_string(page).unwrap();
    assert!(html.contains("<table") && html.contains("B/A"), "{html}");
    let missing = compare(&runs[0], Path::new("no-such-run"));
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("no bench run at no-such-run"));
}
