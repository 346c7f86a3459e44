//! Schedule triggers on the local platform, timed against the wall clock: a six-field
//! expression fires on its second, and `catchUp: true` makes up once at start for the runs
//! a stopped gateway missed (and only then). Real gateway and python replicas.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::gateway::TestGateway;
use common::{need, repo_root, temp_tree};

/// A folder the replicas (which run as another user) can write their record in.
fn out_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

fn repo(schedule: &str, out: &Path) -> tempfile::TempDir {
    let handler =
        std::fs::read_to_string(repo_root().join("tests/fixtures/schedule/handler.py")).unwrap();
    let yaml = format!(
        "name: tick\nruntime: python\nhandler: handler.py\nenv: {{ OUT: \"{}\" }}\nscale: {{ min: 1 }}\ntriggers:\n  - schedule: {schedule}\n",
        out.display()
    );
    temp_tree(&[
        ("cubeflash.yaml", "namespace: test\n"),
        ("functions/tick/function.yaml", yaml.as_str()),
        ("functions/tick/handler.py", handler.as_str()),
    ])
}

/// Each call the handler got: when (s since the epoch) and the firing it says it is for,
/// waiting until there are `n`.
fn calls(out: &Path, n: usize, within: Duration) -> Vec<(f64, f64)> {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        let calls: Vec<(f64, f64)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
            })
            .collect();
        if calls.len() >= n || Instant::now() >= deadline {
            return calls;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_schedule_with_seconds_fires_on_its_second() {
    need("python3");
    let dir = out_dir();
    let out = dir.path().join("calls");
    let _gw = TestGateway::serve(repo("{ cron: \"*/2 * * * * *\" }", &out));
    let got = calls(&out, 3, Duration::from_secs(20));
    assert!(got.len() >= 3, "fired {} times: {got:?}", got.len());
    for pair in got.windows(2) {
        assert_eq!(
            ((pair[1].1 - pair[0].1) * 1000.0).round(),
            2000.0,
            "one firing every second second, none skipped: {got:?}"
        );
    }
    for (at, due) in &got {
        assert_eq!(
            ((due / 2.0).fract() * 1000.0).round() as i64 % 1000,
            0,
            "each firing is for an even second: {got:?}"
        );
        // Reached the handler soon after (the machine may be busy with other tests).
        assert!(
            (0.0..1.0).contains(&(at - due)),
            "{at} is {:.3} s after its firing at {due}: {got:?}",
            at - due
        );
    }
}

#[test]
fn catch_up_makes_up_once_for_runs_missed_while_stopped() {
    need("python3");
    for (catch_up, want) in [(true, 1), (false, 0)] {
        let dir = out_dir();
        let out = dir.path().join("calls");
        let root = repo(
            &format!("{{ cron: \"0 0 1 1 *\", catchUp: {catch_up} }}"),
            &out,
        );
        // The last firing a stopped gateway recorded: years of yearly runs ago.
        std::fs::create_dir_all(root.path().join(".cubeflash")).unwrap();
        let last = now_ms() - 3 * 366 * 24 * 3600 * 1000;
        std::fs::write(
            root.path().join(".cubeflash/schedules.json"),
            format!("{{\"tick#1 0 0 1 1 * UTC\": {last}}}"),
        )
        .unwrap();
        let gw = TestGateway::serve(root);
        let times = calls(&out, 1, Duration::from_secs(if catch_up { 20 } else { 4 }));
        assert_eq!(times.len(), want, "catchUp: {catch_up}: {times:?}");
        if catch_up {
            std::thread::sleep(Duration::from_secs(2));
            assert_eq!(calls(&out, 2, Duration::ZERO).len(), 1, "once, not per run");
            let (_, due) = calls(&out, 1, Duration::ZERO)[0];
            assert!(
                due > (last / 1000) as f64,
                "it says which firing it makes up for: {due}"
            );
            let logs = gw.admin("/system/functions/tick/logs");
            assert!(
                logs.to_string().contains("catching up 3 runs missed"),
                "{logs}"
            );
        }
    }
}

#[test]
fn seconds_are_refused_on_kubernetes_and_catch_up_widens_the_cronjob_deadline() {
    let yaml = |cron: &str| {
        format!("name: tick\nruntime: python\nhandler: handler.py\ntriggers:\n  - schedule: {{ cron: \"{cron}\", catchUp: true }}\n")
    };
    let k8s = yaml("*/10 * * * * *");
    let root = temp_tree(&[
        ("cubeflash.yaml", "namespace: test\ntarget: kubernetes\n"),
        ("functions/tick/function.yaml", k8s.as_str()),
        (
            "functions/tick/handler.py",
            "def handle(req):\n    return 1\n",
        ),
    ]);
    let err = format!("{:#}", cubeflash::spec::load(root.path()).unwrap_err());
    assert!(
        err.contains("functions/tick/function.yaml:5")
            && err.contains("has a seconds field")
            && err.contains("once a minute"),
        "{err}"
    );
    // Locally the same schedule is fine, and it has no CronJob.
    let local = temp_tree(&[
        ("cubeflash.yaml", "namespace: test\n"),
        ("functions/tick/function.yaml", k8s.as_str()),
        (
            "functions/tick/handler.py",
            "def handle(req):\n    return 1\n",
        ),
    ]);
    let repo = cubeflash::spec::load(local.path()).unwrap();
    let rendered = cubeflash::render::render(&repo).unwrap();
    assert!(!rendered.files.keys().any(|k| k.contains("schedule")));
    let minutes = yaml("*/5 * * * *");
    std::fs::write(local.path().join("functions/tick/function.yaml"), minutes).unwrap();
    let repo = cubeflash::spec::load(local.path()).unwrap();
    let rendered = cubeflash::render::render(&repo).unwrap();
    let cronjob = rendered
        .files
        .iter()
        .find(|(k, _)| k.contains("schedule"))
        .map(|(_, v)| v.text.clone())
        .unwrap();
    assert!(
        cronjob.contains("startingDeadlineSeconds: 3600"),
        "{cronjob}"
    );
}
