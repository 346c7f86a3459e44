//! The local gateway's bearer tokens: an admin token and a read-only one, each generated on
//! first start into `.cubeflash/` with mode 0600 (replicas run as another user and cannot
//! read them). `CUBEFLASH_ADMIN_TOKEN` overrides the admin one. Never printed or logged:
//! say where the file is instead.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const ADMIN_FILE: &str = "admin-token";
pub const READ_ONLY_FILE: &str = "read-token";

#[derive(Clone)]
pub struct Tokens {
    pub admin: String,
    pub read_only: String,
    pub admin_path: PathBuf,
    pub read_only_path: PathBuf,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("admin_path", &self.admin_path)
            .field("read_only_path", &self.read_only_path)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    pub fn load_or_create(state_dir: &Path) -> std::io::Result<Self> {
        let admin_path = state_dir.join(ADMIN_FILE);
        let read_only_path = state_dir.join(READ_ONLY_FILE);
        let admin = match std::env::var("CUBEFLASH_ADMIN_TOKEN") {
            Ok(t) if !t.is_empty() => t,
            _ => file_token(state_dir, &admin_path)?,
        };
        let read_only = file_token(state_dir, &read_only_path)?;
        Ok(Self {
            admin,
            read_only,
            admin_path,
            read_only_path,
        })
    }
}

/// The secret an async call's callback is signed with (HMAC-SHA256), so a receiver can tell
/// it came from this gateway.
pub const CALLBACK_SECRET_FILE: &str = "callback-secret";

/// The token in `path`, or a new random one written there (0600).
pub fn file_token(state_dir: &Path, path: &Path) -> std::io::Result<String> {
    if let Ok(token) = std::fs::read_to_string(path) {
        let token = token.trim().to_string();
        if !token.is_empty() {
            return Ok(token);
        }
    }
    std::fs::create_dir_all(state_dir)?;
    let token = random_token()?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{token}")?;
    Ok(token)
}

/// 24 random bytes, as hex.
pub fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
