//! The exec runtime's guard (`cubeflash __replica-guard PROGRAM ARGS...`): runs the
//! function's program in the replica's process group and ends the whole group when its
//! stdin (the lifeline pipe only the gateway holds) closes, however the gateway died. It
//! waits out SIGTERM (the program in its group got it too and may be draining) and exits
//! with the program's status. Python and node shims watch their stdin themselves.

use std::process::ExitStatus;

use nix::sys::signal::{killpg, Signal};
use tokio::io::AsyncReadExt;

/// The hidden subcommand's name.
pub const ARG: &str = "__replica-guard";

/// Runs `program` under the guard; returns its exit code.
pub fn run(program: &str, args: &[String]) -> std::io::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .spawn()?;
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        let mut lifeline_open = std::env::var("CUBEFLASH_LIFELINE").is_ok_and(|v| v == "stdin");
        loop {
            tokio::select! {
                status = child.wait() => return Ok(code(status?)),
                _ = term.recv() => continue,
                read = stdin.read(&mut buf), if lifeline_open => {
                    if matches!(read, Ok(0) | Err(_)) {
                        lifeline_open = false;
                        // The gateway is gone: so is every process of this replica.
                        let _ = killpg(nix::unistd::getpgrp(), Signal::SIGKILL);
                    }
                }
            }
        }
    })
}

fn code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
