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
    match action {
        SecretAction::Set {
            name,
            key,
            from_file,
        } => {
            let value = match &from_file {
                Some(f) => {
                    std::fs::read(f).with_context(|| format!("failed to read {}", f.display()))?
                }
                None => {
                    let mut v = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut v)
                        .context("failed to read the value from standard input")?;
                    // `echo value | cubeflash secret set` should not store the newline.
                    if v.ends_with(b"\n") {
                        v.pop();
                        if v.ends_with(b"\r") {
                            v.pop();
                        }
                    }
                    v
                }
            };
            secrets::set(&state, &name, &key, &value)?;
            writeln!(
                out,
                "set {name}/{key} ({} bytes) in .cubeflash/secrets/ (not in git); a function that lists `secrets: [{name}]` reads it at $CUBEFLASH_SECRETS/{name}/{key} after its next deploy",
                value.len()
            )?;
        }
        SecretAction::Ls => {
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
        SecretAction::Rm { name, key } => {
            secrets::remove(&state, &name, key.as_deref())?;
            match key {
                Some(k) => writeln!(out, "removed {name}/{k}")?,
                None => writeln!(out, "removed the secret {name}")?,
            }
        }
    }
    Ok(Outcome::Success)
}
