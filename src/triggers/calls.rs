//! The durable store of async calls on the local platform: an embedded transactional
//! database (redb) at `.cubeflash/calls.redb`. A call is committed (fsync'd) before its 202;
//! every state change is one transaction. Per-function queues of due calls are kept in key
//! order (`function \0 due-time \0 id`), so one function's backlog never hides another's.
//! Blocking: call it from `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::{Arc, Mutex};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use crate::gateway::api::{Attempt, Call, CallResult, CallState};

const CALLS: TableDefinition<&str, &[u8]> = TableDefinition::new("calls");
const BODIES: TableDefinition<&str, &[u8]> = TableDefinition::new("bodies");
/// `function \0 due-ms (20 digits) \0 id` → nothing: the calls waiting for an attempt.
const DUE: TableDefinition<&str, ()> = TableDefinition::new("due");
/// `finished-ms (20 digits) \0 id` → nothing: succeeded and failed calls by when they
/// ended, so pruning reads only what expired.
const FINISHED: TableDefinition<&str, ()> = TableDefinition::new("finished");
/// `function \0 key` → `id \0 expires-ms`: Idempotency-Key answers.
const IDEMPOTENCY: TableDefinition<&str, &str> = TableDefinition::new("idempotency");

/// How long an `Idempotency-Key` answers with the first call's id.
pub const IDEMPOTENCY_WINDOW_MS: u64 = 24 * 3600 * 1000;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the async call store {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::DatabaseError>,
    },
    #[error("the async call store failed")]
    Db(#[source] Box<redb::Error>),
    #[error("the async call store holds a record this cubeflash cannot read")]
    Corrupt(#[source] serde_json::Error),
    #[error("the async call store could not commit: {0}")]
    Commit(String),
    #[error("the async call store's writer stopped")]
    Closed,
    #[error("no call {0}")]
    NotFound(String),
    #[error("call {id} is {state:?}: only a dead or failed call can be redriven")]
    NotDead { id: String, state: CallState },
    #[error("call {0} is running: purge it once its attempt is over")]
    Running(String),
    #[error("the JetStream call store could not {what}")]
    Nats {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the JetStream call store is not connected yet ({0})")]
    Unavailable(String),
    #[error("the body is {size} bytes, over the NATS server's max_payload of {max} bytes")]
    TooLarge { size: usize, max: usize },
}

impl StoreError {
    /// A JetStream operation that failed.
    pub fn nats<E: std::error::Error + Send + Sync + 'static>(
        what: &'static str,
    ) -> impl FnOnce(E) -> Self {
        move |source| Self::Nats {
            what,
            source: Box::new(source),
        }
    }
}

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        Self::Db(Box::new(e.into()))
    }
}

/// A new call, as accepted.
pub struct NewCall {
    pub function: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub idempotency_key: Option<String>,
    pub callback_url: Option<String>,
}

/// A function's calls waiting for an attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// How many (counted up to a cap).
    pub pending: usize,
    /// When the longest-waiting one became due (ms since the epoch), if any.
    pub oldest_ms: Option<u64>,
}

/// Tries of a callback before it is given up.
pub const CALLBACK_TRIES: u32 = 5;

/// How an attempt ended, as the delivery worker judged it.
#[derive(Clone)]
pub enum Outcome {
    Succeeded(CallResult),
    Failed(CallResult, String),
    /// Try again at `at` (ms), unless that is past the call's budget.
    Retry {
        at: u64,
        error: String,
    },
    Dead(String),
}

/// A write to do in the writer's next transaction; it returns what to do once that
/// transaction committed (or failed to).
type Job = Box<dyn FnOnce(&WriteTransaction) -> Box<dyn FnOnce(Result<(), String>) + Send> + Send>;

/// Most writes committed together.
const BATCH: usize = 512;
/// The store's page cache.
const CACHE_BYTES: usize = 16 << 20;
/// Calls removed per transaction when pruning.
const PRUNE_BATCH: usize = 256;

pub struct CallStore {
    db: Arc<Database>,
    /// Every write goes through one writer thread, which commits the writes waiting for it
    /// together: one fsync for a batch of accepts, leases and results (group commit).
    jobs: Mutex<std::sync::mpsc::Sender<Job>>,
}

/// Runs jobs in batches, one transaction (one fsync) per batch, until the store is dropped.
fn writer(db: Arc<Database>, jobs: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        match db.begin_write() {
            Ok(txn) => {
                let then: Vec<_> = batch.into_iter().map(|job| job(&txn)).collect();
                let committed = txn.commit().map_err(|e| e.to_string());
                for t in then {
                    t(committed.clone());
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the async call store cannot begin a write");
                // Dropping the jobs tells their callers.
            }
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A succeeded or failed call's key in FINISHED (none for any other state).
fn finished_key(call: &Call) -> Option<String> {
    if !matches!(call.state, CallState::Succeeded | CallState::Failed) {
        return None;
    }
    let end = call
        .attempts
        .last()
        .map_or(call.accepted_at, |a| a.started_at + a.duration_ms);
    Some(format!("{end:020}\0{}", call.id))
}

fn due_key(function: &str, at: u64, id: &str) -> String {
    format!("{function}\0{at:020}\0{id}")
}

/// The record of a call just accepted.
pub fn new_record(new: &NewCall, id: String, now: u64) -> Call {
    Call {
        id,
        function: new.function.clone(),
        state: CallState::Queued,
        method: new.method.clone(),
        path: new.path.clone(),
        headers: new.headers.clone(),
        body_bytes: new.body.len() as u64,
        accepted_at: now,
        next_attempt_at: Some(now),
        lease_until: None,
        attempts: Vec::new(),
        result: None,
        error: None,
        redriven: 0,
        callback: new
            .callback_url
            .clone()
            .map(|url| crate::gateway::api::Callback {
                url,
                attempts: 0,
                status: None,
                error: None,
                delivered: false,
            }),
    }
}

/// Records an attempt and what follows from it; returns when the call is due again, if it
/// is to be retried.
pub fn record_outcome(call: &mut Call, attempt: Attempt, outcome: Outcome) -> Option<u64> {
    call.attempts.push(attempt);
    call.lease_until = None;
    match outcome {
        Outcome::Succeeded(result) => {
            call.state = CallState::Succeeded;
            call.result = Some(result);
            call.error = None;
        }
        Outcome::Failed(result, why) => {
            call.state = CallState::Failed;
            call.result = Some(result);
            call.error = Some(why);
        }
        Outcome::Dead(why) => {
            call.state = CallState::Dead;
            call.error = Some(why);
        }
        Outcome::Retry { at, error } => {
            call.state = CallState::Retrying;
            call.next_attempt_at = Some(at);
            call.error = Some(error);
            return Some(at);
        }
    }
    None
}

/// A call whose attempt a stopped gateway left running: noted, and due again now.
pub fn record_interrupted(call: &mut Call, now: u64) {
    call.attempts.push(Attempt {
        number: call.attempts.len() as u32 + 1,
        started_at: now,
        duration_ms: 0,
        status: None,
        error: Some("the gateway stopped during this attempt".into()),
    });
    call.state = CallState::Retrying;
    call.lease_until = None;
    call.next_attempt_at = Some(now);
    call.error = Some("the gateway stopped while an attempt ran; it is delivered again".into());
}

/// One try of a call's callback.
pub fn record_callback(call: &mut Call, status: Option<u16>, error: Option<String>) {
    if let Some(cb) = &mut call.callback {
        cb.attempts += 1;
        cb.status = status;
        cb.delivered = status.is_some_and(|s| (200..300).contains(&s));
        cb.error = error;
    }
}

/// Whether `call` is finished and its callback still to be delivered.
pub fn callback_pending(call: &Call) -> bool {
    call.state.finished()
        && call
            .callback
            .as_ref()
            .is_some_and(|c| !c.delivered && c.attempts < CALLBACK_TRIES)
}

/// Only a dead or failed call can be redriven.
pub fn check_redrive(call: &Call) -> Result<(), StoreError> {
    if matches!(call.state, CallState::Dead | CallState::Failed) {
        Ok(())
    } else {
        Err(StoreError::NotDead {
            id: call.id.clone(),
            state: call.state,
        })
    }
}

/// A redriven call: queued now with a fresh retry budget (and callback).
pub fn record_redrive(call: &mut Call, now: u64) {
    call.state = CallState::Queued;
    call.redriven = call.attempts.len() as u32;
    if let Some(cb) = &mut call.callback {
        cb.attempts = 0;
        cb.delivered = false;
    }
    call.next_attempt_at = Some(now);
    call.accepted_at = now;
    call.error = None;
}

/// Whether a finished (succeeded or failed) call ended before `before` and can go; dead
/// calls stay until purged.
pub fn expired(call: &Call, before: u64) -> bool {
    matches!(call.state, CallState::Succeeded | CallState::Failed)
        && call
            .attempts
            .last()
            .is_some_and(|a| a.started_at + a.duration_ms < before)
}

/// What an `Idempotency-Key` entry stores: the first call's id and when it expires.
pub fn idempotency_value(id: &str, now: u64) -> String {
    format!("{id}\0{}", now + IDEMPOTENCY_WINDOW_MS)
}

/// The first call's id, if the entry `value` has not expired at `now`.
pub fn idempotency_answer(value: &str, now: u64) -> Option<&str> {
    let (first, expires) = value.split_once('\0')?;
    expires
        .parse::<u64>()
        .is_ok_and(|e| e > now)
        .then_some(first)
}

/// The `limit` newest of `calls` (by accept time, then id), newest first, holding no
/// more than `limit` of them at once: a list of a big store costs memory for what it
/// answers, not for what it read.
pub fn newest(calls: impl Iterator<Item = Call>, limit: usize) -> Vec<Call> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    struct ByAge(Call);
    impl PartialEq for ByAge {
        fn eq(&self, other: &Self) -> bool {
            self.cmp(other) == std::cmp::Ordering::Equal
        }
    }
    impl Eq for ByAge {}
    impl PartialOrd for ByAge {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for ByAge {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            (self.0.accepted_at, &self.0.id).cmp(&(other.0.accepted_at, &other.0.id))
        }
    }
    if limit == 0 {
        return Vec::new();
    }
    let mut heap: BinaryHeap<Reverse<ByAge>> = BinaryHeap::with_capacity(limit + 1);
    for call in calls {
        heap.push(Reverse(ByAge(call)));
        if heap.len() > limit {
            heap.pop();
        }
    }
    let mut out: Vec<Call> = heap.into_iter().map(|Reverse(ByAge(c))| c).collect();
    out.sort_by(|a, b| b.accepted_at.cmp(&a.accepted_at).then(b.id.cmp(&a.id)));
    out
}

pub fn decode(bytes: &[u8]) -> Result<Call, StoreError> {
    serde_json::from_slice(bytes).map_err(StoreError::Corrupt)
}

pub fn encode(call: &Call) -> Vec<u8> {
    serde_json::to_vec(call).expect("a call serializes")
}

impl CallStore {
    /// Opens (or creates) the store at `path`, 0600.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open = |source| StoreError::Open {
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        // redb caches up to 1 GiB by default: a long-running gateway would come to hold
        // that much of the store's pages. A bounded cache keeps it small.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(open)?;
        let _ = std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600));
        let txn = db.begin_write()?;
        {
            txn.open_table(CALLS)?;
            txn.open_table(BODIES)?;
            txn.open_table(DUE)?;
            txn.open_table(IDEMPOTENCY)?;
            // A store written before the index had one: build it once.
            let mut finished = txn.open_table(FINISHED)?;
            if finished.is_empty()? {
                let calls = txn.open_table(CALLS)?;
                for row in calls.iter()? {
                    let (_, v) = row?;
                    if let Some(key) = decode(v.value()).ok().as_ref().and_then(finished_key) {
                        finished.insert(key.as_str(), ())?;
                    }
                }
            }
        }
        txn.commit()?;
        let db = Arc::new(db);
        let (tx, rx) = std::sync::mpsc::channel();
        let for_writer = db.clone();
        std::thread::Builder::new()
            .name("cubeflash-calls".into())
            .spawn(move || writer(for_writer, rx))
            .map_err(|e| StoreError::from(redb::Error::Io(e)))?;
        Ok(Self {
            db,
            jobs: Mutex::new(tx),
        })
    }

    /// Runs `op` in the writer's next transaction and returns its result once that
    /// committed.
    fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job: Job = Box::new(move |txn| {
            let result = op(txn);
            Box::new(move |committed: Result<(), String>| {
                let _ = tx.send(match (result, committed) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(why)) => Err(StoreError::Commit(why)),
                });
            })
        });
        self.jobs
            .lock()
            .expect("jobs lock")
            .send(job)
            .map_err(|_| StoreError::Closed)?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Stores `new` durably and returns its id, or the id of the call an earlier request
    /// with the same `Idempotency-Key` made (and true) within the window.
    pub fn accept(&self, new: NewCall, id: String) -> Result<(String, bool), StoreError> {
        let now = now_ms();
        self.write(move |txn| {
            {
                let mut idem = txn.open_table(IDEMPOTENCY)?;
                if let Some(key) = &new.idempotency_key {
                    let k = format!("{}\0{key}", new.function);
                    let seen = idem.get(k.as_str())?.map(|v| v.value().to_string());
                    if let Some(first) = seen.as_deref().and_then(|v| idempotency_answer(v, now)) {
                        return Ok((first.to_string(), true));
                    }
                    let value = idempotency_value(&id, now);
                    idem.insert(k.as_str(), value.as_str())?;
                }
                let call = new_record(&new, id.clone(), now);
                txn.open_table(CALLS)?
                    .insert(id.as_str(), encode(&call).as_slice())?;
                txn.open_table(BODIES)?
                    .insert(id.as_str(), new.body.as_slice())?;
                txn.open_table(DUE)?
                    .insert(due_key(&new.function, now, &id).as_str(), ())?;
            }
            Ok((id, false))
        })
    }

    /// Takes up to `n` of `function`'s calls that are due now: each is marked running with a
    /// lease until `lease_until` and returned with its body.
    pub fn lease_due(
        &self,
        function: &str,
        n: usize,
        lease_until: u64,
    ) -> Result<Vec<(Call, Vec<u8>)>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let from = format!("{function}\0");
        let to = format!("{function}\0{:020}\u{1}", now);
        // Looked for in a read transaction first: an idle queue costs no write (no fsync).
        let keys: Vec<String> = {
            let txn = self.db.begin_read()?;
            let due = txn.open_table(DUE)?;
            due.range(from.as_str()..to.as_str())?
                .take(n)
                .map(|r| r.map(|(k, _)| k.value().to_string()))
                .collect::<Result<_, _>>()?
        };
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.write(move |txn| {
            let mut out = Vec::new();
            {
                let mut due = txn.open_table(DUE)?;
                let mut calls = txn.open_table(CALLS)?;
                let bodies = txn.open_table(BODIES)?;
                for key in keys {
                    // Gone meanwhile (purged): skip it.
                    if due.remove(key.as_str())?.is_none() {
                        continue;
                    }
                    let id = key.rsplit('\0').next().unwrap_or_default().to_string();
                    let Some(bytes) = calls.get(id.as_str())?.map(|v| v.value().to_vec()) else {
                        continue;
                    };
                    let mut call = decode(&bytes)?;
                    call.state = CallState::Running;
                    call.lease_until = Some(lease_until);
                    call.next_attempt_at = None;
                    calls.insert(id.as_str(), encode(&call).as_slice())?;
                    let body = bodies
                        .get(id.as_str())?
                        .map(|v| v.value().to_vec())
                        .unwrap_or_default();
                    out.push((call, body));
                }
            }
            Ok(out)
        })
    }

    /// How many of `function`'s calls wait for an attempt (due now or later), counted up
    /// to `cap`.
    pub fn pending(&self, function: &str, cap: usize) -> Result<Backlog, StoreError> {
        let from = format!("{function}\0");
        let to = format!("{function}\u{1}");
        let txn = self.db.begin_read()?;
        let due = txn.open_table(DUE)?;
        let oldest = due
            .range(from.as_str()..to.as_str())?
            .next()
            .transpose()?
            .and_then(|(k, _)| k.value().split('\0').nth(1)?.parse::<u64>().ok());
        Ok(Backlog {
            pending: due.range(from.as_str()..to.as_str())?.take(cap).count(),
            oldest_ms: oldest,
        })
    }

    /// Extends a running call's lease.
    pub fn extend(&self, id: &str, lease_until: u64) -> Result<(), StoreError> {
        self.update(id, move |call| {
            if call.state == CallState::Running {
                call.lease_until = Some(lease_until);
            }
        })
        .map(|_| ())
    }

    /// Records an attempt and what follows from it.
    pub fn finish(&self, id: &str, attempt: Attempt, outcome: Outcome) -> Result<Call, StoreError> {
        self.update_with(id, move |call, due| {
            *due = record_outcome(call, attempt, outcome)
        })
    }

    /// Calls a stopped gateway left running: back in their queues now (delivery is at least
    /// once). Returns how many.
    pub fn requeue_running(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        self.write(move |txn| {
            let mut n = 0;
            {
                let mut calls = txn.open_table(CALLS)?;
                let mut due = txn.open_table(DUE)?;
                let running: Vec<Call> = calls
                    .iter()?
                    .filter_map(|r| r.ok().and_then(|(_, v)| decode(v.value()).ok()))
                    .filter(|c| c.state == CallState::Running)
                    .collect();
                for mut call in running {
                    record_interrupted(&mut call, now);
                    calls.insert(call.id.as_str(), encode(&call).as_slice())?;
                    due.insert(due_key(&call.function, now, &call.id).as_str(), ())?;
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// Records one try of a call's callback.
    pub fn callback_tried(
        &self,
        id: &str,
        status: Option<u16>,
        error: Option<String>,
    ) -> Result<Call, StoreError> {
        self.update(id, move |call| record_callback(call, status, error))
    }

    /// Finished calls whose callback is still to be delivered (a stopped gateway's).
    pub fn pending_callbacks(&self) -> Result<Vec<Call>, StoreError> {
        let txn = self.db.begin_read()?;
        let calls = txn.open_table(CALLS)?;
        let mut out = Vec::new();
        for row in calls.iter()? {
            let (_, v) = row?;
            let call = decode(v.value())?;
            if callback_pending(&call) {
                out.push(call);
            }
        }
        Ok(out)
    }

    pub fn get(&self, id: &str) -> Result<Call, StoreError> {
        let txn = self.db.begin_read()?;
        let calls = txn.open_table(CALLS)?;
        let bytes = calls
            .get(id)?
            .map(|v| v.value().to_vec())
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        decode(&bytes)
    }

    /// Calls of `function` (or all), in `state` (or any), newest first, at most `limit`.
    pub fn list(
        &self,
        function: Option<&str>,
        state: Option<CallState>,
        limit: usize,
    ) -> Result<Vec<Call>, StoreError> {
        let txn = self.db.begin_read()?;
        let calls = txn.open_table(CALLS)?;
        Ok(newest(
            calls.iter()?.filter_map(|row| {
                let (k, v) = row.ok()?;
                let call = decode(v.value())
                    .map_err(|e| tracing::warn!(call = %k.value(), error = %e, "an async call record cannot be read; left out of the list"))
                    .ok()?;
                let wanted = function.is_none_or(|f| f == call.function)
                    && state.is_none_or(|s| s == call.state);
                wanted.then_some(call)
            }),
            limit,
        ))
    }

    /// A dead (or failed) call goes back in its queue with a fresh retry budget.
    pub fn redrive(&self, id: &str) -> Result<Call, StoreError> {
        check_redrive(&self.get(id)?)?;
        let now = now_ms();
        self.update_with(id, move |call, due| {
            record_redrive(call, now);
            *due = Some(now);
        })
    }

    /// Removes a call that is not running, with its body; false if there was none.
    pub fn purge(&self, id: &str) -> Result<bool, StoreError> {
        let Ok(call) = self.get(id) else {
            return Ok(false);
        };
        if call.state == CallState::Running {
            return Err(StoreError::Running(id.to_string()));
        }
        let id = id.to_string();
        self.write(move |txn| {
            let id = id.as_str();
            {
                txn.open_table(CALLS)?.remove(id)?;
                txn.open_table(BODIES)?.remove(id)?;
                if let Some(k) = finished_key(&call) {
                    txn.open_table(FINISHED)?.remove(k.as_str())?;
                }
                if let Some(at) = call.next_attempt_at {
                    txn.open_table(DUE)?
                        .remove(due_key(&call.function, at, id).as_str())?;
                }
            }
            Ok(true)
        })
    }

    /// Forgets succeeded and failed calls finished before `before` (ms), and expired
    /// idempotency keys; dead calls stay until purged. Returns how many calls went. What
    /// to forget is found in a read transaction, so the writer (and every accept behind
    /// it) is held only for the removals, in batches, and not at all when nothing expired.
    pub fn prune(&self, before: u64) -> Result<usize, StoreError> {
        let now = now_ms();
        let (old, keys) = {
            let txn = self.db.begin_read()?;
            let finished = txn.open_table(FINISHED)?;
            let to = format!("{before:020}");
            let old: Vec<String> = finished
                .range(..to.as_str())?
                .filter_map(|r| r.ok())
                .map(|(k, _)| k.value().to_string())
                .collect();
            let idem = txn.open_table(IDEMPOTENCY)?;
            let keys: Vec<String> = idem
                .iter()?
                .filter_map(|r| r.ok())
                .filter(|(_, v)| idempotency_answer(v.value(), now).is_none())
                .map(|(k, _)| k.value().to_string())
                .collect();
            (old, keys)
        };
        let n = old.len();
        for chunk in old.chunks(PRUNE_BATCH) {
            let chunk = chunk.to_vec();
            self.write(move |txn| {
                let mut calls = txn.open_table(CALLS)?;
                let mut bodies = txn.open_table(BODIES)?;
                let mut finished = txn.open_table(FINISHED)?;
                for key in &chunk {
                    let id = key.split_once('\0').map_or("", |(_, id)| id);
                    calls.remove(id)?;
                    bodies.remove(id)?;
                    finished.remove(key.as_str())?;
                }
                Ok(())
            })?;
        }
        if !keys.is_empty() {
            self.write(move |txn| {
                let mut idem = txn.open_table(IDEMPOTENCY)?;
                for k in &keys {
                    // Taken again meanwhile: keep the new answer.
                    let stale = idem
                        .get(k.as_str())?
                        .is_some_and(|v| idempotency_answer(v.value(), now).is_none());
                    if stale {
                        idem.remove(k.as_str())?;
                    }
                }
                Ok(())
            })?;
        }
        Ok(n)
    }

    fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut Call) + Send + 'static,
    ) -> Result<Call, StoreError> {
        self.update_with(id, |call, _| change(call))
    }

    /// Changes one call in a transaction; `due` set by `change` queues it at that time.
    fn update_with(
        &self,
        id: &str,
        change: impl FnOnce(&mut Call, &mut Option<u64>) + Send + 'static,
    ) -> Result<Call, StoreError> {
        let id = id.to_string();
        self.write(move |txn| {
            let id = id.as_str();
            let call = {
                let mut calls = txn.open_table(CALLS)?;
                let bytes = calls
                    .get(id)?
                    .map(|v| v.value().to_vec())
                    .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
                let mut call = decode(&bytes)?;
                let was = finished_key(&call);
                let mut due = None;
                change(&mut call, &mut due);
                let now = finished_key(&call);
                if was != now {
                    let mut finished = txn.open_table(FINISHED)?;
                    if let Some(k) = was {
                        finished.remove(k.as_str())?;
                    }
                    if let Some(k) = now {
                        finished.insert(k.as_str(), ())?;
                    }
                }
                calls.insert(id, encode(&call).as_slice())?;
                if let Some(at) = due {
                    txn.open_table(DUE)?
                        .insert(due_key(&call.function, at, id).as_str(), ())?;
                }
                call
            };
            Ok(call)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{new_record, newest, NewCall};

    #[test]
    fn newest_keeps_the_latest_calls_newest_first() {
        let new = NewCall {
            function: "f".into(),
            method: "POST".into(),
            path: "/".into(),
            headers: Vec::new(),
            body: Vec::new(),
            idempotency_key: None,
            callback_url: None,
        };
        let calls = [5u64, 1, 9, 3, 7, 9]
            .iter()
            .enumerate()
            .map(|(i, at)| new_record(&new, format!("c{i}"), *at));
        let got: Vec<(u64, String)> = newest(calls, 3)
            .into_iter()
            .map(|c| (c.accepted_at, c.id))
            .collect();
        assert_eq!(
            got,
            [(9, "c5".to_string()), (9, "c2".into()), (7, "c4".into())]
        );
        assert!(newest(std::iter::empty(), 3).is_empty());
        assert!(newest([new_record(&new, "x".into(), 1)].into_iter(), 0).is_empty());
    }
}
