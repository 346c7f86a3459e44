//! A function's dependencies on the local platform: a python `requirements.txt` installed
//! with `pip install --target`, a node `package.json` + `package-lock.json` with `npm ci`,
//! each into a cache entry keyed by the lock file's bytes, the interpreter's version and the
//! platform, shared between functions and repos. An entry is installed once, into a
//! temporary folder renamed into place, so a failed or interrupted install leaves nothing
//! half-written; replicas read it (python: `CUBEFLASH_DEPS` on `sys.path`; node: a
//! `node_modules` link in the version's code copy), also when a warm pooled interpreter
//! takes the function.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::spec::{Function, Runtime};

/// The variable that names a python function's installed dependencies (the shim puts the
/// folder on `sys.path`).
pub const PYTHON_ENV: &str = "CUBEFLASH_DEPS";

/// The files that declare dependencies, per runtime.
pub const REQUIREMENTS: &str = "requirements.txt";
pub const PACKAGE: &str = "package.json";
pub const PACKAGE_LOCK: &str = "package-lock.json";

/// What a function needs installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    pub kind: Kind,
    /// The cache entry's folder name: `<kind>-<interpreter>-<platform>-<hash>`.
    pub key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pip,
    Npm,
}

/// An installed cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The folder to put on the path (python) or link as node_modules (node).
    pub dir: PathBuf,
    /// It was there already.
    pub cached: bool,
    /// Requirements without an exact version (`==`), which the next install may resolve
    /// differently.
    pub unpinned: Vec<String>,
}

/// Why dependencies could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum DepsError {
    #[error("cannot run {program} to install {function}'s dependencies: {source}; install it (e.g. `apt-get install python3-pip` or `npm`)")]
    Spawn {
        function: String,
        program: String,
        source: std::io::Error,
    },
    #[error("{installer} failed to install {function}'s dependencies from {file} (the running version, if any, keeps serving):\n{output}")]
    Failed {
        function: String,
        installer: String,
        file: String,
        output: String,
    },
    #[error("failed to write the dependency cache at {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The shared cache: CUBEFLASH_CACHE_DIR, else /var/cache/cubeflash for root (whose home
/// replicas, run as another user, cannot enter), else $XDG_CACHE_HOME or ~/.cache, /cubeflash.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("CUBEFLASH_CACHE_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/cache/cubeflash");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("cubeflash")
}

/// Where the entries live.
pub fn entries_dir(cache: &Path) -> PathBuf {
    cache.join("deps")
}

/// What `f` needs installed, or None (no dependency file, or a runtime without them).
pub fn needs(f: &Function, python: &str, node: &str) -> Option<Needs> {
    let file = |name: &str| f.files.iter().find(|c| c.path == name);
    let (kind, interpreter, inputs) = match f.spec.runtime {
        Runtime::Python => (
            Kind::Pip,
            interpreter_tag(python, Kind::Pip),
            vec![file(REQUIREMENTS)?],
        ),
        Runtime::Node => (
            Kind::Npm,
            interpreter_tag(node, Kind::Npm),
            vec![file(PACKAGE)?, file(PACKAGE_LOCK)?],
        ),
        _ => return None,
    };
    let mut hash = Sha256::new();
    for c in inputs {
        hash.update((c.path.len() as u64).to_le_bytes());
        hash.update(c.path.as_bytes());
        hash.update((c.bytes.len() as u64).to_le_bytes());
        hash.update(&c.bytes);
    }
    // Local wheels or tarballs the requirements point at are part of the input too.
    for c in f.files.iter().filter(|c| {
        c.path.ends_with(".whl") || c.path.ends_with(".tgz") || c.path.ends_with(".tar.gz")
    }) {
        hash.update(c.path.as_bytes());
        hash.update(&c.bytes);
    }
    let digest = hash.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let kind_name = match kind {
        Kind::Pip => "pip",
        Kind::Npm => "npm",
    };
    Some(Needs {
        kind,
        key: format!("{kind_name}-{interpreter}-{hex}"),
    })
}

/// `cpython-311-linux-x86_64` or `node-v20-linux-x64`: what an installed entry is only good for.
fn interpreter_tag(program: &str, kind: Kind) -> String {
    static PYTHON: OnceLock<String> = OnceLock::new();
    static NODE: OnceLock<String> = OnceLock::new();
    let (cell, args): (&OnceLock<String>, &[&str]) = match kind {
        Kind::Pip => (
            &PYTHON,
            &[
                "-c",
                "import sys, sysconfig; print(sys.implementation.cache_tag + '-' + sysconfig.get_platform())",
            ],
        ),
        Kind::Npm => (
            &NODE,
            &["-p", "'node-' + process.versions.modules + '-' + process.platform + '-' + process.arch"],
        ),
    };
    cell.get_or_init(|| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .replace(['/', ' '], "_")
            })
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "unknown".into())
    })
    .clone()
}

/// Installs what `f` needs into `cache` unless it is there; `source` is the function's
/// folder (the installer runs there, so relative `--find-links` and `file:` paths work).
pub async fn install(
    cache: &Path,
    f: &Function,
    source: &Path,
    needs: &Needs,
    python: &str,
) -> Result<Installed, DepsError> {
    let entries = entries_dir(cache);
    let dir = entries.join(&needs.key);
    let unpinned = match (needs.kind, f.files.iter().find(|c| c.path == REQUIREMENTS)) {
        (Kind::Pip, Some(file)) => unpinned(&String::from_utf8_lossy(&file.bytes)),
        _ => Vec::new(),
    };
    let installed = |cached| Installed {
        dir: match needs.kind {
            Kind::Pip => dir.clone(),
            Kind::Npm => dir.join("node_modules"),
        },
        cached,
        unpinned: unpinned.clone(),
    };
    if dir.is_dir() {
        return Ok(installed(true));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DepsError::Io { path, source }
    };
    let open = std::fs::Permissions::from_mode(0o755);
    for d in [cache, entries.as_path()] {
        std::fs::create_dir_all(d).map_err(io(d))?;
        std::fs::set_permissions(d, open.clone()).map_err(io(d))?;
    }
    let tmp = entries.join(format!(".{}.{}", needs.key, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    std::fs::set_permissions(&tmp, open).map_err(io(&tmp))?;
    let name = f.spec.name.clone();
    // The requirements as loaded (what the key was computed from), not functions/ as it is
    // now, which may have been edited since.
    let requirements = entries.join(format!(
        ".{}.{}.requirements.txt",
        needs.key,
        std::process::id()
    ));
    if let Some(c) = f.files.iter().find(|c| c.path == REQUIREMENTS) {
        std::fs::write(&requirements, &c.bytes).map_err(io(&requirements))?;
    }
    let (program, args, file): (String, Vec<String>, &str) = match needs.kind {
        Kind::Pip => (
            python.to_string(),
            vec![
                "-m".into(),
                "pip".into(),
                "install".into(),
                "--no-input".into(),
                "--disable-pip-version-check".into(),
                "--no-warn-script-location".into(),
                "--target".into(),
                tmp.to_string_lossy().into_owned(),
                "-r".into(),
                requirements.to_string_lossy().into_owned(),
            ],
            REQUIREMENTS,
        ),
        Kind::Npm => {
            // The manifest, its lock, and local tarballs they name (`file:x.tgz`).
            let wanted = |c: &&crate::spec::repo::CodeFile| {
                c.path == PACKAGE
                    || c.path == PACKAGE_LOCK
                    || (c.path.ends_with(".tgz") && !c.path.contains('/'))
            };
            for c in f.files.iter().filter(wanted) {
                let to = tmp.join(&c.path);
                std::fs::write(&to, &c.bytes).map_err(io(&to))?;
            }
            (
                "npm".into(),
                vec![
                    "ci".into(),
                    "--omit=dev".into(),
                    "--no-audit".into(),
                    "--no-fund".into(),
                    "--ignore-scripts=false".into(),
                ],
                PACKAGE_LOCK,
            )
        }
    };
    let mut command = tokio::process::Command::new(&program);
    command
        .args(&args)
        .current_dir(match needs.kind {
            Kind::Pip => source,
            Kind::Npm => &tmp,
        })
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = command.output().await;
    let _ = std::fs::remove_file(&requirements);
    let output = output.map_err(|source| {
        // No installer to run: nothing of this attempt stays in the cache.
        let _ = std::fs::remove_dir_all(&tmp);
        DepsError::Spawn {
            function: name.clone(),
            program: program.clone(),
            source,
        }
    })?;
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        if text.trim().is_empty() {
            text = String::from_utf8_lossy(&output.stdout).into_owned();
        }
        return Err(DepsError::Failed {
            function: name,
            installer: match needs.kind {
                Kind::Pip => "pip".into(),
                Kind::Npm => "npm ci".into(),
            },
            file: format!(
                "functions/{}/{file}",
                f.rel_dir
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ),
            output: last_lines(&text, 20),
        });
    }
    if needs.kind == Kind::Npm {
        for c in f.files.iter().filter(|c| !c.path.contains('/')) {
            let _ = std::fs::remove_file(tmp.join(&c.path));
        }
        let modules = tmp.join("node_modules");
        if !modules.is_dir() {
            std::fs::create_dir(&modules).map_err(io(&modules))?;
        }
    }
    readable(&tmp);
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(installed(false)),
        // Another install of the same inputs finished first.
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(installed(true))
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(io(&dir)(e))
        }
    }
}

/// Requirement lines that pin no exact version.
fn unpinned(requirements: &str) -> Vec<String> {
    requirements
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty() && !l.starts_with('-'))
        .map(|l| l.split(';').next().unwrap_or(l).trim())
        .filter(|l| !l.contains("==") && !l.contains(" @ "))
        .map(str::to_string)
        .collect()
}

/// The replica user reads what root installed: every folder 0755, every file o+r.
fn readable(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                continue;
            }
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                let _ =
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o755));
                stack.push(path);
            } else {
                let extra = if mode & 0o100 != 0 { 0o555 } else { 0o444 };
                let _ =
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | extra));
            }
        }
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Cache entries no function in `used` needs (for `cubeflash deps --prune`).
pub fn unused(cache: &Path, used: &[String]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(entries_dir(cache)) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            !name.starts_with('.') && !used.contains(&name)
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpinned_requirements_are_named() {
        let text = "# tools\njinja2==3.1.4 --hash=sha256:abc\nnumpy>=1.26\n--find-links wheels\nrequests ; python_version > '3'\nlocal @ file:///x.whl\n";
        assert_eq!(unpinned(text), vec!["numpy>=1.26", "requests"]);
    }
}
