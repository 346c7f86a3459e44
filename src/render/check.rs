//! Checks one rendered manifest before it is written: exactly one object, of a kind cubeflash
//! knows; deserialized into its k8s-openapi type and serialized back with no field lost
//! (which catches template typos Kubernetes would drop or reject); in the project's
//! namespace; and every pod with cubeflash's secure defaults. Pure: text in, problems out.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PodSpec, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::values::check_image;

/// The kinds a template may render, as `apiVersion kind`.
pub const SUPPORTED_KINDS: &[&str] = &[
    "v1 Namespace",
    "v1 ServiceAccount",
    "v1 ConfigMap",
    "v1 Secret",
    "v1 Service",
    "apps/v1 Deployment",
    "batch/v1 CronJob",
    "batch/v1 Job",
    "rbac.authorization.k8s.io/v1 Role",
    "rbac.authorization.k8s.io/v1 RoleBinding",
    "policy/v1 PodDisruptionBudget",
    "networking.k8s.io/v1 NetworkPolicy",
    "networking.k8s.io/v1 Ingress",
];

/// What a checked object is, for ordering and pruning on deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

/// Checks a rendered manifest; `Ok(None)` when the template rendered nothing.
pub fn check_manifest(text: &str, namespace: &str) -> Result<Option<ObjectInfo>, Vec<String>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).map_err(|e| vec![format!("is not valid YAML: {e}")])?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    let value = match docs.len() {
        0 => return Ok(None),
        1 => docs.pop().expect("one document"),
        n => {
            return Err(vec![format!(
                "holds {n} objects; a template renders one object per file"
            )])
        }
    };
    let field = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let meta = value.get("metadata");
    let meta_str = |key: &str| {
        meta.and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let info = ObjectInfo {
        api_version: api_version.clone(),
        kind: kind.clone(),
        name: meta_str("name").unwrap_or_default(),
        namespace: meta_str("namespace"),
    };
    let mut problems = Vec::new();
    if info.name.is_empty() {
        problems.push("has no metadata.name".to_string());
    }
    let pods = match round_trip(&api_version, &kind, &value) {
        Ok((back, pods)) => {
            lost_fields(&value, &back, "", &kind, &api_version, &mut problems);
            pods
        }
        Err(e) => {
            problems.push(e);
            Vec::new()
        }
    };
    if kind == "Namespace" {
        if info.name != namespace {
            problems.push(format!(
                "is the Namespace {:?}, not the project's namespace {namespace:?}",
                info.name
            ));
        }
    } else {
        match &info.namespace {
            None => problems.push(format!(
                "has no metadata.namespace: set it to the project's namespace {namespace:?}"
            )),
            Some(ns) if ns == "default" => problems.push(
                "is in the `default` namespace: cubeflash objects live in the project's namespace"
                    .to_string(),
            ),
            Some(ns) if ns != namespace => problems.push(format!(
                "is in namespace {ns:?}, not the project's namespace {namespace:?}"
            )),
            Some(_) => {}
        }
    }
    for (path, pod) in &pods {
        check_pod(pod, path, &mut problems);
    }
    if problems.is_empty() {
        Ok(Some(info))
    } else {
        Err(problems)
    }
}

type Pods = Vec<(&'static str, PodSpec)>;

fn typed<T: DeserializeOwned + Serialize>(value: &Value) -> Result<(T, Value), String> {
    let object: T = serde_json::from_value(value.clone())
        .map_err(|e| format!("does not match the Kubernetes API type: {e}"))?;
    let back = serde_json::to_value(&object).expect("k8s objects serialize");
    Ok((object, back))
}

fn plain<T: DeserializeOwned + Serialize>(value: &Value) -> Result<(Value, Pods), String> {
    typed::<T>(value).map(|(_, back)| (back, Vec::new()))
}

fn round_trip(api_version: &str, kind: &str, value: &Value) -> Result<(Value, Pods), String> {
    match (api_version, kind) {
        ("v1", "Namespace") => plain::<Namespace>(value),
        ("v1", "ServiceAccount") => plain::<ServiceAccount>(value),
        ("v1", "ConfigMap") => plain::<ConfigMap>(value),
        ("v1", "Secret") => {
            // generated/ is committed: a value in it is a leaked secret.
            let holds = |key: &str| value[key].as_object().is_some_and(|m| !m.is_empty());
            if holds("data") || holds("stringData") {
                return Err("is a Secret with values in it, and generated/ is committed to git: render no Secret data; list the secret in function.yaml's `secrets:` and create it in the cluster (`kubectl create secret generic NAME --from-literal=KEY=...`)".into());
            }
            plain::<Secret>(value)
        }
        ("v1", "Service") => plain::<Service>(value),
        ("rbac.authorization.k8s.io/v1", "Role") => plain::<Role>(value),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => plain::<RoleBinding>(value),
        ("policy/v1", "PodDisruptionBudget") => plain::<PodDisruptionBudget>(value),
        ("networking.k8s.io/v1", "NetworkPolicy") => plain::<NetworkPolicy>(value),
        ("networking.k8s.io/v1", "Ingress") => plain::<Ingress>(value),
        ("apps/v1", "Deployment") => typed::<Deployment>(value).map(|(d, back)| {
            let pod = d.spec.and_then(|s| s.template.spec);
            (back, pod.map(|p| vec![("spec.template.spec", p)]).unwrap_or_default())
        }),
        ("batch/v1", "Job") => typed::<Job>(value).map(|(j, back)| {
            let pod = j.spec.and_then(|s| s.template.spec);
            (back, pod.map(|p| vec![("spec.template.spec", p)]).unwrap_or_default())
        }),
        ("batch/v1", "CronJob") => typed::<CronJob>(value).map(|(c, back)| {
            let pod = c.spec.and_then(|s| s.job_template.spec).and_then(|j| j.template.spec);
            (back, pod.map(|p| vec![("spec.jobTemplate.spec.template.spec", p)]).unwrap_or_default())
        }),
        _ => Err(format!(
            "has apiVersion {api_version:?} and kind {kind:?}, which cubeflash cannot check; supported: {}",
            SUPPORTED_KINDS.join(", ")
        )),
    }
}

/// Every field of `orig` that the typed round trip dropped or changed.
fn lost_fields(
    orig: &Value,
    back: &Value,
    path: &str,
    kind: &str,
    api: &str,
    out: &mut Vec<String>,
) {
    let child = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (orig, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (key, value) in o {
                match b.get(key) {
                    Some(bv) => lost_fields(value, bv, &child(key), kind, api, out),
                    None if is_empty(value) => {}
                    None => out.push(format!("{} is not a field of {kind} ({api}): Kubernetes would drop it; check the spelling and indentation", child(key))),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) if o.len() == b.len() => {
            for (i, (ov, bv)) in o.iter().zip(b).enumerate() {
                lost_fields(ov, bv, &format!("{path}[{i}]"), kind, api, out);
            }
        }
        (o, b) if o == b => {}
        (o, b) => out.push(format!("{path} changed from {o} to {b} when read as {kind} ({api}): write it as the API expects")),
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// cubeflash's secure defaults for every pod it renders.
fn check_pod(pod: &PodSpec, path: &str, out: &mut Vec<String>) {
    let psc = pod.security_context.as_ref();
    let pod_non_root = psc.and_then(|s| s.run_as_non_root) == Some(true);
    let pod_uid = psc.and_then(|s| s.run_as_user);
    let pod_seccomp = psc
        .and_then(|s| s.seccomp_profile.as_ref())
        .map(|s| s.type_.clone());
    let own_account = pod
        .service_account_name
        .as_deref()
        .is_some_and(|s| s != "default");
    if !own_account && pod.automount_service_account_token != Some(false) {
        out.push(format!("{path}.automountServiceAccountToken must be false: the pod has no service account of its own and needs no API token"));
    }
    let containers = pod.init_containers.iter().flatten().chain(&pod.containers);
    for c in containers {
        let at = format!("{path}.containers[{}]", c.name);
        let sc = c.security_context.as_ref();
        if !(pod_non_root || sc.and_then(|s| s.run_as_non_root) == Some(true)) {
            out.push(format!(
                "{at}: set securityContext.runAsNonRoot: true (on the pod or the container)"
            ));
        }
        match sc.and_then(|s| s.run_as_user).or(pod_uid) {
            Some(0) | None => out.push(format!(
                "{at}: set securityContext.runAsUser to a fixed non-root UID"
            )),
            Some(_) => {}
        }
        let seccomp = sc
            .and_then(|s| s.seccomp_profile.as_ref())
            .map(|s| s.type_.clone())
            .or(pod_seccomp.clone());
        if !matches!(seccomp.as_deref(), Some("RuntimeDefault" | "Localhost")) {
            out.push(format!(
                "{at}: set securityContext.seccompProfile.type: RuntimeDefault"
            ));
        }
        if sc.and_then(|s| s.allow_privilege_escalation) != Some(false) {
            out.push(format!(
                "{at}: set securityContext.allowPrivilegeEscalation: false"
            ));
        }
        if sc.and_then(|s| s.read_only_root_filesystem) != Some(true) {
            out.push(format!("{at}: set securityContext.readOnlyRootFilesystem: true (mount an emptyDir where it must write)"));
        }
        if sc.and_then(|s| s.privileged) == Some(true) {
            out.push(format!("{at}: must not be privileged"));
        }
        let drops_all = sc
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.drop.as_ref())
            .is_some_and(|d| d.iter().any(|x| x == "ALL"));
        if !drops_all {
            out.push(format!(
                "{at}: set securityContext.capabilities.drop: [ALL]"
            ));
        }
        let res = c.resources.as_ref();
        for (which, map) in [
            ("requests", res.and_then(|r| r.requests.as_ref())),
            ("limits", res.and_then(|r| r.limits.as_ref())),
        ] {
            for resource in ["cpu", "memory"] {
                if !map.is_some_and(|m| m.contains_key(resource)) {
                    out.push(format!("{at}: set resources.{which}.{resource}"));
                }
            }
        }
        match c.image.as_deref() {
            Some(image) => {
                if let Err(why) = check_image(image) {
                    out.push(format!("{at}.image: {why}"));
                }
            }
            None => out.push(format!("{at}: has no image")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CM: &str =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: ns\ndata:\n  a: b\n";

    #[test]
    fn a_valid_object_passes_and_is_described() {
        let info = check_manifest(CM, "ns").unwrap().unwrap();
        assert_eq!((info.kind.as_str(), info.name.as_str()), ("ConfigMap", "x"));
    }

    #[test]
    fn a_secret_with_values_never_reaches_generated() {
        let secret = CM.replace("ConfigMap", "Secret");
        let err = check_manifest(&secret, "ns").unwrap_err();
        assert!(err[0].contains("is a Secret with values in it"), "{err:?}");
        let string_data = secret.replace("data:", "stringData:");
        assert!(check_manifest(&string_data, "ns").is_err());
        let empty =
            "apiVersion: v1\nkind: Secret\nmetadata: {name: x, namespace: ns}\ntype: Opaque\n";
        assert!(check_manifest(empty, "ns").unwrap().is_some());
    }

    #[test]
    fn a_misspelt_field_is_named_with_its_path() {
        let text = CM.replace("\ndata:", "\ndta:");
        let err = check_manifest(&text, "ns").unwrap_err();
        assert!(
            err[0].starts_with("dta is not a field of ConfigMap (v1)"),
            "{err:?}"
        );
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns}\nspec:\n  ports:\n    - port: 80\n      targetPrt: http\n";
        let err = check_manifest(svc, "ns").unwrap_err();
        assert!(
            err[0].starts_with("spec.ports[0].targetPrt is not a field of Service"),
            "{err:?}"
        );
    }

    #[test]
    fn wrong_types_unknown_kinds_and_namespaces_are_refused() {
        let err = check_manifest(&CM.replace("a: b", "a: [1]"), "ns").unwrap_err();
        assert!(
            err[0].contains("does not match the Kubernetes API type"),
            "{err:?}"
        );
        let err = check_manifest(&CM.replace("ConfigMap", "Widget"), "ns").unwrap_err();
        assert!(err[0].contains("cannot check"), "{err:?}");
        let err =
            check_manifest(&CM.replace("namespace: ns", "namespace: default"), "ns").unwrap_err();
        assert!(err[0].contains("`default` namespace"), "{err:?}");
        let err = check_manifest(&format!("{CM}---\n{CM}"), "ns").unwrap_err();
        assert!(err[0].contains("holds 2 objects"), "{err:?}");
        assert_eq!(check_manifest("# nothing\n", "ns").unwrap(), None);
    }

    #[test]
    fn an_insecure_pod_is_refused_with_every_missing_default() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: ns}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers:\n        - name: c\n          image: python:latest\n";
        let err = check_manifest(text, "ns").unwrap_err();
        let all = err.join("\n");
        for expected in [
            "automountServiceAccountToken",
            "runAsNonRoot",
            "runAsUser",
            "seccompProfile",
            "allowPrivilegeEscalation",
            "readOnlyRootFilesystem",
            "capabilities.drop",
            "resources.requests.cpu",
            "resources.limits.memory",
            "tag latest",
        ] {
            assert!(all.contains(expected), "missing {expected} in {all}");
        }
    }
}
