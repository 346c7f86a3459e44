//! Checks that need a language's own compiler, run by `validate`, `deploy` and `up` (not by
//! `render`, which must stay fast at a thousand functions): python handlers compile and
//! define their function at module level, node handlers parse and export theirs, and an
//! exec command's program exists and can be run. No user code runs, except that a node
//! handler whose export cannot be seen in its source is loaded once, in a separate process
//! with a time limit, to ask what it exports. One interpreter process per language for the
//! whole repo.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::{Diagnostic, Diagnostics, Function, Loc, Repo, Runtime, SourceFile, SpecError};

const PYTHON_CHECK: &str = include_str!("handlers/check.py");
const NODE_CHECK: &str = include_str!("handlers/check.js");

/// One handler for a checker script.
#[derive(Serialize)]
struct Item {
    path: PathBuf,
    display: String,
    name: String,
    dir: PathBuf,
    env: std::collections::BTreeMap<String, String>,
}

/// What a checker script found wrong with one handler.
#[derive(Deserialize)]
struct Problem {
    display: String,
    line: usize,
    column: usize,
    len: usize,
    kind: String,
    message: String,
    #[serde(default)]
    defined: Vec<String>,
}

/// Checks every handler in `repo` (exec programs on this machine's PATH only when
/// `local`). Ok holds notes on what could not be checked (an interpreter not installed);
/// Err lists every problem, located.
pub fn check(root: &Path, repo: &Repo, local: bool) -> Result<Vec<String>, SpecError> {
    let mut diags = Diagnostics::default();
    let mut notes = Vec::new();
    for (runtime, program, script) in [
        (Runtime::Python, "python3", PYTHON_CHECK),
        (Runtime::Node, "node", NODE_CHECK),
    ] {
        let functions: Vec<&Function> = repo
            .functions
            .iter()
            .filter(|f| f.spec.runtime == runtime && f.spec.handler_file().is_some())
            .collect();
        if functions.is_empty() {
            continue;
        }
        let items: Vec<Item> = functions
            .iter()
            .map(|f| {
                let (file, name) = f.spec.handler_file().expect("filtered on it");
                let dir = root.join(&f.rel_dir);
                Item {
                    path: dir.join(file),
                    display: f.rel_dir.join(file).display().to_string(),
                    name: name.to_string(),
                    dir,
                    env: f.spec.env.clone().into_iter().collect(),
                }
            })
            .collect();
        match run_checker(program, script, &items) {
            Ok(problems) => {
                for p in problems {
                    if let Some(f) = functions
                        .iter()
                        .zip(&items)
                        .find(|(_, i)| i.display == p.display)
                    {
                        diags.push(diagnostic(f.0, &p, program));
                    }
                }
            }
            Err(why) => notes.push(format!(
                "{} {runtime:?} handler(s) not compiled: {why}",
                functions.len()
            )),
        }
    }
    for f in repo
        .functions
        .iter()
        .filter(|f| f.spec.runtime == Runtime::Exec)
    {
        if let Some(d) = check_exec(root, f, local) {
            diags.push(d);
        }
    }
    if diags.is_empty() {
        Ok(notes)
    } else {
        Err(SpecError::Invalid(diags))
    }
}

/// Runs a checker script under `program`, the items on its stdin; its JSON answer.
fn run_checker(program: &str, script: &str, items: &[Item]) -> Result<Vec<Problem>, String> {
    let mut cmd = Command::new(program);
    match program {
        // -I: no user site, no PYTHON* variables; -B: no __pycache__ in the user's folder.
        "python3" => cmd.args(["-I", "-B", "-c", script]),
        _ => cmd.args(["-e", script]),
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program} is not installed here ({e})"))?;
    let input = serde_json::to_vec(items).expect("items serialize");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program} did not run: {e}"))?;
    let _ = writer.join();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{program} could not run the check ({}): {}",
            out.status,
            err.lines().last().unwrap_or("")
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{program} answered something unreadable: {e}"))
}

/// A located diagnostic for what a checker found.
fn diagnostic(f: &Function, p: &Problem, program: &str) -> Diagnostic {
    let (file, name) = f.spec.handler_file().expect("checked handlers have a file");
    let at_handler =
        |message: String| Diagnostic::new(&f.source, f.spec.locs.handler, "handler", message);
    match p.kind.as_str() {
        "syntax" if p.line > 0 => {
            let text = f
                .files
                .iter()
                .find(|c| c.path == file)
                .map(|c| String::from_utf8_lossy(&c.bytes).into_owned())
                .unwrap_or_default();
            let source = SourceFile::new(&p.display, text);
            let loc = Loc {
                line: p.line,
                column: p.column.max(1),
                len: p.len.max(1),
            };
            Diagnostic::new(&source, loc, "", p.message.clone()).with_hint(format!(
                "fix the syntax: {program} compiled {} as a replica would load it",
                p.display
            ))
        }
        "syntax" => Diagnostic::whole_file(Path::new(&p.display), p.message.clone())
            .with_hint(format!("{program} cannot compile it; fix the file")),
        "missing" => {
            let what = if f.spec.runtime == Runtime::Python {
                format!("{file} defines no function {name} at module level")
            } else {
                format!("{file} does not export a function {name}")
            };
            let known = if p.defined.is_empty() {
                String::new()
            } else {
                format!(" (it has: {})", p.defined.join(", "))
            };
            let hint = match (f.spec.runtime, p.defined.first()) {
                (Runtime::Python, Some(other)) => format!("define `def {name}(req):` at the top of {file}, or name the one it has: `handler: {file}:{other}`"),
                (Runtime::Python, None) => format!("define `def {name}(req):` at the top of {file}"),
                (_, Some(other)) => format!("export it (`exports.{name} = async (req) => ...`), or name the one it has: `handler: {file}:{other}`"),
                (_, None) => format!("export it: `exports.{name} = async (req) => ...` (or `module.exports = {{ {name} }}`)"),
            };
            at_handler(format!("{what}{known}")).with_hint(hint)
        }
        _ => at_handler(format!("{}: {}", p.display, p.message))
            .with_hint("the handler must load without error; see the message above"),
    }
}

/// Words a shell runs itself, not programs to find on PATH.
const SHELL_WORDS: &[&str] = &[
    "exec", "cd", "export", "set", ".", "source", "if", "while", "for", "case", "{", "(", "!",
    "eval", "ulimit", "umask", "trap", "env", "nohup", "nice", "time",
];

/// An exec command's program: a `./file` in the function's folder must be executable; a
/// program by name must be on PATH here (local target only: in a cluster it is the
/// image's).
fn check_exec(root: &Path, f: &Function, local: bool) -> Option<Diagnostic> {
    let command = f.spec.handler.as_deref()?;
    let program = command
        .split_whitespace()
        .find(|w| !w.contains('=') && !SHELL_WORDS.contains(w))?;
    let program = program.trim_matches(|c| c == '\'' || c == '"');
    let at = |message: String| Diagnostic::new(&f.source, f.spec.locs.handler, "handler", message);
    if let Some(local_file) = program.strip_prefix("./") {
        let path = root.join(&f.rel_dir).join(local_file);
        let mode = std::fs::metadata(&path).ok()?.permissions().mode();
        return (mode & 0o111 == 0).then(|| {
            at(format!("./{local_file} is not executable")).with_hint(format!(
                "chmod +x {} (and `git update-index --chmod=+x` it so the mode is committed)",
                f.rel_dir.join(local_file).display()
            ))
        });
    }
    if !local || program.contains('$') {
        return None;
    }
    let runnable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return (!runnable(Path::new(program))).then(|| {
            at(format!("{program} does not exist or is not executable on this machine"))
                .with_hint("install it there, or ship the program in the function's folder and run it as ./NAME")
        });
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|d| runnable(&d.join(program)));
    (!found).then(|| {
        at(format!("the program {program} is not on this machine's PATH"))
            .with_hint(format!("install {program} (e.g. `apt-get install {program}`), or ship it in the function's folder and run it as ./{program}"))
    })
}
