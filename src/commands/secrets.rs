//! `cubeflash secret set|ls|rm`: the local platform's secrets, under `.cubeflash/secrets/`.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::{load, repo_root, Outcome};
use crate::cli::SecretAction;
use crate::deploy::local as target;
use crate::runtime::secrets;

pub fn secret(out: &mut impl Write, dir: Option<PathBuf>, action: SecretAction) -> Result<Outcome> {
    let root = repo_root(dir)?;
    let state = target::state_dir(&root);
    let targets = match &action {
        SecretAction::Set { target, .. }
        | SecretAction::Ls { target }
        | SecretAction::Rm { target, .. } => target.clone(),
    };
    // Without --target, cubeflash.yaml's; a repo with problems elsewhere (a function.yaml
    // being edited) must not stop a local `secret set`.
    let cluster = match (&targets.target, &targets.context) {
        (None, None) => load(&root)
            .map(|r| r.project.target == crate::spec::Target::Kubernetes)
            .unwrap_or(false),
        _ => super::kubernetes::wants(&root, &targets)?,
    };
    if cluster {
        return in_cluster(out, &root, &targets, action);
    }
    match action {
        SecretAction::Set {
            name,
            key,
            from_file,
            ..
        } => {
            let value = read_value(from_file.as_deref())?;
            secrets::set(&state, &name, &key, &value)?;
            writeln!(
                out,
                "set {name}/{key} ({} bytes) in .cubeflash/secrets/ (not in git); a function that lists `secrets: [{name}]` reads it at $CUBEFLASH_SECRETS/{name}/{key} after its next deploy",
                value.len()
            )?;
        }
        SecretAction::Ls { .. } => {
            let all = secrets::list(&state);
            let used: Vec<(String, Vec<String>)> = load(&root)
                .map(|repo| {
                    repo.functions
                        .iter()
                        .map(|f| (f.spec.name.clone(), f.spec.secrets.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let rows: Vec<[String; 3]> = all
                .iter()
                .map(|(name, keys)| {
                    let by: Vec<&str> = used
                        .iter()
                        .filter(|(_, s)| s.contains(name))
                        .map(|(f, _)| f.as_str())
                        .collect();
                    [
                        name.clone(),
                        keys.join(","),
                        if by.is_empty() {
                            "-".into()
                        } else {
                            by.join(",")
                        },
                    ]
                })
                .collect();
            super::platform::write_table(out, &["NAME", "KEYS", "USED BY"], &rows)?;
            for (f, names) in &used {
                for n in names.iter().filter(|n| !all.iter().any(|(a, _)| a == *n)) {
                    writeln!(out, "{f} names the secret {n}, which is not set: `cubeflash secret set {n} KEY`")?;
                }
            }
        }
        SecretAction::Rm { name, key, .. } => {
            secrets::remove(&state, &name, key.as_deref())?;
            match key {
                Some(k) => writeln!(out, "removed {name}/{k}")?,
                None => writeln!(out, "removed the secret {name}")?,
            }
        }
    }
    Ok(Outcome::Success)
}

/// The value: a file's bytes, or standard input without its final newline (so that
/// `echo value | cubeflash secret set` stores no newline).
fn read_value(from_file: Option<&std::path::Path>) -> Result<Vec<u8>> {
    if let Some(f) = from_file {
        return std::fs::read(f).with_context(|| format!("failed to read {}", f.display()));
    }
    let mut v = Vec::new();
    std::io::stdin()
        .read_to_end(&mut v)
        .context("failed to read the value from standard input")?;
    if v.ends_with(b"\n") {
        v.pop();
        if v.ends_with(b"\r") {
            v.pop();
        }
    }
    Ok(v)
}

/// `cubeflash secret ... --target kubernetes`: the Kubernetes Secrets of the namespace.
fn in_cluster(
    out: &mut impl Write,
    root: &std::path::Path,
    targets: &crate::cli::TargetArgs,
    action: SecretAction,
) -> Result<Outcome> {
    use crate::deploy::kubernetes::{self as kube_target, usage};
    let repo = load(root)?;
    let namespace = repo.project.namespace.clone();
    let rt = super::platform::runtime()?;
    let (client, url) = rt.block_on(kube_target::connect(targets.context.as_deref()))?;
    match action {
        SecretAction::Set {
            name,
            key,
            from_file,
            ..
        } => {
            secrets::check(&name, Some(&key))?;
            let value = read_value(from_file.as_deref())?;
            rt.block_on(usage::set_secret(
                client, &url, &namespace, &name, &key, &value,
            ))?;
            writeln!(
                out,
                "set {name}/{key} ({} bytes) in the Secret {name}, namespace {namespace}; pods that mount it see the new value after the kubelet's next sync (about a minute)",
                value.len()
            )?;
        }
        SecretAction::Ls { .. } => {
            let mut names: Vec<String> = repo
                .functions
                .iter()
                .flat_map(|f| f.spec.secrets.clone())
                .collect();
            names.sort();
            names.dedup();
            let keys = rt.block_on(usage::secret_keys(client, &url, &namespace, &names))?;
            let rows: Vec<[String; 3]> = keys
                .into_iter()
                .map(|(name, keys)| {
                    let by: Vec<&str> = repo
                        .functions
                        .iter()
                        .filter(|f| f.spec.secrets.contains(&name))
                        .map(|f| f.spec.name.as_str())
                        .collect();
                    let keys = keys.map_or("(missing)".to_string(), |k| k.join(","));
                    [name, keys, by.join(",")]
                })
                .collect();
            super::platform::write_table(out, &["NAME", "KEYS", "USED BY"], &rows)?;
        }
        SecretAction::Rm { name, key, .. } => {
            secrets::check(&name, key.as_deref())?;
            rt.block_on(usage::remove_secret(
                client,
                &url,
                &namespace,
                &name,
                key.as_deref(),
            ))?;
            match key {
                Some(k) => writeln!(out, "removed {name}/{k} in namespace {namespace}")?,
                None => writeln!(out, "deleted the Secret {name} in namespace {namespace}")?,
            }
        }
    }
    Ok(Outcome::Success)
}
