//! `cubeflash.yaml`: the project's namespace, target, images and gateway settings.

use marked_yaml::Node;
use serde::Serialize;

use super::decode::{Fields, Reader};
use super::diagnostic::{Diagnostics, SourceFile};
use super::values::{self, Dur};

pub const FILE_NAME: &str = "cubeflash.yaml";

pub mod defaults {
    pub const NAMESPACE: &str = "cubeflash";
    pub const PYTHON_IMAGE: &str = "python:3.12-slim";
    pub const NODE_IMAGE: &str = "node:20-slim";
    pub const EXEC_IMAGE: &str = "python:3.12-slim";
    pub const GATEWAY_IMAGE: &str = "ghcr.io/cubeflash/cubeflash:0.1.0";
    pub const GATEWAY_PORT: u32 = 8080;
    pub const MAX_BODY_SIZE: &str = "6Mi";
    pub const QUEUE_SIZE: u32 = 100;
    pub const MAX_CONNECTIONS: u32 = 2048;
    pub const HEADER_TIMEOUT: &str = "30s";
    pub const BODY_TIMEOUT: &str = "30s";
    pub const IDLE_TIMEOUT: &str = "75s";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Local,
    Kubernetes,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Images {
    pub python: String,
    pub node: String,
    pub exec: String,
    pub gateway: String,
}

/// Where async calls are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AsyncStore {
    /// `.cubeflash/calls.redb` (the local platform's default).
    Redb,
    /// NATS JetStream at `nats.url` (always so on Kubernetes).
    JetStream,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewaySettings {
    /// Where async calls are kept: unset means redb locally, JetStream on Kubernetes.
    pub async_store: Option<AsyncStore>,
    /// How long a gateway holds a JetStream async call without renewing it before another
    /// takes it over.
    pub async_lease: Dur,
    /// How long succeeded and failed async calls are kept (dead ones stay until purged).
    pub async_retention: Dur,
    pub port: u32,
    /// Largest request body, in bytes.
    pub max_body_size: u64,
    /// Requests that may wait for a replica, per function.
    pub queue_size: u32,
    /// Client connections served at once.
    pub max_connections: u32,
    /// A request head must arrive within this.
    pub header_timeout: Dur,
    /// A request body that sends nothing for this long gets 408.
    pub body_timeout: Dur,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Dur,
    /// Hosts (`host` or `host:port`) an async call's `X-Callback-Url` may name; none by
    /// default, so a caller cannot make the gateway send requests anywhere.
    pub callback_hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectSpec {
    pub namespace: String,
    pub target: Target,
    pub images: Images,
    pub gateway: GatewaySettings,
    /// The NATS server (with JetStream) queue triggers consume from.
    pub nats: Option<NatsSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NatsSettings {
    /// `nats://host:port` (user and password or token in it if the server needs them).
    pub url: String,
}

impl ProjectSpec {
    /// The async call store on `target`: JetStream in a cluster, else as configured.
    pub fn async_store(&self, target: Target) -> AsyncStore {
        match (target, self.gateway.async_store) {
            (Target::Kubernetes, _) => AsyncStore::JetStream,
            (Target::Local, store) => store.unwrap_or(AsyncStore::Redb),
        }
    }
}

impl Default for ProjectSpec {
    fn default() -> Self {
        Self {
            namespace: defaults::NAMESPACE.into(),
            target: Target::Local,
            images: Images {
                python: defaults::PYTHON_IMAGE.into(),
                node: defaults::NODE_IMAGE.into(),
                exec: defaults::EXEC_IMAGE.into(),
                gateway: defaults::GATEWAY_IMAGE.into(),
            },
            gateway: GatewaySettings {
                port: defaults::GATEWAY_PORT,
                max_body_size: values::quantity_bytes(defaults::MAX_BODY_SIZE)
                    .expect("default parses"),
                queue_size: defaults::QUEUE_SIZE,
                max_connections: defaults::MAX_CONNECTIONS,
                header_timeout: Dur::parse(defaults::HEADER_TIMEOUT).expect("default parses"),
                body_timeout: Dur::parse(defaults::BODY_TIMEOUT).expect("default parses"),
                idle_timeout: Dur::parse(defaults::IDLE_TIMEOUT).expect("default parses"),
                callback_hosts: Vec::new(),
                async_store: None,
                async_lease: Dur::parse("10s").expect("default parses"),
                async_retention: Dur::parse("24h").expect("default parses"),
            },
            nats: None,
        }
    }
}

/// Decodes cubeflash.yaml, reporting every problem found in it.
pub fn decode(file: &SourceFile, root: &Node) -> Result<ProjectSpec, Diagnostics> {
    let mut r = Reader::new(file);
    let mut p = ProjectSpec::default();
    if let Some(f) = r.mapping(
        root,
        "",
        &["namespace", "target", "images", "gateway", "nats"],
    ) {
        if let Some(n) = f.get("nats") {
            if let Some(nf) = r.mapping(n, "nats", &["url"]) {
                let hint = "e.g. `nats: { url: nats://127.0.0.1:4222 }`";
                if let Some(u) = r.required(&nf, "url", hint) {
                    if let Some(url) = r.string(u, "nats.url", hint) {
                        if url.starts_with("nats://") || url.starts_with("tls://") {
                            p.nats = Some(NatsSettings { url });
                        } else {
                            r.error(u, "nats.url", format!("{url:?} is not a NATS URL"), hint);
                        }
                    }
                }
            }
        }
        if let Some(n) = f.get("namespace") {
            if let Some(ns) = r.string(n, "namespace", "") {
                if ns == "default" {
                    r.error(
                        n,
                        "namespace",
                        "the `default` namespace is not used",
                        "give the project a namespace of its own, e.g. `namespace: cubeflash`",
                    );
                } else if let Err(why) = values::check_dns_label(&ns, 63) {
                    r.error(n, "namespace", why, "");
                }
                p.namespace = ns;
            }
        }
        if let Some(n) = f.get("target") {
            match r.string(n, "target", "").as_deref() {
                Some("local") => p.target = Target::Local,
                Some("kubernetes") => p.target = Target::Kubernetes,
                Some(other) => r.error(
                    n,
                    "target",
                    format!("unknown target {other:?}"),
                    "use `local` (the embedded platform) or `kubernetes`",
                ),
                None => {}
            }
        }
        if let Some(n) = f.get("images") {
            if let Some(i) = r.mapping(n, "images", &["python", "node", "exec", "gateway"]) {
                image(&mut r, &i, "python", &mut p.images.python);
                image(&mut r, &i, "node", &mut p.images.node);
                image(&mut r, &i, "exec", &mut p.images.exec);
                image(&mut r, &i, "gateway", &mut p.images.gateway);
            }
        }
        if let Some(n) = f.get("gateway") {
            if let Some(g) = r.mapping(
                n,
                "gateway",
                &[
                    "port",
                    "maxBodySize",
                    "queueSize",
                    "maxConnections",
                    "headerTimeout",
                    "bodyTimeout",
                    "idleTimeout",
                    "callbackHosts",
                    "asyncStore",
                    "asyncLease",
                    "asyncRetention",
                ],
            ) {
                if let Some(n) = g.get("asyncStore") {
                    match r.string(n, "gateway.asyncStore", "").as_deref() {
                        Some("jetstream") if p.nats.is_none() => r.error(
                            n,
                            "gateway.asyncStore",
                            "async calls stored in JetStream need a NATS server, and cubeflash.yaml names none",
                            "add `nats: { url: nats://127.0.0.1:4222 }` (run one with `nats-server -js`), or use `asyncStore: redb`",
                        ),
                        Some("jetstream") => p.gateway.async_store = Some(AsyncStore::JetStream),
                        Some("redb") if p.target == Target::Kubernetes => r.error(
                            n,
                            "gateway.asyncStore",
                            "redb keeps async calls on the gateway's disk, and a gateway pod's disk is not a durable queue",
                            "on the Kubernetes target async calls are stored in NATS JetStream: remove `asyncStore` and set `nats: { url: ... }`",
                        ),
                        Some("redb") => p.gateway.async_store = Some(AsyncStore::Redb),
                        Some(other) => r.error(
                            n,
                            "gateway.asyncStore",
                            format!("unknown async call store {other:?}"),
                            "use `redb` (a file under .cubeflash/, local platform only) or `jetstream` (the NATS server at nats.url)",
                        ),
                        None => {}
                    }
                }
                if let Some(n) = g.get("callbackHosts") {
                    let hint = "list host names or host:port, e.g. `callbackHosts: [127.0.0.1:9000, hooks.example.com]`";
                    for item in r
                        .sequence(n, "gateway.callbackHosts", hint)
                        .unwrap_or_default()
                    {
                        let Some(host) = r.string(item, "gateway.callbackHosts", hint) else {
                            continue;
                        };
                        if host.is_empty() || host.contains('/') || host.contains(' ') {
                            r.error(
                                item,
                                "gateway.callbackHosts",
                                format!("{host:?} is not a host or host:port"),
                                hint,
                            );
                        } else {
                            p.gateway.callback_hosts.push(host.to_ascii_lowercase());
                        }
                    }
                }
                if let Some(c) = g
                    .get("maxConnections")
                    .and_then(|n| r.uint(n, "gateway.maxConnections", 1, 1_000_000))
                {
                    p.gateway.max_connections = c;
                }
                for (key, out) in [
                    ("asyncLease", &mut p.gateway.async_lease),
                    ("asyncRetention", &mut p.gateway.async_retention),
                    ("headerTimeout", &mut p.gateway.header_timeout),
                    ("bodyTimeout", &mut p.gateway.body_timeout),
                    ("idleTimeout", &mut p.gateway.idle_timeout),
                ] {
                    let Some(n) = g.get(key) else { continue };
                    let path = format!("gateway.{key}");
                    if let Some(value) = r.duration(n, &path, false, "30s") {
                        let text = r.scalar_text(n, &path, "").unwrap_or_default();
                        if key == "asyncLease" && value < std::time::Duration::from_secs(1) {
                            r.error(
                                n,
                                &path,
                                format!("asyncLease {text} is too short: a running call renews its lease every third of it"),
                                "use 1s or more, e.g. `asyncLease: 10s`",
                            );
                        }
                        *out = Dur { text, value };
                    }
                }
                if let Some(port) = g
                    .get("port")
                    .and_then(|n| r.uint(n, "gateway.port", 1, 65535))
                {
                    p.gateway.port = port;
                }
                if let Some(q) = g
                    .get("queueSize")
                    .and_then(|n| r.uint(n, "gateway.queueSize", 1, 1_000_000))
                {
                    p.gateway.queue_size = q;
                }
                if let Some(n) = g.get("maxBodySize") {
                    if let Some(text) = r.scalar_text(n, "gateway.maxBodySize", "") {
                        match values::quantity_bytes(&text) {
                            Some(b) if b > 0 => p.gateway.max_body_size = b,
                            _ => r.error(
                                n,
                                "gateway.maxBodySize",
                                format!("{text:?} is not a size"),
                                "write bytes with a suffix, e.g. 6Mi, 512Ki or 1Gi",
                            ),
                        }
                    }
                }
            }
        }
    }
    if r.diags.is_empty() {
        Ok(p)
    } else {
        Err(r.diags)
    }
}

fn image(r: &mut Reader, f: &Fields, key: &str, out: &mut String) {
    let Some(n) = f.get(key) else { return };
    let path = f.path_of(key);
    let Some(text) = r.string(n, &path, "") else {
        return;
    };
    match values::check_image(&text) {
        Ok(()) => *out = text,
        Err(why) => r.error(n, &path, why, ""),
    }
}
