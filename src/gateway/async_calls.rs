//! Async invocations, written once against the engine: `POST /async-function/NAME[/rest]`
//! stores the call durably (the backend's `CallStore`) and answers 202 with its id; a
//! delivery loop leases due calls per function (at most `scale.max × scale.concurrency` at
//! once, so one slow function never holds up another), invokes them through the engine (a
//! function at zero scales up; pending calls count toward its scale), extends the lease
//! while a call runs, and retries with exponential backoff and jitter per the function's
//! `async` policy: 429, 5xx (the gateway's own 502/504 for connect errors and timeouts
//! among them) and `Retry-After` are honoured; another 4xx fails at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::Notify;

use super::api::{self, Accepted, Attempt, CallResult};
use super::body::BoxError;
use super::dispatch::Via;
use super::function::FunctionState;
use super::proxy::{self, GatewayBody};
use super::{json_error, json_response, Gateway};
use crate::triggers::calls::{now_ms, NewCall, Outcome, StoreError};
use crate::triggers::store::Store;

/// Finished (succeeded, failed) calls are kept this long for `GET /system/calls/ID`, unless
/// `gateway.asyncRetention` says otherwise.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Most calls of one function delivered at once.
const MAX_PARALLEL: u32 = 1000;
/// How often the queues are looked at when nothing wakes the loop (an accept, a finished
/// attempt, a retry falling due does).
const IDLE_TICK: Duration = Duration::from_secs(1);
/// Pending calls counted for the autoscaler, at most.
const PENDING_CAP: usize = 10_000;

/// A backend's async calls: the store and the signals around it.
pub struct AsyncCalls {
    pub store: Store,
    /// A call was accepted or redriven: look for due calls now.
    pub wake: Notify,
    /// A call changed state: long-polls look again.
    pub changed: Notify,
    /// Hosts a callback may go to (`gateway.callbackHosts`), updated on reload.
    callback_hosts: std::sync::RwLock<Vec<String>>,
    /// How long finished calls are kept, in ms (`gateway.asyncRetention`).
    retention_ms: std::sync::atomic::AtomicU64,
    /// Signs callbacks: `X-Cubeflash-Signature: sha256=HEX(HMAC-SHA256(secret, body))`.
    secret: String,
    http: reqwest::Client,
}

impl AsyncCalls {
    pub fn new(store: Store, secret: String) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .timeout(CALLBACK_TIMEOUT)
            // A redirect could point anywhere: the allowed host is the one that gets it.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client builds");
        Arc::new(Self {
            store,
            wake: Notify::new(),
            changed: Notify::new(),
            callback_hosts: Default::default(),
            retention_ms: std::sync::atomic::AtomicU64::new(RETENTION.as_millis() as u64),
            secret,
            http,
        })
    }

    pub fn set_retention(&self, retention: Duration) {
        self.retention_ms.store(
            retention.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub fn set_callback_hosts(&self, hosts: Vec<String>) {
        *self.callback_hosts.write().expect("hosts lock") = hosts;
    }

    /// Why `url` may not be a callback, if it may not.
    fn refuse_callback(&self, url: &str) -> Option<String> {
        let parsed = match reqwest::Url::parse(url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => u,
            _ => return Some(format!("X-Callback-Url {url:?} is not an http(s) URL")),
        };
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = parsed.port_or_known_default().unwrap_or(0);
        let hosts = self.callback_hosts.read().expect("hosts lock");
        let allowed = hosts
            .iter()
            .any(|h| *h == host || *h == format!("{host}:{port}"));
        (!allowed).then(|| {
            format!("callbacks to {host}:{port} are not allowed: add \"{host}:{port}\" (or \"{host}\") to gateway.callbackHosts in cubeflash.yaml")
        })
    }

    /// The signature header value of `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.secret.as_bytes())
            .expect("HMAC takes any key");
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256={hex}")
    }
}

/// How long one try of a callback may take.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Header that carries a callback's signature.
pub const SIGNATURE: &str = "x-cubeflash-signature";

/// POSTs a finished call to its callback URL, signed, retried on 429/5xx and connect
/// errors (1 s doubling, `CALLBACK_TRIES` tries in all); every try is recorded.
async fn send_callback(calls: Arc<AsyncCalls>, call: api::Call) {
    let Some(cb) = call.callback.clone() else {
        return;
    };
    let body = serde_json::to_vec(&call).expect("a call serializes");
    let signature = calls.sign(&body);
    let mut wait = Duration::from_secs(1);
    for _ in cb.attempts..crate::triggers::calls::CALLBACK_TRIES {
        let sent = calls
            .http
            .post(&cb.url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(proxy::CALL_ID.as_str(), call.id.as_str())
            .header(SIGNATURE, signature.as_str())
            .body(body.clone())
            .send()
            .await;
        let (status, error, again) = match sent {
            Ok(r) => {
                let s = r.status();
                let again = s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS;
                let error = (!s.is_success()).then(|| format!("the callback answered {s}"));
                (Some(s.as_u16()), error, again)
            }
            Err(e) => (None, Some(format!("the callback failed: {e}")), true),
        };
        let done = status.is_some_and(|s| (200..300).contains(&s));
        if let Err(e) = calls
            .store
            .callback_tried(&call.id, status, error.clone())
            .await
        {
            tracing::warn!(call = %call.id, error = %format!("{:#}", anyhow::Error::from(e)), "could not record a callback");
        }
        if done || !again {
            if !done {
                tracing::warn!(call = %call.id, url = %cb.url, error = ?error, "callback refused; not retried");
            }
            return;
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
    tracing::warn!(call = %call.id, url = %cb.url, "callback given up after its tries");
}

/// Counts one delivery of a function as running until dropped.
struct Running(Arc<Mutex<HashMap<String, u32>>>, String);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(n) = self.0.lock().expect("running lock").get_mut(&self.1) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Stops a task when dropped (the lease keeper of a delivery, a queue message's
/// in-progress ticker).
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The wait before attempt `n + 1` (after `n` failed ones): `min × 2^(n-1)`, at most `max`,
/// less up to 20% at random, so the retries of many calls spread out while each gap stays
/// within 20% of the policy.
pub fn backoff(n: u32, min: Duration, max: Duration) -> Duration {
    let exp = min.saturating_mul(1u32 << n.saturating_sub(1).min(20));
    exp.min(max).mul_f64(1.0 - 0.2 * fastrand::f64())
}

/// `Retry-After` as seconds or an HTTP date, as a wait from now.
pub fn retry_after(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

impl Gateway {
    /// `POST /async-function/NAME[/rest]`: 202 once the call is stored; 404 for an unknown
    /// function, 413 for a body over the limit, 503 when there is no store or it failed.
    pub(super) async fn accept_async<B>(
        self: &Arc<Self>,
        req: Request<B>,
        rest: &str,
    ) -> Response<GatewayBody>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let name = rest.split_once('/').map_or(rest, |(n, _)| n).to_string();
        let forward = match &rest[name.len()..] {
            "" => "/".to_string(),
            tail => tail.to_string(),
        };
        let routes = self.routes();
        if !routes.by_name.contains_key(&name) {
            return routes.no_such_function(&name);
        }
        if req.method() != Method::POST {
            let mut resp = json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("an async call is a POST (the function then sees a POST to {forward})"),
                Some(&name),
            );
            resp.headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static("POST"));
            return resp;
        }
        let Some(calls) = self.backend().and_then(|b| b.calls()) else {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "async calls are off: in a cluster they are stored in NATS JetStream, and the gateway was given no NATS server (set `nats: { url: ... }` in cubeflash.yaml and deploy again); locally, see the gateway log for why the store did not open",
                Some(&name),
            );
        };
        let limit = self.config.max_body;
        let (parts, body) = req.into_parts();
        let read = tokio::time::timeout(
            self.config.limits.body_timeout,
            Limited::new(body, limit).collect(),
        )
        .await;
        let body = match read {
            Ok(Ok(b)) => b.to_bytes().to_vec(),
            Ok(Err(_)) => {
                return json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the request body is larger than the gateway's limit of {limit} bytes (gateway.maxBodySize in cubeflash.yaml), or it broke off"),
                    Some(&name),
                )
            }
            Err(_) => {
                return json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body stalled; nothing was stored",
                    Some(&name),
                )
            }
        };
        let mut headers = parts.headers;
        proxy::strip_hop_by_hop(&mut headers);
        proxy::strip_internal(&mut headers);
        let idempotency_key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let callback_url = headers
            .remove("x-callback-url")
            .map(|v| v.to_str().unwrap_or_default().to_string());
        if let Some(why) = callback_url
            .as_deref()
            .and_then(|u| calls.refuse_callback(u))
        {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("{why}; nothing was stored"),
                Some(&name),
            );
        }
        let path = match parts.uri.query() {
            Some(q) => format!("{forward}?{q}"),
            None => forward,
        };
        let new = NewCall {
            function: name.clone(),
            method: "POST".into(),
            path,
            headers: headers
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                .collect(),
            body,
            idempotency_key,
            callback_url,
        };
        let id = self.next_call_id().to_str().unwrap_or_default().to_string();
        let stored = calls.store.accept(new, id).await;
        match stored {
            Ok((id, duplicate)) => {
                if !duplicate {
                    self.metrics
                        .async_accepted
                        .get_or_create(&super::metrics::label(&name))
                        .inc();
                    calls.wake.notify_one();
                }
                let status_url = format!("/system/calls/{id}");
                let mut resp = json_response(
                    StatusCode::ACCEPTED,
                    &Accepted {
                        call_id: id.clone(),
                        function: name,
                        status_url: status_url.clone(),
                        duplicate,
                    },
                );
                if let Ok(v) = HeaderValue::from_str(&id) {
                    resp.headers_mut().insert(proxy::CALL_ID, v);
                }
                if let Ok(v) = HeaderValue::from_str(&status_url) {
                    resp.headers_mut().insert(hyper::header::LOCATION, v);
                }
                resp
            }
            Err(e @ StoreError::TooLarge { .. }) => json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("{e}; nothing was stored (raise max_payload in the NATS server's configuration, or send less)"),
                Some(&name),
            ),
            Err(e) => {
                let why = format!("{:#}", anyhow::Error::from(e));
                tracing::error!(function = %name, error = %why, "an async call could not be stored");
                json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("the async call store failed ({why}); nothing was stored, retry shortly"),
                    Some(&name),
                )
            }
        }
    }
}

/// Delivers due calls until the gateway stops: requeues what a stopped gateway left
/// running, then per function leases what its parallel budget allows.
pub async fn deliver_loop(gateway: Arc<Gateway>, calls: Arc<AsyncCalls>) {
    match calls.store.requeue_running().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            calls = n,
            "async calls a stopped gateway left running are delivered again"
        ),
        Err(e) => {
            tracing::error!(error = %format!("{:#}", anyhow::Error::from(e)), "could not requeue the async calls left running")
        }
    }
    // The callbacks a stopped gateway did not get to send; asked again each turn until the
    // store answers (a JetStream store may still be connecting).
    let mut callbacks_resumed = false;
    let running: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut last_prune = std::time::Instant::now();
    loop {
        if !callbacks_resumed {
            match calls.store.pending_callbacks().await {
                Ok(pending) => {
                    callbacks_resumed = true;
                    for call in pending {
                        tokio::spawn(send_callback(calls.clone(), call));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{:#}", anyhow::Error::from(e)), "could not read the callbacks still to send; trying again")
                }
            }
        }
        tokio::select! {
            _ = calls.wake.notified() => {}
            _ = tokio::time::sleep(IDLE_TICK) => {}
        }
        let routes = gateway.routes();
        for f in routes.functions() {
            let name = f.name().to_string();
            let busy = running
                .lock()
                .expect("running lock")
                .get(&name)
                .copied()
                .unwrap_or(0);
            let budget =
                (f.entry.scale.max.max(1) * f.entry.scale.concurrency.max(1)).min(MAX_PARALLEL);
            let free = budget.saturating_sub(busy) as usize;
            let until = now_ms() + calls.store.lease().as_millis() as u64;
            let leased = async {
                let leased = calls.store.lease_due(&name, free, until).await?;
                Ok::<_, StoreError>((leased, calls.store.pending(&name, PENDING_CAP).await?))
            };
            let (leased, pending) = match leased.await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(function = %name, error = %format!("{:#}", anyhow::Error::from(e)), "could not read the async call queue");
                    continue;
                }
            };
            f.set_async_pending(pending);
            for (call, body) in leased {
                *running
                    .lock()
                    .expect("running lock")
                    .entry(name.clone())
                    .or_default() += 1;
                let guard = Running(running.clone(), name.clone());
                let (gateway, calls, f) = (gateway.clone(), calls.clone(), f.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    deliver(&gateway, &calls, f, call, body).await;
                });
            }
        }
        let keep = calls
            .retention_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        // Each minute, or twice per retention when that is shorter.
        let every =
            Duration::from_millis(keep / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
        if last_prune.elapsed() > every {
            last_prune = std::time::Instant::now();
            let before = now_ms().saturating_sub(keep);
            if let Err(e) = calls.store.prune(before).await {
                tracing::warn!(error = %format!("{:#}", anyhow::Error::from(e)), "could not prune finished async calls");
            }
        }
    }
}

/// One attempt of `call` through the engine, and what follows from its answer.
async fn deliver(
    gateway: &Arc<Gateway>,
    calls: &Arc<AsyncCalls>,
    f: Arc<FunctionState>,
    call: api::Call,
    body: Vec<u8>,
) {
    let number = call.attempts.len() as u32 + 1;
    let id = call.id.clone();
    // The lease is kept while the call runs, however long it takes.
    let keeper = {
        let (store, id) = (calls.store.clone(), id.clone());
        AbortOnDrop(tokio::spawn(async move {
            let lease = store.lease();
            let mut tick = tokio::time::interval(lease / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                let until = now_ms() + lease.as_millis() as u64;
                if let Err(e) = store.extend(&id, until).await {
                    tracing::warn!(error = %format!("{:#}", anyhow::Error::from(e)), "could not extend an async call's lease");
                }
            }
        }))
    };
    let mut req = Request::builder()
        .method(call.method.as_str())
        .uri(call.path.as_str());
    for (k, v) in &call.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let started_at = now_ms();
    let started = std::time::Instant::now();
    let (status, head, bytes, error) = match req.body(Full::new(Bytes::from(body))) {
        Ok(req) => {
            let via = Via {
                trigger: "async",
                call_id: HeaderValue::from_str(&id).ok(),
                attempt: Some(number),
                headers: Vec::new(),
            };
            let forward = call.path.split('?').next().unwrap_or("/").to_string();
            let me: SocketAddr = ([127, 0, 0, 1], 0).into();
            let resp: Response<GatewayBody> = gateway
                .dispatch_as(f.clone(), req, &forward, me, Some(via))
                .await;
            let (head, body) = resp.into_parts();
            let limit = gateway.config.max_body;
            match Limited::new(body, limit).collect().await {
                Ok(b) => (head.status, Some(head.headers), b.to_bytes(), None),
                Err(e) => (
                    head.status,
                    Some(head.headers),
                    Bytes::new(),
                    Some(format!(
                        "the answer broke off or was over {limit} bytes: {e}"
                    )),
                ),
            }
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            None,
            Bytes::new(),
            Some(format!("the stored request is not valid HTTP: {e}")),
        ),
    };
    drop(keeper);
    let from_gateway = head
        .as_ref()
        .is_some_and(|h| h.get(proxy::ORIGIN).is_some());
    let result = CallResult {
        status: status.as_u16(),
        headers: head
            .as_ref()
            .map(|h| {
                h.iter()
                    .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
        body: match std::str::from_utf8(&bytes) {
            Ok(text) => text.to_string(),
            Err(_) => base64::engine::general_purpose::STANDARD.encode(&bytes),
        },
        body_encoding: if std::str::from_utf8(&bytes).is_ok() {
            "utf-8".into()
        } else {
            "base64".into()
        },
    };
    let what = error.clone().unwrap_or_else(|| {
        let said = if from_gateway {
            serde_json::from_slice::<api::ErrorBody>(&bytes)
                .map(|e| format!(": {}", e.error))
                .unwrap_or_default()
        } else {
            String::new()
        };
        format!("answered {status}{said}")
    });
    gateway
        .metrics
        .async_attempt_duration
        .get_or_create(&super::metrics::label(f.name()))
        .observe(started.elapsed().as_secs_f64());
    let attempt = Attempt {
        number,
        started_at,
        duration_ms: started.elapsed().as_millis() as u64,
        status: Some(status.as_u16()),
        error: (!status.is_success()).then(|| what.clone()),
    };
    let policy = &f.entry.retry;
    let outcome = if status.is_success() && error.is_none() {
        Outcome::Succeeded(result)
    } else if status.is_client_error()
        && status != StatusCode::TOO_MANY_REQUESTS
        && status != StatusCode::REQUEST_TIMEOUT
    {
        Outcome::Failed(result, format!("the function {what}; a 4xx is not retried"))
    } else {
        let tries_this_round = number - call.redriven;
        let age = Duration::from_millis(now_ms().saturating_sub(call.accepted_at));
        let wait = head
            .as_ref()
            .and_then(|h| h.get(hyper::header::RETRY_AFTER))
            .filter(|_| !from_gateway || status == StatusCode::TOO_MANY_REQUESTS)
            .and_then(retry_after)
            .unwrap_or_else(|| {
                backoff(
                    tries_this_round,
                    policy.min_backoff.value,
                    policy.max_backoff.value,
                )
            });
        if tries_this_round > policy.retries {
            Outcome::Dead(format!(
                "{} attempts failed (async.retries is {}); the last {what}",
                tries_this_round, policy.retries
            ))
        } else if age + wait > policy.max_age.value {
            Outcome::Dead(format!(
                "the next attempt would come after async.maxAge ({}); the last {what}",
                policy.max_age.text
            ))
        } else {
            Outcome::Retry {
                at: now_ms() + wait.as_millis() as u64,
                error: what.clone(),
            }
        }
    };
    let label = super::metrics::label(f.name());
    match &outcome {
        Outcome::Succeeded(_) => gateway.metrics.async_delivered.get_or_create(&label).inc(),
        Outcome::Retry { .. } => gateway.metrics.async_retried.get_or_create(&label).inc(),
        Outcome::Dead(why) => {
            tracing::warn!(function = %f.name(), call = %id, reason = %why, "async call is dead");
            gateway.metrics.async_dead.get_or_create(&label).inc()
        }
        Outcome::Failed(..) => gateway.metrics.async_failed.get_or_create(&label).inc(),
    };
    if let Outcome::Retry { error, at } = &outcome {
        tracing::info!(function = %f.name(), call = %id, attempt = number, error = %error, "async call will be retried");
        // Wake the loop when it falls due, not at its next idle tick.
        let (calls, wait) = (
            calls.clone(),
            Duration::from_millis(at.saturating_sub(now_ms())),
        );
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            // Looked at again a little later too: JetStream redelivers a `nak` with a delay
            // at about that time, not before.
            for later in [0, 20, 80, 200] {
                tokio::time::sleep(Duration::from_millis(later)).await;
                calls.wake.notify_one();
            }
        });
    }
    match calls.store.finish(&id, attempt, outcome).await {
        Ok(done) if done.state.finished() && done.callback.is_some() => {
            tokio::spawn(send_callback(calls.clone(), done));
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(call = %id, error = %format!("{:#}", anyhow::Error::from(e)), "could not record an async call's attempt")
        }
    }
    calls.changed.notify_waiters();
    calls.wake.notify_one();
}

#[cfg(test)]
mod tests {
    use super::{backoff, retry_after};
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_the_maximum_within_twenty_percent() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(1000));
        for (n, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (30, 1000),
        ] {
            for _ in 0..200 {
                let d = backoff(n, min, max).as_millis() as u64;
                assert!(
                    d <= full && d >= full * 8 / 10,
                    "attempt {n}: {d} ms, policy {full} ms"
                );
            }
        }
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let v = |s: &str| hyper::header::HeaderValue::from_str(s).unwrap();
        assert_eq!(retry_after(&v("7")), Some(Duration::from_secs(7)));
        let soon = std::time::SystemTime::now() + Duration::from_secs(30);
        let wait = retry_after(&v(&httpdate::fmt_http_date(soon))).unwrap();
        assert!(
            wait <= Duration::from_secs(30) && wait >= Duration::from_secs(28),
            "{wait:?}"
        );
        assert_eq!(retry_after(&v("soon")), None);
    }
}
