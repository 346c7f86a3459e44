//! The built-in templates and runtime shims, embedded in the binary from the repo's
//! templates/ folder, and the layering of a repo's and a function's overrides over them.

use std::collections::BTreeMap;

macro_rules! builtin {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../templates/", $path)))),*]
    };
}

/// Every built-in template, by its path under templates/.
pub const BUILTIN: &[(&str, &str)] = builtin![
    "function/_deployment.yaml",
    "function/_service.yaml",
    "function/configmap.yaml",
    "function/deployment.yaml",
    "function/service.yaml",
    "function/baseline-deployment.yaml",
    "function/baseline-service.yaml",
    "triggers/schedule.yaml",
    "gateway/namespace.yaml",
    "gateway/serviceaccount.yaml",
    "gateway/role.yaml",
    "gateway/rolebinding.yaml",
    "gateway/routes-configmap.yaml",
    "gateway/deployment.yaml",
    "gateway/service.yaml",
    "runtimes/python/shim.py",
    "runtimes/node/shim.js",
    "runtimes/python/new/function.yaml",
    "runtimes/python/new/handler.py",
    "runtimes/node/new/function.yaml",
    "runtimes/node/new/handler.js",
    "runtimes/exec/new/function.yaml",
    "runtimes/exec/new/server.py",
    "init/cubeflash.yaml",
    "init/Makefile",
    "init/gitignore",
];

/// The folders whose templates are Kubernetes manifests (the rest are shims and scaffolds).
pub const MANIFEST_DIRS: &[&str] = &["function/", "triggers/", "gateway/"];

/// Built-ins overlaid with `overrides` (a repo's or a function's templates/), file by file.
pub fn layered(
    base: &BTreeMap<String, String>,
    overrides: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = base.clone();
    for (k, v) in overrides {
        out.insert(k.clone(), v.clone());
    }
    out
}

pub fn builtin_map() -> BTreeMap<String, String> {
    BUILTIN
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn builtin(path: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(k, _)| *k == path).map(|(_, v)| *v)
}

/// Is this template rendered into an object of its own (not a partial, not a shim)?
pub fn is_manifest(name: &str) -> bool {
    let file = name.rsplit('/').next().unwrap_or(name);
    MANIFEST_DIRS.iter().any(|d| name.starts_with(d))
        && !file.starts_with('_')
        && (file.ends_with(".yaml") || file.ends_with(".yml"))
}
