//! Secrets on the local platform: `.cubeflash/secrets/<name>/<key>` (folders 0700, files
//! 0600, under the git-ignored state folder), managed by `cubeflash secret`. A replica reads
//! the secrets its function names as files under the folder `CUBEFLASH_SECRETS` names
//! (`<folder>/<name>/<key>`, as at `/var/cubeflash/secrets` in a cluster): a copy per
//! function version that only the replica user may read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Under the state folder.
pub const SECRETS_DIR: &str = "secrets";
/// The replicas' copies, per function, under the state folder.
pub const MOUNTS_DIR: &str = "secret-mounts";
/// Where a cluster mounts them, and the variable that names the folder in both places.
pub const CLUSTER_PATH: &str = "/var/cubeflash/secrets";
pub const ENV: &str = "CUBEFLASH_SECRETS";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{what} {name:?}: {why}")]
    BadName {
        what: &'static str,
        name: String,
        why: String,
    },
    #[error("no secret {0:?}: `cubeflash secret set {0} KEY` creates it (value on stdin, or --from-file FILE)")]
    Missing(String),
    #[error("secret {name:?} has no key {key:?}")]
    MissingKey { name: String, key: String },
    #[error("{function} names the secret {secret:?}, which is not set here: `cubeflash secret set {secret} KEY` (value on stdin) sets it")]
    Unset { function: String, secret: String },
    #[error("failed to write {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SecretError {
    let path = path.to_path_buf();
    move |source| SecretError::Io { path, source }
}

/// A secret's name is a DNS-1123 label of at most 56 (its volume `secret-<name>` must fit
/// 63); a key is a file name. The same rule locally and for a cluster's Secrets.
pub fn check(name: &str, key: Option<&str>) -> Result<(), SecretError> {
    crate::spec::values::check_dns_label(name, 56).map_err(|why| SecretError::BadName {
        what: "secret name",
        name: name.into(),
        why,
    })?;
    if let Some(k) = key {
        let ok = !k.is_empty()
            && k.len() <= 253
            && k != "."
            && k != ".."
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !ok {
            return Err(SecretError::BadName {
                what: "key",
                name: k.into(),
                why: "a key is a file name of letters, digits, '-', '_' and '.' (as a Kubernetes Secret's keys)".into(),
            });
        }
    }
    Ok(())
}

/// Stores `value` as `name`'s `key`, replacing it atomically.
pub fn set(state_dir: &Path, name: &str, key: &str, value: &[u8]) -> Result<(), SecretError> {
    check(name, Some(key))?;
    let root = state_dir.join(SECRETS_DIR);
    let dir = root.join(name);
    for d in [state_dir, root.as_path(), dir.as_path()] {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    for d in [root.as_path(), dir.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).map_err(io(d))?;
    }
    let tmp = dir.join(format!(".{key}.{}", std::process::id()));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.write_all(value).map_err(io(&tmp))?;
    }
    let to = dir.join(key);
    std::fs::rename(&tmp, &to).map_err(io(&to))
}

/// Every secret and its keys, sorted; never the values.
pub fn list(state_dir: &Path) -> Vec<(String, Vec<String>)> {
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    };
    let root = state_dir.join(SECRETS_DIR);
    names(&root)
        .into_iter()
        .map(|n| {
            let keys = names(&root.join(&n));
            (n, keys)
        })
        .collect()
}

/// Removes a key, or the whole secret.
pub fn remove(state_dir: &Path, name: &str, key: Option<&str>) -> Result<(), SecretError> {
    check(name, key)?;
    let dir = state_dir.join(SECRETS_DIR).join(name);
    if !dir.is_dir() {
        return Err(SecretError::Missing(name.into()));
    }
    match key {
        Some(k) => {
            let path = dir.join(k);
            if !path.is_file() {
                return Err(SecretError::MissingKey {
                    name: name.into(),
                    key: k.into(),
                });
            }
            std::fs::remove_file(&path).map_err(io(&path))
        }
        None => std::fs::remove_dir_all(&dir).map_err(io(&dir)),
    }
}

/// The copy `function`'s replicas read: `<state>/secret-mounts/<function>/<secret>/<key>`,
/// owned by the replica user (`owner`, when the gateway runs as root), folders 0500 and
/// files 0400. Refreshed at every load, so `secret set` and a deploy roll a new value out.
pub fn mount(
    state_dir: &Path,
    function: &str,
    secrets: &[String],
    owner: Option<(u32, u32)>,
) -> Result<Option<PathBuf>, SecretError> {
    if secrets.is_empty() {
        return Ok(None);
    }
    for s in secrets {
        if !state_dir.join(SECRETS_DIR).join(s).is_dir() {
            return Err(SecretError::Unset {
                function: function.into(),
                secret: s.clone(),
            });
        }
    }
    let mounts = state_dir.join(MOUNTS_DIR);
    std::fs::create_dir_all(&mounts).map_err(io(&mounts))?;
    // Entered (not listed) by the replica user on the way to its own folder.
    std::fs::set_permissions(&mounts, std::fs::Permissions::from_mode(0o711))
        .map_err(io(&mounts))?;
    let tmp = mounts.join(format!(".{function}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = (|| -> std::io::Result<()> {
        std::fs::create_dir(&tmp)?;
        for s in secrets {
            let from = state_dir.join(SECRETS_DIR).join(s);
            let to = tmp.join(s);
            std::fs::create_dir(&to)?;
            for e in std::fs::read_dir(&from)?.flatten() {
                let name = e.file_name();
                if name.to_string_lossy().starts_with('.') {
                    continue;
                }
                let file = to.join(&name);
                std::fs::copy(e.path(), &file)?;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400))?;
                chown(&file, owner)?;
            }
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o500))?;
            chown(&to, owner)?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o500))?;
        chown(&tmp, owner)
    })();
    let dir = mounts.join(function);
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io(&dir)(e));
    }
    // Replace the previous copy: running replicas of the old version keep their open files.
    let old = mounts.join(format!(".{function}.old.{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(&dir, &old).map_err(io(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    let _ = remove_owned(&old);
    Ok(Some(dir))
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    match owner {
        Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)),
        None => Ok(()),
    }
}

/// Removes a copy whose folders are read-only (0500).
fn remove_owned(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
        for e in std::fs::read_dir(&d)?.flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    std::fs::remove_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn secrets_are_stored_private_listed_without_values_and_mounted_read_only() {
        let state = tempfile::tempdir().unwrap();
        set(state.path(), "db", "password", b"hunter2").unwrap();
        set(state.path(), "db", "user", b"app").unwrap();
        let file = state.path().join("secrets/db/password");
        assert_eq!(std::fs::read(&file).unwrap(), b"hunter2");
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(state.path().join("secrets/db"))
                .unwrap()
                .mode()
                & 0o777,
            0o700
        );
        assert_eq!(
            list(state.path()),
            vec![(
                "db".to_string(),
                vec!["password".to_string(), "user".to_string()]
            )]
        );
        assert!(matches!(
            set(state.path(), "Bad_Name", "k", b"v"),
            Err(SecretError::BadName { .. })
        ));
        assert!(matches!(
            set(state.path(), "db", "../escape", b"v"),
            Err(SecretError::BadName { .. })
        ));
        let dir = mount(state.path(), "f", &["db".into()], None)
            .unwrap()
            .unwrap();
        assert_eq!(std::fs::read(dir.join("db/password")).unwrap(), b"hunter2");
        assert_eq!(
            std::fs::metadata(dir.join("db/password")).unwrap().mode() & 0o777,
            0o400
        );
        // A new value reaches the next mount.
        set(state.path(), "db", "password", b"new").unwrap();
        let dir = mount(state.path(), "f", &["db".into()], None)
            .unwrap()
            .unwrap();
        assert_eq!(std::fs::read(dir.join("db/password")).unwrap(), b"new");
        assert!(matches!(
            mount(state.path(), "f", &["nope".into()], None),
            Err(SecretError::Unset { .. })
        ));
        remove(state.path(), "db", Some("user")).unwrap();
        assert_eq!(list(state.path())[0].1, vec!["password".to_string()]);
        remove(state.path(), "db", None).unwrap();
        assert!(list(state.path()).is_empty());
        assert!(matches!(
            remove(state.path(), "db", None),
            Err(SecretError::Missing(_))
        ));
    }
}
