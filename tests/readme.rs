//! The docs are true where a test can tell: every `cubeflash ...` and `make ...` line in a
//! shell block of README.md and docs/*.md parses (each cubeflash command line is given to
//! the real binary with `--help` appended, so clap checks its verb, flags and values), and
//! every `--flag` the README's CLI table lists for a verb is one that verb takes.

mod common;

use std::process::Command;

use common::{repo_root, text};

/// The lines of ```sh blocks in the project's docs, with the file they come from.
fn shell_lines() -> Vec<(String, String)> {
    let mut files = vec![repo_root().join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(repo_root().join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut out = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let mut inside = false;
        for line in std::fs::read_to_string(&file).unwrap().lines() {
            if line.trim_start().starts_with("```") {
                inside = !inside && line.trim_start().starts_with("```sh");
                continue;
            }
            if inside {
                out.push((name.clone(), line.to_string()));
            }
        }
    }
    out
}

/// A shell line's words up to a comment, a pipe or `&&`, without quotes (simple cases only).
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (None, '#') if current.is_empty() => break,
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ' ' | '\t') => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            (_, c) => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    let end = words
        .iter()
        .position(|w| w == "&&" || w == "|" || w == ";")
        .unwrap_or(words.len());
    words.truncate(end);
    words
}

#[test]
fn every_cubeflash_command_in_the_docs_parses() {
    let mut checked = 0;
    for (file, line) in shell_lines() {
        let w = words(line.trim());
        let Some(first) = w.first() else { continue };
        if !(first == "cubeflash" || first.ends_with("/cubeflash")) {
            continue;
        }
        let out = Command::new(env!("CARGO_BIN_EXE_cubeflash"))
            .args(&w[1..])
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: `{line}` does not parse:\n{}",
            text(&out.stderr)
        );
        checked += 1;
    }
    assert!(
        checked >= 10,
        "only {checked} commands found: is the parser right?"
    );
}

#[test]
fn every_make_target_in_the_docs_exists() {
    let mut checked = 0;
    for (file, line) in shell_lines() {
        let w = words(line.trim());
        if w.first().map(String::as_str) != Some("make") {
            continue;
        }
        let targets: Vec<&String> = w[1..].iter().filter(|a| !a.contains('=')).collect();
        for target in targets {
            // -n: print what it would run, run nothing; -q would still need a target.
            let out = Command::new("make")
                .args(["-n", "--no-print-directory", target])
                .current_dir(repo_root())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{file}: `{line}`: no make target {target}:\n{}",
                text(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} make targets found");
}

#[test]
fn the_cli_table_lists_only_flags_the_verbs_take() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let table = readme
        .split("\n## CLI\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a CLI section");
    let mut checked = 0;
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let first = row.trim_start_matches('|');
        let first = &first[..first.find(" |").unwrap_or(first.len())];
        // A cell may show several commands: `list` / `ls`, `calls show ID` / `calls purge ID`.
        for usage in first
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            // The command path: its leading lowercase words (`calls show`), not ID or [--x].
            let path: Vec<&str> = usage
                .split_whitespace()
                .take_while(|w| {
                    !w.starts_with('-') && w.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                })
                .collect();
            let help = Command::new(env!("CARGO_BIN_EXE_cubeflash"))
                .args(&path)
                .arg("--help")
                .output()
                .unwrap();
            assert!(
                help.status.success(),
                "README lists a command {path:?} that does not exist"
            );
            let help = text(&help.stdout);
            for flag in usage
                .split(|c: char| c.is_whitespace() || c == '[' || c == ']' || c == '|')
                .filter(|w| w.starts_with("--"))
            {
                let shown = path.join(" ");
                assert!(
                    help.contains(flag),
                    "README's CLI table says `{shown} {flag}`, which `cubeflash {shown} --help` does not list"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "only {checked} flags checked");
}
