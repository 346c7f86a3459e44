//! The objects `deploy --target kubernetes` sends: generated/ read back into dynamic objects,
//! in dependency order, and the prune plan (live objects cubeflash manages that generated/ no
//! longer holds). Pure: reads files, talks to no cluster.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kube::api::{DynamicObject, GroupVersionKind};
use kube::ResourceExt;

use crate::names::labels;

/// One object of generated/, with the file it came from.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Relative to the repo root, for messages.
    pub file: PathBuf,
    pub gvk: GroupVersionKind,
    pub object: DynamicObject,
}

impl Manifest {
    pub fn name(&self) -> String {
        self.object.name_any()
    }

    /// `Deployment/random-quote`, as kubectl prints it.
    pub fn display(&self) -> String {
        format!("{}/{}", self.gvk.kind, self.name())
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.object
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(key))
            .map(String::as_str)
    }

    /// A function's serverless Deployment: its replica count belongs to the gateway.
    pub fn is_scaled_by_gateway(&self) -> bool {
        self.gvk.kind == "Deployment" && self.label(labels::COMPONENT) == Some("function")
    }

    /// Replicas the Deployment asks for (0 when it is not a Deployment).
    pub fn replicas(&self) -> i64 {
        if self.gvk.kind != "Deployment" {
            return 0;
        }
        self.object.data["spec"]["replicas"].as_i64().unwrap_or(1)
    }
}

/// Why generated/ could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("failed to read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a Kubernetes object: {why}; run `cubeflash render` to write it again", path.display())]
    Invalid { path: PathBuf, why: String },
    #[error("generated/ is empty: run `cubeflash render` first")]
    Empty,
}

/// The namespaced kinds cubeflash renders and therefore prunes, as (apiVersion, kind).
pub const PRUNABLE: &[(&str, &str)] = &[
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("batch/v1", "CronJob"),
    ("batch/v1", "Job"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
];

/// The order objects are applied in: what others refer to goes first.
fn rank(kind: &str) -> usize {
    match kind {
        "Namespace" => 0,
        "ServiceAccount" => 1,
        "Role" => 2,
        "RoleBinding" => 3,
        "ConfigMap" | "Secret" => 4,
        "Deployment" => 5,
        "Service" => 6,
        "CronJob" | "Job" => 7,
        _ => 8,
    }
}

pub fn gvk_of(api_version: &str, kind: &str) -> GroupVersionKind {
    match api_version.split_once('/') {
        Some((group, version)) => GroupVersionKind::gvk(group, version, kind),
        None => GroupVersionKind::gvk("", api_version, kind),
    }
}

/// Reads every object under `<root>/generated/`, in apply order (kind rank, then file path).
pub fn load(root: &Path) -> Result<Vec<Manifest>, ManifestError> {
    let dir = root.join(crate::render::GENERATED_DIR);
    let mut files = Vec::new();
    collect(&dir, &mut files)?;
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        let invalid = |why: String| ManifestError::Invalid {
            path: rel.clone(),
            why,
        };
        let object: DynamicObject =
            serde_yaml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let types = object
            .types
            .clone()
            .ok_or_else(|| invalid("it has no apiVersion and kind".into()))?;
        if object.metadata.name.is_none() {
            return Err(invalid("it has no metadata.name".into()));
        }
        out.push(Manifest {
            file: rel,
            gvk: gvk_of(&types.api_version, &types.kind),
            object,
        });
    }
    if out.is_empty() {
        return Err(ManifestError::Empty);
    }
    out.sort_by_key(|m| rank(&m.gvk.kind));
    Ok(out)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ManifestError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for e in entries {
        let path = e
            .map_err(|source| ManifestError::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "yaml") {
            out.push(path);
        }
    }
    Ok(())
}

/// A live object found in the cluster: kind and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LiveObject {
    pub api_version: String,
    pub kind: String,
    pub name: String,
}

/// The live objects (labelled as managed by cubeflash) that `desired` no longer holds.
pub fn prune_plan(desired: &[Manifest], live: &[LiveObject]) -> Vec<LiveObject> {
    let wanted: BTreeSet<(String, String)> = desired
        .iter()
        .map(|m| (m.gvk.kind.clone(), m.name()))
        .collect();
    let mut out: Vec<LiveObject> = live
        .iter()
        .filter(|l| !wanted.contains(&(l.kind.clone(), l.name.clone())))
        .cloned()
        .collect();
    // Delete in reverse dependency order: users of an object go before it.
    out.sort_by_key(|l| std::cmp::Reverse(rank(&l.kind)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repo_generated_tree_loads_in_dependency_order() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let all = load(root).unwrap();
        let ranks: Vec<usize> = all.iter().map(|m| rank(&m.gvk.kind)).collect();
        assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{ranks:?}");
        assert_eq!(all[0].gvk.kind, "Namespace");
        let quote = all
            .iter()
            .find(|m| m.display() == "Deployment/random-quote")
            .unwrap();
        assert!(quote.is_scaled_by_gateway());
        let baseline = all
            .iter()
            .find(|m| m.display() == "Deployment/random-quote-baseline")
            .unwrap();
        assert!(!baseline.is_scaled_by_gateway());
        assert_eq!(baseline.replicas(), 1);
    }

    #[test]
    fn prune_keeps_what_is_rendered_and_deletes_the_rest_users_first() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let desired = load(root).unwrap();
        let live = |kind: &str, name: &str| LiveObject {
            api_version: "v1".into(),
            kind: kind.into(),
            name: name.into(),
        };
        let plan = prune_plan(
            &desired,
            &[
                live("ConfigMap", "old-code"),
                live("Deployment", "random-quote"),
                live("Service", "old"),
            ],
        );
        assert_eq!(
            plan,
            vec![live("Service", "old"), live("ConfigMap", "old-code")]
        );
    }
}
