//! `cubeflash new` and `cubeflash init`: the files a new function or repo starts from,
//! taken from the embedded templates/runtimes/<lang>/new/ and templates/init/.

use std::fs;
use std::path::{Path, PathBuf};

use crate::render::templates::BUILTIN;
use crate::spec::function::{Runtime, MAX_NAME_LEN, RESERVED_NAMES};
use crate::spec::project;
use crate::spec::repo::FUNCTIONS_DIR;
use crate::spec::values::{check_dns_label, suggest_dns_label};

/// Why a scaffold could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name is not usable for a function or namespace.
    #[error("{0}")]
    BadName(String),
    /// `new` only scaffolds runtimes that ship code.
    #[error("`cubeflash new` scaffolds python, node and exec functions; for runtime image write function.yaml by hand (see the README)")]
    NoScaffold,
    /// Refusing to overwrite.
    #[error("{} already exists; choose another name or remove it first", path.display())]
    Exists { path: PathBuf },
    /// A file could not be written.
    #[error("failed to write {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The files of a scaffold, relative to where they go, with `{{name}}`-style placeholders filled.
pub fn files(prefix: &str, vars: &[(&str, &str)]) -> Vec<(String, String)> {
    BUILTIN
        .iter()
        .filter_map(|(path, text)| {
            let rel = path.strip_prefix(prefix)?;
            let content = vars.iter().fold(text.to_string(), |t, (k, v)| {
                t.replace(&format!("{{{{{k}}}}}"), v)
            });
            let rel = if rel == "gitignore" {
                ".gitignore".to_string()
            } else {
                rel.to_string()
            };
            Some((rel, content))
        })
        .collect()
}

fn write_all(dir: &Path, files: &[(String, String)]) -> Result<Vec<PathBuf>, ScaffoldError> {
    let mut written = Vec::new();
    for (rel, content) in files {
        let path = dir.join(rel);
        let err = |source| ScaffoldError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(err)?;
        }
        fs::write(&path, content).map_err(err)?;
        written.push(path);
    }
    Ok(written)
}

/// Creates functions/<name>/ with a function.yaml and a handler that work at once.
pub fn new_function(
    root: &Path,
    name: &str,
    runtime: Runtime,
) -> Result<Vec<PathBuf>, ScaffoldError> {
    if let Err(why) = check_dns_label(name, MAX_NAME_LEN) {
        return Err(ScaffoldError::BadName(format!(
            "cannot name a function {name:?}: {why}; try {:?}",
            suggest_dns_label(name)
        )));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(ScaffoldError::BadName(format!(
            "{name:?} is reserved for cubeflash's own manifests; choose another name"
        )));
    }
    if runtime == Runtime::Image {
        return Err(ScaffoldError::NoScaffold);
    }
    let dir = root.join(FUNCTIONS_DIR).join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists { path: dir });
    }
    let prefix = format!("runtimes/{}/new/", runtime.as_str());
    write_all(&dir, &files(&prefix, &[("name", name)]))
}

/// Starts a repo in `dir`: cubeflash.yaml, functions/, bench/, a Makefile and .gitignore.
pub fn init_repo(dir: &Path, namespace: &str) -> Result<Vec<PathBuf>, ScaffoldError> {
    if namespace == "default" {
        return Err(ScaffoldError::BadName(
            "the `default` namespace is not used: give the project its own".into(),
        ));
    }
    if let Err(why) = check_dns_label(namespace, 63) {
        return Err(ScaffoldError::BadName(format!(
            "cannot use namespace {namespace:?}: {why}"
        )));
    }
    let config = dir.join(project::FILE_NAME);
    if config.exists() {
        return Err(ScaffoldError::Exists { path: config });
    }
    let mut scaffold = files("init/", &[("namespace", namespace)]);
    // Leave user files alone: an existing Makefile or .gitignore is kept.
    scaffold.retain(|(rel, _)| rel == project::FILE_NAME || !dir.join(rel).exists());
    scaffold.push((format!("{FUNCTIONS_DIR}/.gitkeep"), String::new()));
    scaffold.push(("bench/.gitkeep".into(), String::new()));
    write_all(dir, &scaffold)
}
