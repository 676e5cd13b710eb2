//! The `accept` stage: bind the listeners, cap concurrent connections, and serve each
//! connection with HTTP/1.1 or HTTP/2 (prior knowledge) under the configured limits.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use hyper::{Request, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::Instant,
};

use crate::config::{HttpLimits, ListenerConfig};

use super::{ConnectionInfo, handle, snapshot::Snapshot};

/// Binds every listener; the error names the one that failed.
pub async fn bind(
    configs: &[ListenerConfig],
) -> anyhow::Result<Vec<(ListenerConfig, TcpListener)>> {
    let mut bound = Vec::new();
    for (index, config) in configs.iter().enumerate() {
        let listener = TcpListener::bind(config.address).await.with_context(|| {
            format!(
                "listeners[{index}] ({:?}): cannot listen on {}",
                config.name, config.address
            )
        })?;
        bound.push((config.clone(), listener));
    }
    Ok(bound)
}

/// What every accept loop and connection shares.
pub struct Shared {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// One permit per open client connection, across all listeners.
    pub connections: Arc<Semaphore>,
    /// Flips to `true` once: stop accepting, finish what is in flight.
    pub shutdown: watch::Receiver<bool>,
}

/// Accepts until shutdown. A connection over `limits.max_connections` is closed at once:
/// the client learns immediately instead of waiting in the backlog.
pub async fn accept_loop(config: ListenerConfig, listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let scheme = config.protocol.scheme();
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = config.name, "accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            tracing::debug!(%client, "connection refused: limits.max_connections reached");
            drop(stream);
            continue;
        };
        let connection = Arc::new(ConnectionInfo { client, scheme });
        tokio::spawn(serve(stream, connection, shared.clone(), permit));
    }
    tracing::info!(listener = config.name, address = %config.address, "listener closed");
}

async fn serve(
    stream: TcpStream,
    connection: Arc<ConnectionInfo>,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    // Limits are read per connection, so a reload applies to new connections.
    let limits = shared.snapshot.load().limits.clone();
    let client = connection.client;
    let builder = builder(&limits);
    let activity = Arc::new(Activity::new());
    let service = {
        let (snapshot, activity) = (shared.snapshot.clone(), activity.clone());
        service_fn(move |req: Request<Incoming>| {
            let busy = activity.begin();
            // The snapshot is taken once per request and kept to its end.
            let future = handle(snapshot.load_full(), connection.clone(), req);
            async move {
                let response = future.await;
                drop(busy);
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut shutdown = shared.shutdown.clone();
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%client, "connection ended: {error}");
                }
                break;
            }
            // Graceful: a request in flight finishes, then the connection closes.
            _ = activity.idle_for(limits.idle_timeout), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = stopped(&mut shutdown), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Resolves once shutdown has begun (at once if it already has).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An error means the proxy is gone: stop as well.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn builder(limits: &HttpLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Also bounds the wait for the next request on an idle keep-alive connection.
        .header_read_timeout(limits.header_read_timeout)
        // An oversized head is refused (431) while it is read; the exact limit is checked on
        // the parsed head (limits.rs). hyper's buffer must be at least 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_http2_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Requests in flight on one connection, and when the last one ended. A request counts
/// until its response head is ready; closing is graceful, so a body still streaming when
/// the connection is found idle is finished first.
struct Activity {
    in_flight: AtomicUsize,
    last_end: Mutex<Instant>,
}

struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.last_end.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_end: Mutex::new(Instant::now()),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Resolves once no request has been in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last_end = *self.last_end.lock().unwrap_or_else(|p| p.into_inner());
            if self.in_flight.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(timeout).await;
            } else if last_end + timeout <= Instant::now() {
                return;
            } else {
                tokio::time::sleep_until(last_end + timeout).await;
            }
        }
    }
}
