//! The Kubernetes target through kube's own client against the in-process fake API server of
//! tests/fake_kube (it records every request and keeps the objects it is sent): a first
//! deploy, a re-deploy that prunes and changes, a dry run, RBAC refusals, conflicts, an
//! unreachable server, no cluster, a stale generated/, a rollout that never finishes,
//! delete/list/describe (the in-cluster gateway is in tests/kubernetes_gateway.rs).

mod common;

mod fake_kube;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{cubeflash, text};
use fake_kube::{deploy, kubeconfig_for, FakeApi, Seen};
use serde_json::{json, Value};

const HANDLER: &str = "def handle(req):\n    return 'hi'\n";

/// A rendered repo with functions `a` (with a baseline) and `b`.
fn repo() -> tempfile::TempDir {
    let dir = common::temp_tree(&[
        ("cubeflash.yaml", "namespace: demo\n"),
        ("functions/a/function.yaml", "name: a\nruntime: python\nhandler: handler.py\nenv: {GREETING: hello}\nbaseline: {replicas: 1}\n"),
        ("functions/a/handler.py", HANDLER),
        ("functions/b/function.yaml", "name: b\nruntime: python\nhandler: handler.py\n"),
        ("functions/b/handler.py", HANDLER),
    ]);
    let o = cubeflash(dir.path(), &["render"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    dir
}

/// Deploys `dir` against `kubeconfig` expecting the error exit code; returns the message.
fn deploy_fails(dir: &Path, kubeconfig: &Path, extra: &[&str]) -> String {
    let o = deploy(dir, kubeconfig, extra);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stdout));
    text(&o.stderr)
}

fn writes(seen: &[Seen]) -> Vec<&Seen> {
    seen.iter()
        .filter(|s| s.method == "PATCH" || s.method == "DELETE")
        .collect()
}

const NS: &str = "/api/v1/namespaces/demo";
const APPS: &str = "/apis/apps/v1/namespaces/demo";

#[test]
fn a_first_deploy_applies_generated_in_dependency_order_as_the_cubeflash_field_manager() {
    let api = FakeApi::start();
    let dir = repo();
    let kc = api.kubeconfig(dir.path());
    let o = deploy(dir.path(), &kc, &[]);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{}\n{stdout}", text(&o.stderr));
    let seen = api.seen();
    let patches: Vec<&Seen> = seen.iter().filter(|s| s.method == "PATCH").collect();
    let files = common::snapshot(&dir.path().join("generated"));
    assert_eq!(patches.len(), files.len(), "one apply per generated file");
    for p in &patches {
        assert_eq!(
            p.query.get("fieldManager").map(String::as_str),
            Some("cubeflash"),
            "{p:?}"
        );
        assert!(
            !p.query.contains_key("force"),
            "no force without --force-conflicts: {p:?}"
        );
        assert!(!p.query.contains_key("dryRun"));
        assert_eq!(p.content_type, "application/apply-patch+yaml");
    }
    // Every body is exactly the rendered file.
    for (path, bytes) in &files {
        let file: Value = serde_yaml::from_slice(bytes).unwrap();
        let name = file["metadata"]["name"].as_str().unwrap();
        let kind = file["kind"].as_str().unwrap();
        let sent = patches
            .iter()
            .find(|p| p.body["kind"] == kind && p.body["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{} was not applied", path.display()));
        assert_eq!(sent.body, file, "{}", path.display());
    }
    // Dependency order: the namespace first, RBAC before what runs, Deployments before Services.
    let order: Vec<String> = patches
        .iter()
        .map(|p| p.body["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(order[0], "Namespace");
    let first = |k: &str| order.iter().position(|x| x == k).unwrap();
    let last = |k: &str| order.iter().rposition(|x| x == k).unwrap();
    assert!(last("ServiceAccount") < first("Role") && last("RoleBinding") < first("ConfigMap"));
    assert!(last("ConfigMap") < first("Deployment") && last("Deployment") < first("Service"));
    assert_eq!(patches[0].path, "/api/v1/namespaces/demo");
    assert!(patches
        .iter()
        .any(|p| p.path == format!("{APPS}/deployments/a")));
    // Nothing to prune on a first deploy, and it waited for what has replicas.
    assert!(seen.iter().all(|s| s.method != "DELETE"));
    assert!(
        stdout.contains("rolled out Deployment/a-baseline"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rolled out Deployment/cubeflash-gateway"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("rolled out Deployment/a\n"),
        "a scales from zero: {stdout}"
    );
    assert_eq!(
        api.names(&format!("{APPS}/deployments")),
        ["a", "a-baseline", "b", "cubeflash-gateway"]
    );
}

#[test]
fn a_redeploy_prunes_a_removed_function_and_applies_a_changed_one_without_its_replicas() {
    let api = FakeApi::start();
    let dir = repo();
    let kc = api.kubeconfig(dir.path());
    assert!(deploy(dir.path(), &kc, &[]).status.success());
    std::fs::remove_dir_all(dir.path().join("functions/b")).unwrap();
    std::fs::write(
        dir.path().join("functions/a/function.yaml"),
        "name: a\nruntime: python\nhandler: handler.py\nenv: {GREETING: bonjour}\nbaseline: {replicas: 1}\n",
    )
    .unwrap();
    assert!(cubeflash(dir.path(), &["render"]).status.success());
    api.clear_seen();
    let o = deploy(dir.path(), &kc, &["--no-wait"]);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{}\n{stdout}", text(&o.stderr));
    let seen = api.seen();
    let deleted: Vec<String> = seen
        .iter()
        .filter(|s| s.method == "DELETE")
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(
        deleted,
        [
            format!("{NS}/services/b"),
            format!("{APPS}/deployments/b"),
            format!("{NS}/configmaps/b-code")
        ],
        "b's objects, users first"
    );
    assert!(
        seen.iter()
            .all(|s| !(s.method == "PATCH" && s.path.ends_with("/b"))),
        "b is not applied again"
    );
    let a = seen
        .iter()
        .find(|s| s.method == "PATCH" && s.path == format!("{APPS}/deployments/a"))
        .unwrap();
    assert!(a.body.to_string().contains("bonjour"), "the change is sent");
    assert!(
        a.body["spec"].get("replicas").is_none(),
        "the gateway owns a live function's replicas: {}",
        a.body["spec"]
    );
    let baseline = seen
        .iter()
        .find(|s| s.method == "PATCH" && s.path == format!("{APPS}/deployments/a-baseline"))
        .unwrap();
    assert_eq!(
        baseline.body["spec"]["replicas"], 1,
        "the baseline keeps its count"
    );
    // Listing for the prune used the managed-by label.
    assert!(seen.iter().any(|s| s.method == "GET"
        && s.path == format!("{APPS}/deployments")
        && s.query.get("labelSelector").map(String::as_str)
            == Some("app.kubernetes.io/managed-by=cubeflash")));
    assert_eq!(
        api.names(&format!("{APPS}/deployments")),
        ["a", "a-baseline", "cubeflash-gateway"]
    );
    assert!(stdout.contains("pruned Deployment/b"), "{stdout}");
    assert!(
        seen.iter().all(|s| !s.query.contains_key("watch")),
        "--no-wait does not wait"
    );
}

#[test]
fn a_dry_run_sends_every_change_as_a_server_dry_run_and_nothing_is_stored() {
    let api = FakeApi::start();
    let dir = repo();
    let kc = api.kubeconfig(dir.path());
    assert!(deploy(dir.path(), &kc, &[]).status.success());
    std::fs::remove_dir_all(dir.path().join("functions/b")).unwrap();
    assert!(cubeflash(dir.path(), &["render"]).status.success());
    let before = api.object_count();
    api.clear_seen();
    let o = deploy(dir.path(), &kc, &["--dry-run"]);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{}\n{stdout}", text(&o.stderr));
    let seen = api.seen();
    let w = writes(&seen);
    assert!(w.iter().any(|s| s.method == "DELETE") && w.iter().any(|s| s.method == "PATCH"));
    for s in &w {
        let dry = match s.method.as_str() {
            "DELETE" => s.body["dryRun"] == json!(["All"]),
            _ => s.query.get("dryRun").map(String::as_str) == Some("All"),
        };
        assert!(
            dry,
            "{} {} is not a dry run: {:?} {}",
            s.method, s.path, s.query, s.body
        );
    }
    assert_eq!(api.object_count(), before, "nothing changed");
    assert!(stdout.contains("dry run"), "{stdout}");
}

#[test]
fn a_forbidden_request_names_the_verb_resource_and_namespace() {
    let api = FakeApi::start();
    api.state.lock().unwrap().forbid = Some(("PATCH".into(), "deployments".into()));
    let dir = repo();
    let kc = api.kubeconfig(dir.path());
    let err = deploy_fails(dir.path(), &kc, &[]);
    assert!(
        err.contains("the cluster refused to patch deployments in namespace demo"),
        "{err}"
    );
    assert!(
        err.contains("kubectl auth can-i patch deployments -n demo"),
        "{err}"
    );
}

#[test]
fn a_conflict_with_another_field_manager_is_explained_and_force_takes_over() {
    let api = FakeApi::start();
    api.state.lock().unwrap().conflict = Some("a".into());
    let dir = repo();
    let kc = api.kubeconfig(dir.path());
    let err = deploy_fails(dir.path(), &kc, &[]);
    assert!(
        err.contains("Deployment/a: fields are owned by another field manager"),
        "{err}"
    );
    assert!(err.contains("--force-conflicts"), "{err}");
    api.clear_seen();
    let o = deploy(dir.path(), &kc, &["--force-conflicts"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let seen = api.seen();
    let a = seen
        .iter()
        .find(|s| s.method == "PATCH" && s.path == format!("{APPS}/deployments/a"))
        .unwrap();
    assert_eq!(a.query.get("force").map(String::as_str), Some("true"));
}

#[test]
fn an_unreachable_api_server_fails_within_the_connect_timeout() {
    let dir = repo();
    let port = common::free_port();
    let kc = kubeconfig_for(dir.path(), &format!("http://127.0.0.1:{port}"));
    let started = Instant::now();
    let err = deploy_fails(dir.path(), &kc, &[]);
    assert!(
        err.contains(&format!(
            "cannot reach the Kubernetes API server at http://127.0.0.1:{port}"
        )),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn no_cluster_configured_says_how_to_get_one() {
    let dir = repo();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_cubeflash"))
        .args(["deploy", "--target", "kubernetes"])
        .current_dir(dir.path())
        .env("KUBECONFIG", dir.path().join("missing"))
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("no Kubernetes cluster is configured"), "{err}");
}

#[test]
fn a_stale_generated_tree_is_refused_before_any_request() {
    let api = FakeApi::start();
    let dir = repo();
    let kc = api.kubeconfig(dir.path());
    std::fs::write(
        dir.path().join("functions/b/handler.py"),
        "def handle(req):\n    return 'changed'\n",
    )
    .unwrap();
    let o = deploy(dir.path(), &kc, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("generated/ is out of date"),
        "{}",
        text(&o.stderr)
    );
    assert!(api.seen().is_empty(), "nothing reached the server");
}

#[test]
fn delete_removes_one_functions_objects_and_list_shows_replicas() {
    let api = FakeApi::start();
    let dir = repo();
    let kc = api.kubeconfig(dir.path());
    assert!(deploy(dir.path(), &kc, &[]).status.success());
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cubeflash"))
            .args(args)
            .current_dir(dir.path())
            .env("KUBECONFIG", &kc)
            .output()
            .unwrap()
    };
    let list = run(&["ls", "--target", "kubernetes"]);
    let listed = text(&list.stdout);
    assert!(list.status.success(), "{}", text(&list.stderr));
    assert!(
        listed
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["a", "idle", "0", "0", "1/1"]),
        "{listed}"
    );
    api.clear_seen();
    let o = run(&["rm", "a", "--target", "kubernetes"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let deleted: Vec<String> = api
        .seen()
        .iter()
        .filter(|s| s.method == "DELETE")
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(deleted.len(), 5, "{deleted:?}");
    assert!(deleted.contains(&format!("{APPS}/deployments/a-baseline")));
    assert_eq!(
        api.names(&format!("{APPS}/deployments")),
        ["b", "cubeflash-gateway"]
    );
    let again = run(&["rm", "a", "--target", "kubernetes"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("no function named \"a\" in namespace demo"));
    // describe: replicas and the Deployment's recent events, selected by field.
    {
        let mut st = api.state.lock().unwrap();
        let events = st.objects.entry(format!("{NS}/events")).or_default();
        for (name, object, reason) in [
            ("e1", "b", "ScalingReplicaSet"),
            ("e2", "cubeflash-gateway", "Other"),
        ] {
            events.insert(
                name.into(),
                json!({
                    "apiVersion": "v1", "kind": "Event",
                    "metadata": {"name": name, "namespace": "demo"},
                    "involvedObject": {"kind": "Deployment", "name": object, "namespace": "demo"},
                    "reason": reason, "message": format!("Scaled up replica set {object}-5d8 to 1"),
                    "lastTimestamp": "2026-11-27T01:00:00Z"
                }),
            );
        }
    }
    let d = run(&["describe", "b", "--target", "kubernetes"]);
    assert!(d.status.success(), "{}", text(&d.stderr));
    let described: Value = serde_json::from_slice(&d.stdout).unwrap();
    assert_eq!(described["name"], "b");
    assert_eq!(described["replicas"], json!({"desired": 0, "ready": 0}));
    let events = described["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "only b's: {events:?}");
    assert_eq!(events[0]["reason"], "ScalingReplicaSet");
    let again = run(&["rm", "a", "--target", "kubernetes"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("no function named \"a\" in namespace demo"));
}

#[test]
fn a_rollout_that_does_not_finish_is_explained_with_conditions_and_pod_reasons() {
    let api = FakeApi::start();
    {
        let mut st = api.state.lock().unwrap();
        st.stuck = Some("a-baseline".into());
        // The Deployment's pod cannot pull its image.
        st.objects.entry(format!("{NS}/pods")).or_default().insert(
            "a-baseline-7c9f-x2".into(),
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "a-baseline-7c9f-x2", "namespace": "demo", "labels": {"app.kubernetes.io/name": "a-baseline"}},
                "spec": {"containers": [{"name": "function", "image": "python:3.12-slim"}]},
                "status": {"containerStatuses": [{"name": "function", "image": "python:3.12-slim", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"python:3.12-slim\""}}}]}
            }),
        );
    }
    let dir = repo();
    let kc = api.kubeconfig(dir.path());
    let started = Instant::now();
    let err = deploy_fails(dir.path(), &kc, &["--timeout", "2s"]);
    assert!(
        err.contains("timed out after 2s waiting for rollouts"),
        "{err}"
    );
    assert!(err.contains("Deployment/a-baseline"), "{err}");
    assert!(
        err.contains("condition Available=False: MinimumReplicasUnavailable"),
        "{err}"
    );
    assert!(
        err.contains("pod a-baseline-7c9f-x2 container function: waiting: ImagePullBackOff"),
        "{err}"
    );
    assert!(
        !err.contains("Deployment/cubeflash-gateway"),
        "the ready ones are not listed: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn a_broken_kubeconfig_is_named_as_such_not_as_no_cluster() {
    let dir = repo();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, "not: yaml: [\n").unwrap();
    let err = deploy_fails(dir.path(), &kc, &[]);
    assert!(err.contains("cannot use the kubeconfig"), "{err}");
    assert!(
        !err.contains("no Kubernetes cluster is configured"),
        "{err}"
    );
}
