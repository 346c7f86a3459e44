//! One invocation: read the body within the limit, find a replica (holding the request in
//! the function's bounded queue while one starts), forward it, and account for it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode, Uri};

use crate::runtime::replicas::Endpoint;

use super::function::FunctionState;
use super::metrics::{label, CodeLabels, PhaseLabels, StartLabels};
use super::proxy::{self, GatewayBody, CALL_ID, COLD_START};
use super::upstream::UpstreamBody;
use super::{json_error, Gateway};

/// Why a request got no replica.
struct Reject {
    status: StatusCode,
    message: String,
}

/// A replica to send to, and how long the request waited for it.
struct Lease {
    endpoint: Arc<Endpoint>,
    waited: Option<Duration>,
    cold: bool,
}

/// Decrements a counter when dropped, so every exit path gives back what it took.
struct CountGuard<'a>(&'a std::sync::atomic::AtomicU32);

impl Drop for CountGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gateway {
    pub(super) async fn dispatch(
        &self,
        f: Arc<FunctionState>,
        req: Request<Incoming>,
        forward_path: &str,
        client: SocketAddr,
    ) -> Response<GatewayBody> {
        let started = Instant::now();
        let call_id = self.next_call_id();
        f.touch();
        let response = match self
            .invoke(&f, req, forward_path, client, &call_id, started)
            .await
        {
            Ok(resp) => resp,
            Err(r) => json_error(r.status, &r.message, Some(f.name())),
        };
        let mut response = response;
        if let Ok(v) = HeaderValue::from_str(&call_id) {
            response.headers_mut().insert(CALL_ID, v);
        }
        let code = response.status().as_u16();
        self.metrics
            .requests
            .get_or_create(&CodeLabels {
                function: f.name().to_string(),
                code,
            })
            .inc();
        response
    }

    async fn invoke(
        &self,
        f: &Arc<FunctionState>,
        req: Request<Incoming>,
        forward_path: &str,
        client: SocketAddr,
        call_id: &str,
        started: Instant,
    ) -> Result<Response<GatewayBody>, Reject> {
        let limit = self.config.max_body;
        let too_large = || {
            Reject {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the request body is larger than the gateway's limit of {limit} bytes (gateway.maxBodySize in cubeflash.yaml)"),
        }
        };
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let (mut parts, body) = req.into_parts();
        let body = if body.is_end_stream() {
            bytes::Bytes::new()
        } else {
            match Limited::new(body, limit).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e)
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some() =>
                {
                    return Err(too_large())
                }
                Err(e) => {
                    return Err(Reject {
                        status: StatusCode::BAD_REQUEST,
                        message: format!("failed to read the request body: {e}"),
                    })
                }
            }
        };

        let lease = self.acquire(f).await?;
        f.inflight.fetch_add(1, Ordering::Relaxed);
        let endpoint = lease.endpoint.clone();
        let set = f.serverless.clone();
        let fs = f.clone();
        // Given back when the response body is done (or the request fails before that).
        let release = move || {
            fs.inflight.fetch_sub(1, Ordering::Relaxed);
            set.release(&endpoint, fs.queued.load(Ordering::SeqCst) > 0);
        };

        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        // Origin form: the connection already goes to the replica; Host passes through.
        let uri: Uri = match format!("{forward_path}{query}").parse() {
            Ok(u) => u,
            Err(e) => {
                release();
                return Err(Reject {
                    status: StatusCode::BAD_REQUEST,
                    message: format!("cannot forward path {forward_path:?}: {e}"),
                });
            }
        };
        proxy::strip_hop_by_hop(&mut parts.headers);
        proxy::add_forwarded(&mut parts.headers, client);
        if let Ok(v) = HeaderValue::from_str(call_id) {
            parts.headers.insert(CALL_ID, v);
        }
        parts.uri = uri;
        parts.version = hyper::Version::HTTP_11;
        let upstream = Request::from_parts(parts, Full::new(body));

        let sent = Instant::now();
        let timeout = f.function.spec.timeout.value;
        let result =
            tokio::time::timeout(timeout, self.upstreams.send(lease.endpoint.addr, upstream)).await;
        let (mut head, incoming, conn) = match result {
            Ok(Ok((resp, conn))) => {
                let (head, body) = resp.into_parts();
                (head, body, conn)
            }
            Ok(Err(e)) => {
                release();
                let tail = f.logs.tail(5).join("\n");
                return Err(Reject {
                    status: StatusCode::BAD_GATEWAY,
                    message: format!(
                        "the replica did not answer: {:#}; last output:\n{tail}",
                        anyhow::Error::from(e)
                    ),
                });
            }
            Err(_) => {
                release();
                return Err(Reject {
                    status: StatusCode::GATEWAY_TIMEOUT,
                    message: format!(
                        "the function did not answer within its timeout of {}",
                        f.function.spec.timeout.text
                    ),
                });
            }
        };
        let now = Instant::now();
        self.account(f, &lease, started, sent, now);
        proxy::strip_hop_by_hop(&mut head.headers);
        if let Some(waited) = lease.waited.filter(|_| lease.cold) {
            if let Ok(v) = HeaderValue::from_str(&waited.as_millis().to_string()) {
                head.headers.insert(COLD_START, v);
            }
        }
        Ok(Response::from_parts(
            head,
            UpstreamBody::new(incoming, conn, release).boxed(),
        ))
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
                self.metrics
                    .cold_start_duration
                    .get_or_create(&label(&name))
                    .observe((now - began).as_secs_f64());
                let start = lease.endpoint.start;
                let first_byte = now.saturating_duration_since(lease.endpoint.ready_at);
                for (phase, d) in [
                    ("spawn", start.spawn),
                    ("readiness", start.readiness),
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

    /// A replica for `f`: at once if one is ready and below its cap, else after waiting in
    /// the function's bounded queue while the autoscaler starts one.
    async fn acquire(&self, f: &FunctionState) -> Result<Lease, Reject> {
        let set = &f.serverless;
        let limit = f.function.spec.scale.limit;
        if let Some(endpoint) = set.acquire(limit) {
            return Ok(Lease {
                endpoint,
                waited: None,
                cold: false,
            });
        }
        let failed = |why: String| Reject {
            status: StatusCode::BAD_GATEWAY,
            message: why,
        };
        if let Some(why) = set.failure() {
            return Err(failed(why));
        }
        if f.queued.fetch_add(1, Ordering::SeqCst) >= self.config.queue_size {
            f.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(Reject {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: format!(
                    "{} requests are already waiting for a replica of this function; retry shortly",
                    self.config.queue_size
                ),
            });
        }
        let _queued = CountGuard(&f.queued);
        let cold = set.ready_count() == 0;
        let waited_from = Instant::now();
        let deadline = tokio::time::Instant::now() + f.function.spec.scale.cold_start_timeout.value;
        f.scale_from_zero();
        loop {
            let notified = set.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(endpoint) = set.acquire(limit) {
                return Ok(Lease {
                    endpoint,
                    waited: Some(waited_from.elapsed()),
                    cold,
                });
            }
            if let Some(why) = set.failure() {
                return Err(failed(why));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Reject {
                    status: StatusCode::GATEWAY_TIMEOUT,
                    message: format!(
                        "no replica was ready within scale.coldStartTimeout ({}); see `cubeflash logs {}`",
                        f.function.spec.scale.cold_start_timeout.text,
                        f.name()
                    ),
                });
            }
        }
    }
}
