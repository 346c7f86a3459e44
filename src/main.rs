//! The `cubeflash` binary: parse, run, print the error chain, choose the exit code.

use std::io::ErrorKind;
use std::process::ExitCode;

use clap::Parser;
use cubeflash::cli::Cli;
use cubeflash::commands::{self, Outcome};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(cli) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Ok(Outcome::Exit(code)) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(err) if is_closed_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cubeflash: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// A reader that went away (`cubeflash render --check | head`) is not an error.
fn is_closed_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == ErrorKind::BrokenPipe)
}
