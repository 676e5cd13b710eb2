//! Requests in flight on one client connection, and when the last one ended: what the
//! listener's idle timer and its close-after-grace look at.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::time::Instant;

use super::body::{BoxError, ProxyBody};

/// A request counts from its head until its response body has been sent (or dropped), so
/// a long download is never taken for an idle connection.
pub struct Activity {
    in_flight: AtomicUsize,
    last_end: Mutex<Instant>,
    /// Requests begun so far: until the first, the first-request deadline runs; a change
    /// tells the HTTP/1.1 idle phase that a request was served (serve_http1.rs).
    requests: AtomicUsize,
    /// Set once a request is answered 101: the connection is a tunnel from then on.
    upgraded: AtomicBool,
}

/// Held while one request is in flight.
pub struct Busy(Arc<Activity>);

impl Busy {
    /// The request is answered 101: its connection becomes a tunnel and never goes idle.
    pub fn upgrading(&self) {
        self.0.upgraded.store(true, Ordering::Release);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.last_end.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            last_end: Mutex::new(Instant::now()),
            requests: AtomicUsize::new(0),
            upgraded: AtomicBool::new(false),
        })
    }

    pub fn begin(self: &Arc<Self>) -> Busy {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Whether a request has ever begun on this connection.
    pub fn started(&self) -> bool {
        self.requests() > 0
    }

    /// How many requests have begun on this connection.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    /// Whether no request is in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Whether a request was answered 101 (an upgrade).
    pub fn upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Acquire)
    }

    /// When the last request ended (or the connection began, before any).
    pub fn last_end(&self) -> Instant {
        *self.last_end.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves once no request has been in flight for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let last_end = *self.last_end.lock().unwrap_or_else(|p| p.into_inner());
            if self.in_flight.load(Ordering::Acquire) > 0 {
                // Checked again often enough to notice the end within a fraction of timeout.
                tokio::time::sleep(
                    timeout.clamp(Duration::from_millis(10), Duration::from_secs(1)),
                )
                .await;
            } else if last_end + timeout <= Instant::now() {
                return;
            } else {
                tokio::time::sleep_until(last_end + timeout).await;
            }
        }
    }
}

/// A response body that keeps its request counted as in flight until it ends.
pub struct Tracked {
    inner: ProxyBody,
    busy: Option<Busy>,
}

impl Tracked {
    pub fn new(inner: ProxyBody, busy: Busy) -> Self {
        Tracked {
            inner,
            busy: Some(busy),
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.busy = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
