//! An in-process fake of the Kubernetes API server for tests: discovery, apply (PATCH),
//! get, list with label and field selectors, watch (replaying from a resourceVersion, as the
//! real one does), the scale subresource and delete; it records every request it answers
//! (method, path, query, content type, body) and can refuse (403) or conflict (409) on cue.
//! It forwards pod ports as the real one does (`pods/NAME/portforward`, a WebSocket with
//! kube's v4 channel protocol) to a local address standing in for the pod, and serves
//! metrics.k8s.io only when told to (a cluster without metrics-server answers 404).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: String,
    pub body: Value,
}

#[derive(Default)]
pub struct State {
    /// Collection path -> name -> object.
    pub objects: BTreeMap<String, BTreeMap<String, Value>>,
    pub seen: Vec<Seen>,
    /// Refuse this method on this resource plural with 403.
    pub forbid: Option<(String, String)>,
    /// Deployments with this name never finish rolling out.
    pub stuck: Option<String>,
    /// Answer PATCH of this object name with 409.
    pub conflict: Option<String>,
    pub version: u64,
    /// Open watches, each with its selectors.
    pub watches: Vec<Watch>,
    /// Pod name -> the local address its port-forward reaches.
    pub forwards: BTreeMap<String, std::net::SocketAddr>,
    /// Serve metrics.k8s.io (PodMetrics stored under its collection path).
    pub metrics: bool,
    /// Every change: version, collection, event type, object; a watch from version V replays
    /// what came after V, as the real API server does (so no change falls between a list and
    /// a watch).
    pub events: Vec<(u64, String, &'static str, Value)>,
}

/// One open watch: what it selects and where its events go.
pub struct Watch {
    pub collection: String,
    pub labels: String,
    pub fields: String,
    pub tx: tokio::sync::mpsc::UnboundedSender<Bytes>,
}

/// Whether `o` matches a label selector (`k=v,...`) and a field selector (dotted paths).
fn selects(o: &Value, labels: &str, fields: &str) -> bool {
    labels.split(',').filter(|s| !s.is_empty()).all(|kv| {
        let (k, v) = kv.split_once('=').unwrap();
        o["metadata"]["labels"][k] == v
    }) && fields.split(',').filter(|s| !s.is_empty()).all(|kv| {
        let (path, v) = kv.split_once('=').unwrap();
        path.split('.').fold(o, |at, key| &at[key]) == v
    })
}

impl State {
    /// Sends a MODIFIED event to every watch of `collection` that selects `object`.
    pub fn notify(&mut self, collection: &str, object: &Value) {
        self.event("MODIFIED", collection, object);
    }

    /// Sends an event of `kind` (ADDED, MODIFIED, DELETED) to the watches that select it.
    pub fn event(&mut self, kind: &'static str, collection: &str, object: &Value) {
        let version = object["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.version);
        self.events
            .push((version, collection.to_string(), kind, object.clone()));
        let line = Bytes::from(format!("{}\n", json!({"type": kind, "object": object})));
        self.watches.retain(|w| {
            w.collection != collection
                || !selects(object, &w.labels, &w.fields)
                || w.tx.send(line.clone()).is_ok()
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

pub struct FakeApi {
    pub port: u16,
    pub state: Arc<Mutex<State>>,
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
    pub fn start() -> Self {
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
                        .with_upgrades()
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
    pub fn kubeconfig(&self, dir: &Path) -> std::path::PathBuf {
        kubeconfig_for(dir, &format!("http://127.0.0.1:{}", self.port))
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn clear_seen(&self) {
        self.state.lock().unwrap().seen.clear();
    }

    pub fn names(&self, collection: &str) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(collection)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn object_count(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .objects
            .values()
            .map(BTreeMap::len)
            .sum()
    }
}

pub fn kubeconfig_for(dir: &Path, server: &str) -> std::path::PathBuf {
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
    if req.uri().path().ends_with("/portforward") {
        return portforward(state, req);
    }
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
    if path.starts_with("/apis/metrics.k8s.io/") && !st.metrics {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
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
        if st
            .forbid
            .as_ref()
            .is_some_and(|(m, p)| *m == method.as_str() && p == "deployments/scale")
        {
            return status(403, "Forbidden", &format!("deployments.apps \"{name}\" is forbidden: User \"system:serviceaccount:{ns}:cubeflash-gateway\" cannot {} resource \"deployments/scale\" in API group \"apps\" in the namespace \"{ns}\"", method.as_str().to_lowercase()));
        }
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
            let labels = query.get("labelSelector").cloned().unwrap_or_default();
            let fields = query.get("fieldSelector").cloned().unwrap_or_default();
            for (v, c, kind, o) in &st.events {
                if *v > from && *c == collection && selects(o, &labels, &fields) {
                    let _ = tx.send(Bytes::from(format!(
                        "{}\n",
                        json!({"type": kind, "object": o})
                    )));
                }
            }
            st.watches.push(Watch {
                collection,
                labels,
                fields,
                tx,
            });
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
                .filter(|o| selects(o, &selector, &field))
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
                let mut gone = st
                    .objects
                    .get_mut(&collection)
                    .unwrap()
                    .remove(&name)
                    .unwrap();
                st.version += 1;
                gone["metadata"]["resourceVersion"] = json!(st.version.to_string());
                st.event("DELETED", &collection, &gone);
            }
            respond(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
            )
        }
        _ => status(405, "MethodNotAllowed", "not in the fake"),
    }
}

/// `GET .../pods/NAME/portforward?ports=P` upgraded to a WebSocket (subprotocol
/// v4.channel.k8s.io): the first frame on the data channel (0) and on the error channel (1)
/// carries the port, little-endian; after that every binary frame is a channel byte and data,
/// relayed to and from a TCP connection to the pod's stand-in address.
fn portforward(state: &Mutex<State>, mut req: Request<Incoming>) -> Response<Body> {
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::{self, protocol::Role, Message};
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let mut st = state.lock().unwrap();
    st.seen.push(Seen {
        method: req.method().to_string(),
        path: path.clone(),
        query: query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        content_type: String::new(),
        body: Value::Null,
    });
    let segs: Vec<&str> = path.trim_start_matches("/api/v1/").split('/').collect();
    let ["namespaces", ns, "pods", pod, "portforward"] = segs.as_slice() else {
        return status(404, "NotFound", "no such path");
    };
    if st
        .forbid
        .as_ref()
        .is_some_and(|(m, p)| m == "CREATE" && p == "pods/portforward")
    {
        return status(403, "Forbidden", &format!("pods \"{pod}\" is forbidden: User \"dev\" cannot create resource \"pods/portforward\" in API group \"\" in the namespace \"{ns}\""));
    }
    let Some(addr) = st.forwards.get(*pod).copied() else {
        return status(404, "NotFound", &format!("pods \"{pod}\" not found"));
    };
    drop(st);
    let port: u16 = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("ports="))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return status(400, "BadRequest", "not a WebSocket upgrade");
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        let (mut sink, mut frames) = ws.split();
        let p = port.to_le_bytes();
        for ch in [0u8, 1] {
            if sink
                .send(Message::binary(vec![ch, p[0], p[1]]))
                .await
                .is_err()
            {
                return;
            }
        }
        let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
            let _ = sink
                .send(Message::binary(
                    [&[1u8][..], b"connection refused"].concat(),
                ))
                .await;
            return;
        };
        let (mut from_pod, mut to_pod) = tcp.into_split();
        let up = async move {
            while let Some(Ok(m)) = frames.next().await {
                let written = match m {
                    Message::Binary(b) if b.len() > 1 && b[0] == 0 => {
                        to_pod.write_all(&b[1..]).await.is_ok()
                    }
                    Message::Close(_) => false,
                    _ => true,
                };
                if !written {
                    break;
                }
            }
            let _ = to_pod.shutdown().await;
        };
        let down = async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from_pod.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut frame = Vec::with_capacity(n + 1);
                        frame.push(0);
                        frame.extend_from_slice(&buf[..n]);
                        if sink.send(Message::binary(frame)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = sink.send(Message::Close(None)).await;
        };
        tokio::join!(up, down);
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-protocol", "v4.channel.k8s.io")
        .header(
            "sec-websocket-accept",
            tungstenite::handshake::derive_accept_key(key.as_bytes()),
        )
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
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

/// `cubeflash deploy --target kubernetes` of `dir` against `kubeconfig`.
pub fn deploy(dir: &Path, kubeconfig: &Path, extra: &[&str]) -> std::process::Output {
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
