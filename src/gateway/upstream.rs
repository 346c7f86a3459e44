//! Connections to replicas, driven by the task of the request that uses them. hyper's
//! pooled client gives every connection a task of its own, so each proxied request costs two
//! cross-task hand-offs; here the request's task polls the connection while it waits for the
//! response, and the response body keeps polling it until the last byte, then gives it back
//! to the pool. Measured by bench/gateway-overhead.sh.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::ThreadId;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type Connection = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// One keep-alive connection to a replica.
pub struct Upstream {
    sender: http1::SendRequest<Full<Bytes>>,
    conn: Pin<Box<Connection>>,
    /// The connection future finished: the socket is closed.
    closed: bool,
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

    fn put(&self, addr: SocketAddr, up: Upstream) {
        if up.closed || up.sender.is_closed() {
            return;
        }
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
        self.idle
            .lock()
            .expect("pool lock")
            .retain(|k, _| live(&k.1));
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
        let stream = TcpStream::connect(addr)
            .await
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
        })
    }

    /// A connection ready to take a request: an idle one that is still open, else a new one.
    async fn checkout(&self, addr: SocketAddr) -> Result<(Upstream, bool), UpstreamError> {
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
                return Ok((up, true));
            }
        }
        Ok((Self::connect(addr).await?, false))
    }

    /// Sends `req` to `addr` and returns the response whose body gives the connection back.
    /// A request on a reused connection that the replica had closed is sent again on a new
    /// one when that is safe (see below); the body is in memory.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, PooledConnection), UpstreamError> {
        let (mut up, reused) = self.checkout(addr).await?;
        let idempotent = matches!(
            *req.method(),
            hyper::Method::GET
                | hyper::Method::HEAD
                | hyper::Method::OPTIONS
                | hyper::Method::PUT
                | hyper::Method::DELETE
        );
        let retry = reused.then(|| clone_request(&req));
        match exchange(&mut up, req).await {
            Ok(resp) => Ok((
                resp,
                PooledConnection {
                    up: Some(up),
                    addr,
                    pool: self.clone(),
                },
            )),
            // Never sent (canceled), or an idempotent request on a connection the replica had
            // closed: send it again on a new connection. Anything else may have reached the
            // handler and is not repeated.
            Err(e)
                if e.is_canceled()
                    || (idempotent && (e.is_closed() || e.is_incomplete_message())) =>
            {
                match retry {
                    Some(req) => {
                        let mut fresh = Self::connect(addr).await?;
                        let resp = exchange(&mut fresh, req)
                            .await
                            .map_err(|source| UpstreamError::Http { addr, source })?;
                        Ok((
                            resp,
                            PooledConnection {
                                up: Some(fresh),
                                addr,
                                pool: self.clone(),
                            },
                        ))
                    }
                    None => Err(UpstreamError::Http { addr, source: e }),
                }
            }
            Err(source) => Err(UpstreamError::Http { addr, source }),
        }
    }
}

fn clone_request(req: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut copy = Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Sends one request, driving the connection until the response head arrives.
async fn exchange(
    up: &mut Upstream,
    req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, hyper::Error> {
    let mut response = std::pin::pin!(up.sender.send_request(req));
    poll_fn(|cx| {
        if !up.closed && up.conn.as_mut().poll(cx).is_ready() {
            up.closed = true;
        }
        response.as_mut().poll(cx)
    })
    .await
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
/// connection to the pool at the end, and runs `on_done` (request accounting) when it has
/// been sent or dropped.
pub struct UpstreamBody<F: FnOnce() + Send + Unpin> {
    inner: Incoming,
    conn: PooledConnection,
    on_done: Option<F>,
}

impl<F: FnOnce() + Send + Unpin> UpstreamBody<F> {
    pub fn new(inner: Incoming, conn: PooledConnection, on_done: F) -> Self {
        Self {
            inner,
            conn,
            on_done: Some(on_done),
        }
    }

    fn finish(&mut self, complete: bool) {
        if complete {
            self.conn.release();
        } else {
            // A body cut short leaves the connection mid-message: close it.
            self.conn.up = None;
        }
        if let Some(f) = self.on_done.take() {
            f();
        }
    }
}

impl<F: FnOnce() + Send + Unpin> Drop for UpstreamBody<F> {
    fn drop(&mut self) {
        if self.on_done.is_some() {
            let complete = self.inner.is_end_stream();
            self.finish(complete);
        }
    }
}

impl<F: FnOnce() + Send + Unpin> Body for UpstreamBody<F> {
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
