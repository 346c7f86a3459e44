//! One invocation, on any backend: check the body's size, find a replica (holding the
//! request in the function's bounded queue while one starts), forward it streamed, retry
//! on another replica where that is safe, and account for it. Every count taken here (in
//! flight, queue place, replica slot) is a guard, so a client that goes away, a timeout or a
//! panic gives it back.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode, Uri};

use crate::runtime::pool::Slot;

use super::body::{self, BoxError, Fault, RequestBody, PREFETCH};
use super::function::{FunctionState, Inflight};
use super::metrics::{label, CodeLabels, PhaseLabels, StartLabels};
use super::proxy::{self, GatewayBody, CALL_ID, COLD_START};
use super::upstream::UpstreamBody;
use super::{api, Gateway};

/// Timeouts in a row after which a replica is taken out of rotation.
const TIMEOUTS_IN_A_ROW: u32 = 3;
/// How long to wait before trying a backend's single address again after it refused.
const REFUSED_PAUSE: Duration = Duration::from_millis(50);
/// What a refused body may still send (and have dropped) so that the client reads the 413.
const DRAIN_REFUSED: u64 = 1 << 20;

/// Why a request got no answer from a replica.
struct Reject {
    status: StatusCode,
    message: String,
    log: Option<Vec<String>>,
}

impl Reject {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            log: None,
        }
    }
}

/// A replica to send to, and how long the request waited for it.
/// An internal caller of the engine: a schedule, an async call's delivery. Its headers
/// (`X-Cubeflash-Trigger`, the call's own id, the attempt number) are set after the client's
/// `X-Cubeflash-*` headers are dropped, so no client can forge them.
#[derive(Debug, Clone)]
pub struct Via {
    pub trigger: &'static str,
    pub call_id: Option<HeaderValue>,
    pub attempt: Option<u32>,
    /// More `X-Cubeflash-*` metadata of the trigger (a queue message's subject, sequence).
    pub headers: Vec<(hyper::header::HeaderName, HeaderValue)>,
}

impl Via {
    pub fn trigger(trigger: &'static str) -> Self {
        Self {
            trigger,
            call_id: None,
            attempt: None,
            headers: Vec::new(),
        }
    }
}

/// Why `acquire_from` gave no slot.
enum Waited {
    Refused(Reject),
    /// The function was replaced by a reload: wait on its successor.
    Retired,
}

struct Lease {
    slot: Slot,
    waited: Option<Duration>,
    cold: bool,
}

/// What the response body holds until it is done: the request's in-flight count and its
/// replica slot.
struct Held {
    _inflight: Option<Inflight>,
    _slot: Slot,
}

/// Which of a function's pools a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The function as users call it: scales from zero, counted for the autoscaler.
    Serverless,
    /// Its always-on baseline (`/baseline/NAME`): the same proxy hop without scale-to-zero,
    /// for `cubeflash bench`. Never counted as traffic of the function, so it cannot keep
    /// the serverless side up or scale it.
    Baseline,
}

impl Side {
    fn pool<'f>(&self, f: &'f FunctionState) -> &'f Arc<dyn crate::runtime::pool::ReplicaPool> {
        match (self, &f.baseline) {
            (Side::Baseline, Some(b)) => b,
            _ => &f.serverless,
        }
    }
}

impl Gateway {
    /// Forwards `req` to `f` at `forward_path`. `trigger` names an internal caller
    /// (schedule); client requests pass None, and any `X-Cubeflash-*` they sent is dropped.
    pub(super) async fn dispatch<B>(
        &self,
        f: Arc<FunctionState>,
        req: Request<B>,
        forward_path: &str,
        client: SocketAddr,
    ) -> Response<GatewayBody>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        self.dispatch_on(f, req, forward_path, client, None, Side::Serverless)
            .await
    }

    /// Forwards a client's request to `f`'s always-on baseline (which it must have).
    pub(super) async fn dispatch_baseline<B>(
        &self,
        f: Arc<FunctionState>,
        req: Request<B>,
        forward_path: &str,
        client: SocketAddr,
    ) -> Response<GatewayBody>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        self.dispatch_on(f, req, forward_path, client, None, Side::Baseline)
            .await
    }

    pub(crate) async fn dispatch_as<B>(
        &self,
        f: Arc<FunctionState>,
        req: Request<B>,
        forward_path: &str,
        client: SocketAddr,
        via: Option<Via>,
    ) -> Response<GatewayBody>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        self.dispatch_on(f, req, forward_path, client, via, Side::Serverless)
            .await
    }

    async fn dispatch_on<B>(
        &self,
        f: Arc<FunctionState>,
        req: Request<B>,
        forward_path: &str,
        client: SocketAddr,
        via: Option<Via>,
        side: Side,
    ) -> Response<GatewayBody>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let call_id = match via.as_ref().and_then(|v| v.call_id.clone()) {
            Some(id) => id,
            None => self.next_call_id(),
        };
        if side == Side::Serverless {
            f.touch();
        }
        let mut response = match self
            .invoke(
                &f,
                req,
                (forward_path, side),
                client,
                &call_id,
                via.as_ref(),
                started,
            )
            .await
        {
            Ok(resp) => resp,
            Err(r) => {
                if r.status.is_server_error() {
                    tracing::warn!(function = %f.name(), status = r.status.as_u16(), call = call_id.to_str().unwrap_or(""), "{}", r.message);
                }
                let mut resp = super::error_response(
                    r.status,
                    &api::ErrorBody {
                        error: r.message,
                        function: Some(f.name().to_string()),
                        log: r.log,
                    },
                );
                if r.status == StatusCode::REQUEST_TIMEOUT
                    || r.status == StatusCode::PAYLOAD_TOO_LARGE
                {
                    resp.headers_mut()
                        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
                }
                resp
            }
        };
        response.headers_mut().insert(CALL_ID, call_id);
        let code = response.status().as_u16();
        if code == 200 && side == Side::Serverless {
            f.hot.ok.inc();
        } else {
            let function = match side {
                Side::Serverless => {
                    f.hot.not_ok.inc();
                    if code >= 500 {
                        f.hot.server_errors.inc();
                    }
                    f.name().to_string()
                }
                Side::Baseline => format!("{}-baseline", f.name()),
            };
            self.metrics
                .requests
                .get_or_create(&CodeLabels { function, code })
                .inc();
        }
        response
    }

    #[allow(clippy::too_many_arguments)]
    async fn invoke<B>(
        &self,
        f: &Arc<FunctionState>,
        req: Request<B>,
        (forward_path, side): (&str, Side),
        client: SocketAddr,
        call_id: &HeaderValue,
        via: Option<&Via>,
        started: Instant,
    ) -> Result<Response<GatewayBody>, Reject>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let limit = self.config.max_body;
        let too_large = || {
            Reject::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than the gateway's limit of {limit} bytes (gateway.maxBodySize in cubeflash.yaml)"),
            )
        };
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let (mut parts, incoming) = req.into_parts();
        if declared.is_some_and(|n| n > limit as u64) {
            body::drain(incoming, DRAIN_REFUSED, Duration::from_secs(2)).await;
            return Err(too_large());
        }
        let mut body = RequestBody::new(incoming, limit as u64, self.config.limits.body_timeout);
        if let Err(fault) = body.prefetch(PREFETCH).await {
            return Err(self.body_fault(fault).unwrap_or_else(too_large));
        }

        // Origin form: the connection already goes to the replica; Host passes through. A
        // trigger path is forwarded as it came; /function/NAME/rest as /rest.
        if parts.uri.path() != forward_path || parts.uri.scheme().is_some() {
            let query = parts.uri.query();
            let mut target =
                String::with_capacity(forward_path.len() + query.map_or(0, |q| q.len() + 1));
            target.push_str(forward_path);
            if let Some(q) = query {
                target.push('?');
                target.push_str(q);
            }
            parts.uri = Uri::try_from(target).map_err(|e| {
                Reject::new(
                    StatusCode::BAD_REQUEST,
                    format!("cannot forward path {forward_path:?}: {e}"),
                )
            })?;
        }
        proxy::strip_hop_by_hop(&mut parts.headers);
        // Asked by the dashboard's console: where this call's time went.
        let timing = parts.headers.contains_key(proxy::TIMING);
        proxy::strip_internal(&mut parts.headers);
        proxy::set_forwarded(&mut parts.headers, client);
        parts.headers.insert(CALL_ID, call_id.clone());
        if let Some(via) = via {
            parts
                .headers
                .insert(proxy::TRIGGER, HeaderValue::from_static(via.trigger));
            if let Some(n) = via.attempt {
                parts.headers.insert(proxy::ATTEMPT, HeaderValue::from(n));
            }
            for (k, v) in &via.headers {
                parts.headers.insert(k.clone(), v.clone());
            }
        }
        parts.version = hyper::Version::HTTP_11;
        self.forward(f, Request::from_parts(parts, body), started, (side, timing))
            .await
    }

    /// Sends a request whose head is ready to a replica, retrying where that is safe.
    async fn forward(
        &self,
        f: &Arc<FunctionState>,
        mut request: Request<RequestBody>,
        started: Instant,
        (side, timing): (Side, bool),
    ) -> Result<Response<GatewayBody>, Reject> {
        let idempotent = matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        ) || request.headers().contains_key("idempotency-key");
        let timeout = f.entry.timeout.value;
        let deadline = tokio::time::Instant::now() + f.entry.scale.cold_start_timeout.value;
        let mut retried = false;
        // The version being served: a request waiting for a replica when a new version
        // takes over moves to it.
        let mut current = f.clone();
        let f = &mut current;
        loop {
            let lease = match side {
                Side::Serverless => self.acquire(f, deadline).await?,
                Side::Baseline => self.acquire_baseline(f, deadline).await?,
            };
            let inflight = (side == Side::Serverless).then(|| f.enter());
            let pool = side.pool(f);
            let endpoint = lease.slot.endpoint.clone();
            let checkout = match self.upstreams.checkout(endpoint.addr).await {
                Ok(c) => c,
                Err(e) => {
                    let elsewhere = pool.unreachable(&endpoint);
                    drop((lease, inflight));
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Reject::new(
                            StatusCode::BAD_GATEWAY,
                            format!("{:#}", anyhow::Error::from(e)),
                        ));
                    }
                    if !elsewhere {
                        tokio::time::sleep(REFUSED_PAUSE).await;
                    }
                    continue;
                }
            };
            // Kept only where a second try is allowed: an idempotent request whose body is
            // all in memory.
            // Kept only where a second try is allowed: an idempotent request whose body is
            // all in memory. With one replica the retry waits for its replacement (the broken
            // one is out of rotation), within the cold-start deadline.
            let again = (idempotent && !retried).then(|| replay(&request)).flatten();
            let fault = request.body().fault.clone();
            let sent = Instant::now();
            let result = tokio::time::timeout(timeout, checkout.send(request)).await;
            let (mut head, incoming, conn) = match result {
                Ok(Ok((resp, conn))) => {
                    endpoint.timeouts.store(0, Ordering::Relaxed);
                    let (head, body) = resp.into_parts();
                    (head, body, conn)
                }
                Ok(Err(failed)) => {
                    // The body's own fault (too large, stalled) shows here as a failed send.
                    if let Some(reject) = self.body_fault(fault.get()) {
                        return Err(reject);
                    }
                    if let Some(unsent) = failed.unsent {
                        // Never reached the replica: any request may go to another one.
                        pool.unreachable(&endpoint);
                        drop((lease, inflight));
                        request = *unsent;
                        continue;
                    }
                    if let Some(copy) = again {
                        tracing::info!(function = %f.name(), replica = endpoint.id, "replica broke off before answering; retrying an idempotent request on another");
                        pool.unreachable(&endpoint);
                        drop((lease, inflight));
                        retried = true;
                        request = copy;
                        continue;
                    }
                    let log = pool.log_tail(5);
                    return Err(Reject {
                        status: StatusCode::BAD_GATEWAY,
                        message: format!(
                            "the replica did not answer: {:#}",
                            anyhow::Error::from(failed.error)
                        ),
                        log,
                    });
                }
                Err(_) => {
                    if endpoint.timeouts.fetch_add(1, Ordering::Relaxed) + 1 >= TIMEOUTS_IN_A_ROW {
                        pool.unreachable(&endpoint);
                    }
                    return Err(Reject::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "the function did not answer within its timeout of {}",
                            f.entry.timeout.text
                        ),
                    ));
                }
            };
            let now = Instant::now();
            if side == Side::Serverless {
                self.account(f, &lease, started, sent, now);
            }
            proxy::strip_hop_by_hop(&mut head.headers);
            // Only the gateway's own answers say they are.
            head.headers.remove(proxy::ORIGIN);
            if let Some(waited) = lease.waited.filter(|_| lease.cold) {
                if let Ok(v) = HeaderValue::from_str(&waited.as_millis().to_string()) {
                    head.headers.insert(COLD_START, v);
                }
            }
            if timing {
                head.headers.insert(
                    proxy::SERVER_TIMING,
                    server_timing(&lease, started, sent, now),
                );
            }
            let held = Held {
                _inflight: inflight,
                _slot: lease.slot,
            };
            return Ok(Response::from_parts(
                head,
                UpstreamBody::new(incoming, conn, held).boxed(),
            ));
        }
    }

    /// The answer for a body that went wrong on the client's side.
    fn body_fault(&self, fault: Fault) -> Option<Reject> {
        match fault {
            Fault::None => None,
            Fault::TooLarge => Some(Reject::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than the gateway's limit of {} bytes (gateway.maxBodySize in cubeflash.yaml)", self.config.max_body),
            )),
            Fault::TimedOut => Some(Reject::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body stopped arriving for {}s (gateway.bodyTimeout in cubeflash.yaml)",
                    self.config.limits.body_timeout.as_secs()
                ),
            )),
            Fault::Broken => Some(Reject::new(
                StatusCode::BAD_REQUEST,
                "the request body broke off or was badly framed",
            )),
        }
    }

    fn account(
        &self,
        f: &FunctionState,
        lease: &Lease,
        started: Instant,
        sent: Instant,
        now: Instant,
    ) {
        if !lease.cold {
            f.hot.warm.observe((now - started).as_secs_f64());
        }
        if lease.waited.is_none() {
            f.hot.overhead.observe((sent - started).as_secs_f64());
        }
        if lease.cold {
            let name = f.name().to_string();
            self.metrics
                .duration
                .get_or_create(&StartLabels {
                    function: name.clone(),
                    start: "cold",
                })
                .observe((now - started).as_secs_f64());
            let began = f.cold_start_began.lock().expect("cold start lock").take();
            if let Some(began) = began {
                let took = now - began;
                tracing::info!(function = %name, ms = took.as_millis() as u64, "cold start served");
                self.metrics
                    .cold_start_duration
                    .get_or_create(&label(&name))
                    .observe(took.as_secs_f64());
                self.metrics
                    .last_cold_start_ms
                    .get_or_create(&label(&name))
                    .set(took.as_millis().min(i64::MAX as u128) as i64);
                let endpoint = &lease.slot.endpoint;
                let first_byte = now.saturating_duration_since(endpoint.ready_at);
                for (phase, d) in [
                    ("spawn", endpoint.start.spawn),
                    ("readiness", endpoint.start.readiness),
                    ("first_byte", first_byte),
                ] {
                    self.metrics
                        .cold_start_phase
                        .get_or_create(&PhaseLabels {
                            function: name.clone(),
                            phase,
                        })
                        .observe(d.as_secs_f64());
                }
            }
        }
    }

    /// A replica slot for `f`: at once if a replica is ready and below its cap, else after
    /// waiting in the function's bounded queue (until `deadline`) while one starts. When a
    /// reload retires `f` meanwhile, waits on its successor instead (and `f` becomes it).
    async fn acquire(
        &self,
        f: &mut Arc<FunctionState>,
        deadline: tokio::time::Instant,
    ) -> Result<Lease, Reject> {
        loop {
            match self.acquire_from(f, deadline).await {
                Ok(lease) => return Ok(lease),
                Err(Waited::Refused(r)) => return Err(r),
                Err(Waited::Retired) => {
                    let successor = self.routes().by_name.get(f.name()).cloned();
                    match successor {
                        Some(next) if !Arc::ptr_eq(&next, f) => *f = next,
                        _ => {
                            return Err(Reject::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "the function was removed while the request waited for a replica",
                            ))
                        }
                    }
                }
            }
        }
    }

    /// A slot on `f`'s baseline: it is always on, so there is no queue and no scaling; a
    /// request waits (until `deadline`) only while its replica (re)starts.
    async fn acquire_baseline(
        &self,
        f: &FunctionState,
        deadline: tokio::time::Instant,
    ) -> Result<Lease, Reject> {
        let Some(pool) = &f.baseline else {
            return Err(Reject::new(
                StatusCode::NOT_FOUND,
                format!(
                    "function {:?} has no baseline: add `baseline: {{replicas: 1}}` to its function.yaml",
                    f.name()
                ),
            ));
        };
        loop {
            let notified = pool.waiters().notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(slot) = pool.acquire(0) {
                return Ok(Lease {
                    slot,
                    waited: None,
                    cold: false,
                });
            }
            if let Some(why) = pool.failure() {
                return Err(Reject::new(StatusCode::BAD_GATEWAY, why));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Reject::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "the baseline of {} had no ready replica within scale.coldStartTimeout ({})",
                        f.name(),
                        f.entry.scale.cold_start_timeout.text
                    ),
                ));
            }
        }
    }

    async fn acquire_from(
        &self,
        f: &FunctionState,
        deadline: tokio::time::Instant,
    ) -> Result<Lease, Waited> {
        let pool = &f.serverless;
        let limit = f.entry.scale.limit;
        if let Some(slot) = pool.acquire(limit) {
            return Ok(Lease {
                slot,
                waited: None,
                cold: false,
            });
        }
        let failed = |why: String| Reject {
            status: StatusCode::BAD_GATEWAY,
            message: why,
            log: pool.log_tail(100).map(|lines| distinct_tail(lines, 20)),
        };
        if let Some(why) = pool.failure() {
            return Err(Waited::Refused(failed(why)));
        }
        let Some(_queued) = f.wait_in_queue(self.config.queue_size) else {
            return Err(Waited::Refused(Reject::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{} requests are already waiting for a replica of this function; retry shortly",
                    self.config.queue_size
                ),
            )));
        };
        let cold = pool.ready_count() == 0;
        let waited_from = Instant::now();
        f.scale_from_zero();
        loop {
            let notified = pool.waiters().notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(slot) = pool.acquire(limit) {
                return Ok(Lease {
                    slot,
                    waited: Some(waited_from.elapsed()),
                    cold,
                });
            }
            if let Some(why) = pool.failure() {
                return Err(Waited::Refused(failed(why)));
            }
            if f.is_retired() {
                return Err(Waited::Retired);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let cause = pool
                    .trouble()
                    .or_else(|| self.backend().and_then(|b| b.trouble()))
                    .map(|t| format!(": {t}"))
                    .unwrap_or_else(|| format!("; see `cubeflash logs {}`", f.name()));
                return Err(Waited::Refused(Reject::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "no replica was ready within scale.coldStartTimeout ({}){cause}",
                        f.entry.scale.cold_start_timeout.text
                    ),
                )));
            }
        }
    }
}

/// The last `n` of `lines` with repeats dropped (each kept where it first appeared): a
/// crash loop writes the same traceback five times, a person needs to read it once.
fn distinct_tail(lines: Vec<String>, n: usize) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let distinct: Vec<String> = lines
        .into_iter()
        .filter(|l| seen.insert(l.clone()))
        .collect();
    let skip = distinct.len().saturating_sub(n);
    distinct.into_iter().skip(skip).collect()
}

/// `Server-Timing` of one call: the wait for a replica (a cold start's, or the queue's), the
/// replica's own time to its response head, and the gateway's (the rest), in ms.
fn server_timing(lease: &Lease, started: Instant, sent: Instant, now: Instant) -> HeaderValue {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let waited = lease.waited.unwrap_or_default();
    let function = now.saturating_duration_since(sent);
    let gateway = now
        .saturating_duration_since(started)
        .saturating_sub(waited + function);
    let wait = if lease.cold { "cold" } else { "queue" };
    let text = format!(
        "{wait};dur={:.3}, function;dur={:.3}, gateway;dur={:.3}",
        ms(waited),
        ms(function),
        ms(gateway)
    );
    HeaderValue::from_str(&text).expect("digits and names are a valid header value")
}

/// A copy of `req` to send again, when its body is all in memory.
fn replay(req: &Request<RequestBody>) -> Option<Request<RequestBody>> {
    let body = req.body().replay()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}
