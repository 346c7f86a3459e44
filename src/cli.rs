//! The command line: clap definitions only.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "cubeflash",
    version,
    about = "Function-as-a-Service for Kubernetes that lives in a git repo"
)]
pub struct Cli {
    /// The repo to work on (default: the nearest folder at or above the current one with a cubeflash.yaml).
    #[arg(short = 'C', long = "dir", global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeArg {
    Python,
    Node,
    Exec,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a new cubeflash repo (cubeflash.yaml, functions/, Makefile) in DIR or the current folder.
    Init {
        /// Where to start the repo.
        path: Option<PathBuf>,
        /// The Kubernetes namespace the project deploys into.
        #[arg(long, default_value = "cubeflash")]
        namespace: String,
    },
    /// Scaffold functions/<NAME>/ with a function.yaml and a handler that work at once.
    New {
        /// The function's name: lowercase letters, digits and '-'.
        name: String,
        /// The language of the handler.
        #[arg(long, short, value_enum, default_value = "python")]
        runtime: RuntimeArg,
        /// Do not render generated/ afterwards.
        #[arg(long)]
        no_render: bool,
    },
    /// Check cubeflash.yaml, every function.yaml and every rendered object, writing nothing.
    Validate,
    /// Render functions/ and templates/ into generated/.
    Render {
        /// Write nothing; fail with a diff when generated/ is out of date.
        #[arg(long)]
        check: bool,
    },
}
