//! The listener side of the engine, the same on every target: one single-threaded runtime
//! per core accepting on a shared socket, the limits a hostile or slow client meets
//! (connection cap, head, body and idle timeouts, accept backoff), graceful drain on
//! shutdown, and the autoscaler loop. What a request does is in `gateway.rs` and `dispatch`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};

use super::metrics::KindLabels;
use super::{json_error, Gateway, AUTOSCALE_EVERY};

/// Connections past the cap that still get a short answer (so /healthz works in a flood);
/// past these, new connections are closed at once.
const OVERFLOW: usize = 64;
/// The head of a request on an overflow connection must arrive within this.
const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Connections a serving thread has open; its drain waits for them.
#[derive(Default)]
struct Open {
    count: AtomicUsize,
    closed: Notify,
}

struct OpenGuard(Arc<Open>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

/// Whether a connection did anything lately, and whether a request is being handled.
#[derive(Default)]
struct Activity {
    touched: AtomicBool,
    busy: AtomicU32,
}

struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.touched.store(true, Ordering::Relaxed);
    }
}

/// A client socket that notes when bytes move, for the idle timeout.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touched.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touched.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touched.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Why a connection was let in: within the cap, or on the short overflow lane.
enum Admission {
    Full(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit),
    Overflow(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit),
}

/// Accept errors that say only that one connection went away before it was accepted.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    )
}

impl Gateway {
    /// Serves on `listener` until `shutdown` resolves, then drains: /healthz turns
    /// unavailable, no new connection is accepted, requests in flight get `grace` to finish,
    /// and every replica stops.
    ///
    /// Requests are served by one single-threaded runtime per core, each accepting on the
    /// same socket (the nginx model): a connection and the replica connections it uses stay
    /// on one thread, with no work stealing and no cross-thread wake-ups on the hot path.
    /// `CUBEFLASH_WORKERS` sets their number.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        *self.local_addr.write().expect("addr lock") = listener.local_addr().ok();
        let (stop, stopped) = watch::channel(false);
        let mut loops = match self.backend() {
            Some(b) => b.start(self.clone(), stopped.clone()),
            None => Vec::new(),
        };
        loops.push(tokio::spawn(autoscale_loop(self.clone())));
        loops.push(tokio::spawn(self.clone().dashboard_loop()));
        let workers = std::env::var("CUBEFLASH_WORKERS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let std_listener = listener.into_std().expect("a bound listener converts");
        let conns = Arc::new(Semaphore::new(self.config.limits.max_connections.max(1)));
        let overflow = Arc::new(Semaphore::new(OVERFLOW));
        let mut threads = Vec::new();
        for i in 0..workers {
            let listener = std_listener
                .try_clone()
                .expect("the listening socket can be shared");
            let gateway = self.clone();
            let stopped = stopped.clone();
            let (conns, overflow) = (conns.clone(), overflow.clone());
            let thread = std::thread::Builder::new()
                .name(format!("cubeflash-http-{i}"))
                .spawn(move || gateway.serve_worker(listener, stopped, conns, overflow))
                .expect("worker threads start");
            threads.push(thread);
        }
        drop(std_listener);
        tracing::info!(url = %self.url(), workers, "gateway listening");
        shutdown.await;
        self.draining.store(true, Ordering::Relaxed);
        self.end_streams();
        tracing::info!(grace = ?self.config.grace, "shutting down: draining requests in flight");
        let _ = stop.send(true);
        for t in threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        for l in &loops {
            l.abort();
        }
        let functions = self.routes().functions().to_vec();
        futures::future::join_all(functions.iter().map(|f| f.shutdown())).await;
        if let Some(b) = self.backend() {
            b.shutdown();
        }
        tracing::info!("gateway stopped");
    }

    /// One serving thread: accepts and serves connections until told to stop, then lets
    /// in-flight requests finish (bounded by `grace`).
    fn serve_worker(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        mut stopped: watch::Receiver<bool>,
        conns: Arc<Semaphore>,
        overflow: Arc<Semaphore>,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a worker runtime starts");
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener).expect("a non-blocking listener");
            let open = Arc::new(Open::default());
            let mut backoff = Duration::from_millis(5);
            let mut last_warning: Option<Instant> = None;
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stopped.changed() => break,
                };
                let (stream, client) = match accepted {
                    Ok(a) => {
                        backoff = Duration::from_millis(5);
                        a
                    }
                    Err(e) if is_per_connection(&e) => continue,
                    Err(e) => {
                        // Out of file descriptors or memory: wait for some to free up rather
                        // than spin on an accept that fails at once.
                        if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                            tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                            last_warning = Some(Instant::now());
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stopped.changed() => break,
                        }
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                };
                let admission = match conns.clone().try_acquire_owned() {
                    Ok(p) => Admission::Full(p),
                    Err(_) => match overflow.clone().try_acquire_owned() {
                        Ok(p) => Admission::Overflow(p),
                        Err(_) => continue, // dropped: the connection is refused
                    },
                };
                let _ = stream.set_nodelay(true);
                open.count.fetch_add(1, Ordering::AcqRel);
                let guard = OpenGuard(open.clone());
                let gateway = self.clone();
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    gateway.connection(stream, client, admission, stopped).await;
                    drop(guard);
                });
            }
            drop(listener);
            let deadline = tokio::time::Instant::now() + self.config.grace;
            loop {
                let closed = open.closed.notified();
                if open.count.load(Ordering::Acquire) == 0 {
                    break;
                }
                if tokio::time::timeout_at(deadline, closed).await.is_err() {
                    break;
                }
            }
        });
    }

    /// Serves one client connection until it closes, idles out, or the gateway stops.
    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        client: std::net::SocketAddr,
        admission: Admission,
        mut stopped: watch::Receiver<bool>,
    ) {
        let limits = self.config.limits;
        let overflow = matches!(admission, Admission::Overflow(_));
        let activity = Arc::new(Activity::default());
        let io = TokioIo::new(Watched {
            stream,
            activity: activity.clone(),
        });
        let gateway = self.clone();
        let act = activity.clone();
        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let gateway = gateway.clone();
            act.busy.fetch_add(1, Ordering::Relaxed);
            let busy = Busy(act.clone());
            async move {
                let _busy = busy;
                let bodiless = matches!(*req.method(), Method::GET | Method::HEAD);
                let probe = matches!(req.uri().path(), "/healthz" | "/readyz" | "/livez");
                if overflow && !(bodiless && probe) {
                    return Ok::<_, std::convert::Infallible>(json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the gateway has as many connections open as gateway.maxConnections allows; retry shortly",
                        None,
                    ));
                }
                // Boxed per request: hyper keeps room for the service future in every
                // connection, idle or not, and the request path's future is kilobytes.
                Ok(Box::pin(gateway.handle(req, client)).await)
            }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(if overflow {
                OVERFLOW_HEADER_TIMEOUT
            } else {
                limits.header_timeout
            })
            .keep_alive(!overflow);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        let period = (limits.idle_timeout / 2).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut quiet = 0;
        loop {
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stopped.changed() => break,
                _ = tick.tick() => {
                    let touched = activity.touched.swap(false, Ordering::Relaxed);
                    if touched || activity.busy.load(Ordering::Relaxed) > 0 {
                        quiet = 0;
                    } else {
                        quiet += 1;
                        if quiet >= 2 {
                            break;
                        }
                    }
                }
            }
        }
        // Finish the request in flight, if any, then close.
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}

async fn autoscale_loop(gateway: Arc<Gateway>) {
    let mut tick = tokio::time::interval(AUTOSCALE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        let now = Instant::now();
        let dt = (now - last).as_secs_f64();
        last = now;
        let routes = gateway.routes();
        let functions = routes.functions();
        // About once a second: close pooled connections to replicas that have stopped, and
        // those idle for too long.
        if ticks.is_multiple_of(10) {
            let live: std::collections::HashSet<std::net::SocketAddr> = functions
                .iter()
                .flat_map(|f| f.serverless.addrs())
                .collect();
            gateway.upstreams.retain_live(|addr| live.contains(addr));
        }
        for f in functions {
            f.autoscale();
            let held = [
                ("serverless", f.serverless.wanted()),
                ("baseline", f.baseline.as_ref().map_or(0, |b| b.wanted())),
            ];
            for (kind, n) in held.into_iter().filter(|(_, n)| *n > 0) {
                let labels = KindLabels {
                    function: f.name().to_string(),
                    kind,
                };
                gateway
                    .metrics
                    .replica_seconds
                    .get_or_create(&labels)
                    .inc_by(f64::from(n) * dt);
            }
        }
    }
}
