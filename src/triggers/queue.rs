//! Queue triggers: a NATS JetStream durable pull consumer per trigger, run by the gateway
//! itself (no connector process) and written against the engine. The stream (a work queue)
//! and the consumer are created or reused idempotently from function.yaml. Each message
//! invokes the function through the engine (a function at zero scales up; the consumer's
//! backlog counts toward its scale); the message is acked only after a 2xx, `nak`ed with
//! the function's retry backoff otherwise, `term`ed after a 4xx that no retry changes, and
//! kept `in progress` while the call runs. A message that used up its deliveries (or was
//! refused) goes to the dead-letter stream `<stream>_DEAD` with its metadata — once: the
//! dead letter carries `Nats-Msg-Id` — and is then removed from the source stream, so nothing
//! sits stuck in the work queue. A NATS server that goes away is reconnected to forever.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderValue;

use crate::gateway::async_calls::AbortOnDrop;
use crate::gateway::dispatch::Via;
use crate::gateway::Gateway;
use crate::spec::function::QueueTrigger;

/// How long a delivery may go without an `in progress` before JetStream redelivers it.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// How often a consumer's backlog is read for the autoscaler.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// The subject dead letters of `stream` are published to (its own stream captures them).
pub fn dead_subject(stream: &str) -> String {
    format!("cubeflash.dead.{stream}")
}

/// The dead-letter stream of `stream`.
pub fn dead_stream(stream: &str) -> String {
    format!("{stream}_DEAD")
}

/// One running consumer, stopped when dropped.
struct Running {
    trigger: QueueTrigger,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps one consumer running per queue trigger of the functions the gateway serves, as
/// reloads add, change and remove them.
pub async fn run(gateway: Arc<Gateway>, url: String) {
    let client = match async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .name("cubeflash-gateway")
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connected (queue triggers)"),
                other => tracing::warn!(event = %other, "NATS (queue triggers)"),
            }
        })
        .connect(url.as_str())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(url = %url, error = %e, "queue triggers are off: cannot use the NATS URL");
            return;
        }
    };
    let js = jetstream::new(client);
    let mut running: HashMap<(String, usize), Running> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let routes = gateway.routes();
        let mut wanted: HashMap<(String, usize), QueueTrigger> = HashMap::new();
        for f in routes.functions() {
            let queues = f.entry.triggers.iter().filter_map(|t| match t {
                crate::spec::Trigger::Queue(q) => Some(q.clone()),
                _ => None,
            });
            for (i, q) in queues.enumerate() {
                wanted.insert((f.name().to_string(), i), q);
            }
        }
        running.retain(|k, r| wanted.get(k).is_some_and(|q| *q == r.trigger));
        for (key, trigger) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let (gateway, js, function, t) =
                (gateway.clone(), js.clone(), key.0.clone(), trigger.clone());
            let task = tokio::spawn(async move { consume(gateway, js, function, t).await });
            running.insert(key, Running { trigger, task });
        }
    }
}

/// Sets up the stream and consumer, then handles messages; on any failure, waits (1 s
/// doubling to 30 s) and starts over.
async fn consume(gateway: Arc<Gateway>, js: jetstream::Context, function: String, t: QueueTrigger) {
    let mut wait = Duration::from_secs(1);
    report(&gateway, &function, &t, "starting", 0, None);
    loop {
        match serve(&gateway, &js, &function, &t).await {
            Ok(()) => wait = Duration::from_secs(1),
            Err(e) => {
                tracing::warn!(function = %function, subject = %t.subject, error = %e, retry_in = ?wait, "queue trigger disconnected");
                report(
                    &gateway,
                    &function,
                    &t,
                    "disconnected",
                    0,
                    Some(e.to_string()),
                );
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Puts a consumer's state where `/system/functions` and `ls` show it.
fn report(
    gateway: &Gateway,
    function: &str,
    t: &QueueTrigger,
    state: &str,
    backlog: u64,
    error: Option<String>,
) {
    if let Some(f) = gateway.routes().by_name.get(function) {
        f.set_queue_status(crate::gateway::api::QueueStatus {
            subject: t.subject.clone(),
            stream: t.stream.clone(),
            state: state.into(),
            backlog,
            error,
        });
    }
}

async fn serve(
    gateway: &Arc<Gateway>,
    js: &jetstream::Context,
    function: &str,
    t: &QueueTrigger,
) -> Result<(), BoxError> {
    let retries = gateway
        .routes()
        .by_name
        .get(function)
        .map(|f| f.entry.retry.retries)
        .unwrap_or(5);
    let source = js
        .get_or_create_stream(stream::Config {
            name: t.stream.clone(),
            subjects: vec![t.subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await?;
    js.get_or_create_stream(stream::Config {
        name: dead_stream(&t.stream),
        subjects: vec![dead_subject(&t.stream)],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    let mut pull: consumer::PullConsumer = source
        .get_or_create_consumer(
            &t.durable,
            consumer::pull::Config {
                durable_name: Some(t.durable.clone()),
                filter_subject: t.subject.clone(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                // One more than we use: the last delivery is dead-lettered by us, not dropped.
                max_deliver: i64::from(retries) + 2,
                max_ack_pending: i64::from(t.concurrency),
                ..Default::default()
            },
        )
        .await?;
    tracing::info!(function, subject = %t.subject, stream = %t.stream, durable = %t.durable, "queue trigger consuming");
    // The backlog (pending plus delivered and not acked) drives the function's scale.
    let backlog = {
        let (gateway, function, t) = (gateway.clone(), function.to_string(), t.clone());
        let mut info_of = pull.clone();
        AbortOnDrop(tokio::spawn(async move {
            loop {
                match tokio::time::timeout(BACKLOG_EVERY * 3, info_of.info()).await {
                    Ok(Ok(info)) => {
                        let n = info.num_pending as usize + info.num_ack_pending;
                        report(&gateway, &function, &t, "consuming", n as u64, None);
                    }
                    // The consumer reconnects by itself; meanwhile it says so (and its
                    // backlog is not known: it adds nothing to the function's scale).
                    Ok(Err(e)) => report(
                        &gateway,
                        &function,
                        &t,
                        "disconnected",
                        0,
                        Some(e.to_string()),
                    ),
                    Err(_) => report(
                        &gateway,
                        &function,
                        &t,
                        "disconnected",
                        0,
                        Some("the NATS server does not answer".into()),
                    ),
                }
                tokio::time::sleep(BACKLOG_EVERY).await;
            }
        }))
    };
    let _ = pull.info().await?;
    let mut messages = pull.messages().await?;
    let slots = Arc::new(tokio::sync::Semaphore::new(t.concurrency as usize));
    while let Some(message) = messages.next().await {
        let message = message?;
        let job = Delivery {
            gateway: gateway.clone(),
            js: js.clone(),
            source: source.clone(),
            function: function.to_string(),
            trigger: t.clone(),
        };
        if t.ordered {
            job.handle(message).await;
        } else {
            let slot = slots.clone().acquire_owned().await?;
            tokio::spawn(async move {
                job.handle(message).await;
                drop(slot);
            });
        }
    }
    drop(backlog);
    Err("the consumer's message stream ended".into())
}

/// What one message needs to be handled.
struct Delivery {
    gateway: Arc<Gateway>,
    js: jetstream::Context,
    source: stream::Stream,
    function: String,
    trigger: QueueTrigger,
}

impl Delivery {
    fn labels(&self) -> crate::gateway::metrics::QueueLabels {
        crate::gateway::metrics::QueueLabels {
            function: self.function.clone(),
            stream: self.trigger.stream.clone(),
        }
    }

    async fn handle(self, message: jetstream::Message) {
        let (delivered, sequence) = match message.info() {
            Ok(i) => (i.delivered.max(1) as u32, i.stream_sequence),
            Err(_) => (1, 0),
        };
        let Some(f) = self.gateway.routes().by_name.get(&self.function).cloned() else {
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        };
        let limit = self.gateway.config.max_body;
        if message.payload.len() > limit {
            // No delivery changes its size: dead at once, and why.
            let why = format!(
                "the message is {} bytes, over gateway.maxBodySize ({limit} bytes): the function never sees it",
                message.payload.len()
            );
            self.dead(&message, sequence, delivered, &why).await;
            return;
        }
        let mut req = hyper::Request::post("/");
        if let Some(headers) = &message.headers {
            // NATS headers that are valid HTTP headers pass on; others are dropped.
            for (name, values) in headers.iter() {
                let name: &str = name.as_ref();
                let Ok(name) = hyper::header::HeaderName::from_bytes(name.as_bytes()) else {
                    continue;
                };
                for v in values {
                    if let Ok(v) = hyper::header::HeaderValue::from_str(v.as_str()) {
                        req = req.header(name.clone(), v);
                    }
                }
            }
        }
        let Ok(req) = req.body(Full::new(message.payload.clone())) else {
            self.dead(
                &message,
                sequence,
                delivered,
                "the message's headers are not valid HTTP headers",
            )
            .await;
            return;
        };
        // In progress while the call runs, so a long call is not redelivered meanwhile.
        let progress = {
            let ack = message.clone();
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ACK_WAIT / 3).await;
                    let _ = ack.ack_with(AckKind::Progress).await;
                }
            }))
        };
        let me: SocketAddr = ([127, 0, 0, 1], 0).into();
        let meta = |name: &'static str, value: String| {
            HeaderValue::from_str(&value)
                .ok()
                .map(|v| (hyper::header::HeaderName::from_static(name), v))
        };
        let via = Via {
            trigger: "queue",
            call_id: None,
            attempt: Some(delivered),
            headers: [
                meta("x-cubeflash-subject", message.subject.to_string()),
                meta("x-cubeflash-stream-sequence", sequence.to_string()),
                meta("x-cubeflash-delivery-count", delivered.to_string()),
            ]
            .into_iter()
            .flatten()
            .collect(),
        };
        let resp = self
            .gateway
            .dispatch_as(f.clone(), req, "/", me, Some(via))
            .await;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(crate::gateway::async_calls::retry_after);
        let _ = resp.into_body().collect().await;
        drop(progress);
        let retries = f.entry.retry.retries;
        let labels = self.labels();
        if status.is_success() {
            self.gateway
                .metrics
                .queue_delivered
                .get_or_create(&labels)
                .inc();
            if let Err(e) = message.double_ack().await {
                tracing::warn!(function = %self.function, error = %e, "could not ack a queue message; it will be delivered again");
            }
        } else if status.is_client_error()
            && status != hyper::StatusCode::TOO_MANY_REQUESTS
            && status != hyper::StatusCode::REQUEST_TIMEOUT
        {
            self.dead(
                &message,
                sequence,
                delivered,
                &format!("the function answered {status}; a 4xx is not retried"),
            )
            .await;
        } else if delivered > retries {
            self.dead(&message, sequence, delivered, &format!("{delivered} deliveries failed (async.retries is {retries}); the last answered {status}")).await;
        } else {
            let policy = &f.entry.retry;
            let wait = retry_after.unwrap_or_else(|| {
                crate::gateway::async_calls::backoff(
                    delivered,
                    policy.min_backoff.value,
                    policy.max_backoff.value,
                )
            });
            tracing::info!(function = %self.function, delivery = delivered, status = %status, retry_in = ?wait, "queue message will be delivered again");
            self.gateway
                .metrics
                .queue_retried
                .get_or_create(&labels)
                .inc();
            let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
        }
    }

    /// To the dead-letter stream with its metadata (once), then out of the source stream.
    async fn dead(&self, message: &jetstream::Message, sequence: u64, delivered: u32, why: &str) {
        let mut headers = message.headers.clone().unwrap_or_default();
        headers.insert(
            "Nats-Msg-Id",
            format!("{}-{sequence}", self.trigger.stream).as_str(),
        );
        headers.insert("Cubeflash-Source-Stream", self.trigger.stream.as_str());
        headers.insert("Cubeflash-Source-Sequence", sequence.to_string().as_str());
        headers.insert("Cubeflash-Subject", message.subject.as_str());
        headers.insert("Cubeflash-Deliveries", delivered.to_string().as_str());
        headers.insert("Cubeflash-Function", self.function.as_str());
        headers.insert("Cubeflash-Reason", why);
        let published = self
            .js
            .publish_with_headers(
                dead_subject(&self.trigger.stream),
                headers,
                Bytes::clone(&message.payload),
            )
            .await;
        let stored = match published {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = stored {
            // Not dead-lettered: leave it to be delivered again rather than lose it.
            tracing::error!(function = %self.function, error = %e, "could not dead-letter a queue message");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
            return;
        }
        tracing::warn!(function = %self.function, sequence, reason = why, "queue message dead-lettered");
        self.gateway
            .metrics
            .queue_dead
            .get_or_create(&self.labels())
            .inc();
        let _ = message.ack_with(AckKind::Term).await;
        let _ = self.source.delete_message(sequence).await;
    }
}
