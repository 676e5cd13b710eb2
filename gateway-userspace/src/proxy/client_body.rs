//! The client's request body as it streams to the upstream: capped at
//! `limits.max_body_bytes`, timed by `limits.body_read_timeout` (the longest wait for the
//! next bytes) and `limits.min_body_rate` (the whole body may take `body_read_timeout` plus
//! one second per `min_body_rate` bytes received, as Apache's `RequestReadTimeout MinRate`),
//! and every failure of it tagged as the client's fault ([`ClientBodyError`]).
//!
//! Only time spent waiting on the client counts: while the upstream is slow to read, the
//! body is not polled and its clocks stand still. A [`BodyWatch`] travels with the request
//! (an extension) so that forward.rs can tell, when the upstream exchange fails, that the
//! client's body failed first or is still awaited: the upstream is then not to blame.

use std::{
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::body::{BoxError, ProxyBody};

/// How the client's body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Bad framing: chunk sizes, CRLFs, trailers, an HTTP/2 content-length that DATA does
    /// not match (400).
    Malformed,
    /// The client closed or reset the connection or stream before the body ended (499).
    Aborted,
    /// The body did not arrive in time (408).
    TimedOut,
    /// The body crossed `limits.max_body_bytes` (413).
    TooLarge,
}

/// The error the upstream client sees when the client's body fails.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {detail}")]
pub struct ClientBodyError {
    pub fault: ClientFault,
    detail: String,
}

/// What forward.rs can ask about the client's body while the upstream exchange runs.
#[derive(Debug, Clone, Default)]
pub struct BodyWatch(Arc<Watched>);

#[derive(Debug, Default)]
struct Watched {
    fault: OnceLock<ClientFault>,
    waiting: AtomicBool,
}

impl BodyWatch {
    /// How the client's body failed, if it did.
    pub fn fault(&self) -> Option<ClientFault> {
        self.0.fault.get().copied()
    }

    /// Whether the gateway is waiting for more of the client's body right now.
    pub fn waiting_on_client(&self) -> bool {
        self.0.waiting.load(Ordering::Relaxed)
    }
}

/// The body limits, from `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: u64,
    pub read_timeout: Duration,
    /// Bytes per second; 0: no rate bound.
    pub min_rate: u64,
}

pub struct ClientBody {
    inner: ProxyBody,
    limits: BodyLimits,
    watch: BodyWatch,
    received: u64,
    /// Time spent waiting on the client so far, for the rate bound.
    waited: Duration,
    /// When the current wait on the client began.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl ClientBody {
    pub fn new(inner: ProxyBody, limits: BodyLimits) -> (ClientBody, BodyWatch) {
        let watch = BodyWatch::default();
        let body = ClientBody {
            inner,
            limits,
            watch: watch.clone(),
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
        };
        (body, watch)
    }

    /// The longest the current wait may last: the gap bound, and what is left of the
    /// whole body's time budget.
    fn allowed_wait(&self) -> Duration {
        let gap = self.limits.read_timeout;
        if self.limits.min_rate == 0 {
            return gap;
        }
        let earned = self.received as f64 / self.limits.min_rate as f64;
        let budget =
            gap.saturating_add(Duration::try_from_secs_f64(earned).unwrap_or(Duration::MAX));
        gap.min(budget.saturating_sub(self.waited))
    }

    fn arrived(&mut self) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
        self.watch.0.waiting.store(false, Ordering::Relaxed);
    }

    fn fail(
        &mut self,
        fault: ClientFault,
        detail: String,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.watch.0.waiting.store(false, Ordering::Relaxed);
        let _ = self.watch.0.fault.set(fault);
        Poll::Ready(Some(Err(Box::new(ClientBodyError { fault, detail }))))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.watch.fault().is_some() {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.arrived();
                if let Some(data) = frame.data_ref() {
                    this.received = this.received.saturating_add(data.len() as u64);
                }
                if this.received > this.limits.max_bytes {
                    let max = this.limits.max_bytes;
                    return this.fail(
                        ClientFault::TooLarge,
                        format!("over limits.max_body_bytes = {max}"),
                    );
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.arrived();
                let fault = classify(&*error);
                this.fail(fault, error.to_string())
            }
            Poll::Ready(None) => {
                this.arrived();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let since = *this.waiting_since.get_or_insert_with(Instant::now);
                let deadline = since + this.allowed_wait();
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    let (gap, rate) = (this.limits.read_timeout, this.limits.min_rate);
                    return this.fail(
                        ClientFault::TimedOut,
                        format!(
                            "{} bytes in, then no more within limits.body_read_timeout = {gap:?} \
                             / limits.min_body_rate = {rate} bytes/s",
                            this.received
                        ),
                    );
                }
                this.watch.0.waiting.store(true, Ordering::Relaxed);
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How the client's connection failed while its body was read: bad framing is malformed,
/// anything else (EOF, reset, a closed stream or connection) is the client going away.
fn classify(error: &(dyn std::error::Error + 'static)) -> ClientFault {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            // hyper's chunked and length decoders report bad framing as these two.
            return match io.kind() {
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
                    ClientFault::Malformed
                }
                _ => ClientFault::Aborted,
            };
        }
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            // The gateway's own HTTP/2 stack resetting the stream (or the connection) means
            // the peer broke the protocol (content-length against DATA, for one); the peer's
            // reset or a dead connection is the client leaving.
            let broke_protocol = h2
                .reason()
                .is_some_and(|reason| reason != h2::Reason::NO_ERROR);
            return match h2.is_library() && broke_protocol {
                true => ClientFault::Malformed,
                false => ClientFault::Aborted,
            };
        }
        current = error.source();
    }
    ClientFault::Aborted
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt as _, StreamBody};

    use super::*;
    use crate::proxy::body::{boxed, full};

    fn limits(max_bytes: u64, read_timeout_ms: u64, min_rate: u64) -> BodyLimits {
        BodyLimits {
            max_bytes,
            read_timeout: Duration::from_millis(read_timeout_ms),
            min_rate,
        }
    }

    /// A body that yields `chunks`, each after its delay, then ends (or never ends).
    fn paced(chunks: Vec<(u64, &'static [u8])>, then_hang: bool) -> ProxyBody {
        let stream = futures_util::stream::unfold(
            (chunks.into_iter(), then_hang),
            |(mut chunks, hang)| async move {
                match chunks.next() {
                    Some((delay, bytes)) => {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        let frame: Result<Frame<Bytes>, BoxError> =
                            Ok(Frame::data(Bytes::from_static(bytes)));
                        Some((frame, (chunks, hang)))
                    }
                    None if hang => std::future::pending().await,
                    None => None,
                }
            },
        );
        boxed(StreamBody::new(stream))
    }

    async fn drain(body: ClientBody) -> Result<usize, ClientFault> {
        let collected = body.collect().await;
        collected.map(|c| c.to_bytes().len()).map_err(|error| {
            error
                .downcast_ref::<ClientBodyError>()
                .map(|e| e.fault)
                .expect("a ClientBodyError")
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_within_every_bound_passes() {
        let body = paced(vec![(500, b"abc"), (900, b"def")], false);
        let (body, watch) = ClientBody::new(body, limits(6, 1000, 1));
        assert_eq!(drain(body).await, Ok(6));
        assert_eq!(watch.fault(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn each_bound_is_the_clients_fault() {
        let table: Vec<(&str, ProxyBody, BodyLimits, ClientFault)> = vec![
            (
                "over the size",
                full("1234567"),
                limits(6, 1000, 0),
                ClientFault::TooLarge,
            ),
            (
                "a gap",
                paced(vec![(1500, b"a")], false),
                limits(99, 1000, 0),
                ClientFault::TimedOut,
            ),
            (
                "stalls",
                paced(vec![(0, b"a")], true),
                limits(99, 1000, 0),
                ClientFault::TimedOut,
            ),
            (
                // Gaps of 900 ms (each under the gap bound): 1.1 bytes/s, below 2 bytes/s.
                "below the rate",
                paced(vec![(900, b"a"); 10], false),
                limits(99, 1000, 2),
                ClientFault::TimedOut,
            ),
        ];
        for (name, body, limits, fault) in table {
            let (body, watch) = ClientBody::new(body, limits);
            assert_eq!(drain(body).await, Err(fault), "{name}");
            assert_eq!(watch.fault(), Some(fault), "{name}");
            assert!(!watch.waiting_on_client(), "{name}");
        }
    }

    #[test]
    fn inner_errors_are_classified() {
        let io = |kind| -> BoxError { Box::new(std::io::Error::new(kind, "x")) };
        let table: Vec<(BoxError, ClientFault)> = vec![
            (io(std::io::ErrorKind::InvalidInput), ClientFault::Malformed),
            (io(std::io::ErrorKind::InvalidData), ClientFault::Malformed),
            (io(std::io::ErrorKind::UnexpectedEof), ClientFault::Aborted),
            (
                io(std::io::ErrorKind::ConnectionReset),
                ClientFault::Aborted,
            ),
            (
                Box::new(h2::Error::from(h2::Reason::CANCEL)),
                ClientFault::Aborted,
            ),
            ("unknown".into(), ClientFault::Aborted),
        ];
        for (error, fault) in table {
            assert_eq!(classify(&*error), fault, "{error}");
        }
    }
}
