//! What each CLI verb does: calls the library and prints for a person. The only module
//! (with main.rs) that writes to stdout.

mod bench;
mod deps;
mod kubernetes;
mod platform;
mod secrets;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cli::{Cli, Command, RuntimeArg};
use crate::render::{self, output, GENERATED_DIR};
use crate::scaffold;
use crate::spec::{self, Runtime};

/// How a command ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The command ran, and what it checked or called failed: `render --check` found
    /// differences, or `invoke` got a non-2xx answer. Exit code 1.
    Failed,
    /// Exit with this code (the exec guard passes on its program's).
    Exit(i32),
}

pub fn run(cli: Cli) -> Result<Outcome> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Command::Init {
            path,
            namespace,
            git,
        } => init(&mut out, path.or(cli.dir), &namespace, git),
        Command::New {
            name,
            runtime,
            no_render,
        } => new(&mut out, cli.dir, &name, runtime, no_render),
        Command::Validate => validate(&mut out, cli.dir),
        Command::Render { check } => render_cmd(&mut out, cli.dir, check),
        Command::Up {
            bind,
            port,
            log_format,
        } => platform::up(&mut out, cli.dir, bind, port, log_format),
        Command::Deploy {
            target,
            dry_run,
            no_wait,
            timeout,
            force_conflicts,
            no_verify,
            render,
        } => {
            let root = repo_root(cli.dir)?;
            if kubernetes::wants(&root, &target)? {
                let options = crate::deploy::kubernetes::ApplyOptions {
                    dry_run,
                    force_conflicts,
                    wait: (!no_wait).then_some(timeout),
                };
                kubernetes::deploy(&mut out, &root, &target, options)
            } else {
                platform::deploy(
                    &mut out,
                    Some(root),
                    platform::DeployOptions {
                        verify: !no_verify,
                        render,
                    },
                )
            }
        }
        Command::Down => platform::down(&mut out, cli.dir),
        Command::List { gateway, target } => {
            match kubernetes::root_if_wanted(cli.dir.clone(), &target)? {
                Some(root) => kubernetes::list(&mut out, &root, &target),
                None => platform::list(&mut out, cli.dir, gateway),
            }
        }
        Command::Describe {
            name,
            gateway,
            target,
        } => match kubernetes::root_if_wanted(cli.dir.clone(), &target)? {
            Some(root) => kubernetes::describe(&mut out, &root, &target, &name),
            None => platform::describe(&mut out, cli.dir, &name, gateway),
        },
        Command::Invoke {
            name,
            data,
            headers,
            method,
            is_async,
            event,
            gateway,
        } => platform::invoke(
            &mut out,
            cli.dir,
            &name,
            platform::InvokeArgs {
                data,
                headers,
                method,
                is_async,
                event,
            },
            gateway,
        ),
        Command::Calls {
            action,
            function,
            state,
            limit,
            gateway,
        } => platform::calls(&mut out, cli.dir, action, function, state, limit, gateway),
        Command::Logs {
            name,
            follow,
            lines,
        } => platform::logs(&mut out, cli.dir, &name, follow, lines),
        Command::Secret { action } => secrets::secret(&mut out, cli.dir, action),
        Command::Deps { function, prune } => {
            deps::deps(&mut out, cli.dir, function.as_deref(), prune)
        }
        Command::Scale {
            name,
            replicas,
            gateway,
        } => platform::scale(&mut out, cli.dir, &name, replicas, gateway),
        Command::Delete {
            name,
            gateway,
            target,
        } => match kubernetes::root_if_wanted(cli.dir.clone(), &target)? {
            Some(root) => kubernetes::delete(&mut out, &root, &target, &name),
            None => platform::delete(&mut out, cli.dir, &name, gateway),
        },
        Command::Gateway {
            namespace,
            routes_configmap,
            bind,
            port,
            queue_size,
            max_body_size,
            max_connections,
            header_timeout,
            body_timeout,
            idle_timeout,
            log_format,
            context,
            nats_url,
            callback_hosts,
            async_lease,
            async_retention,
        } => kubernetes::gateway(
            &mut out,
            crate::gateway::kubernetes::KubeGatewayConfig {
                namespace,
                routes_configmap,
                queue_size,
                max_body_size,
                admin_token: std::env::var("CUBEFLASH_ADMIN_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty()),
                read_token: std::env::var("CUBEFLASH_READ_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty()),
                nats_url: nats_url.filter(|u| !u.is_empty()),
                async_lease,
                async_retention,
                callback_hosts: callback_hosts
                    .into_iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                callback_secret: std::env::var("CUBEFLASH_CALLBACK_SECRET")
                    .ok()
                    .filter(|t| !t.is_empty()),
            },
            crate::gateway::ConnectionLimits {
                max_connections: max_connections as usize,
                header_timeout,
                body_timeout,
                idle_timeout,
            },
            std::net::SocketAddr::new(bind, port),
            context.as_deref(),
            log_format,
        ),
        Command::Bench(args) => bench::bench(&mut out, cli.dir, args),
        Command::ReplicaGuard { program, args } => {
            let code = crate::runtime::guard::run(&program, &args)
                .with_context(|| format!("failed to run {program}"))?;
            Ok(if code == 0 {
                Outcome::Success
            } else {
                Outcome::Exit(code)
            })
        }
    }
}

/// The repo root: --dir if given, else the nearest folder with a cubeflash.yaml.
pub(crate) fn repo_root(dir: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(dir) = dir {
        return Ok(dir);
    }
    let cwd = std::env::current_dir().context("failed to read the current folder")?;
    spec::find_root(&cwd).ok_or_else(|| {
        anyhow::anyhow!(
            "no cubeflash.yaml in {} or any folder above it: run `cubeflash init` to start a repo, or pass --dir",
            cwd.display()
        )
    })
}

pub(crate) fn load(root: &Path) -> Result<spec::Repo> {
    Ok(spec::load(root)?)
}

/// `load`, then the checks that run the languages' compilers (`spec::handlers`; exec
/// programs on PATH when the functions run `local`ly). Says on stderr what it could not
/// check.
pub(crate) fn load_checked(root: &Path, local: bool) -> Result<spec::Repo> {
    let repo = load(root)?;
    for note in spec::handlers::check(root, &repo, local)? {
        eprintln!("note: {note}");
    }
    Ok(repo)
}

fn init(
    out: &mut impl Write,
    path: Option<PathBuf>,
    namespace: &str,
    git: bool,
) -> Result<Outcome> {
    let dir = match path {
        Some(p) => p,
        None => std::env::current_dir().context("failed to read the current folder")?,
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let written = scaffold::init_repo(&dir, namespace)?;
    let repo = load(&dir)?;
    let rendered = render::render(&repo).context("failed to render the new repo")?;
    output::write_atomically(&dir, &rendered)?;
    for p in written.iter().filter(|p| !p.ends_with(".gitkeep")) {
        writeln!(out, "created {}", p.display())?;
    }
    writeln!(
        out,
        "rendered {} gateway objects into {}",
        rendered.files.len(),
        dir.join(GENERATED_DIR).display()
    )?;
    let in_git = std::process::Command::new("git")
        .args(["rev-parse", "--is-inside-work-tree"])
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if git && !in_git {
        let status = std::process::Command::new("git")
            .arg("init")
            .arg("--quiet")
            .current_dir(&dir)
            .status()
            .context("failed to run `git init`: is git installed?")?;
        if !status.success() {
            anyhow::bail!("`git init` in {} failed ({status})", dir.display());
        }
        writeln!(out, "initialized a git repository in {}", dir.display())?;
    } else if !in_git {
        writeln!(
            out,
            "{} is not in a git repository: functions are reviewed in pull requests, so `git init` there (or `cubeflash init --git` next time)",
            dir.display()
        )?;
    }
    writeln!(
        out,
        "next: cd {} && cubeflash new hello --runtime python",
        dir.display()
    )?;
    Ok(Outcome::Success)
}

fn new(
    out: &mut impl Write,
    dir: Option<PathBuf>,
    name: &str,
    runtime: RuntimeArg,
    no_render: bool,
) -> Result<Outcome> {
    let root = repo_root(dir)?;
    let runtime = match runtime {
        RuntimeArg::Python => Runtime::Python,
        RuntimeArg::Node => Runtime::Node,
        RuntimeArg::Exec => Runtime::Exec,
    };
    let written = scaffold::new_function(&root, name, runtime)?;
    for p in &written {
        writeln!(
            out,
            "created {}",
            p.strip_prefix(&root).unwrap_or(p).display()
        )?;
    }
    if !no_render {
        render_cmd(out, Some(root), false)?;
    }
    writeln!(out, "call it at /function/{name} once deployed (`make deploy`), or edit functions/{name}/ first")?;
    Ok(Outcome::Success)
}

fn validate(out: &mut impl Write, dir: Option<PathBuf>) -> Result<Outcome> {
    let root = repo_root(dir)?;
    let repo = load(&root)?;
    let repo = load_checked(&root, repo.project.target == spec::Target::Local)?;
    let rendered = render::render(&repo)?;
    let names: Vec<&str> = repo
        .functions
        .iter()
        .map(|f| f.spec.name.as_str())
        .collect();
    let listed = match names.len() {
        0 => "none yet".to_string(),
        n if n <= 8 => names.join(", "),
        n => format!("{}, ... and {} more", names[..5].join(", "), n - 5),
    };
    writeln!(
        out,
        "ok: {} function{} ({listed}), {} objects, namespace {}",
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        rendered.files.len(),
        repo.project.namespace
    )?;
    Ok(Outcome::Success)
}

fn render_cmd(out: &mut impl Write, dir: Option<PathBuf>, check: bool) -> Result<Outcome> {
    let root = repo_root(dir)?;
    let repo = load(&root)?;
    let rendered = render::render(&repo)?;
    if check {
        let diffs = output::diff(&root, &rendered)?;
        if diffs.is_empty() {
            writeln!(
                out,
                "{GENERATED_DIR}/ is up to date ({} files)",
                rendered.files.len()
            )?;
            return Ok(Outcome::Success);
        }
        for d in &diffs {
            write!(out, "{}", d.unified)?;
        }
        out.flush()?;
        eprintln!(
            "cubeflash: {GENERATED_DIR}/ is out of date: {} file{} differ ({}); run `cubeflash render` and commit the result",
            diffs.len(),
            if diffs.len() == 1 { "" } else { "s" },
            diffs.iter().map(|d| d.path.as_str()).collect::<Vec<_>>().join(", ")
        );
        return Ok(Outcome::Failed);
    }
    let summary = output::write_atomically(&root, &rendered)?;
    writeln!(
        out,
        "rendered {} objects into {GENERATED_DIR}/ ({} added, {} changed, {} removed)",
        summary.files,
        summary.added.len(),
        summary.changed.len(),
        summary.removed.len()
    )?;
    Ok(Outcome::Success)
}
