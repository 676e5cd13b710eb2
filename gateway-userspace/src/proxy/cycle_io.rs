//! The socket as one HTTP/1.1 serving cycle sees it (serve_http1.rs): bytes read before the
//! cycle began are replayed first, and once the cycle's response is sent and flushed and the
//! client has sent nothing more, a read reports "parked" instead of waiting, so the cycle can
//! hand the bare socket back and drop hyper's buffers for the idle phase.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll},
};

use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::activity::Activity;

/// Where a cycle stands, shared between its IO and the task that runs it.
#[derive(Default)]
pub struct CycleState(AtomicU8);

/// Serving: reads wait, and park once the cycle's response is out.
const SERVING: u8 = 0;
/// A read found nothing after the response: the task may take the socket back.
const PARKED: u8 = 1;
/// The task asked hyper to close if idle: a read now means hyper was mid-message.
const PROBING: u8 = 2;
/// hyper read during the probe: it was mid-message, so it finishes and closes.
const MID_MESSAGE: u8 = 3;
/// Never park again (HTTP/2, or a cycle that closes when done).
const PASSING: u8 = 4;
/// Like serving, but not parking yet: requests are still coming back to back.
const LINGERING: u8 = 5;

impl CycleState {
    pub fn new_passing() -> Arc<Self> {
        Arc::new(CycleState(AtomicU8::new(PASSING)))
    }

    /// Serving without parking until [`CycleState::stop_lingering`].
    pub fn lingering() -> Arc<Self> {
        Arc::new(CycleState(AtomicU8::new(LINGERING)))
    }

    /// From now on the cycle may park (unless it already passes everything through).
    pub fn stop_lingering(&self) {
        let _ = self
            .0
            .compare_exchange(LINGERING, SERVING, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn is_parked(&self) -> bool {
        self.0.load(Ordering::Acquire) == PARKED
    }

    /// Starts the probe: the caller then asks hyper to shut down gracefully and polls once.
    pub fn probe(&self) {
        self.0.store(PROBING, Ordering::Release);
    }

    /// Whether hyper stayed idle during the probe (it read nothing).
    pub fn probe_found_idle(&self) -> bool {
        self.0.load(Ordering::Acquire) == PROBING
    }

    /// From now on every call passes through, shutdown included.
    pub fn pass(&self) {
        self.0.store(PASSING, Ordering::Release);
    }

    fn get(&self) -> u8 {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, state: u8) {
        self.0.store(state, Ordering::Release);
    }
}

pub struct CycleIo<S> {
    inner: S,
    replay: Bytes,
    state: Arc<CycleState>,
    /// The connection's requests; `None` never parks.
    activity: Option<Arc<Activity>>,
    /// `activity.requests()` when the cycle began: a higher count means one was served.
    requests_before: usize,
    /// Whether everything hyper wrote has been flushed (hyper's write buffer is empty).
    flushed: bool,
}

impl<S> CycleIo<S> {
    pub fn new(
        inner: S,
        replay: Bytes,
        state: Arc<CycleState>,
        activity: Option<Arc<Activity>>,
    ) -> Self {
        let requests_before = activity.as_ref().map_or(0, |activity| activity.requests());
        CycleIo {
            inner,
            replay,
            state,
            activity,
            requests_before,
            flushed: true,
        }
    }

    /// The socket and the replayed bytes hyper has not read yet.
    pub fn into_parts(self) -> (S, Bytes) {
        (self.inner, self.replay)
    }

    fn response_sent(&self) -> bool {
        self.flushed
            && self.activity.as_ref().is_some_and(|activity| {
                activity.requests() > self.requests_before
                    && activity.is_idle()
                    && !activity.upgraded()
            })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CycleIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.replay.is_empty() {
            let take = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay.split_to(take));
            return Poll::Ready(Ok(()));
        }
        match self.state.get() {
            PARKED => return Poll::Pending,
            PROBING => self.state.set(MID_MESSAGE),
            _ => {}
        }
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if polled.is_pending() && self.state.get() == SERVING && self.response_sent() {
            // The read interest stays registered with the socket: nothing is lost, and the
            // task (polled right after hyper, see serve_http1.rs) takes the socket back.
            self.state.set(PARKED);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CycleIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.flushed = false;
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.flushed = false;
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(polled, Poll::Ready(Ok(()))) && !self.flushed {
            self.flushed = true;
            // hyper may have polled its read before this flush: poll it once more so the
            // idle phase can begin.
            cx.waker().wake_by_ref();
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper closing an idle cycle on request (the probe) keeps the socket for the next.
        if self.state.get() == PROBING {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    #[tokio::test]
    async fn replayed_bytes_come_first_then_the_socket() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b" world")
            .await
            .unwrap();
        drop(client);
        let mut io = CycleIo::new(
            server,
            Bytes::from_static(b"hello"),
            CycleState::new_passing(),
            None,
        );
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }

    /// One read of a quiet socket: it must wait (pending), parked or not.
    fn read_waits(io: &mut CycleIo<tokio::io::DuplexStream>) {
        let mut buf = [0u8; 8];
        let mut rb = ReadBuf::new(&mut buf);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(io).poll_read(&mut cx, &mut rb).is_pending());
    }

    #[tokio::test]
    async fn parks_only_after_a_served_request_is_flushed() {
        let (_client, server) = tokio::io::duplex(64);
        let activity = Activity::new();
        let state = Arc::new(CycleState::default());
        let mut io = CycleIo::new(server, Bytes::new(), state.clone(), Some(activity.clone()));
        // No request yet: a quiet socket is the first-request wait, not idle.
        read_waits(&mut io);
        assert!(!state.is_parked());
        // In flight: not idle either.
        let busy = activity.begin();
        read_waits(&mut io);
        assert!(!state.is_parked());
        // Answered, but the answer not flushed yet.
        drop(busy);
        io.flushed = false;
        read_waits(&mut io);
        assert!(!state.is_parked());
        io.flushed = true;
        read_waits(&mut io);
        assert!(state.is_parked());
    }

    #[tokio::test]
    async fn a_lingering_cycle_parks_only_once_told_it_may() {
        let (_client, server) = tokio::io::duplex(64);
        let activity = Activity::new();
        let state = CycleState::lingering();
        let mut io = CycleIo::new(server, Bytes::new(), state.clone(), Some(activity.clone()));
        drop(activity.begin());
        // Answered and flushed, but lingering: reads wait on the socket.
        read_waits(&mut io);
        read_waits(&mut io);
        assert!(!state.is_parked());
        state.stop_lingering();
        read_waits(&mut io);
        assert!(state.is_parked());
        // A cycle told to pass everything through is not turned back into one that parks.
        let passing = CycleState::new_passing();
        passing.stop_lingering();
        assert!(!passing.is_parked() && passing.get() == PASSING);
    }
}
