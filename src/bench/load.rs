//! The measuring engine: runs one step, closed-loop (N workers, each sending its next request
//! when the last one is answered) or open-loop (request i due at t0 + i/rate, its latency
//! counted from that due time), on one single-threaded runtime per core. Every worker records
//! into histograms of its own; they are merged once per interval and once per step, never per
//! request. Knows nothing of the screen or of files: progress and finished intervals go to an
//! [`Observer`].

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::time::Sleep;

use super::hist::{self, Latency};
use super::http::{Connection, Failure, PreparedRequest};
use super::trace::Trace;

/// When a closed-loop step ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// After this many measured requests (split evenly between the workers).
    Requests(u64),
    /// After this long.
    Duration(Duration),
}

/// What load one step applies.
#[derive(Debug, Clone, PartialEq)]
pub enum Load {
    Closed {
        concurrency: u32,
        stop: Stop,
    },
    Open {
        /// Requests per second.
        rate: f64,
        duration: Duration,
        /// Connections the schedule is served from (requests due while all are busy start late).
        connections: u32,
    },
    /// An open loop whose requests are due when the trace says (bursts and silences).
    Trace {
        trace: Arc<Trace>,
        connections: u32,
    },
}

/// One step as the engine runs it.
#[derive(Debug, Clone)]
pub struct Step {
    pub load: Load,
    /// Run this long first; its samples are kept apart, under their own tag.
    pub warmup: Duration,
    /// A request with no answer after this long counts as a timeout.
    pub timeout: Duration,
    /// Length of the intervals of the interval log and of the live p99.
    pub interval: Duration,
    /// Threads (one single-threaded runtime each).
    pub threads: usize,
}

/// Requests that got no usable answer, by cause; never mixed into latency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    pub connect: u64,
    pub timeout: u64,
    /// 429 Too Many Requests.
    pub throttled: u64,
    /// 502, 503 and 504.
    pub unavailable: u64,
    /// Other 4xx.
    pub client: u64,
    /// Other 5xx.
    pub server: u64,
    /// The connection broke mid-answer, or the answer was not HTTP.
    pub broken: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect
            + self.timeout
            + self.throttled
            + self.unavailable
            + self.client
            + self.server
            + self.broken
    }

    pub fn add(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.throttled += o.throttled;
        self.unavailable += o.unavailable;
        self.client += o.client;
        self.server += o.server;
        self.broken += o.broken;
    }

    /// Counts a failed request; false when the answer was a success (below 400).
    pub fn count(&mut self, result: Result<u16, Outcome>) -> bool {
        let slot = match result {
            Ok(s) if s < 400 => return false,
            Ok(429) => &mut self.throttled,
            Ok(502..=504) => &mut self.unavailable,
            Ok(400..=499) => &mut self.client,
            Ok(_) => &mut self.server,
            Err(Outcome::Timeout) => &mut self.timeout,
            Err(Outcome::Failed(Failure::Connect)) => &mut self.connect,
            Err(Outcome::Failed(Failure::Broken)) => &mut self.broken,
        };
        *slot += 1;
        true
    }

    /// The non-zero causes, as `name=count` pairs, for tables and the report.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            ("connect", self.connect),
            ("timeout", self.timeout),
            ("429", self.throttled),
            ("502-504", self.unavailable),
            ("4xx", self.client),
            ("5xx", self.server),
            ("broken", self.broken),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
        parts.join(" ")
    }
}

/// Why a request has no status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Timeout,
    Failed(Failure),
}

/// How a running step is doing, for a progress bar.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub done: u64,
    pub errors: u64,
    /// Since the measured part began (zero during warm-up).
    pub elapsed: Duration,
    pub warming_up: bool,
    /// p99 of the last finished interval, in ms.
    pub last_p99_ms: Option<f64>,
}

/// One finished interval of the measured part.
pub struct Interval<'a> {
    pub index: u64,
    /// Offset of the interval's start from the start of the measured part.
    pub start: Duration,
    pub length: Duration,
    /// Latencies (from the due time, in open-loop steps).
    pub latency: &'a Latency,
    /// Open-loop steps only: latencies from the actual send.
    pub uncorrected: Option<&'a Latency>,
}

/// Receives what a step reports while it runs (on the thread that called [`run`]).
pub trait Observer {
    fn progress(&mut self, progress: &Progress);
    fn interval(&mut self, interval: &Interval<'_>);
}

/// How an open-loop generator kept to its schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Schedule {
    pub requested_rate: f64,
    /// Requests of the measured part started, per second of it.
    pub achieved_rate: f64,
    /// The latest any request started after its due time.
    pub max_late: Duration,
    /// The median start lateness: what the generator itself adds to the corrected latencies
    /// (its timer ticks in milliseconds).
    pub late_p50: Duration,
    /// Requests due in the measured part that never started (all connections busy to the end).
    pub missed: u64,
}

/// Everything one step measured.
pub struct StepOutcome {
    /// Successful answers; in open-loop steps measured from each request's due time.
    pub latency: Latency,
    /// Open-loop steps only: the same answers measured from the actual send.
    pub uncorrected: Option<Latency>,
    pub warmup: Latency,
    pub warmup_errors: ErrorCounts,
    pub errors: ErrorCounts,
    /// From the start of the measured part to its last answer.
    pub elapsed: Duration,
    /// Wall-clock start of the measured part.
    pub started: SystemTime,
    pub schedule: Option<Schedule>,
    /// Trace steps, per burst: its start (from the step's start) and the latency (from its
    /// due time, µs) of its first request, None where that failed.
    pub bursts: Vec<(Duration, Option<u64>)>,
}

impl StepOutcome {
    /// Answers (successful or not) per second of the measured part.
    pub fn rps(&self) -> f64 {
        let n = self.latency.len() + self.errors.total();
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            n as f64 / secs
        } else {
            0.0
        }
    }
}

/// A counter written by one worker only, on a cache line of its own.
#[repr(align(64))]
#[derive(Default)]
struct Slot(AtomicU64);

#[derive(Default)]
struct Totals {
    warmup: Option<Latency>,
    warmup_errors: ErrorCounts,
    errors: ErrorCounts,
    max_late: Duration,
    lateness: Option<Latency>,
    started: u64,
    last_answer: Option<Instant>,
}

struct Shared {
    cancel: Arc<AtomicBool>,
    done: Vec<Slot>,
    errors: Vec<Slot>,
    /// Per worker: every interval before this index has been handed in.
    flushed: Vec<Slot>,
    intervals: Mutex<BTreeMap<u64, (Latency, Option<Latency>)>>,
    totals: Mutex<Totals>,
    /// Open loop: the next request index to start.
    next: AtomicU64,
    /// Trace steps: each burst's first request's latency.
    firsts: Mutex<Vec<Option<u64>>>,
    threads_done: AtomicUsize,
}

#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    /// Start of the measured part.
    t0: Instant,
    interval: Duration,
    timeout: Duration,
}

/// Runs one step against one request, reporting to `observer` until it is over (or `cancel`
/// is set).
pub fn run(
    step: &Step,
    req: &PreparedRequest,
    cancel: &Arc<AtomicBool>,
    observer: &mut dyn Observer,
) -> StepOutcome {
    let workers = match &step.load {
        Load::Closed { concurrency, .. } => *concurrency,
        Load::Open { connections, .. } | Load::Trace { connections, .. } => *connections,
    }
    .max(1) as usize;
    let threads = step.threads.clamp(1, workers);
    let shared = Arc::new(Shared {
        cancel: cancel.clone(),
        done: (0..workers).map(|_| Slot::default()).collect(),
        errors: (0..workers).map(|_| Slot::default()).collect(),
        flushed: (0..workers).map(|_| Slot::default()).collect(),
        intervals: Mutex::new(BTreeMap::new()),
        totals: Mutex::new(Totals::default()),
        next: AtomicU64::new(0),
        firsts: Mutex::new(match &step.load {
            Load::Trace { trace, .. } => vec![None; trace.bursts.len()],
            _ => Vec::new(),
        }),
        threads_done: AtomicUsize::new(0),
    });
    let req = Arc::new(req.clone());
    let started_wall = SystemTime::now() + step.warmup;
    let start = Instant::now();
    let clock = Clock {
        start,
        t0: start + step.warmup,
        interval: step.interval.max(Duration::from_millis(10)),
        timeout: step.timeout,
    };
    let open = !matches!(step.load, Load::Closed { .. });
    let mut latency = hist::new();
    let mut uncorrected = open.then(hist::new);
    let mut last_p99 = None;
    std::thread::scope(|s| {
        for t in 0..threads {
            let ids: Vec<usize> = (t..workers).step_by(threads).collect();
            let (shared, req, load) = (shared.clone(), req.clone(), step.load.clone());
            s.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a single-threaded runtime starts");
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async {
                    let tasks: Vec<_> = ids
                        .into_iter()
                        .map(|id| {
                            let w = Worker::new(id, shared.clone(), clock, open);
                            let (req, load) = (req.clone(), load.clone());
                            tokio::task::spawn_local(async move {
                                match load {
                                    Load::Closed { stop, .. } => {
                                        w.closed(&req, stop, workers as u64).await
                                    }
                                    Load::Open { rate, duration, .. } => {
                                        w.open(&req, rate, duration).await
                                    }
                                    Load::Trace { trace, .. } => w.trace(&req, &trace).await,
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                });
                shared.threads_done.fetch_add(1, Ordering::Release);
            });
        }
        loop {
            let finished = shared.threads_done.load(Ordering::Acquire) == threads;
            let upto = if finished {
                u64::MAX
            } else {
                shared
                    .flushed
                    .iter()
                    .map(|s| s.0.load(Ordering::Acquire))
                    .min()
                    .unwrap_or(0)
            };
            if let Some(p99) = emit(
                &shared,
                upto,
                clock,
                observer,
                &mut latency,
                &mut uncorrected,
            ) {
                last_p99 = Some(p99);
            }
            let now = Instant::now();
            observer.progress(&Progress {
                done: shared
                    .done
                    .iter()
                    .map(|s| s.0.load(Ordering::Relaxed))
                    .sum(),
                errors: shared
                    .errors
                    .iter()
                    .map(|s| s.0.load(Ordering::Relaxed))
                    .sum(),
                elapsed: now.saturating_duration_since(clock.t0),
                warming_up: now < clock.t0,
                last_p99_ms: last_p99,
            });
            if finished {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let totals = std::mem::take(&mut *shared.totals.lock().expect("totals lock"));
    let elapsed = totals
        .last_answer
        .map(|t| t.saturating_duration_since(clock.t0))
        .unwrap_or_default();
    let planned = match &step.load {
        Load::Open { rate, duration, .. } => Some((
            *rate,
            *duration,
            (rate * duration.as_secs_f64()).round() as u64,
        )),
        Load::Trace { trace, .. } => Some((
            trace.total() as f64 / trace.length().as_secs_f64().max(1e-9),
            trace.length(),
            trace.total(),
        )),
        Load::Closed { .. } => None,
    };
    let schedule = match planned {
        Some((rate, duration, due)) => {
            let measured_started = totals.started;
            Some(Schedule {
                requested_rate: rate,
                achieved_rate: measured_started as f64 / duration.as_secs_f64().max(1e-9),
                max_late: totals.max_late,
                late_p50: Duration::from_micros(
                    totals
                        .lateness
                        .as_ref()
                        .filter(|h| !h.is_empty())
                        .map_or(0, |h| h.value_at_quantile(0.5)),
                ),
                missed: due.saturating_sub(measured_started),
            })
        }
        None => None,
    };
    let firsts = std::mem::take(&mut *shared.firsts.lock().expect("firsts lock"));
    let bursts = match &step.load {
        Load::Trace { trace, .. } => trace
            .bursts
            .iter()
            .zip(firsts)
            .map(|(b, f)| (b.start, f))
            .collect(),
        _ => Vec::new(),
    };
    StepOutcome {
        latency,
        uncorrected,
        warmup: totals.warmup.unwrap_or_else(hist::new),
        warmup_errors: totals.warmup_errors,
        errors: totals.errors,
        elapsed,
        started: started_wall,
        schedule,
        bursts,
    }
}

/// Hands every interval before `upto` to the observer and into the step's totals; returns
/// the p99 (ms) of the last non-empty one.
fn emit(
    shared: &Shared,
    upto: u64,
    clock: Clock,
    observer: &mut dyn Observer,
    latency: &mut Latency,
    uncorrected: &mut Option<Latency>,
) -> Option<f64> {
    let ready = {
        let mut map = shared.intervals.lock().expect("intervals lock");
        let keep = map.split_off(&upto);
        std::mem::replace(&mut *map, keep)
    };
    let mut last_p99 = None;
    for (index, (lat, unc)) in ready {
        observer.interval(&Interval {
            index,
            start: clock.interval * index as u32,
            length: clock.interval,
            latency: &lat,
            uncorrected: unc.as_ref(),
        });
        if !lat.is_empty() {
            last_p99 = Some(lat.value_at_quantile(0.99) as f64 / hist::SCALE_TO_MS);
        }
        hist::merge(latency, &lat);
        if let (Some(total), Some(unc)) = (uncorrected.as_mut(), unc.as_ref()) {
            hist::merge(total, unc);
        }
    }
    last_p99
}

/// One worker: one connection, its own histograms, handed in once per interval.
struct Worker {
    id: usize,
    shared: Arc<Shared>,
    clock: Clock,
    conn: Connection,
    timer: Pin<Box<Sleep>>,
    /// Index and end of the interval being recorded.
    current: u64,
    current_end: Instant,
    latency: Latency,
    uncorrected: Option<Latency>,
    warmup: Latency,
    warmup_errors: ErrorCounts,
    errors: ErrorCounts,
    done: u64,
    max_late: Duration,
    /// Open loop: how late each request started, in µs.
    lateness: Latency,
    started: u64,
    last_answer: Option<Instant>,
}

impl Worker {
    fn new(id: usize, shared: Arc<Shared>, clock: Clock, open: bool) -> Self {
        Self {
            id,
            shared,
            clock,
            conn: Connection::new(),
            timer: Box::pin(tokio::time::sleep(clock.timeout)),
            current: 0,
            current_end: clock.t0 + clock.interval,
            latency: hist::new(),
            uncorrected: open.then(hist::new),
            warmup: hist::new(),
            warmup_errors: ErrorCounts::default(),
            errors: ErrorCounts::default(),
            done: 0,
            max_late: Duration::ZERO,
            lateness: hist::new(),
            started: 0,
            last_answer: None,
        }
    }

    fn cancelled(&self) -> bool {
        self.shared.cancel.load(Ordering::Relaxed)
    }

    /// Sends one request, giving up after the step's timeout. The timer is moved only when
    /// it fires before this request's deadline (about once per timeout, not per request: a
    /// reset is a timer-wheel removal and insertion, the generator's largest user-space cost
    /// after parsing).
    async fn send(&mut self, req: &PreparedRequest, sent: Instant) -> Result<u16, Outcome> {
        let deadline = tokio::time::Instant::from_std(sent + self.clock.timeout);
        let answer = {
            let send = self.conn.send(req);
            tokio::pin!(send);
            loop {
                tokio::select! {
                    biased;
                    r = &mut send => break Some(r),
                    _ = self.timer.as_mut() => {
                        if self.timer.deadline() >= deadline {
                            break None;
                        }
                        self.timer.as_mut().reset(deadline);
                    }
                }
            }
        };
        match answer {
            Some(r) => r.map_err(Outcome::Failed),
            None => {
                self.conn.close();
                Err(Outcome::Timeout)
            }
        }
    }

    async fn closed(mut self, req: &PreparedRequest, stop: Stop, workers: u64) {
        let (end, mut budget) = match stop {
            Stop::Duration(d) => (Some(self.clock.t0 + d), None),
            Stop::Requests(n) => {
                let share = n / workers + u64::from((self.id as u64) < n % workers);
                (None, Some(share))
            }
        };
        let mut now = Instant::now();
        while !self.cancelled() && end.is_none_or(|end| now < end) {
            let warm = now < self.clock.t0;
            if let (Some(left), false) = (budget.as_mut(), warm) {
                if *left == 0 {
                    break;
                }
                *left -= 1;
            }
            let sent = now;
            let result = self.send(req, sent).await;
            now = Instant::now();
            self.record(warm, sent, sent, now, result);
        }
        self.finish();
    }

    async fn open(self, req: &PreparedRequest, rate: f64, duration: Duration) {
        let warmup = self.clock.t0 - self.clock.start;
        let total = (rate * (warmup + duration).as_secs_f64()).round() as u64;
        let end = self.clock.t0 + duration;
        let nanos_apart = 1e9 / rate;
        let due =
            |i: u64| (i < total).then(|| Duration::from_nanos((i as f64 * nanos_apart) as u64));
        self.scheduled(req, &due, end, &[]).await;
    }

    /// A trace's schedule (no warm-up); the first request of each burst is noted.
    async fn trace(self, req: &PreparedRequest, trace: &Trace) {
        let end = self.clock.t0 + trace.length() + self.clock.timeout;
        let firsts: Vec<u64> = trace.bursts.iter().map(|b| b.first).collect();
        self.scheduled(req, &|i| trace.due(i), end, &firsts).await;
    }

    /// Sends request i when `due(i)` (from the step's start) says, until it says None or
    /// `end` passes. `firsts`: sorted indexes whose latency is noted in the shared `firsts`.
    async fn scheduled(
        mut self,
        req: &PreparedRequest,
        due_of: &dyn Fn(u64) -> Option<Duration>,
        end: Instant,
        firsts: &[u64],
    ) {
        while !self.cancelled() {
            let i = self.shared.next.fetch_add(1, Ordering::Relaxed);
            let Some(offset) = due_of(i) else {
                break;
            };
            let due = self.clock.start + offset;
            let mut now = Instant::now();
            if now >= end {
                break;
            }
            if due > now {
                tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                now = Instant::now();
            }
            let late = now.saturating_duration_since(due);
            self.max_late = self.max_late.max(late);
            if due >= self.clock.t0 {
                hist::record(&mut self.lateness, micros(late));
            }
            self.started += u64::from(due >= self.clock.t0);
            let result = self.send(req, now).await;
            let answered = Instant::now();
            if let Ok(k) = firsts.binary_search(&i) {
                let ok = matches!(result, Ok(s) if s < 400);
                self.shared.firsts.lock().expect("firsts lock")[k] =
                    ok.then(|| micros(answered - due));
            }
            self.record(due < self.clock.t0, due, now, answered, result);
        }
        self.finish();
    }

    fn record(
        &mut self,
        warm: bool,
        due: Instant,
        sent: Instant,
        now: Instant,
        result: Result<u16, Outcome>,
    ) {
        self.done += 1;
        self.shared.done[self.id]
            .0
            .store(self.done, Ordering::Relaxed);
        if warm {
            if !self.warmup_errors.count(result) {
                hist::record(&mut self.warmup, micros(now - sent));
            }
            return;
        }
        if now >= self.current_end {
            self.hand_in(now);
        }
        self.last_answer = Some(now);
        if self.errors.count(result) {
            self.shared.errors[self.id]
                .0
                .store(self.errors.total(), Ordering::Relaxed);
        } else {
            hist::record(&mut self.latency, micros(now - due));
            if let Some(u) = self.uncorrected.as_mut() {
                hist::record(u, micros(now - sent));
            }
        }
    }

    /// Hands the current interval's histograms in and moves to the interval `now` falls in.
    fn hand_in(&mut self, now: Instant) {
        if !self.latency.is_empty() {
            let mut map = self.shared.intervals.lock().expect("intervals lock");
            let entry = map
                .entry(self.current)
                .or_insert_with(|| (hist::new(), self.uncorrected.as_ref().map(|_| hist::new())));
            hist::merge(&mut entry.0, &self.latency);
            if let (Some(total), Some(u)) = (entry.1.as_mut(), self.uncorrected.as_ref()) {
                hist::merge(total, u);
            }
        }
        self.latency.reset();
        if let Some(u) = self.uncorrected.as_mut() {
            u.reset();
        }
        let since = now.saturating_duration_since(self.clock.t0).as_nanos();
        self.current = (since / self.clock.interval.as_nanos()) as u64;
        self.current_end = self.clock.t0 + self.clock.interval * (self.current as u32 + 1);
        self.shared.flushed[self.id]
            .0
            .store(self.current, Ordering::Release);
    }

    fn finish(mut self) {
        let now = Instant::now();
        self.hand_in(now);
        self.shared.flushed[self.id]
            .0
            .store(u64::MAX, Ordering::Release);
        let mut t = self.shared.totals.lock().expect("totals lock");
        match t.warmup.as_mut() {
            Some(w) => hist::merge(w, &self.warmup),
            None => t.warmup = Some(std::mem::replace(&mut self.warmup, hist::new())),
        }
        t.warmup_errors.add(&self.warmup_errors);
        t.errors.add(&self.errors);
        t.max_late = t.max_late.max(self.max_late);
        match t.lateness.as_mut() {
            Some(l) => hist::merge(l, &self.lateness),
            None => t.lateness = Some(std::mem::replace(&mut self.lateness, hist::new())),
        }
        t.started += self.started;
        t.last_answer = t.last_answer.max(self.last_answer);
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}
