//! The user's input: cubeflash.yaml and functions/<name>/function.yaml, parsed into typed
//! specs with every problem located (file, line, column, key path) and a fix hint.
//! Knows nothing of Kubernetes objects or processes.

pub mod decode;
pub mod diagnostic;
pub mod events;
pub mod function;
pub mod handlers;
pub mod project;
pub mod repo;
pub mod values;

use std::path::PathBuf;

pub use diagnostic::{Diagnostic, Diagnostics, Loc, SourceFile};
pub use function::{FunctionSpec, Runtime, Trigger};
pub use project::{ProjectSpec, Target};
pub use repo::{find_root, load, CodeFile, Function, Repo};

/// Why a repo could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// No cubeflash.yaml where one was expected.
    #[error("{} has no cubeflash.yaml: run `cubeflash init` to start a repo there, or pass --dir", dir.display())]
    NotARepo { dir: PathBuf },
    /// A file or folder could not be read.
    #[error("failed to read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A template file is not UTF-8.
    #[error("{} is not UTF-8 text", path.display())]
    NotText { path: PathBuf },
    /// The specs have problems; all of them are listed.
    #[error("the repo has problems:\n{0}")]
    Invalid(Diagnostics),
}
