//! What the functions held while a run went on: a background task asks the gateway's admin
//! API every [`EVERY`] for each function's ready replicas (serverless and baseline) and reads
//! the CPU time of the replica processes from the process table (`/proc/PID/stat`, where the
//! replicas run on this machine). Per-step figures (replicas min/max/mean, CPU seconds) and
//! the run's timeline are computed from these samples. Against a cluster the replicas come
//! from the functions' Deployments and the CPU from the metrics API (see cluster.rs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cluster::Cluster;
use crate::gateway::api::FunctionInfo;
use crate::gateway::client::AdminClient;

/// How often the gateway is asked.
pub const EVERY: Duration = Duration::from_millis(200);

/// One function at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Since the run began.
    pub at: Duration,
    /// Index into the sampler's function names.
    pub function: usize,
    pub serverless: u32,
    pub baseline: u32,
    /// CPU seconds the replicas used since the run began (cumulative; None: not measurable
    /// here, the replicas run elsewhere).
    pub serverless_cpu: Option<f64>,
    pub baseline_cpu: Option<f64>,
    pub cold_starts: u64,
}

/// Which of a function's pools a target measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Serverless,
    Baseline,
}

/// What a target's pool held during one step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Resources {
    pub replicas_min: u32,
    pub replicas_max: u32,
    pub replicas_mean: f64,
    /// CPU seconds its replicas used in the step (None: not measurable here).
    pub cpu_seconds: Option<f64>,
    /// Replicas held times the step's length.
    pub replica_seconds: f64,
}

pub struct Sampler {
    pub functions: Vec<String>,
    pub start: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling `functions` on `rt`; `start` is the run's time zero.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        client: AdminClient,
        cluster: Option<Arc<Cluster>>,
        functions: Vec<String>,
        start: Instant,
    ) -> Self {
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let (names, out) = (functions.clone(), samples.clone());
        let task = rt.spawn(async move {
            let mut cpu = CpuMeter::default();
            let mut cluster_cpu = ClusterCpu::default();
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Ok(list) = client.functions().await else {
                    continue;
                };
                let ready = match &cluster {
                    Some(c) => c.ready().await,
                    None => None,
                };
                let at = start.elapsed();
                if let Some(c) = cluster.as_deref().filter(|_| cluster_cpu.due(at)) {
                    cluster_cpu.read(at, c.cpu().await);
                }
                let mut batch = Vec::new();
                for (i, name) in names.iter().enumerate() {
                    if let Some(f) = list.iter().find(|f| &f.name == name) {
                        let mut s = sample(&mut cpu, i, f, at);
                        if cluster.is_some() {
                            if let Some(r) = ready.as_ref().and_then(|r| r.get(name)) {
                                s.serverless = r.serverless;
                                s.baseline = r.baseline;
                            }
                            s.serverless_cpu = cluster_cpu.total(name, Side::Serverless, at);
                            s.baseline_cpu = cluster_cpu.total(name, Side::Baseline, at);
                        }
                        batch.push(s);
                    }
                }
                out.lock().expect("samples lock").extend(batch);
            }
        });
        Self {
            functions,
            start,
            samples,
            task,
        }
    }

    /// Every sample so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("samples lock").clone()
    }

    /// What `function`'s `side` held from `from` to `to` (offsets from the run's start).
    pub fn resources(
        &self,
        function: &str,
        side: Side,
        from: Duration,
        to: Duration,
    ) -> Option<Resources> {
        let index = self.functions.iter().position(|f| f == function)?;
        let samples = self.samples.lock().expect("samples lock");
        resources(&samples, index, side, from, to)
    }

    pub fn stop(self) -> Vec<Sample> {
        self.task.abort();
        let samples = self.samples.lock().expect("samples lock").clone();
        samples
    }
}

/// The figures of `side` of function `index` over [from, to], from the samples in it (and
/// the last one before it, which says what the step began with).
pub fn resources(
    samples: &[Sample],
    index: usize,
    side: Side,
    from: Duration,
    to: Duration,
) -> Option<Resources> {
    let mine = || samples.iter().filter(|s| s.function == index);
    let before = mine().rfind(|s| s.at < from);
    let inside: Vec<&Sample> = mine().filter(|s| s.at >= from && s.at <= to).collect();
    let pick = |s: &Sample| match side {
        Side::Serverless => (s.serverless, s.serverless_cpu),
        Side::Baseline => (s.baseline, s.baseline_cpu),
    };
    let counted: Vec<u32> = before
        .into_iter()
        .chain(inside.iter().copied())
        .map(|s| pick(s).0)
        .collect();
    if counted.is_empty() {
        return None;
    }
    let mean = counted.iter().map(|&n| f64::from(n)).sum::<f64>() / counted.len() as f64;
    let first = before.or(inside.first().copied()).map(|s| pick(s).1);
    let last = inside.last().map(|s| pick(s).1);
    let cpu_seconds = match (first, last) {
        (Some(Some(a)), Some(Some(b))) => Some((b - a).max(0.0)),
        _ => None,
    };
    Some(Resources {
        replicas_min: counted.iter().copied().min().unwrap_or(0),
        replicas_max: counted.iter().copied().max().unwrap_or(0),
        replicas_mean: mean,
        cpu_seconds,
        replica_seconds: mean * to.saturating_sub(from).as_secs_f64(),
    })
}

fn sample(cpu: &mut CpuMeter, index: usize, f: &FunctionInfo, at: Duration) -> Sample {
    let local = !f.replica_pids.is_empty() || !f.baseline_pids.is_empty();
    let serverless_cpu = cpu.add((index, Side::Serverless), &f.replica_pids);
    let baseline_cpu = cpu.add((index, Side::Baseline), &f.baseline_pids);
    // No pids while replicas run: they run elsewhere (Kubernetes).
    let measurable = |pids: usize, ready: u32| local || pids > 0 || ready == 0;
    Sample {
        at,
        function: index,
        serverless: f.replicas.ready,
        baseline: f.baseline_replicas.map_or(0, |b| b.ready),
        serverless_cpu: measurable(f.replica_pids.len(), f.replicas.ready)
            .then_some(serverless_cpu),
        baseline_cpu: measurable(
            f.baseline_pids.len(),
            f.baseline_replicas.map_or(0, |b| b.ready),
        )
        .then_some(baseline_cpu),
        cold_starts: f.cold_starts,
    }
}

/// Cumulative CPU seconds per pool, from the processes' own counters: a process seen for
/// the first time adds all it used so far (its start-up is part of the cost); a process
/// gone since the last sample loses what it used after it.
#[derive(Default)]
struct CpuMeter {
    last: HashMap<(usize, Side), HashMap<u32, f64>>,
    total: HashMap<(usize, Side), f64>,
}

impl CpuMeter {
    fn add(&mut self, pool: (usize, Side), pids: &[u32]) -> f64 {
        let last = self.last.entry(pool).or_default();
        let total = self.total.entry(pool).or_default();
        let mut now = HashMap::new();
        for &pid in pids {
            if let Some(used) = cpu_seconds(pid) {
                *total += (used - last.get(&pid).copied().unwrap_or(0.0)).max(0.0);
                now.insert(pid, used);
            }
        }
        *last = now;
        *total
    }
}

/// Cumulative CPU seconds per pool in a cluster: the metrics API gives cores in use (an
/// average over its own window), read every [`CLUSTER_CPU_EVERY`] and integrated over time;
/// between reads the last rate goes on.
/// Cores in use per (function, side), as the metrics API last said.
type CpuRates = HashMap<(String, Side), f64>;

#[derive(Default)]
struct ClusterCpu {
    /// When the metrics were last read, and what they said (None: no metrics API).
    last: Option<(Duration, Option<CpuRates>)>,
    total: HashMap<(String, Side), f64>,
}

/// How often the metrics API is read (metrics-server itself refreshes every 15 s or so).
const CLUSTER_CPU_EVERY: Duration = Duration::from_secs(1);

impl ClusterCpu {
    fn due(&self, at: Duration) -> bool {
        self.last
            .as_ref()
            .is_none_or(|(when, _)| at.saturating_sub(*when) >= CLUSTER_CPU_EVERY)
    }

    fn read(&mut self, at: Duration, usage: Option<CpuRates>) {
        if let (Some((when, Some(before))), Some(_)) = (&self.last, &usage) {
            let dt = at.saturating_sub(*when).as_secs_f64();
            for (pool, cores) in before {
                *self.total.entry(pool.clone()).or_default() += cores * dt;
            }
        }
        self.last = Some((at, usage));
    }

    /// CPU seconds `function`'s `side` used up to `at`; None while no metrics API answers.
    fn total(&self, function: &str, side: Side, at: Duration) -> Option<f64> {
        let Some((when, Some(rates))) = &self.last else {
            return None;
        };
        let pool = (function.to_string(), side);
        let since = at.saturating_sub(*when).as_secs_f64();
        Some(
            self.total.get(&pool).copied().unwrap_or(0.0)
                + rates.get(&pool).copied().unwrap_or(0.0) * since,
        )
    }
}

/// User plus system time of a process and of its waited-for children, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime, stime, cutime, cstime are fields 14..=17 of the line, 12..=15 after the name.
    let ticks: f64 = fields
        .get(11..15)?
        .iter()
        .map(|v| v.parse::<f64>().unwrap_or(0.0))
        .sum();
    Some(ticks / clock_ticks())
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at_ms: u64, serverless: u32, cpu: f64) -> Sample {
        Sample {
            at: Duration::from_millis(at_ms),
            function: 0,
            serverless,
            baseline: 1,
            serverless_cpu: Some(cpu),
            baseline_cpu: None,
            cold_starts: 0,
        }
    }

    #[test]
    fn a_step_counts_the_samples_in_it_and_the_one_it_began_with() {
        let samples = [s(0, 0, 0.0), s(200, 1, 0.5), s(400, 3, 1.0), s(600, 2, 2.5)];
        let r = resources(
            &samples,
            0,
            Side::Serverless,
            Duration::from_millis(100),
            Duration::from_millis(500),
        )
        .unwrap();
        assert_eq!((r.replicas_min, r.replicas_max), (0, 3));
        assert!((r.replicas_mean - 4.0 / 3.0).abs() < 1e-9, "{r:?}");
        assert_eq!(r.cpu_seconds, Some(1.0));
        let b = resources(
            &samples,
            0,
            Side::Baseline,
            Duration::ZERO,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            (b.replicas_min, b.replicas_max, b.cpu_seconds),
            (1, 1, None)
        );
        assert!(resources(&samples, 1, Side::Baseline, Duration::ZERO, Duration::MAX).is_none());
    }

    #[test]
    fn cluster_cpu_integrates_the_rate_the_metrics_api_gives() {
        let mut c = ClusterCpu::default();
        let pool = |f: &str| (f.to_string(), Side::Baseline);
        assert_eq!(c.total("a", Side::Baseline, Duration::ZERO), None);
        c.read(Duration::ZERO, Some(HashMap::from([(pool("a"), 0.5)])));
        let at = |ms| Duration::from_millis(ms);
        assert_eq!(c.total("a", Side::Baseline, at(500)), Some(0.25));
        assert!(!c.due(at(500)) && c.due(at(1000)));
        c.read(at(1000), Some(HashMap::from([(pool("a"), 2.0)])));
        assert_eq!(c.total("a", Side::Baseline, at(1000)), Some(0.5));
        assert_eq!(c.total("a", Side::Baseline, at(1500)), Some(1.5));
        assert_eq!(c.total("b", Side::Baseline, at(1500)), Some(0.0));
        // The metrics API went away: no figure rather than a wrong one.
        c.read(at(2000), None);
        assert_eq!(c.total("a", Side::Baseline, at(2000)), None);
    }

    #[test]
    fn this_process_has_cpu_time() {
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let used = cpu_seconds(std::process::id()).expect("/proc is readable");
        assert!(used > 0.0, "{used}");
    }
}
