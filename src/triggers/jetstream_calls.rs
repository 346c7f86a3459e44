//! The durable store of async calls in a cluster (and on the local platform with
//! `gateway.asyncStore: nats`): NATS JetStream, because a gateway pod's disk is not a
//! durable queue and several gateway replicas share one store. The semantics are the redb
//! store's (`calls.rs` holds the state changes both apply):
//!
//! - each call's record (`c.ID`) and body (`b.ID`) live in the key-value bucket
//!   `CUBEFLASH_CALLS`, an `Idempotency-Key` in `i.FUNCTION.SHA256(key)`;
//! - the queue is the work-queue stream `CUBEFLASH_ASYNC`, one subject and one durable pull
//!   consumer per function (`cubeflash.async.FUNCTION`, `async-FUNCTION`), so one slow
//!   function never holds up another;
//! - a lease is a delivery not yet acked: it is kept with `in progress` while the call runs
//!   and runs out after the lease (`gateway.asyncLease`, 10 s) when the gateway holding it stopped (JetStream then
//!   delivers it again); a retry is a `nak` with the backoff as its delay; a finished call's
//!   message is acked. Record updates compare revisions, so gateways never overwrite each
//!   other.
//!
//! A 202 is answered only once the record, the body and the queue message are stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, kv, stream, AckKind};
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::calls::{
    callback_pending, check_redrive, decode, encode, expired, idempotency_answer,
    idempotency_value, new_record, now_ms, record_callback, record_interrupted, record_outcome,
    record_redrive, Backlog, NewCall, Outcome, StoreError,
};
use crate::gateway::api::{Attempt, Call, CallState};

/// The key-value bucket of call records, bodies and idempotency keys.
pub const BUCKET: &str = "CUBEFLASH_CALLS";
/// The work-queue stream of due calls.
pub const STREAM: &str = "CUBEFLASH_ASYNC";
/// A queue message whose record is not (yet) there is looked at again after this, so many
/// times, and then dropped: its accept failed (and answered 503) or the call was purged.
const UNRECORDED_RETRY: Duration = Duration::from_millis(250);
const UNRECORDED_TRIES: i64 = 40;
/// How fresh a function's backlog count must be.
const PENDING_EVERY: Duration = Duration::from_millis(500);
/// How long an operation waits for a store that is still being set up.
const READY_WAIT: Duration = Duration::from_secs(3);
/// Tries to claim an Idempotency-Key that concurrent requests keep changing.
const CLAIM_TRIES: usize = 5;
/// Room left in a message for its headers, under the server's max_payload.
const HEADROOM: usize = 4096;

/// The subject of `function`'s queue.
pub fn subject(function: &str) -> String {
    format!("cubeflash.async.{function}")
}

fn call_key(id: &str) -> String {
    format!("c.{id}")
}

fn body_key(id: &str) -> String {
    format!("b.{id}")
}

fn idempotency_key(function: &str, key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("i.{function}.{hex}")
}

/// A delivery this gateway holds: its function, its message, and the record as this
/// gateway last wrote it (with its revision: the next write needs no read first).
struct Held {
    function: String,
    message: jetstream::Message,
    record: (Call, u64),
}

/// What the store uses once it is set up.
struct Ready {
    js: jetstream::Context,
    kv: kv::Store,
    stream: stream::Stream,
    max_payload: usize,
}

pub struct JetCalls {
    /// The consumers' ack wait: a gateway that stops holding a call loses it after this.
    pub lease: Duration,
    ready: tokio::sync::OnceCell<Ready>,
    /// Why it is not set up yet.
    waiting: Mutex<String>,
    consumers: tokio::sync::Mutex<HashMap<String, consumer::PullConsumer>>,
    /// The deliveries this gateway holds (its leases), by call id.
    held: Mutex<HashMap<String, Held>>,
    /// Each function's backlog and when it was read.
    backlog: Mutex<HashMap<String, (Instant, Backlog)>>,
    /// Functions this gateway queued a call for since their last fetch.
    poked: Mutex<std::collections::HashSet<String>>,
}

impl JetCalls {
    /// A store on the NATS server at `url`; it connects (and sets up its bucket and stream)
    /// in the background, reconnecting forever, and answers `Unavailable` meanwhile.
    pub fn start(url: &str, lease: Duration) -> Arc<Self> {
        let store = Arc::new(Self {
            lease,
            ready: tokio::sync::OnceCell::new(),
            waiting: Mutex::new(format!("connecting to {}", redact(url))),
            consumers: tokio::sync::Mutex::default(),
            held: Mutex::default(),
            backlog: Mutex::default(),
            poked: Mutex::default(),
        });
        let (weak, url) = (Arc::downgrade(&store), url.to_string());
        tokio::spawn(async move {
            let client = match async_nats::ConnectOptions::new()
                .retry_on_initial_connect()
                .name("cubeflash-calls")
                .event_callback(|event| async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("NATS connected (async calls)")
                        }
                        other => tracing::warn!(event = %other, "NATS (async calls)"),
                    }
                })
                .connect(url.as_str())
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(url = %redact(&url), error = %e, "async calls are off: cannot use the NATS URL");
                    if let Some(store) = weak.upgrade() {
                        *store.waiting.lock().expect("waiting lock") =
                            format!("cannot use the NATS URL: {e}");
                    }
                    return;
                }
            };
            let mut wait = Duration::from_millis(200);
            loop {
                let Some(store) = weak.upgrade() else { return };
                match setup(&client).await {
                    Ok(ready) => {
                        tracing::info!(
                            bucket = BUCKET,
                            stream = STREAM,
                            "async calls are stored in NATS JetStream"
                        );
                        let _ = store.ready.set(ready);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?wait, "the JetStream call store is not set up yet");
                        *store.waiting.lock().expect("waiting lock") = e.to_string();
                    }
                }
                drop(store);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        });
        store
    }

    /// The set-up store, waited for a few seconds (a gateway just started is connecting).
    async fn ready(&self) -> Result<&Ready, StoreError> {
        let deadline = Instant::now() + READY_WAIT;
        loop {
            if let Some(r) = self.ready.get() {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Unavailable(
                    self.waiting.lock().expect("waiting lock").clone(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn accept(&self, new: NewCall, id: String) -> Result<(String, bool), StoreError> {
        let r = self.ready().await?;
        let max = r.max_payload.saturating_sub(HEADROOM);
        if new.body.len() > max {
            return Err(StoreError::TooLarge {
                size: new.body.len(),
                max,
            });
        }
        let now = now_ms();
        let claimed = match &new.idempotency_key {
            Some(key) => match self.claim_key(r, &new.function, key, &id, now).await? {
                Some(first) => return Ok((first, true)),
                None => Some(idempotency_key(&new.function, key)),
            },
            None => None,
        };
        let call = new_record(&new, id.clone(), now);
        // All three at once: a message delivered before its record is looked at again.
        let (body, record, queued) = tokio::join!(
            r.kv.put(body_key(&id), Bytes::from(new.body)),
            r.kv.put(call_key(&id), Bytes::from(encode(&call))),
            publish(r, &call.function, &id, &id),
        );
        let stored = body
            .map(|_| ())
            .map_err(StoreError::nats("store a call's body"))
            .and(record.map(|_| ()).map_err(StoreError::nats("store a call")))
            .and(queued);
        if let Err(e) = stored {
            // Not accepted (the caller hears 503): leave nothing that says otherwise, so a
            // retry with the same Idempotency-Key stores the call anew. A message that was
            // queued finds no record and is dropped.
            if let Some(k) = claimed {
                let _ = r.kv.purge(&k).await;
            }
            let _ = forget(r, &id).await;
            return Err(e);
        }
        self.poke(&new.function);
        Ok((id, false))
    }

    /// Claims `key` for call `id`; or, when an earlier call holds it within the window and
    /// that call is stored, answers with that call's id.
    async fn claim_key(
        &self,
        r: &Ready,
        function: &str,
        key: &str,
        id: &str,
        now: u64,
    ) -> Result<Option<String>, StoreError> {
        let k = idempotency_key(function, key);
        let value = Bytes::from(idempotency_value(id, now));
        for _ in 0..CLAIM_TRIES {
            match r.kv.create(&k, value.clone()).await {
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::nats("store an idempotency key")(e)),
            }
            let entry =
                r.kv.entry(&k)
                    .await
                    .map_err(StoreError::nats("read an idempotency key"))?;
            let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                continue; // deleted meanwhile: claim it again
            };
            let seen = String::from_utf8_lossy(&entry.value).into_owned();
            if let Some(first) = idempotency_answer(&seen, now).map(str::to_string) {
                if self.stored_soon(r, &first).await? {
                    return Ok(Some(first));
                }
            }
            // Expired, or its call was never stored: this call takes the key over.
            match r.kv.update(&k, value.clone(), entry.revision).await {
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(StoreError::nats("store an idempotency key")(e)),
            }
        }
        Err(StoreError::Commit(
            "the Idempotency-Key kept changing under concurrent requests".into(),
        ))
    }

    /// Whether call `id`'s record is there, waiting a little for an accept that is still
    /// storing it.
    async fn stored_soon(&self, r: &Ready, id: &str) -> Result<bool, StoreError> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if record(r, id).await?.is_some() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn consumer(
        &self,
        r: &Ready,
        function: &str,
    ) -> Result<consumer::PullConsumer, StoreError> {
        let mut consumers = self.consumers.lock().await;
        if let Some(c) = consumers.get(function) {
            return Ok(c.clone());
        }
        let durable = format!("async-{function}");
        let c: consumer::PullConsumer = r
            .stream
            .get_or_create_consumer(
                &durable,
                consumer::pull::Config {
                    durable_name: Some(durable.clone()),
                    filter_subject: subject(function),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.lease,
                    // The retry budget is the function's, kept in the record.
                    max_deliver: -1,
                    max_ack_pending: 100_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(StoreError::nats("create a function's consumer"))?;
        consumers.insert(function.to_string(), c.clone());
        Ok(c)
    }

    /// Takes up to `n` of `function`'s due calls: each is marked running and held (its
    /// lease) until `finish`.
    pub async fn lease_due(
        &self,
        function: &str,
        n: usize,
        lease_until: u64,
    ) -> Result<Vec<(Call, Vec<u8>)>, StoreError> {
        if n == 0 || self.idle(function) {
            return Ok(Vec::new());
        }
        let r = self.ready().await?;
        let c = self.consumer(r, function).await?;
        let mut batch = c
            .fetch()
            .max_messages(n)
            .messages()
            .await
            .map_err(StoreError::nats("fetch due calls"))?;
        let mut messages = Vec::new();
        while let Some(m) = batch.next().await {
            match m {
                Ok(m) => messages.push(m),
                Err(e) => {
                    tracing::warn!(function, error = %e, "a fetch of due calls broke off");
                    break;
                }
            }
        }
        // Each take is a few round trips to the server: all of them at once.
        let taken: Vec<_> = futures::stream::iter(messages)
            .map(|m| self.take(r, function, m, lease_until))
            .buffer_unordered(64)
            .collect()
            .await;
        let mut out = Vec::new();
        let mut failed = None;
        for t in taken {
            match t {
                Ok(Some(t)) => out.push(t),
                Ok(None) => {}
                // The others still run; this one's message was nak'ed and comes back.
                Err(e) => {
                    let why =
                        std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                            .map(|e| e.to_string())
                            .collect::<Vec<_>>()
                            .join(": ");
                    tracing::warn!(function, error = %why, "could not take a due async call");
                    failed = Some(e);
                }
            }
        }
        if let (true, Some(e)) = (out.is_empty(), failed) {
            return Err(e);
        }
        if !out.is_empty() {
            self.backlog.lock().expect("backlog lock").remove(function);
        }
        Ok(out)
    }

    /// Notes that `function` has a call to fetch (queued by this gateway).
    fn poke(&self, function: &str) {
        self.poked
            .lock()
            .expect("poked lock")
            .insert(function.to_string());
    }

    /// Whether a fetch for `function` would find nothing: its backlog was read as empty
    /// within the last half second and this gateway queued nothing since. (Another
    /// gateway's calls show in the next reading.) Saves a round trip per function each
    /// time the delivery loop looks.
    fn idle(&self, function: &str) -> bool {
        let poked = self.poked.lock().expect("poked lock").remove(function);
        !poked
            && self
                .backlog
                .lock()
                .expect("backlog lock")
                .get(function)
                .is_some_and(|(at, b)| at.elapsed() < PENDING_EVERY && b.pending == 0)
    }

    /// One delivered queue message: its call marked running, or the message settled when
    /// there is nothing to run.
    async fn take(
        &self,
        r: &Ready,
        function: &str,
        m: jetstream::Message,
        lease_until: u64,
    ) -> Result<Option<(Call, Vec<u8>)>, StoreError> {
        let id = String::from_utf8_lossy(&m.payload).into_owned();
        let delivered = m.info().map(|i| i.delivered).unwrap_or(1);
        let now = now_ms();
        let taking = self.update_from(r, &id, None, |call| {
            if call.state.finished() {
                return Ok(false);
            }
            if call.state == CallState::Running {
                // The gateway that held it stopped (its lease ran out).
                record_interrupted(call, now);
            }
            call.state = CallState::Running;
            call.lease_until = Some(lease_until);
            call.next_attempt_at = None;
            Ok(true)
        });
        // The body is read meanwhile (one round trip for both).
        let (taken, body) = tokio::join!(taking, r.kv.get(body_key(&id)));
        match taken {
            Ok((call, true, revision)) => {
                let body = body
                    .map_err(StoreError::nats("read a call's body"))?
                    .unwrap_or_default();
                self.held.lock().expect("held lock").insert(
                    id,
                    Held {
                        function: function.to_string(),
                        message: m,
                        record: (call.clone(), revision),
                    },
                );
                Ok(Some((call, body.to_vec())))
            }
            Ok((_, false, _)) => {
                // A second message of a finished call (a redrive raced its end).
                settle(&m, AckKind::Ack).await;
                Ok(None)
            }
            Err(StoreError::NotFound(_)) if delivered < UNRECORDED_TRIES => {
                settle(&m, AckKind::Nak(Some(UNRECORDED_RETRY))).await;
                Ok(None)
            }
            Err(StoreError::NotFound(_)) => {
                tracing::warn!(call = %id, "a queued async call has no record (purged, or its accept failed); dropped");
                settle(&m, AckKind::Ack).await;
                Ok(None)
            }
            Err(e) => {
                settle(&m, AckKind::Nak(Some(Duration::from_secs(1)))).await;
                Err(e)
            }
        }
    }

    /// How many of `function`'s calls wait for an attempt (queued, retrying, or delivered
    /// and not yet taken), read from its consumer at most every half second.
    pub async fn pending(&self, function: &str, cap: usize) -> Result<Backlog, StoreError> {
        if let Some((at, n)) = self.backlog.lock().expect("backlog lock").get(function) {
            if at.elapsed() < PENDING_EVERY {
                return Ok(*n);
            }
        }
        let r = self.ready().await?;
        let mut c = self.consumer(r, function).await?;
        let info = c
            .info()
            .await
            .map_err(StoreError::nats("read a function's backlog"))?;
        let held = self
            .held
            .lock()
            .expect("held lock")
            .values()
            .filter(|h| h.function == function)
            .count();
        let n = (info.num_pending as usize + info.num_ack_pending)
            .saturating_sub(held)
            .min(cap);
        // The oldest message still in the queue: when its call was queued.
        let oldest_ms = if n == 0 {
            None
        } else {
            r.stream
                .get_first_raw_message_by_subject(subject(function), 0)
                .await
                .ok()
                .map(|m| (m.time.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
        };
        let backlog = Backlog {
            pending: n,
            oldest_ms,
        };
        self.backlog
            .lock()
            .expect("backlog lock")
            .insert(function.to_string(), (Instant::now(), backlog));
        Ok(backlog)
    }

    /// Keeps a held call's lease (`in progress`).
    pub async fn extend(&self, id: &str) -> Result<(), StoreError> {
        let m = self
            .held
            .lock()
            .expect("held lock")
            .get(id)
            .map(|h| h.message.clone());
        if let Some(m) = m {
            m.ack_with(AckKind::Progress)
                .await
                .map_err(|source| StoreError::Nats {
                    what: "extend a lease",
                    source,
                })?;
        }
        Ok(())
    }

    pub async fn finish(
        &self,
        id: &str,
        attempt: Attempt,
        outcome: Outcome,
    ) -> Result<Call, StoreError> {
        let r = self.ready().await?;
        let known = self
            .held
            .lock()
            .expect("held lock")
            .get(id)
            .map(|h| h.record.clone());
        let (call, due, _) = self
            .update_from(r, id, known, |call| {
                Ok(record_outcome(call, attempt.clone(), outcome.clone()))
            })
            .await?;
        let held = self
            .held
            .lock()
            .expect("held lock")
            .remove(id)
            .map(|h| h.message);
        // The backlog changed (a retry's message waits on the server): read it afresh.
        self.backlog
            .lock()
            .expect("backlog lock")
            .remove(&call.function);
        match (held, due) {
            (Some(m), Some(at)) => {
                let delay = Duration::from_millis(at.saturating_sub(now_ms()));
                settle(&m, AckKind::Nak(Some(delay))).await;
            }
            (Some(m), None) => {
                // Lost, the ack costs a second delivery, settled as a finished call's.
                settle(&m, AckKind::Ack).await;
            }
            (None, Some(_)) => {
                // The lease was lost meanwhile: queue it anew.
                let msg_id = format!("{id}.{}", call.attempts.len());
                publish(r, &call.function, id, &msg_id).await?;
                self.poke(&call.function);
            }
            (None, None) => {}
        }
        Ok(call)
    }

    pub async fn callback_tried(
        &self,
        id: &str,
        status: Option<u16>,
        error: Option<String>,
    ) -> Result<Call, StoreError> {
        let r = self.ready().await?;
        let (call, ()) = self
            .update(r, id, |call| {
                record_callback(call, status, error.clone());
                Ok(())
            })
            .await?;
        Ok(call)
    }

    pub async fn pending_callbacks(&self) -> Result<Vec<Call>, StoreError> {
        let r = self.ready().await?;
        Ok(scan(r)
            .await?
            .into_iter()
            .filter(callback_pending)
            .collect())
    }

    pub async fn get(&self, id: &str) -> Result<Call, StoreError> {
        let r = self.ready().await?;
        record(r, id)
            .await?
            .map(|(call, _)| call)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))
    }

    pub async fn list(
        &self,
        function: Option<&str>,
        state: Option<CallState>,
        limit: usize,
    ) -> Result<Vec<Call>, StoreError> {
        let r = self.ready().await?;
        let all = scan(r).await?.into_iter().filter(|c| {
            function.is_none_or(|f| f == c.function) && state.is_none_or(|s| s == c.state)
        });
        Ok(super::calls::newest(all, limit))
    }

    pub async fn redrive(&self, id: &str) -> Result<Call, StoreError> {
        let r = self.ready().await?;
        let now = now_ms();
        let (call, ()) = self
            .update(r, id, |call| {
                check_redrive(call)?;
                record_redrive(call, now);
                Ok(())
            })
            .await?;
        let msg_id = format!("{id}.redrive.{}", call.redriven);
        publish(r, &call.function, id, &msg_id).await?;
        self.poke(&call.function);
        Ok(call)
    }

    pub async fn purge(&self, id: &str) -> Result<bool, StoreError> {
        let r = self.ready().await?;
        let Some((call, _)) = record(r, id).await? else {
            return Ok(false);
        };
        if call.state == CallState::Running {
            return Err(StoreError::Running(id.to_string()));
        }
        forget(r, id).await?;
        Ok(true)
    }

    pub async fn prune(&self, before: u64) -> Result<usize, StoreError> {
        let r = self.ready().await?;
        let now = now_ms();
        let mut n = 0;
        for call in scan(r).await? {
            if expired(&call, before) {
                forget(r, &call.id).await?;
                n += 1;
            }
        }
        for key in keys(r, "i.").await? {
            let value =
                r.kv.get(&key)
                    .await
                    .map_err(StoreError::nats("read an idempotency key"))?;
            let live = value
                .as_ref()
                .is_some_and(|v| idempotency_answer(&String::from_utf8_lossy(v), now).is_some());
            if !live {
                r.kv.purge(&key)
                    .await
                    .map_err(StoreError::nats("forget an idempotency key"))?;
            }
        }
        Ok(n)
    }

    /// Changes one record with `change` (which may refuse, or say it changes nothing by
    /// returning what it returns with the record unchanged), compare-and-set on its
    /// revision, read again when another writer came first.
    async fn update<T>(
        &self,
        r: &Ready,
        id: &str,
        change: impl FnMut(&mut Call) -> Result<T, StoreError>,
    ) -> Result<(Call, T), StoreError> {
        let (call, out, _) = self.update_from(r, id, None, change).await?;
        Ok((call, out))
    }

    /// `update`, starting from `known` (a record and its revision) when given; returns the
    /// record's revision after the write too.
    async fn update_from<T>(
        &self,
        r: &Ready,
        id: &str,
        mut known: Option<(Call, u64)>,
        mut change: impl FnMut(&mut Call) -> Result<T, StoreError>,
    ) -> Result<(Call, T, u64), StoreError> {
        let mut tries = 0;
        loop {
            let (mut call, revision) = match known.take() {
                Some(k) => k,
                None => record(r, id)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(id.to_string()))?,
            };
            let before = encode(&call);
            let out = change(&mut call)?;
            let after = encode(&call);
            if after == before {
                return Ok((call, out, revision));
            }
            match r
                .kv
                .update(call_key(id), Bytes::from(after), revision)
                .await
            {
                Ok(revision) => return Ok((call, out, revision)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision && tries < 10 => {
                    tries += 1;
                }
                Err(e) => return Err(StoreError::nats("update a call")(e)),
            }
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Creates (or finds) the bucket and the stream.
async fn setup(client: &async_nats::Client) -> Result<Ready, BoxError> {
    let js = jetstream::new(client.clone());
    // The bucket's stream, made as `create_key_value` would: that call fails against
    // nats-server 2.9 (it cannot read the answer), creating the stream itself works.
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{BUCKET}"),
        description: Some("cubeflash async calls: records, bodies, idempotency keys".into()),
        subjects: vec![format!("$KV.{BUCKET}.>")],
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        storage: stream::StorageType::File,
        num_replicas: 1,
        ..Default::default()
    })
    .await?;
    let kv = js.get_key_value(BUCKET).await?;
    let stream = js
        .get_or_create_stream(stream::Config {
            name: STREAM.into(),
            description: Some("cubeflash async calls due for an attempt".into()),
            subjects: vec!["cubeflash.async.*".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
    let max_payload = client.server_info().max_payload;
    Ok(Ready {
        js,
        kv,
        stream,
        max_payload: if max_payload == 0 {
            1 << 20
        } else {
            max_payload
        },
    })
}

/// Queues `id` on `function`'s subject; `msg_id` deduplicates a repeated publish.
async fn publish(r: &Ready, function: &str, id: &str, msg_id: &str) -> Result<(), StoreError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    r.js.publish_with_headers(subject(function), headers, Bytes::from(id.to_string()))
        .await
        .map_err(StoreError::nats("queue a call"))?
        .await
        .map_err(StoreError::nats("queue a call"))?;
    Ok(())
}

async fn record(r: &Ready, id: &str) -> Result<Option<(Call, u64)>, StoreError> {
    let entry =
        r.kv.entry(call_key(id))
            .await
            .map_err(StoreError::nats("read a call"))?;
    match entry.filter(|e| e.operation == kv::Operation::Put) {
        Some(e) => Ok(Some((decode(&e.value)?, e.revision))),
        None => Ok(None),
    }
}

async fn forget(r: &Ready, id: &str) -> Result<(), StoreError> {
    r.kv.purge(call_key(id))
        .await
        .map_err(StoreError::nats("forget a call"))?;
    r.kv.purge(body_key(id))
        .await
        .map_err(StoreError::nats("forget a call's body"))?;
    Ok(())
}

async fn keys(r: &Ready, prefix: &str) -> Result<Vec<String>, StoreError> {
    let mut keys = r.kv.keys().await.map_err(StoreError::nats("list calls"))?;
    let mut out = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(StoreError::nats("list calls"))?;
        if key.starts_with(prefix) {
            out.push(key);
        }
    }
    Ok(out)
}

/// Every call record (a whole-bucket read, for lists and pruning).
async fn scan(r: &Ready) -> Result<Vec<Call>, StoreError> {
    let keys = keys(r, "c.").await?;
    let records: Vec<Result<Option<(Call, u64)>, StoreError>> = futures::stream::iter(keys)
        .map(|k| async move { record(r, k.trim_start_matches("c.")).await })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut out = Vec::new();
    for rec in records {
        if let Some((call, _)) = rec? {
            out.push(call);
        }
    }
    Ok(out)
}

/// Settles a delivery; a failure leaves it to JetStream's redelivery.
async fn settle(m: &jetstream::Message, how: AckKind) {
    if let Err(e) = m.ack_with(how).await {
        tracing::warn!(error = %e, "could not settle an async call's queue message");
    }
}

/// `url` without a password or token.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…{}", &url[..scheme], &url[at..]),
        _ => url.to_string(),
    }
}
