//! The typed contexts templates are rendered from, built from a validated repo. Names and
//! paths that templates and the gateway must agree on are defined here, once.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::spec::function::{Baseline, Resources, Scale};
use crate::spec::project::Images;
use crate::spec::{Function, ProjectSpec, Runtime, Trigger};

use super::templates;
use super::RenderError;
use crate::names::labels;

pub use crate::names::{FUNCTION_PORT, GATEWAY_NAME, ROUTES_CONFIGMAP, RUN_AS_UID};
pub const CODE_DIR: &str = "/var/cubeflash/function";
pub const RUNTIME_DIR: &str = "/var/cubeflash/runtime";
/// A ConfigMap holds at most 1 MiB, metadata included.
pub const MAX_CODE_BYTES: usize = 1_000_000;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayContext {
    pub name: &'static str,
    pub port: u32,
    pub url: String,
    pub routes_config_map: &'static str,
    /// Requests that may wait for a scale-up, per function.
    pub queue_size: u32,
    /// Largest request body, in bytes.
    pub max_body_size: u64,
    pub max_connections: u32,
    pub header_timeout: String,
    pub body_timeout: String,
    pub idle_timeout: String,
    /// NATS (JetStream) for async calls and queue triggers, if cubeflash.yaml names one.
    pub nats_url: Option<String>,
    pub callback_hosts: Vec<String>,
    pub async_lease: String,
    pub async_retention: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectContext {
    pub namespace: String,
    pub images: Images,
    pub gateway: GatewayContext,
    pub uid: u32,
}

impl ProjectContext {
    pub fn new(project: &ProjectSpec) -> Self {
        Self {
            namespace: project.namespace.clone(),
            images: project.images.clone(),
            gateway: GatewayContext {
                name: GATEWAY_NAME,
                port: project.gateway.port,
                url: format!(
                    "http://{GATEWAY_NAME}.{}.svc:{}",
                    project.namespace, project.gateway.port
                ),
                routes_config_map: ROUTES_CONFIGMAP,
                queue_size: project.gateway.queue_size,
                max_body_size: project.gateway.max_body_size,
                max_connections: project.gateway.max_connections,
                header_timeout: project.gateway.header_timeout.text.clone(),
                body_timeout: project.gateway.body_timeout.text.clone(),
                idle_timeout: project.gateway.idle_timeout.text.clone(),
                nats_url: project.nats.as_ref().map(|n| n.url.clone()),
                callback_hosts: project.gateway.callback_hosts.clone(),
                async_lease: project.gateway.async_lease.text.clone(),
                async_retention: project.gateway.async_retention.text.clone(),
            },
            uid: RUN_AS_UID,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// Where a file of the code ConfigMap is mounted: its key there and its path in the pod.
#[derive(Debug, Clone, Serialize)]
pub struct CodeMount {
    pub key: String,
    pub path: String,
}

/// A file's content in the code ConfigMap, as text (`data`) or base64 (`binaryData`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeEntry {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionContext {
    pub name: String,
    pub runtime: Runtime,
    pub handler: Option<String>,
    pub image: String,
    pub command: Vec<String>,
    pub env: Vec<EnvVar>,
    /// Kubernetes Secrets mounted read-only at `/var/cubeflash/secrets/<name>`: names only.
    pub secrets: Vec<String>,
    pub triggers: Vec<Trigger>,
    pub scale: Scale,
    pub resources: Resources,
    pub timeout: String,
    pub timeout_seconds: u64,
    pub termination_grace_period_seconds: u64,
    pub baseline: Option<Baseline>,
    pub port: u16,
    pub code_config_map: Option<String>,
    pub code_dir: &'static str,
    pub runtime_dir: &'static str,
    /// User files, mounted at `codeDir`.
    pub files: Vec<CodeMount>,
    /// The runtime shim, mounted at `runtimeDir`.
    pub runtime_files: Vec<CodeMount>,
    /// All ConfigMap entries, split by encoding.
    pub text_files: Vec<CodeEntry>,
    pub binary_files: Vec<CodeEntry>,
    pub code_hash: String,
    /// `functions/<name>`, for annotations that lead a reviewer back to the source.
    pub source: String,
}

/// Which copy of a function a Deployment or Service template is rendering.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadContext {
    pub name: String,
    pub component: &'static str,
    pub replicas: u32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleContext {
    pub index: usize,
    pub name: String,
    pub cron: String,
    pub body: String,
    pub deadline_seconds: u64,
    pub timezone: Option<String>,
    /// How late the CronJob controller may still start a missed run: a minute, or an hour
    /// with `catchUp: true`.
    pub starting_deadline_seconds: u64,
}

/// The parts of a template's context that change from one object to the next; the
/// project and function parts are built once per function and shared.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectContext {
    pub workload: Option<WorkloadContext>,
    pub trigger: Option<ScheduleContext>,
    pub labels: BTreeMap<&'static str, String>,
    pub selector: BTreeMap<&'static str, String>,
}

/// The standard labels of an object, and the subset that selects its pods.
pub fn labels_for(
    name: &str,
    component: &'static str,
    function: Option<&str>,
) -> (
    BTreeMap<&'static str, String>,
    BTreeMap<&'static str, String>,
) {
    let mut all = BTreeMap::new();
    all.insert(labels::NAME, name.to_string());
    all.insert(labels::COMPONENT, component.to_string());
    all.insert(labels::PART_OF, "cubeflash".to_string());
    all.insert(labels::MANAGED_BY, labels::MANAGER.to_string());
    let mut selector = BTreeMap::new();
    selector.insert(labels::COMPONENT, component.to_string());
    match function {
        Some(f) => {
            all.insert(labels::FUNCTION, f.to_string());
            selector.insert(labels::FUNCTION, f.to_string());
        }
        None => {
            selector.insert(labels::NAME, name.to_string());
        }
    }
    (all, selector)
}

/// The shim a runtime ships, as (file name in the runtime folder, contents).
pub fn shim(runtime: Runtime) -> Option<(&'static str, &'static str)> {
    let path = match runtime {
        Runtime::Python => "runtimes/python/shim.py",
        Runtime::Node => "runtimes/node/shim.js",
        Runtime::Exec | Runtime::Image => return None,
    };
    let file = path.rsplit('/').next().expect("has a file name");
    Some((file, templates::builtin(path).expect("shims are built in")))
}

/// ConfigMap keys allow `[-._a-zA-Z0-9]`; nested paths are flattened with `__`.
fn config_map_key(path: &str) -> Option<String> {
    let key = path.replace('/', "__");
    let ok = !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    ok.then_some(key)
}

fn is_text(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let clean = !text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'));
    clean.then(|| text.to_string())
}

fn entry(key: String, bytes: &[u8]) -> CodeEntry {
    match is_text(bytes) {
        Some(text) => CodeEntry {
            key,
            text: Some(text),
            base64: None,
        },
        None => CodeEntry {
            key,
            text: None,
            base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        },
    }
}

impl FunctionContext {
    pub fn new(project: &ProjectSpec, f: &Function) -> Result<Self, RenderError> {
        let spec = &f.spec;
        let source = f.rel_dir.to_string_lossy().replace('\\', "/");
        let image = spec.image.clone().unwrap_or_else(|| match spec.runtime {
            Runtime::Python => project.images.python.clone(),
            Runtime::Node => project.images.node.clone(),
            Runtime::Exec | Runtime::Image => project.images.exec.clone(),
        });
        let shim = shim(spec.runtime);
        let command = match (spec.runtime, shim) {
            (Runtime::Python, Some((file, _))) => {
                vec!["python3".into(), format!("{RUNTIME_DIR}/{file}")]
            }
            (Runtime::Node, Some((file, _))) => {
                vec!["node".into(), format!("{RUNTIME_DIR}/{file}")]
            }
            (Runtime::Exec, _) => vec![
                "/bin/sh".into(),
                "-c".into(),
                spec.handler.clone().unwrap_or_default(),
            ],
            _ => Vec::new(),
        };

        let mut env: Vec<EnvVar> = spec
            .env
            .iter()
            .map(|(k, v)| EnvVar {
                name: k.clone(),
                value: v.clone(),
            })
            .collect();
        let mut fixed = vec![
            ("PORT", FUNCTION_PORT.to_string()),
            ("CUBEFLASH_FUNCTION", spec.name.clone()),
            ("HOME", "/tmp".into()),
        ];
        if let Some(h) = &spec.handler {
            if matches!(spec.runtime, Runtime::Python | Runtime::Node) {
                fixed.push(("CUBEFLASH_HANDLER", h.clone()));
            }
        }
        if !spec.secrets.is_empty() {
            fixed.push((
                crate::runtime::secrets::ENV,
                crate::runtime::secrets::CLUSTER_PATH.into(),
            ));
        }
        if spec.runtime == Runtime::Python {
            fixed.push(("PYTHONDONTWRITEBYTECODE", "1".into()));
            fixed.push(("PYTHONUNBUFFERED", "1".into()));
        }
        env.extend(fixed.into_iter().map(|(k, v)| EnvVar {
            name: k.into(),
            value: v,
        }));

        let ships_code = spec.runtime != Runtime::Image;
        let mut files = Vec::new();
        let mut runtime_files = Vec::new();
        let mut contents = Vec::new();
        let mut hasher = Sha256::new();
        let mut total = 0usize;
        if ships_code {
            for file in &f.files {
                let key = config_map_key(&file.path).ok_or_else(|| RenderError::BadFileName {
                    function: spec.name.clone(),
                    path: file.path.clone(),
                })?;
                total += file.bytes.len();
                hasher.update(file.path.as_bytes());
                hasher.update([0]);
                hasher.update(&file.bytes);
                hasher.update([0]);
                contents.push(entry(key.clone(), &file.bytes));
                files.push(CodeMount {
                    key,
                    path: file.path.clone(),
                });
            }
            if let Some((name, text)) = shim {
                let key = format!("cubeflash-runtime-{name}");
                if files.iter().any(|e| e.key == key) {
                    return Err(RenderError::BadFileName {
                        function: spec.name.clone(),
                        path: key,
                    });
                }
                total += text.len();
                hasher.update(text.as_bytes());
                contents.push(entry(key.clone(), text.as_bytes()));
                runtime_files.push(CodeMount {
                    key,
                    path: name.to_string(),
                });
            }
            let mut keys: Vec<&str> = files.iter().map(|e| e.key.as_str()).collect();
            keys.sort_unstable();
            if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
                return Err(RenderError::BadFileName {
                    function: spec.name.clone(),
                    path: w[0].to_string(),
                });
            }
        }
        if total > MAX_CODE_BYTES {
            return Err(RenderError::CodeTooLarge {
                function: spec.name.clone(),
                bytes: total,
            });
        }
        hasher.update(serde_json::to_vec(&env).expect("env serializes"));
        let code_hash = hex(&hasher.finalize()[..8]);
        let (text_files, binary_files) = contents.into_iter().partition(|e| e.text.is_some());
        let timeout_seconds = spec.timeout.seconds_ceil();
        Ok(Self {
            name: spec.name.clone(),
            runtime: spec.runtime,
            handler: spec.handler.clone(),
            image,
            command,
            env,
            secrets: spec.secrets.clone(),
            triggers: spec.triggers.clone(),
            scale: spec.scale.clone(),
            resources: spec.resources.clone(),
            timeout: spec.timeout.text.clone(),
            timeout_seconds,
            termination_grace_period_seconds: timeout_seconds + 5,
            baseline: spec.baseline.clone(),
            port: FUNCTION_PORT,
            code_config_map: ships_code.then(|| format!("{}-code", spec.name)),
            code_dir: CODE_DIR,
            runtime_dir: RUNTIME_DIR,
            files,
            runtime_files,
            text_files,
            binary_files,
            code_hash,
            source,
        })
    }

    pub fn workload(&self, baseline: bool) -> WorkloadContext {
        match (&self.baseline, baseline) {
            (Some(b), true) => WorkloadContext {
                name: format!("{}-baseline", self.name),
                component: "baseline",
                replicas: b.replicas,
            },
            _ => WorkloadContext {
                name: self.name.clone(),
                component: "function",
                replicas: self.scale.min,
            },
        }
    }

    pub fn schedules(&self) -> Vec<ScheduleContext> {
        self.triggers
            .iter()
            .filter_map(|t| match t {
                Trigger::Schedule(s) => Some(s),
                _ => None,
            })
            .enumerate()
            .map(|(i, s)| ScheduleContext {
                index: i + 1,
                name: format!("{}-schedule-{}", self.name, i + 1),
                cron: s.cron.clone(),
                body: s.body.clone(),
                timezone: s.timezone.clone(),
                starting_deadline_seconds: if s.catch_up { 3600 } else { 60 },
                deadline_seconds: self.timeout_seconds
                    + self.scale.cold_start_timeout.seconds_ceil()
                    + 30,
            })
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
