//! Writes a rendered tree to generated/ atomically (a whole new tree swapped in, so a
//! failure never leaves a half-written one) and diffs it against what is on disk for
//! `render --check`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use similar::TextDiff;

use super::{Rendered, GENERATED_DIR};

/// Why generated/ could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A file or folder could not be read, written, or renamed.
    #[error("failed to {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> OutputError + 'a {
    move |source| OutputError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What a write changed, compared with the tree it replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteSummary {
    pub files: usize,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

/// Every file under `dir`, keyed by its '/'-separated path relative to it.
pub fn read_tree(dir: &Path) -> Result<BTreeMap<String, String>, OutputError> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return Ok(out);
    }
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((current, prefix)) = stack.pop() {
        for entry in fs::read_dir(&current).map_err(io("read", &current))? {
            let entry = entry.map_err(io("read", &current))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let path = entry.path();
            if path.is_dir() {
                stack.push((path, rel));
            } else {
                let bytes = fs::read(&path).map_err(io("read", &path))?;
                out.insert(rel, String::from_utf8_lossy(&bytes).into_owned());
            }
        }
    }
    Ok(out)
}

/// Replaces `<root>/generated` with `rendered` in one swap.
pub fn write_atomically(root: &Path, rendered: &Rendered) -> Result<WriteSummary, OutputError> {
    let target = root.join(GENERATED_DIR);
    let before = read_tree(&target)?;
    let mut summary = WriteSummary {
        files: rendered.files.len(),
        ..Default::default()
    };
    for (path, file) in &rendered.files {
        match before.get(path) {
            None => summary.added.push(path.clone()),
            Some(old) if *old != file.text => summary.changed.push(path.clone()),
            Some(_) => {}
        }
    }
    summary.removed = before
        .keys()
        .filter(|k| !rendered.files.contains_key(*k))
        .cloned()
        .collect();
    let unchanged =
        summary.added.is_empty() && summary.changed.is_empty() && summary.removed.is_empty();
    if unchanged && target.is_dir() {
        return Ok(summary);
    }

    let pid = std::process::id();
    let staging = root.join(format!(".{GENERATED_DIR}.new-{pid}"));
    let old = root.join(format!(".{GENERATED_DIR}.old-{pid}"));
    let result =
        stage(&staging, &target, rendered, &before).and_then(|()| swap(&target, &staging, &old));
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result?;
    Ok(summary)
}

/// Builds the new tree beside the old one. Unchanged files are hard links to the old ones:
/// the same bytes, without the cost of creating thousands of new files.
fn stage(
    staging: &Path,
    target: &Path,
    rendered: &Rendered,
    before: &BTreeMap<String, String>,
) -> Result<(), OutputError> {
    if staging.exists() {
        fs::remove_dir_all(staging).map_err(io("remove", staging))?;
    }
    fs::create_dir_all(staging).map_err(io("create", staging))?;
    // Each folder once: a mkdir per file costs a syscall (and an EEXIST) thousands of times.
    let folders: BTreeSet<PathBuf> = rendered
        .files
        .keys()
        .filter_map(|rel| Path::new(rel).parent().map(Path::to_path_buf))
        .collect();
    for folder in folders {
        let path = staging.join(folder);
        fs::create_dir_all(&path).map_err(io("create", &path))?;
    }
    for (rel, file) in &rendered.files {
        let path = staging.join(rel);
        let same = before.get(rel).is_some_and(|old| *old == file.text);
        if !(same && fs::hard_link(target.join(rel), &path).is_ok()) {
            fs::write(&path, &file.text).map_err(io("write", &path))?;
        }
    }
    Ok(())
}

fn swap(target: &Path, staging: &Path, old: &Path) -> Result<(), OutputError> {
    if !target.exists() {
        return fs::rename(staging, target).map_err(io("rename", staging));
    }
    fs::rename(target, old).map_err(io("rename", target))?;
    if let Err(source) = fs::rename(staging, target) {
        // Put the previous tree back: generated/ is never left missing.
        let _ = fs::rename(old, target);
        return Err(OutputError::Io {
            action: "rename",
            path: staging.to_path_buf(),
            source,
        });
    }
    fs::remove_dir_all(old).map_err(io("remove", old))
}

/// One file that differs between generated/ and a fresh render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDiff {
    /// Relative to generated/.
    pub path: String,
    /// A unified diff from what is on disk to what render would write.
    pub unified: String,
}

/// The differences between `<root>/generated` and `rendered`, in path order.
pub fn diff(root: &Path, rendered: &Rendered) -> Result<Vec<FileDiff>, OutputError> {
    let on_disk = read_tree(&root.join(GENERATED_DIR))?;
    let paths: BTreeSet<&String> = on_disk.keys().chain(rendered.files.keys()).collect();
    let mut out = Vec::new();
    for path in paths {
        let old = on_disk.get(path).map(String::as_str);
        let new = rendered.files.get(path).map(|f| f.text.as_str());
        if old == new {
            continue;
        }
        let a = if old.is_some() {
            format!("a/{GENERATED_DIR}/{path}")
        } else {
            "/dev/null".into()
        };
        let b = if new.is_some() {
            format!("b/{GENERATED_DIR}/{path}")
        } else {
            "/dev/null".into()
        };
        let unified = TextDiff::from_lines(old.unwrap_or(""), new.unwrap_or(""))
            .unified_diff()
            .context_radius(3)
            .header(&a, &b)
            .to_string();
        out.push(FileDiff {
            path: path.clone(),
            unified,
        });
    }
    Ok(out)
}
