//! `cubeflash bench`: builds the plan (file or `--url`), finds or starts the gateway, runs the
//! load, and shows it: a live progress bar per step on a terminal, plain lines otherwise, and
//! a final table. Stops the local platform afterwards only if it started it.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::platform::{self, runtime};
use super::{load, Outcome};
use crate::bench::cluster::Cluster;
use crate::bench::hist;
use crate::bench::load::{Interval, Observer, Progress};
use crate::bench::plan::{self, AdHoc, Plan};
use crate::bench::{self as engine, Expected, GatewayHandle, Mode, StepRecord, Ui};
use crate::cli::BenchArgs;
use crate::deploy::kubernetes::{self as kube_target, forward, usage};
use crate::deploy::local as target;
use crate::spec;

pub fn bench(out: &mut impl Write, dir: Option<PathBuf>, args: BenchArgs) -> Result<Outcome> {
    let root = match dir {
        Some(d) => Some(d),
        None => std::env::current_dir()
            .ok()
            .and_then(|cwd| spec::find_root(&cwd)),
    };
    let results = match (&args.out, &root) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => r.join("bench/results"),
        (None, None) => PathBuf::from("bench/results"),
    };
    if let Some(crate::cli::BenchCommand::Compare { a, b }) = &args.command {
        let c = engine::compare::compare(&results, a, b)?;
        out.write_all(c.table.as_bytes())?;
        writeln!(out, "report: {}", c.page.display())?;
        return Ok(Outcome::Success);
    }
    let plan = build_plan(&args, root.as_deref())?;
    platform::raise_fd_limit();
    let rt = runtime()?;
    let mut started_platform = false;
    let needs_gateway =
        plan.uses_functions() || args.async_function.is_some() || args.queue.is_some();
    let in_cluster = match (&root, needs_gateway) {
        (Some(root), true) => super::kubernetes::wants(root, &args.target)?,
        _ => false,
    };
    // Held for the run: dropping it closes the port-forward.
    let mut cluster: Option<(Arc<Cluster>, Option<forward::PortForward>)> = None;
    let gateway = if in_cluster {
        let root = root.as_deref().ok_or(engine::BenchError::NoGateway)?;
        if args.queue.is_some() {
            anyhow::bail!("--queue publishes to NATS from this machine, and a cluster's NATS is not reachable from here: run it against the local platform (`--target local`), or from a pod in the cluster");
        }
        let (handle, c, forward) = rt.block_on(cluster_gateway(out, root, &args))?;
        cluster = Some((Arc::new(c), forward));
        Some(handle)
    } else if needs_gateway {
        let root = root.as_deref().ok_or(engine::BenchError::NoGateway)?;
        let url = match &args.gateway.gateway {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => match target::running_pid(root).and(target::recorded_url(root)) {
                Some(u) => u,
                None => {
                    load(root)?;
                    writeln!(
                        out,
                        "starting the local platform (it will be stopped afterwards)"
                    )?;
                    out.flush()?;
                    let exe =
                        std::env::current_exe().context("failed to find the cubeflash binary")?;
                    let url = rt.block_on(target::start_background(root, &exe))?;
                    started_platform = true;
                    url
                }
            },
        };
        let token = platform::token(root)?;
        Some(GatewayHandle { url, token })
    } else {
        None
    };
    let result = match (&gateway, &args.async_function, &args.queue) {
        (Some(gw), Some(function), _) => bench_async(out, &rt, gw, function, &results, &args),
        (Some(gw), None, Some(function)) => {
            let root = root.as_deref().ok_or(engine::BenchError::NoGateway)?;
            bench_queue(out, &rt, gw, root, function, &results, &args)
        }
        _ => run(
            out,
            &rt,
            &plan,
            (gateway.as_ref(), cluster.as_ref().map(|c| &c.0)),
            &results,
            &args,
        ),
    };
    drop(cluster);
    if started_platform {
        if let Some(root) = &root {
            rt.block_on(target::stop(root, Duration::from_secs(30)));
            let _ = writeln!(out, "stopped the local platform this run started");
        }
    }
    result
}

/// `bench --async FUNCTION`: the load against its async endpoint (the accept), then its
/// calls followed to the end.
fn bench_async(
    out: &mut impl Write,
    rt: &tokio::runtime::Runtime,
    gw: &GatewayHandle,
    function: &str,
    results: &Path,
    args: &BenchArgs,
) -> Result<Outcome> {
    let client = gw.client();
    rt.block_on(platform::wait_ready(&client))?;
    rt.block_on(client.function(function))?;
    let mut adhoc = args.clone();
    adhoc.url = Some(format!("{}/async-function/{function}", gw.url));
    adhoc.method = "POST".into();
    if adhoc.requests.is_none() && adhoc.duration.is_none() {
        // An open loop runs for a time, a closed one for a count.
        if adhoc.rate.is_some() {
            adhoc.duration = Some(Duration::from_secs(10));
        } else {
            adhoc.requests = Some(DEFAULT_TRIGGER_COUNT);
        }
    }
    let plan = build_plan(&adhoc, None)?;
    let since = crate::triggers::calls::now_ms();
    writeln!(
        out,
        "async accept: POST {}",
        adhoc.url.as_deref().unwrap_or_default()
    )?;
    let outcome = run(out, rt, &plan, (None, None), results, &adhoc)?;
    writeln!(out, "following the accepted calls to the end...")?;
    out.flush()?;
    let figures = rt.block_on(engine::triggers::follow_calls(
        &client,
        function,
        since,
        TRIGGER_WAIT,
    ))?;
    let f = hist::figures(&figures.completion);
    writeln!(
        out,
        "async end to end: {} calls ({} succeeded), completion p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {:.0} calls/s from the first accept to the last finish",
        figures.calls,
        figures.succeeded,
        f.p50,
        f.p99,
        f.max,
        figures.throughput()
    )?;
    engine::triggers::write_figures(
        &results.join(engine::output::LATEST),
        &[
            ("mode", "async".to_string()),
            ("function", function.to_string()),
            ("calls", figures.calls.to_string()),
            ("succeeded", figures.succeeded.to_string()),
            ("completion_p50_ms", format!("{:.3}", f.p50)),
            ("completion_p99_ms", format!("{:.3}", f.p99)),
            ("completion_max_ms", format!("{:.3}", f.max)),
            ("calls_per_second", format!("{:.1}", figures.throughput())),
        ],
    )?;
    Ok(outcome)
}

/// `bench --queue FUNCTION`: messages published to its queue trigger, timed through it.
fn bench_queue(
    out: &mut impl Write,
    rt: &tokio::runtime::Runtime,
    gw: &GatewayHandle,
    root: &Path,
    function: &str,
    results: &Path,
    args: &BenchArgs,
) -> Result<Outcome> {
    let repo = load(root)?;
    let nats = repo
        .project
        .nats
        .as_ref()
        .ok_or(engine::triggers::TriggerBenchError::NoNats)?;
    if args.rate.is_some() || args.duration.is_some() {
        anyhow::bail!("--queue publishes a count of messages as fast as the stream acks them: give -n (default 5000), not --rate or -z");
    }
    let client = gw.client();
    rt.block_on(platform::wait_ready(&client))?;
    let n = args.requests.unwrap_or(DEFAULT_TRIGGER_COUNT * 5 / 2);
    let body = platform::read_body(args.data.as_deref())?.unwrap_or_else(|| b"{}".to_vec());
    writeln!(
        out,
        "publishing {n} messages to {function}'s queue trigger..."
    )?;
    out.flush()?;
    let q = rt.block_on(engine::triggers::queue_run(
        &client,
        &nats.url,
        function,
        n,
        bytes::Bytes::from(body),
        TRIGGER_WAIT,
    ))?;
    writeln!(
        out,
        "queue: {} messages published in {:.2} s ({:.0}/s acked by the stream); all delivered through {function} after {:.2} s: {:.0} messages/s end to end",
        q.messages,
        q.publish.as_secs_f64(),
        q.messages as f64 / q.publish.as_secs_f64().max(1e-3),
        q.end_to_end.as_secs_f64(),
        q.throughput()
    )?;
    let dir = results.join(format!(
        "{}-queue",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    engine::triggers::write_figures(
        &dir,
        &[
            ("mode", "queue".to_string()),
            ("function", function.to_string()),
            ("messages", q.messages.to_string()),
            ("publish_seconds", format!("{:.3}", q.publish.as_secs_f64())),
            (
                "end_to_end_seconds",
                format!("{:.3}", q.end_to_end.as_secs_f64()),
            ),
            ("messages_per_second", format!("{:.1}", q.throughput())),
        ],
    )?;
    writeln!(out, "results: {}", dir.display())?;
    Ok(Outcome::Success)
}

/// Calls or messages a trigger benchmark sends unless told.
const DEFAULT_TRIGGER_COUNT: u64 = 2000;
/// How long the calls or messages may take to get through.
const TRIGGER_WAIT: Duration = Duration::from_secs(300);

fn build_plan(args: &BenchArgs, root: Option<&Path>) -> Result<Plan> {
    if args.timeout.is_some_and(|t| t.is_zero()) {
        anyhow::bail!(
            "--timeout 0s would time every request out: give a duration, e.g. --timeout 10s"
        );
    }
    if let Some(url) = &args.url {
        let headers = args
            .headers
            .iter()
            .map(|h| engine::http::parse_header(h))
            .collect::<Result<Vec<_>, _>>()?;
        let body = platform::read_body(args.data.as_deref())?.unwrap_or_default();
        let plan = AdHoc {
            url: url.clone(),
            method: args.method.clone(),
            headers,
            body,
            concurrency: args.concurrency,
            requests: args.requests,
            duration: args.duration,
            rate: args.rate,
            timeout: args.timeout.unwrap_or(Duration::from_secs(10)),
        }
        .into_plan()
        .map_err(|d| anyhow::anyhow!("{}", d.message))?;
        return Ok(Plan {
            threads: args.threads,
            ..plan
        });
    }
    let (path, display) = match (&args.plan, root) {
        (Some(p), _) => (p.clone(), p.clone()),
        (None, Some(r)) => (r.join(plan::DEFAULT_PLAN), PathBuf::from(plan::DEFAULT_PLAN)),
        (None, None) => anyhow::bail!("no plan given and no cubeflash.yaml here or above: pass a plan file, or benchmark one URL with `--url http://...`"),
    };
    let mut plan = match root {
        Some(root) if args.plan.is_none() && !path.exists() => {
            let repo = load(root)?;
            let names: Vec<String> = repo.functions.iter().map(|f| f.spec.name.clone()).collect();
            if names.is_empty() {
                anyhow::bail!("no bench/plan.yaml and no functions to benchmark: `cubeflash new NAME` adds one, or pass a plan, or `--url`");
            }
            let file = spec::SourceFile::new("(built-in plan)", plan::default_plan_text(&names));
            plan::decode_text(&file)?
        }
        _ => plan::load(&path, &display)?,
    };
    if args.threads.is_some() {
        plan.threads = args.threads;
    }
    if let Some(t) = args.timeout {
        plan.timeout = t;
    }
    Ok(plan)
}

/// The gateway in the cluster: its admin token (CUBEFLASH_ADMIN_TOKEN, else its Secret) and
/// its address (--gateway, else a port-forward to its Service opened here).
async fn cluster_gateway(
    out: &mut impl Write,
    root: &Path,
    args: &BenchArgs,
) -> Result<(GatewayHandle, Cluster, Option<forward::PortForward>)> {
    let namespace = load(root)?.project.namespace;
    let (client, api_url) = kube_target::connect(args.target.context.as_deref()).await?;
    let (url, via, forward) = match &args.gateway.gateway {
        Some(u) => {
            let u = u.trim_end_matches('/').to_string();
            let via = format!("at {u}");
            (u, via, None)
        }
        None => {
            let f = forward::forward_service(
                client.clone(),
                &api_url,
                &namespace,
                crate::names::GATEWAY_NAME,
            )
            .await?;
            let via = format!(
                "through a port-forward to pod {} (each connection tunnels through the API server, which bounds throughput and adds latency; `--gateway URL` measures a LoadBalancer or Ingress address instead)",
                f.pod
            );
            (format!("http://{}", f.local), via, Some(f))
        }
    };
    let token = match std::env::var("CUBEFLASH_ADMIN_TOKEN") {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => usage::admin_token(client.clone(), &api_url, &namespace)
            .await
            .context("failed to read the gateway's admin token (CUBEFLASH_ADMIN_TOKEN, when set, is used instead)")?,
    };
    writeln!(
        out,
        "Kubernetes: {api_url}, namespace {namespace}; the gateway {via}"
    )?;
    let cluster = Cluster {
        client,
        url: api_url,
        namespace,
        via,
    };
    Ok((GatewayHandle { url, token }, cluster, forward))
}

fn run(
    out: &mut impl Write,
    rt: &tokio::runtime::Runtime,
    plan: &Plan,
    (gateway, cluster): (Option<&GatewayHandle>, Option<&Arc<Cluster>>),
    results: &Path,
    args: &BenchArgs,
) -> Result<Outcome> {
    if let Some(gw) = gateway {
        rt.block_on(platform::wait_ready(&gw.client()))?;
    }
    let (targets, notes) = rt.block_on(engine::resolve_targets(plan, gateway))?;
    for n in notes {
        writeln!(out, "{n}")?;
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    rt.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, Ordering::Relaxed);
        }
    });
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    writeln!(
        out,
        "benchmarking {} ({} generator threads)",
        names.join(", "),
        threads
    )?;
    let mut ui = Screen::new(&mut *out);
    let session = engine::Session {
        rt,
        gateway,
        results,
        threads,
        cancel: &cancel,
        cluster,
    };
    let run = engine::run(&session, plan, &targets, &mut ui)?;
    drop(ui);
    if !run.conclusion.is_empty() {
        writeln!(out, "\nIn short:")?;
        for line in &run.conclusion {
            writeln!(out, "{line}")?;
        }
    }
    table(out, &run.records)?;
    for (t, s) in &run.replica_seconds {
        writeln!(out, "replica-seconds held by {t}: {s:.1}")?;
    }
    writeln!(
        out,
        "report: {}\nresults: {} (also {})",
        run.dir.join(engine::report::REPORT_FILE).display(),
        run.dir.display(),
        results.join(engine::output::LATEST).display()
    )?;
    let failed = run
        .records
        .iter()
        .all(|r| r.outcome.latency.is_empty() && r.outcome.errors.total() > 0);
    Ok(if failed {
        Outcome::Failed
    } else {
        Outcome::Success
    })
}

/// The terminal side of a run: a bar per step on a terminal, one line per step otherwise.
struct Screen<'w, W: Write> {
    out: &'w mut W,
    bar: Option<ProgressBar>,
    label: String,
    expected: Option<Expected>,
    terminal: bool,
}

impl<'w, W: Write> Screen<'w, W> {
    fn new(out: &'w mut W) -> Self {
        Self {
            out,
            bar: None,
            label: String::new(),
            expected: None,
            terminal: std::io::stdout().is_terminal(),
        }
    }
}

impl<W: Write> Observer for Screen<'_, W> {
    fn progress(&mut self, p: &Progress) {
        let Some(bar) = &self.bar else { return };
        let secs = p.elapsed.as_secs_f64();
        let rps = if secs > 0.0 {
            p.done as f64 / secs
        } else {
            0.0
        };
        let p99 = p
            .last_p99_ms
            .map_or("-".to_string(), |v| format!("{v:.2} ms"));
        let phase = if p.warming_up { " (warm-up)" } else { "" };
        bar.set_message(format!(
            "{} done, {rps:.0}/s, {} err, p99 {p99}{phase}",
            p.done, p.errors
        ));
        match self.expected {
            Some(Expected::Requests(_)) => bar.set_position(p.done),
            _ => bar.set_position(p.elapsed.as_millis() as u64),
        }
    }

    fn interval(&mut self, _interval: &Interval<'_>) {}
}

impl<W: Write> Ui for Screen<'_, W> {
    fn step_started(&mut self, label: &str, expected: Expected) {
        self.label = label.to_string();
        self.expected = Some(expected);
        if self.terminal {
            let len = match expected {
                Expected::Requests(n) => n,
                Expected::Duration(d) => d.as_millis() as u64,
            };
            let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stdout());
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:20}] {wide_msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            self.bar = Some(bar);
        }
    }

    fn step_finished(&mut self, r: &StepRecord) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let f = hist::figures(&r.outcome.latency);
        let errors = r.outcome.errors;
        let mut line = format!(
            "{:<34} {:>8} ok {:>6} err  p50 {:>8.3}  p99 {:>8.3}  max {:>8.3} ms",
            format!("{} {} {}", r.target, r.mode.name(), r.mode.param()),
            f.count,
            errors.total(),
            f.p50,
            f.p99,
            f.max
        );
        if r.mode != Mode::Cold {
            line.push_str(&format!("  {:>9.0} req/s", r.outcome.rps()));
        }
        if let Some(s) = r.outcome.schedule {
            line.push_str(&format!(
                "  (asked {:.0}/s, sent {:.1}/s, started late by {:.2} ms median, {:.1} ms at worst, missed {})",
                s.requested_rate,
                s.achieved_rate,
                s.late_p50.as_secs_f64() * 1000.0,
                s.max_late.as_secs_f64() * 1000.0,
                s.missed
            ));
        }
        if errors.total() > 0 {
            line.push_str(&format!("  [{}]", errors.describe()));
        }
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }

    fn note(&mut self, text: &str) {
        let _ = writeln!(self.out, "{text}");
    }
}

/// The final table.
fn table(out: &mut impl Write, records: &[StepRecord]) -> Result<()> {
    writeln!(
        out,
        "\n{:<28} {:<18} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "target", "mode", "requests", "errors", "req/s", "mean", "p50", "p90", "p99", "max"
    )?;
    for r in records {
        for row in r.rows() {
            let (f, errors, mode) = (hist::figures(row.latency), row.errors, row.mode);
            let rps = row.rps.map_or("-".into(), |v| format!("{v:.0}"));
            writeln!(
                out,
                "{:<28} {:<18} {:>9} {:>7} {:>10} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                r.target,
                format!("{mode} {}", r.mode.param()),
                f.count,
                errors.total(),
                rps,
                f.mean,
                f.p50,
                f.p90,
                f.p99,
                f.max
            )?;
        }
    }
    writeln!(out, "(latencies in ms)")?;
    Ok(())
}
