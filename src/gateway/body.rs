//! The request body as the gateway forwards it: streamed, never collected whole, with the
//! gateway's size limit and a read timeout (a client that stalls mid-body), and the fault
//! remembered so that the engine answers 413 or 408 rather than a 502. The first few KiB are
//! read before a replica is taken, so a client that sends headers and then nothing holds no
//! replica; a body that fits in them is kept and can be sent again on a retry.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bytes read before a replica is taken; a body this small is replayable.
pub const PREFETCH: usize = 8 * 1024;

/// What went wrong with a request body, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None = 0,
    TooLarge = 1,
    TimedOut = 2,
    /// The client's connection broke, or its framing was invalid.
    Broken = 3,
}

/// The fault a body hit, shared with the engine after the body has gone to the upstream.
#[derive(Debug, Default)]
pub struct FaultCell(AtomicU8);

impl FaultCell {
    fn set(&self, f: Fault) {
        let _ = self
            .0
            .compare_exchange(0, f as u8, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn get(&self) -> Fault {
        match self.0.load(Ordering::Relaxed) {
            1 => Fault::TooLarge,
            2 => Fault::TimedOut,
            3 => Fault::Broken,
            _ => Fault::None,
        }
    }
}

/// The error a faulted body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body {0}")]
pub struct BodyError(&'static str);

pub struct RequestBody {
    /// What the client has not sent yet; None once it ended (or for a replay).
    inner: Option<BoxBody<Bytes, BoxError>>,
    /// Read ahead, sent first.
    buffered: VecDeque<Bytes>,
    read: u64,
    limit: u64,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    pub fault: Arc<FaultCell>,
}

impl RequestBody {
    pub fn new<B>(body: B, limit: u64, timeout: Duration) -> Self
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = if body.is_end_stream() {
            None
        } else {
            Some(body.map_err(Into::into).boxed())
        };
        Self {
            inner,
            buffered: VecDeque::new(),
            read: 0,
            limit,
            timeout,
            sleep: None,
            fault: Arc::default(),
        }
    }

    /// Reads ahead until `upto` bytes are buffered or the body ends; a fault is returned
    /// (and the body is then unusable).
    pub async fn prefetch(&mut self, upto: usize) -> Result<(), Fault> {
        let mut have = 0;
        while have < upto && self.inner.is_some() {
            match std::future::poll_fn(|cx| self.poll_inner(cx)).await {
                Some(Ok(data)) => {
                    have += data.len();
                    self.buffered.push_back(data);
                }
                Some(Err(_)) => return Err(self.fault.get()),
                None => break,
            }
        }
        Ok(())
    }

    /// A copy to send again, if the whole body is in memory.
    pub fn replay(&self) -> Option<RequestBody> {
        self.inner.is_none().then(|| RequestBody {
            inner: None,
            buffered: self.buffered.clone(),
            read: self.read,
            limit: self.limit,
            timeout: self.timeout,
            sleep: None,
            fault: self.fault.clone(),
        })
    }

    /// The next data from the client, within the limit and the read timeout.
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        loop {
            let Some(inner) = self.inner.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    self.sleep = None;
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers are not forwarded
                    };
                    self.read += data.len() as u64;
                    if self.read > self.limit {
                        return Poll::Ready(Some(Err(self.faulted(Fault::TooLarge))));
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Poll::Ready(Some(Err(_))) => {
                    return Poll::Ready(Some(Err(self.faulted(Fault::Broken))))
                }
                Poll::Ready(None) => {
                    self.inner = None;
                    self.sleep = None;
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    let timeout = self.timeout;
                    let sleep = self
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(self.faulted(Fault::TimedOut))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn faulted(&mut self, fault: Fault) -> BodyError {
        self.fault.set(fault);
        self.inner = None;
        self.sleep = None;
        BodyError(match fault {
            Fault::TooLarge => "is larger than the gateway's limit",
            Fault::TimedOut => "stopped arriving",
            _ => "broke off",
        })
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(data) = self.buffered.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        self.poll_inner(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_none() && self.buffered.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self.buffered.iter().map(|b| b.len() as u64).sum();
        match &self.inner {
            None => SizeHint::with_exact(buffered),
            Some(inner) => {
                let h = inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(h.lower() + buffered);
                if let Some(upper) = h.upper() {
                    hint.set_upper(upper + buffered);
                }
                hint
            }
        }
    }
}

/// Reads and drops up to `max` bytes of a body the gateway refused, for at most `within`, so
/// that a client writing its whole body before it reads can still read the answer.
pub async fn drain<B>(body: B, max: u64, within: Duration)
where
    B: Body<Data = Bytes> + Send + 'static,
{
    let deadline = Instant::now() + within;
    let mut body = std::pin::pin!(body);
    let mut seen = 0u64;
    while seen < max {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    #[tokio::test]
    async fn a_small_body_is_read_ahead_whole_and_can_be_replayed() {
        let mut body = RequestBody::new(
            Full::new(Bytes::from_static(b"hello")),
            100,
            Duration::from_secs(1),
        );
        body.prefetch(PREFETCH).await.unwrap();
        let copy = body.replay().expect("fully buffered");
        let a = body.collect().await.unwrap().to_bytes();
        let b = copy.collect().await.unwrap().to_bytes();
        assert_eq!((&a[..], &b[..]), (&b"hello"[..], &b"hello"[..]));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_faults_as_too_large() {
        let mut body = RequestBody::new(
            Full::new(Bytes::from(vec![0u8; 200])),
            100,
            Duration::from_secs(1),
        );
        assert_eq!(body.prefetch(PREFETCH).await, Err(Fault::TooLarge));
        assert_eq!(body.fault.get(), Fault::TooLarge);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out() {
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = StreamBody::new(tokio_stream_from(rx));
        let mut body = RequestBody::new(stream, 100, Duration::from_secs(5));
        assert_eq!(body.prefetch(PREFETCH).await, Err(Fault::TimedOut));
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    ) -> impl futures::Stream<Item = Result<Frame<Bytes>, BoxError>> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
