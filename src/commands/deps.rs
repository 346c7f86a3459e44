//! `cubeflash deps`: installs functions' dependencies into the shared cache ahead of a
//! deploy and shows what is cached; `deploy` calls [`install_all`] for its progress lines.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;

use super::platform::runtime;
use super::{load, repo_root, Outcome};
use crate::runtime::deps;
use crate::spec::{Function, Repo};

/// The python3 and node dependencies are installed for: those replicas run.
fn interpreters() -> (String, String) {
    let find = |name: &str| {
        ["/usr/local/bin", "/usr/bin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
            .map_or(name.to_string(), |p| p.to_string_lossy().into_owned())
    };
    // As the gateway resolves them when it runs as root (replicas as another user), else PATH.
    if nix::unistd::geteuid().is_root() {
        (find("python3"), find("node"))
    } else {
        ("python3".into(), "node".into())
    }
}

/// Installs (or finds cached) the dependencies of `functions`, a line each; Ok(false) when
/// one failed (its message printed).
pub fn install_all(out: &mut impl Write, functions: &[&Function], root: &Path) -> Result<bool> {
    let (python, node) = interpreters();
    let cache = deps::cache_root();
    let rt = runtime()?;
    let mut ok = true;
    for f in functions {
        let Some(needs) = deps::needs(f, &python, &node) else {
            continue;
        };
        let file = match needs.kind {
            deps::Kind::Pip => deps::REQUIREMENTS,
            deps::Kind::Npm => deps::PACKAGE_LOCK,
        };
        let name = &f.spec.name;
        let cached = deps::entries_dir(&cache).join(&needs.key).is_dir();
        if !cached {
            writeln!(out, "  {name}: installing dependencies from {file}...")?;
            out.flush()?;
        }
        let started = Instant::now();
        match rt.block_on(deps::install(
            &cache,
            f,
            &root.join(&f.rel_dir),
            &needs,
            &python,
        )) {
            Ok(i) => {
                if i.cached {
                    writeln!(out, "  {name}: dependencies cached ({})", i.dir.display())?;
                } else {
                    writeln!(
                        out,
                        "  {name}: dependencies installed in {:.1} s ({})",
                        started.elapsed().as_secs_f64(),
                        i.dir.display()
                    )?;
                }
                for line in &i.unpinned {
                    writeln!(out, "  {name}: warning: {line:?} in {file} pins no exact version (write name==version so every install gets the same one)")?;
                }
            }
            Err(e) => {
                ok = false;
                writeln!(out, "  {name}: {e}")?;
            }
        }
    }
    Ok(ok)
}

/// `cubeflash deps [FUNCTION] [--prune]`.
pub fn deps(
    out: &mut impl Write,
    dir: Option<PathBuf>,
    function: Option<&str>,
    prune: bool,
) -> Result<Outcome> {
    let root = repo_root(dir)?;
    let repo: Repo = load(&root)?;
    let chosen: Vec<&Function> = repo
        .functions
        .iter()
        .filter(|f| function.is_none_or(|n| f.spec.name == n))
        .collect();
    if let Some(n) = function {
        if chosen.is_empty() {
            anyhow::bail!("no function named {n:?} in functions/");
        }
    }
    let cache = deps::cache_root();
    writeln!(
        out,
        "dependency cache: {}",
        deps::entries_dir(&cache).display()
    )?;
    let ok = install_all(out, &chosen, &root)?;
    let (python, node) = interpreters();
    let used: Vec<String> = repo
        .functions
        .iter()
        .filter_map(|f| deps::needs(f, &python, &node).map(|n| n.key))
        .collect();
    if used.is_empty() {
        writeln!(out, "(no function declares dependencies: add a requirements.txt, or a package.json with its package-lock.json)")?;
    }
    let unused = deps::unused(&cache, &used);
    if prune {
        for path in &unused {
            std::fs::remove_dir_all(path)
                .map_err(|e| anyhow::anyhow!("failed to remove {}: {e}", path.display()))?;
            writeln!(out, "pruned {}", path.display())?;
        }
    } else if !unused.is_empty() {
        writeln!(
            out,
            "{} cache entr{} no function of this repo uses (other repos may): `cubeflash deps --prune` removes them",
            unused.len(),
            if unused.len() == 1 { "y" } else { "ies" }
        )?;
    }
    Ok(if ok {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}
