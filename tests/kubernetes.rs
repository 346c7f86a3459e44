//! The Kubernetes target through kube's own client against an in-process fake API server
//! that records every request (method, path, query, content type, body) and keeps the
//! objects it is sent: a first deploy, a re-deploy that prunes and changes, a dry run, RBAC
//! refusals, conflicts, an unreachable server, a stale generated/, and delete.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cubeflash, text};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Value,
}

#[derive(Default)]
struct State {
    /// Collection path -> name -> object.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    seen: Vec<Seen>,
    /// Refuse this method on this resource plural with 403.
    forbid: Option<(String, String)>,
    /// Deployments with this name never finish rolling out.
    stuck: Option<String>,
    /// Answer PATCH of this object name with 409.
    conflict: Option<String>,
    version: u64,
    /// Open watches: collection path and where to send its events.
    watches: Vec<(String, tokio::sync::mpsc::UnboundedSender<Bytes>)>,
    /// Every change: version, collection, object; a watch from version V replays what came
    /// after V, as the real API server does (so no change falls between a list and a watch).
    events: Vec<(u64, String, Value)>,
}

impl State {
    /// Sends a MODIFIED event to every watch of `collection`.
    fn notify(&mut self, collection: &str, object: &Value) {
        let version = object["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.version);
        self.events
            .push((version, collection.to_string(), object.clone()));
        let line = Bytes::from(format!(
            "{}\n",
            json!({"type": "MODIFIED", "object": object})
        ));
        self.watches
            .retain(|(c, tx)| c != collection || tx.send(line.clone()).is_ok());
    }
}

type Body = BoxBody<Bytes, Infallible>;

struct FakeApi {
    port: u16,
    state: Arc<Mutex<State>>,
    _rt: tokio::runtime::Runtime,
}

const RESOURCES: &[(&str, &str, &str, bool)] = &[
    ("v1", "namespaces", "Namespace", false),
    ("v1", "serviceaccounts", "ServiceAccount", true),
    ("v1", "configmaps", "ConfigMap", true),
    ("v1", "secrets", "Secret", true),
    ("v1", "services", "Service", true),
    ("v1", "pods", "Pod", true),
    ("v1", "events", "Event", true),
    ("apps/v1", "deployments", "Deployment", true),
    ("batch/v1", "cronjobs", "CronJob", true),
    ("batch/v1", "jobs", "Job", true),
    ("rbac.authorization.k8s.io/v1", "roles", "Role", true),
    (
        "rbac.authorization.k8s.io/v1",
        "rolebindings",
        "RoleBinding",
        true,
    ),
    (
        "policy/v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
    ),
    (
        "networking.k8s.io/v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
    ),
];

impl FakeApi {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = state.clone();
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            port,
            state,
            _rt: rt,
        }
    }

    /// A kubeconfig with one context, `fake`, pointing here.
    fn kubeconfig(&self, dir: &Path) -> std::path::PathBuf {
        kubeconfig_for(dir, &format!("http://127.0.0.1:{}", self.port))
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn clear_seen(&self) {
        self.state.lock().unwrap().seen.clear();
    }

    fn names(&self, collection: &str) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(collection)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn object_count(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .objects
            .values()
            .map(BTreeMap::len)
            .sum()
    }
}

fn kubeconfig_for(dir: &Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{server}\"}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{token: test-token}}\n"),
    )
    .unwrap();
    path
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    respond(
        StatusCode::from_u16(code).unwrap(),
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message}),
    )
}

async fn handle(state: &Mutex<State>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), urldecode(v))
        })
        .collect();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut st = state.lock().unwrap();
    st.seen.push(Seen {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        content_type,
        body: body.clone(),
    });
    // Discovery.
    for gv in [
        "v1",
        "apps/v1",
        "batch/v1",
        "rbac.authorization.k8s.io/v1",
        "policy/v1",
        "networking.k8s.io/v1",
    ] {
        let prefix = if gv == "v1" {
            "/api/v1".to_string()
        } else {
            format!("/apis/{gv}")
        };
        if path == prefix && method == Method::GET {
            let resources: Vec<Value> = RESOURCES
                .iter()
                .filter(|r| r.0 == gv)
                .map(|r| json!({"name": r.1, "singularName": "", "kind": r.2, "namespaced": r.3, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}))
                .collect();
            return respond(
                StatusCode::OK,
                &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
            );
        }
    }
    // Objects: <prefix>/namespaces[/<ns>/<plural>][/<name>]
    let (prefix, rest) = match path.strip_prefix("/api/v1/") {
        Some(r) => ("/api/v1".to_string(), r.to_string()),
        None => {
            let p: Vec<&str> = path.trim_start_matches("/apis/").splitn(3, '/').collect();
            if p.len() < 3 {
                return status(404, "NotFound", "no such path");
            }
            (format!("/apis/{}/{}", p[0], p[1]), p[2].to_string())
        }
    };
    let segs: Vec<&str> = rest.split('/').collect();
    // The scale subresource: sets the Deployment's replicas, which become ready at once.
    if let ["namespaces", ns, "deployments", name, "scale"] = segs.as_slice() {
        let collection = format!("{prefix}/namespaces/{ns}/deployments");
        let replicas = body["spec"]["replicas"].as_i64().unwrap_or(0);
        let Some(mut d) = st
            .objects
            .get(&collection)
            .and_then(|m| m.get(*name))
            .cloned()
        else {
            return status(404, "NotFound", "no such deployment");
        };
        st.version += 1;
        d["metadata"]["resourceVersion"] = json!(st.version.to_string());
        d["spec"]["replicas"] = json!(replicas);
        d["status"]["replicas"] = json!(replicas);
        d["status"]["readyReplicas"] = json!(replicas);
        st.objects
            .get_mut(&collection)
            .unwrap()
            .insert(name.to_string(), d.clone());
        st.notify(&collection, &d);
        return respond(
            StatusCode::OK,
            &json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": name, "namespace": ns}, "spec": {"replicas": replicas}, "status": {"replicas": replicas}}),
        );
    }
    let (collection, name, plural) = match segs.as_slice() {
        ["namespaces"] => (format!("{prefix}/namespaces"), None, "namespaces"),
        ["namespaces", n] => (
            format!("{prefix}/namespaces"),
            Some(n.to_string()),
            "namespaces",
        ),
        ["namespaces", ns, plural] => (format!("{prefix}/namespaces/{ns}/{plural}"), None, *plural),
        ["namespaces", ns, plural, n] => (
            format!("{prefix}/namespaces/{ns}/{plural}"),
            Some(n.to_string()),
            *plural,
        ),
        _ => return status(404, "NotFound", "no such path"),
    };
    if let Some((m, p)) = &st.forbid {
        if *m == method.as_str() && p == plural {
            let ns = segs.get(1).copied().unwrap_or("");
            return status(403, "Forbidden", &format!("{plural} is forbidden: User \"dev\" cannot {} resource \"{plural}\" in API group \"\" in the namespace \"{ns}\"", method.as_str().to_lowercase()));
        }
    }
    // Patches carry dryRun in the query, deletes in their DeleteOptions body: the real API
    // server honours both.
    let dry = query.get("dryRun").is_some_and(|v| v == "All") || body["dryRun"] == json!(["All"]);
    match (method, name) {
        (Method::PATCH, Some(name)) => {
            if st.conflict.as_deref() == Some(name.as_str())
                && query.get("force").is_none_or(|f| f != "true")
            {
                return status(409, "Conflict", "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using apps/v1: .spec.template.spec.containers[name=\"function\"].env");
            }
            st.version += 1;
            let mut obj = body.clone();
            obj["metadata"]["resourceVersion"] = json!(st.version.to_string());
            obj["metadata"]["uid"] = json!(format!("uid-{name}"));
            if plural == "deployments" && st.stuck.as_deref() == Some(name.as_str()) {
                obj["status"] = json!({
                    "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "unavailableReplicas": 1,
                    "conditions": [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable", "message": "Deployment does not have minimum availability."}]
                });
            } else if plural == "deployments" {
                let replicas = obj["spec"]["replicas"].as_i64().unwrap_or(1);
                obj["status"] = json!({
                    "observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                    "readyReplicas": replicas, "availableReplicas": replicas,
                    "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "message": "rolled out"}]
                });
            }
            if !dry {
                st.objects
                    .entry(collection.clone())
                    .or_default()
                    .insert(name, obj.clone());
                st.notify(&collection, &obj);
            }
            respond(StatusCode::OK, &obj)
        }
        (Method::GET, Some(name)) => match st.objects.get(&collection).and_then(|m| m.get(&name)) {
            Some(o) => respond(StatusCode::OK, o),
            None => status(404, "NotFound", &format!("{plural} \"{name}\" not found")),
        },
        (Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
            let from: u64 = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            for (v, c, o) in &st.events {
                if *v > from && *c == collection {
                    let _ = tx.send(Bytes::from(format!(
                        "{}\n",
                        json!({"type": "MODIFIED", "object": o})
                    )));
                }
            }
            st.watches.push((collection, tx));
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(hyper::body::Frame::data(b)), rx))
            });
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(StreamBody::new(stream).boxed())
                .unwrap()
        }
        (Method::GET, None) => {
            let selector = query.get("labelSelector").cloned().unwrap_or_default();
            let field = query.get("fieldSelector").cloned().unwrap_or_default();
            let items: Vec<Value> = st
                .objects
                .get(&collection)
                .map(|m| m.values().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .filter(|o| {
                    selector.split(',').filter(|s| !s.is_empty()).all(|kv| {
                        let (k, v) = kv.split_once('=').unwrap();
                        o["metadata"]["labels"][k] == v
                    }) && field.split(',').filter(|s| !s.is_empty()).all(|kv| {
                        // Field selectors: a dotted path into the object = value.
                        let (path, v) = kv.split_once('=').unwrap();
                        path.split('.').fold(o, |at, key| &at[key]) == v
                    })
                })
                .collect();
            respond(
                StatusCode::OK,
                &json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": st.version.to_string()}, "items": items}),
            )
        }
        (Method::DELETE, Some(name)) => {
            let found = st
                .objects
                .get(&collection)
                .is_some_and(|m| m.contains_key(&name));
            if !found {
                return status(404, "NotFound", &format!("{plural} \"{name}\" not found"));
            }
            if !dry {
                st.objects.get_mut(&collection).unwrap().remove(&name);
            }
            respond(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
            )
        }
        _ => status(405, "MethodNotAllowed", "not in the fake"),
    }
}

fn urldecode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

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

fn deploy(dir: &Path, kubeconfig: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["deploy", "--target", "kubernetes"];
    if !extra.contains(&"--timeout") {
        args.extend_from_slice(&["--timeout", "10s"]);
    }
    args.extend_from_slice(extra);
    std::process::Command::new(env!("CARGO_BIN_EXE_cubeflash"))
        .args(&args)
        .current_dir(dir)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap()
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
    let o = deploy(dir.path(), &kc, &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
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
    let o = deploy(dir.path(), &kc, &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
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
    let o = deploy(dir.path(), &kc, &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
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
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["a", "0", "0", "1/1"]),
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
        .current_dir(dir)
        .env("KUBECONFIG", kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
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
    {
        let mut st = api.state.lock().unwrap();
        let cm = st
            .objects
            .get_mut(&format!("{NS}/configmaps"))
            .unwrap()
            .get_mut("cubeflash-routes")
            .unwrap();
        let routes = cm["data"]["routes.json"]
            .as_str()
            .unwrap()
            .replace("http://a.demo.svc:8080", &replica.url(""));
        cm["data"]["routes.json"] = json!(routes);
    }
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
    while reqwest::blocking::get(format!("{}/bonjour", gw.url))
        .unwrap()
        .status()
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "the new route table was not loaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        reqwest::blocking::get(format!("{}/hello", gw.url))
            .unwrap()
            .status(),
        404
    );

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
    let o = deploy(dir.path(), &kc, &["--timeout", "2s"]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
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
