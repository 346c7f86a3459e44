//! The verbs against a Kubernetes cluster: deploy (apply, prune, wait), list, describe and
//! delete. Chosen by `--target kubernetes`, or by `target: kubernetes` in cubeflash.yaml.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::platform::runtime;
use super::{load, repo_root, Outcome};
use crate::cli::TargetArgs;
use crate::deploy::kubernetes::{self as kube_target, manifests, ApplyOptions};
use crate::render::{self, output, GENERATED_DIR};
use crate::spec::Target;

/// Whether the verb goes to the cluster: `--target`, else cubeflash.yaml's `target`.
pub fn wants(root: &Path, args: &TargetArgs) -> Result<bool> {
    Ok(match args.target.as_deref() {
        Some("kubernetes") => true,
        Some("local") => false,
        Some(other) => bail!("unknown target {other:?}: use local or kubernetes"),
        None => load(root)?.project.target == Target::Kubernetes,
    })
}

/// The repo root when the verb goes to the cluster; None for the local platform.
pub fn root_if_wanted(dir: Option<PathBuf>, args: &TargetArgs) -> Result<Option<PathBuf>> {
    if args.target.is_none() && args.context.is_none() {
        // Without a repo (e.g. only --gateway given), the verb is for the local platform.
        let Ok(root) = repo_root(dir) else {
            return Ok(None);
        };
        return Ok(wants(&root, args)?.then_some(root));
    }
    if args.context.is_some() && args.target.is_none() {
        return Ok(Some(repo_root(dir)?));
    }
    let root = repo_root(dir)?;
    Ok(wants(&root, args)?.then_some(root))
}

/// `cubeflash deploy --target kubernetes`.
pub fn deploy(
    out: &mut impl Write,
    root: &Path,
    args: &TargetArgs,
    options: ApplyOptions,
) -> Result<Outcome> {
    let repo = super::load_checked(root, false)?;
    crate::spec::repo::check_cluster(&repo)?;
    let rendered = render::render(&repo)?;
    let diffs = output::diff(root, &rendered)?;
    if !diffs.is_empty() {
        bail!(
            "{GENERATED_DIR}/ is out of date ({} file{} differ: {}): run `cubeflash render`, review and commit the result, then deploy; nothing was sent to the cluster",
            diffs.len(),
            if diffs.len() == 1 { "" } else { "s" },
            diffs.iter().map(|d| d.path.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    let desired = manifests::load(root)?;
    let namespace = repo.project.namespace.clone();
    let rt = runtime()?;
    let summary = rt.block_on(async {
        let (client, url) = kube_target::connect(args.context.as_deref()).await?;
        // A function's Secrets must be there before its pods are, or they never start.
        let mut wanted: Vec<(String, String)> = repo
            .functions
            .iter()
            .flat_map(|f| f.spec.secrets.iter().map(|s| (f.spec.name.clone(), s.clone())))
            .collect();
        wanted.sort();
        let mut names: Vec<String> = wanted.iter().map(|(_, s)| s.clone()).collect();
        names.sort();
        names.dedup();
        if !names.is_empty() {
            match kube_target::usage::missing_secrets(client.clone(), &url, &namespace, &names).await {
                Ok(missing) if !missing.is_empty() => {
                    let lines: Vec<String> = wanted
                        .iter()
                        .filter(|(_, s)| missing.contains(s))
                        .map(|(f, s)| format!("  {f} needs the Secret {s}: kubectl -n {namespace} create secret generic {s} --from-literal=KEY=VALUE (or --from-file=KEY=FILE)"))
                        .collect();
                    bail!("Secrets missing in namespace {namespace}; nothing was sent to the cluster:\n{}", lines.join("\n"));
                }
                Ok(_) => {}
                Err(kube_target::KubeError::Forbidden { .. }) => writeln!(
                    out,
                    "could not check that the Secrets {} exist (no `get secrets` in {namespace}); pods that mount a missing one wait in ContainerCreating",
                    names.join(", ")
                )?,
                Err(e) => return Err(e.into()),
            }
        }
        let dry = if options.dry_run {
            " (server-side dry run: nothing is stored)"
        } else {
            ""
        };
        writeln!(
            out,
            "deploying {} objects to {url}, namespace {namespace}{dry}",
            desired.len()
        )?;
        let mut progress = |line: &str| {
            let _ = writeln!(out, "  {line}");
            let _ = out.flush();
        };
        let summary =
            kube_target::apply(client, &url, &namespace, &desired, options, &mut progress).await?;
        Ok::<_, anyhow::Error>(summary)
    })?;
    writeln!(
        out,
        "{}applied {}, pruned {}, rolled out {}",
        if options.dry_run {
            "dry run: would have "
        } else {
            ""
        },
        summary.applied.len(),
        summary.pruned.len(),
        summary.rolled_out.len()
    )?;
    if !options.dry_run {
        writeln!(
            out,
            "the gateway: kubectl -n {namespace} port-forward svc/{} 8080:{}",
            render::context::GATEWAY_NAME,
            repo.project.gateway.port
        )?;
    }
    Ok(Outcome::Success)
}

/// `cubeflash list --target kubernetes`.
pub fn list(out: &mut impl Write, root: &Path, args: &TargetArgs) -> Result<Outcome> {
    let namespace = load(root)?.project.namespace;
    let functions = runtime()?.block_on(async {
        let (client, url) = kube_target::connect(args.context.as_deref()).await?;
        Ok::<_, anyhow::Error>(kube_target::functions(client, &url, &namespace).await?)
    })?;
    let rows: Vec<[String; 5]> = functions
        .iter()
        .map(|f| {
            let baseline = match f["baselineReplicas"].as_object() {
                Some(b) => format!("{}/{}", b["ready"], b["desired"]),
                None => "-".into(),
            };
            [
                f["name"].as_str().unwrap_or("?").to_string(),
                f["state"].as_str().unwrap_or("?").to_string(),
                f["replicas"]["ready"].to_string(),
                f["replicas"]["desired"].to_string(),
                baseline,
            ]
        })
        .collect();
    super::platform::write_table(
        out,
        &["NAME", "STATE", "READY", "DESIRED", "BASELINE READY"],
        &rows,
    )?;
    if functions.is_empty() {
        writeln!(
            out,
            "(no functions in namespace {namespace}: `cubeflash deploy --target kubernetes`)"
        )?;
    }
    Ok(Outcome::Success)
}

/// `cubeflash describe NAME --target kubernetes`: replicas and recent scale events.
pub fn describe(
    out: &mut impl Write,
    root: &Path,
    args: &TargetArgs,
    name: &str,
) -> Result<Outcome> {
    let namespace = load(root)?.project.namespace;
    let value = runtime()?.block_on(async {
        let (client, url) = kube_target::connect(args.context.as_deref()).await?;
        let all = kube_target::functions(client.clone(), &url, &namespace).await?;
        let Some(mut f) = all.into_iter().find(|f| f["name"] == name) else {
            return Err(kube_target::KubeError::NoSuchFunction {
                name: name.into(),
                namespace: namespace.clone(),
            }
            .into());
        };
        f["events"] = serde_json::Value::Array(
            kube_target::recent_events(client, &url, &namespace, name, 10).await?,
        );
        Ok::<_, anyhow::Error>(f)
    })?;
    writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    Ok(Outcome::Success)
}

/// `cubeflash delete NAME --target kubernetes`.
pub fn delete(out: &mut impl Write, root: &Path, args: &TargetArgs, name: &str) -> Result<Outcome> {
    let namespace = load(root)?.project.namespace;
    runtime()?.block_on(async {
        let (client, url) = kube_target::connect(args.context.as_deref()).await?;
        let mut progress = |line: &str| {
            let _ = writeln!(out, "  {line}");
        };
        kube_target::delete_function(client, &url, &namespace, name, &mut progress).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    writeln!(out, "deleted {name} from namespace {namespace}; remove functions/{name}/ and render, or the next deploy brings it back")?;
    Ok(Outcome::Success)
}

/// `cubeflash gateway`: the engine with the Kubernetes backend; serves until SIGINT or
/// SIGTERM.
pub fn gateway(
    out: &mut impl Write,
    config: crate::gateway::kubernetes::KubeGatewayConfig,
    limits: crate::gateway::ConnectionLimits,
    addr: std::net::SocketAddr,
    context: Option<&str>,
    log_format: crate::cli::LogFormat,
) -> Result<Outcome> {
    use crate::gateway::kubernetes::KubeBackend;
    use crate::gateway::{Gateway, GatewayConfig};
    super::platform::init_logging(log_format);
    super::platform::raise_fd_limit();
    let rt = runtime()?;
    rt.block_on(async {
        let (client, url) = kube_target::connect(context).await?;
        let engine = Gateway::new(GatewayConfig {
            bind: addr.ip(),
            port: addr.port(),
            max_body: config.max_body_size as usize,
            queue_size: config.queue_size,
            admin_token: config.admin_token.clone(),
            read_token: config.read_token.clone(),
            grace: std::time::Duration::from_secs(20),
            limits,
        });
        KubeBackend::attach(&engine, client, &config)
            .await
            .with_context(|| format!("the API server at {url}"))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("failed to listen on {addr}"))?;
        *engine.local_addr.write().expect("addr lock") = listener.local_addr().ok();
        let local = listener.local_addr()?;
        writeln!(
            out,
            "cubeflash gateway (kubernetes backend, namespace {}) listening on http://{local}",
            config.namespace
        )?;
        out.flush()?;
        engine
            .serve(listener, super::platform::shutdown_signal())
            .await;
        Ok(Outcome::Success)
    })
}
