//! What a benchmark asks of a cluster besides the gateway: the gateway's admin token (from
//! its Secret) and the CPU the function pods use (from the metrics API, when the cluster
//! runs metrics-server).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::{Client, ResourceExt};

use super::{classify, managed_selector, KubeError};
use crate::names::{labels, ADMIN_SECRET, SECRET_MANAGER};

/// The `token` key of the gateway's admin Secret.
pub async fn admin_token(client: Client, url: &str, namespace: &str) -> Result<String, KubeError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let missing = || KubeError::NoAdminToken {
        secret: ADMIN_SECRET.into(),
        namespace: namespace.into(),
    };
    let secret = secrets
        .get_opt(ADMIN_SECRET)
        .await
        .map_err(|e| classify(e, "get", "secrets", namespace, ADMIN_SECRET, url))?
        .ok_or_else(missing)?;
    let token = secret
        .data
        .as_ref()
        .and_then(|d| d.get("token"))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get("token"))
                .map(|t| t.trim().to_string())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(missing)?;
    Ok(token)
}

/// Of `names`, the Secrets that are not in `namespace`; Err(Forbidden) when the user may not
/// read Secrets there (the caller decides whether that stops it).
pub async fn missing_secrets(
    client: Client,
    url: &str,
    namespace: &str,
    names: &[String],
) -> Result<Vec<String>, KubeError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let mut missing = Vec::new();
    for name in names {
        // Metadata only: nothing of a value crosses the wire.
        match secrets.get_metadata_opt(name).await {
            Ok(Some(_)) => {}
            Ok(None) => missing.push(name.clone()),
            Err(e) => return Err(classify(e, "get", "secrets", namespace, name, url)),
        }
    }
    Ok(missing)
}

/// Sets `key` of the Secret `name` (created if missing) with a server-side apply of field
/// manager `cubeflash-secret`: other keys stay as they are. The Secret carries no
/// `managed-by: cubeflash` label, so a deploy never prunes it.
pub async fn set_secret(
    client: Client,
    url: &str,
    namespace: &str,
    name: &str,
    key: &str,
    value: &[u8],
) -> Result<(), KubeError> {
    use base64::Engine;
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let patch = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "data": {key: base64::engine::general_purpose::STANDARD.encode(value)},
    });
    secrets
        .patch(
            name,
            &kube::api::PatchParams::apply(SECRET_MANAGER),
            &kube::api::Patch::Apply(&patch),
        )
        .await
        .map_err(|e| classify(e, "patch", "secrets", namespace, name, url))?;
    Ok(())
}

/// Removes `key` from the Secret `name`, or the whole Secret.
pub async fn remove_secret(
    client: Client,
    url: &str,
    namespace: &str,
    name: &str,
    key: Option<&str>,
) -> Result<(), KubeError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let result = match key {
        Some(k) => secrets
            .patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(serde_json::json!({"data": {k: null}})),
            )
            .await
            .map(|_| ()),
        None => secrets
            .delete(name, &kube::api::DeleteParams::default())
            .await
            .map(|_| ()),
    };
    result.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 404 => KubeError::NoSuchSecret {
            name: name.into(),
            namespace: namespace.into(),
        },
        e => classify(e, "patch", "secrets", namespace, name, url),
    })
}

/// The keys of each named Secret (None: not there); never a value on the screen.
pub async fn secret_keys(
    client: Client,
    url: &str,
    namespace: &str,
    names: &[String],
) -> Result<Vec<(String, Option<Vec<String>>)>, KubeError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let mut out = Vec::new();
    for name in names {
        let found = secrets
            .get_opt(name)
            .await
            .map_err(|e| classify(e, "get", "secrets", namespace, name, url))?;
        out.push((
            name.clone(),
            found.map(|s| s.data.unwrap_or_default().into_keys().collect()),
        ));
    }
    Ok(out)
}

/// CPU in use, in cores, by each function's pods: (function, component) -> cores, where the
/// component is `function` or `baseline`. None when the cluster serves no metrics API.
pub async fn pod_cpu(
    client: Client,
    url: &str,
    namespace: &str,
) -> Result<Option<HashMap<(String, String), f64>>, KubeError> {
    let ar = ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client, namespace, &ar);
    let list = match api
        .list(&ListParams::default().labels(&managed_selector()))
        .await
    {
        Ok(l) => l,
        // No metrics-server: the group is not served (404), or its APIService is down (503).
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 503 => return Ok(None),
        Err(e) => {
            return Err(classify(
                e,
                "list",
                "pods.metrics.k8s.io",
                namespace,
                "pod metrics",
                url,
            ))
        }
    };
    let mut out: HashMap<(String, String), f64> = HashMap::new();
    for pod in &list.items {
        let (Some(function), Some(component)) = (
            pod.labels().get(labels::FUNCTION),
            pod.labels().get(labels::COMPONENT),
        ) else {
            continue;
        };
        let cores: f64 = pod.data["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["usage"]["cpu"].as_str().and_then(parse_cpu))
            .sum();
        *out.entry((function.clone(), component.clone()))
            .or_default() += cores;
    }
    Ok(Some(out))
}

/// A CPU quantity (`250m`, `1234567n`, `2`) in cores.
pub fn parse_cpu(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, scale) = match text.char_indices().last()? {
        (i, 'n') => (&text[..i], 1e-9),
        (i, 'u') => (&text[..i], 1e-6),
        (i, 'm') => (&text[..i], 1e-3),
        (i, 'k') => (&text[..i], 1e3),
        _ => (text, 1.0),
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_are_read_in_cores() {
        assert_eq!(parse_cpu("250m"), Some(0.25));
        assert_eq!(parse_cpu("2"), Some(2.0));
        assert!((parse_cpu("1500000n").unwrap() - 0.0015).abs() < 1e-12);
        assert!((parse_cpu("30u").unwrap() - 0.00003).abs() < 1e-12);
        assert_eq!(parse_cpu("lots"), None);
        assert_eq!(parse_cpu("-1"), None);
        assert_eq!(parse_cpu(""), None);
    }
}
