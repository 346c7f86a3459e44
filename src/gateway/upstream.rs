//! Connections to replicas, driven by the task of the request that uses them. hyper's
//! pooled client gives every connection a task of its own, so each proxied request costs two
//! cross-task hand-offs; here the request's task polls the connection while it waits for the
//! response, and the response body keeps polling it until the last byte, then gives it back
//! to the pool. Measured by bench/gateway-overhead.sh.
//!
//! Connecting (`checkout`) and sending (`Checkout::send`) are separate steps, so that a
//! request whose replica refused the connection is still whole and can go to another one.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::ThreadId;

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::RequestBody;

type Connection = http1::Connection<TokioIo<TcpStream>, RequestBody>;

/// An idle pooled connection older than this is closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting to a replica may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One keep-alive connection to a replica.
pub struct Upstream {
    sender: http1::SendRequest<RequestBody>,
    conn: Pin<Box<Connection>>,
    /// The connection future finished: the socket is closed.
    closed: bool,
    /// When it went back to the pool.
    idle_since: Instant,
}

impl Upstream {
    /// Drives the connection's IO; notes when it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.closed && self.conn.as_mut().poll(cx).is_ready() {
            self.closed = true;
        }
    }
}

/// Idle connections per serving thread and replica address: a connection stays on the
/// thread whose reactor it is registered with.
#[derive(Default)]
pub struct UpstreamPool {
    idle: Mutex<HashMap<(ThreadId, SocketAddr), Vec<Upstream>>>,
}

/// Idle connections kept per replica.
const MAX_IDLE: usize = 512;

/// Why a request could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the replica at {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the replica at {addr} broke off the exchange")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

impl UpstreamPool {
    fn take(&self, addr: SocketAddr) -> Option<Upstream> {
        let key = (std::thread::current().id(), addr);
        self.idle.lock().expect("pool lock").get_mut(&key)?.pop()
    }

    fn put(&self, addr: SocketAddr, mut up: Upstream) {
        if up.closed || up.sender.is_closed() {
            return;
        }
        up.idle_since = Instant::now();
        let key = (std::thread::current().id(), addr);
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE {
            list.push(up);
        }
    }

    /// Drops idle connections to replicas that are gone (`live` says which addresses still
    /// serve): their sockets would otherwise stay open in the pool for good.
    pub fn retain_live(&self, live: impl Fn(&SocketAddr) -> bool) {
        let mut idle = self.idle.lock().expect("pool lock");
        idle.retain(|k, _| live(&k.1));
        for list in idle.values_mut() {
            list.retain(|up| up.idle_since.elapsed() < IDLE_TIMEOUT);
        }
        idle.retain(|_, list| !list.is_empty());
    }

    /// Idle connections held, over all replicas and serving threads.
    pub fn idle(&self) -> usize {
        self.idle
            .lock()
            .expect("pool lock")
            .values()
            .map(Vec::len)
            .sum()
    }

    async fn connect(addr: SocketAddr) -> Result<Upstream, UpstreamError> {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(connected) => connected,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()),
            )),
        }
        .map_err(|source| UpstreamError::Connect { addr, source })?;
        // Small responses would otherwise wait for delayed ACKs.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Http { addr, source })?;
        Ok(Upstream {
            sender,
            conn: Box::pin(conn),
            closed: false,
            idle_since: Instant::now(),
        })
    }

    /// A connection to `addr` ready to take a request: an idle one that is still open, else a
    /// new one. Fails only when the replica cannot be connected to.
    pub async fn checkout(self: &Arc<Self>, addr: SocketAddr) -> Result<Checkout, UpstreamError> {
        while let Some(mut up) = self.take(addr) {
            let ready = poll_fn(|cx| {
                up.drive(cx);
                match up.sender.poll_ready(cx) {
                    Poll::Ready(r) => Poll::Ready(r.is_ok() && !up.closed),
                    // Not ready at once: busy or half-closed; do not wait on it.
                    Poll::Pending => Poll::Ready(false),
                }
            })
            .await;
            if ready {
                return Ok(Checkout {
                    up,
                    reused: true,
                    addr,
                    pool: self.clone(),
                });
            }
        }
        Ok(Checkout {
            up: Self::connect(addr).await?,
            reused: false,
            addr,
            pool: self.clone(),
        })
    }
}

/// A connection taken for one request.
pub struct Checkout {
    up: Upstream,
    reused: bool,
    addr: SocketAddr,
    pool: Arc<UpstreamPool>,
}

/// Why an exchange failed before the response head, and the request when it was never sent
/// (so it may go elsewhere). Without it, the request may or may not have reached the
/// handler.
pub struct SendError {
    pub error: UpstreamError,
    pub unsent: Option<Box<Request<RequestBody>>>,
}

impl Checkout {
    /// Sends `req` and returns the response whose body gives the connection back. A reused
    /// connection that the replica had closed before taking the request is replaced by a new
    /// one, for any request: hyper hands back a request it did not send.
    pub async fn send(
        mut self,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, PooledConnection), SendError> {
        let addr = self.addr;
        let req = match exchange(&mut self.up, req).await {
            Ok(resp) => return Ok((resp, self.pooled())),
            Err(Exchange::Unsent(req, _)) if self.reused => *req,
            Err(Exchange::Unsent(req, source)) => {
                return Err(SendError {
                    error: UpstreamError::Http { addr, source },
                    unsent: Some(req),
                })
            }
            // `exchange` ends at the response head: whatever broke, broke before it.
            Err(Exchange::Failed(source)) => {
                return Err(SendError {
                    error: UpstreamError::Http { addr, source },
                    unsent: None,
                })
            }
        };
        match UpstreamPool::connect(addr).await {
            Ok(up) => {
                self.up = up;
                self.reused = false;
            }
            Err(error) => {
                return Err(SendError {
                    error,
                    unsent: Some(Box::new(req)),
                })
            }
        }
        Box::pin(self.send(req)).await
    }

    fn pooled(self) -> PooledConnection {
        PooledConnection {
            up: Some(self.up),
            addr: self.addr,
            pool: self.pool,
        }
    }
}

enum Exchange {
    /// The connection could not take it; here it is back.
    Unsent(Box<Request<RequestBody>>, hyper::Error),
    Failed(hyper::Error),
}

/// Sends one request, driving the connection until the response head arrives.
async fn exchange(
    up: &mut Upstream,
    req: Request<RequestBody>,
) -> Result<Response<Incoming>, Exchange> {
    let mut response = std::pin::pin!(up.sender.try_send_request(req));
    let result = poll_fn(|cx| {
        if !up.closed && up.conn.as_mut().poll(cx).is_ready() {
            up.closed = true;
        }
        response.as_mut().poll(cx)
    })
    .await;
    result.map_err(|mut e| match e.take_message() {
        Some(req) => Exchange::Unsent(Box::new(req), e.into_error()),
        None => Exchange::Failed(e.into_error()),
    })
}

/// The connection a response body still needs; back to the pool once the body is done.
pub struct PooledConnection {
    up: Option<Upstream>,
    addr: SocketAddr,
    pool: Arc<UpstreamPool>,
}

impl PooledConnection {
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(up) = &mut self.up {
            up.drive(cx);
        }
    }

    fn release(&mut self) {
        if let Some(up) = self.up.take() {
            self.pool.put(self.addr, up);
        }
    }
}

/// A replica's response body: keeps its connection moving while it streams, returns the
/// connection to the pool at the end, and drops `guard` (the request's in-flight count and
/// replica slot) when the body has been sent or dropped.
pub struct UpstreamBody<G: Send + Unpin> {
    inner: Incoming,
    conn: PooledConnection,
    guard: Option<G>,
}

impl<G: Send + Unpin> UpstreamBody<G> {
    pub fn new(inner: Incoming, conn: PooledConnection, guard: G) -> Self {
        Self {
            inner,
            conn,
            guard: Some(guard),
        }
    }

    fn finish(&mut self, complete: bool) {
        if complete {
            self.conn.release();
        } else {
            // A body cut short leaves the connection mid-message: close it.
            self.conn.up = None;
        }
        self.guard = None;
    }
}

impl<G: Send + Unpin> Drop for UpstreamBody<G> {
    fn drop(&mut self) {
        if self.guard.is_some() {
            let complete = self.inner.is_end_stream();
            self.finish(complete);
        }
    }
}

impl<G: Send + Unpin> Body for UpstreamBody<G> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.conn.drive(cx);
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => self.finish(false),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
