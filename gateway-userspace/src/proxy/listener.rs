//! The `accept` stage: bind the listeners, cap concurrent connections, and serve each
//! connection with HTTP/1.1 or HTTP/2 (prior knowledge) under the configured limits.
//! On `https` listeners the `tls` stage runs first: a handshake bounded by
//! `limits.tls_handshake_timeout`, then HTTP/2 or HTTP/1.1 as ALPN chose.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use hyper::{Request, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    time::Instant,
};
use tokio_rustls::TlsAcceptor;

use crate::{
    config::{HttpLimits, ListenerConfig},
    guard::AcceptGuard,
};

use super::{
    ConnectionInfo,
    activity::{Activity, Tracked},
    h2_watch::{self, H2Watch},
    handle,
    snapshot::Snapshot,
    tls,
};

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
    /// The bans enforced at accept when XDP is off.
    pub guard: Arc<AcceptGuard>,
    /// Which requests the access log records.
    pub sampling: Arc<super::observe::Sampling>,
}

/// Whether a reload changes what the listening sockets are (name, address, protocol):
/// that needs a restart. Certificates are not part of it: they reload.
pub fn sockets_differ(running: &[ListenerConfig], new: &[ListenerConfig]) -> bool {
    let sockets = |listeners: &[ListenerConfig]| -> Vec<_> {
        listeners
            .iter()
            .map(|listener| (listener.name.clone(), listener.address, listener.protocol))
            .collect()
    };
    sockets(running) != sockets(new)
}

/// Accepts until shutdown. A connection over `limits.max_connections` is closed at once:
/// the client learns immediately instead of waiting in the backlog. With `tls` (an `https`
/// listener), each connection takes the rustls config current when it is accepted.
pub async fn accept_loop(
    config: ListenerConfig,
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<tls::Current>,
) {
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
        shared.guard.count_accept();
        // Bans when XDP is off (with XDP on, a banned source never gets this far).
        if shared.guard.refuses(client.ip()) {
            tracing::debug!(%client, "connection refused: the source is banned");
            drop(stream);
            continue;
        }
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            tracing::debug!(%client, "connection refused: limits.max_connections reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Arc::new(ConnectionInfo {
            client,
            scheme,
            _slot: permit,
        });
        match &tls {
            None => {
                tokio::spawn(serve(stream, None, connection, shared.clone()));
            }
            Some(tls) => {
                let acceptor = TlsAcceptor::from(tls.load_full());
                tokio::spawn(serve_tls(
                    config.name.clone(),
                    stream,
                    acceptor,
                    connection,
                    shared.clone(),
                ));
            }
        }
    }
    tracing::info!(listener = config.name, address = %config.address, "listener closed");
}

/// The `tls` stage: the handshake, bounded by `limits.tls_handshake_timeout` (rustls has no
/// timeout: a client that never finishes would hold its connection slot), then HTTP as
/// ALPN chose. The slot is held from accept on, so handshakes count as connections.
async fn serve_tls(
    listener: String,
    stream: TcpStream,
    acceptor: TlsAcceptor,
    connection: Arc<ConnectionInfo>,
    shared: Arc<Shared>,
) {
    let timeout = shared.snapshot.load().limits.tls_handshake_timeout;
    let client = connection.client;
    let mut shutdown = shared.shutdown.clone();
    let stream = tokio::select! {
        handshake = tokio::time::timeout(timeout, acceptor.accept(stream)) => match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(%client, "TLS handshake failed: {error}");
                shared.snapshot.load().handles.metrics.handshake_failed(&listener, "error");
                return;
            }
            Err(_) => {
                shared.snapshot.load().handles.metrics.handshake_failed(&listener, "timeout");
                tracing::debug!(
                    %client,
                    "TLS handshake not done within limits.tls_handshake_timeout ({timeout:?}); closing"
                );
                return;
            }
        },
        () = stopped(&mut shutdown) => return,
    };
    let alpn = match stream.get_ref().1.alpn_protocol() {
        Some(tls::ALPN_H2) => Some(Alpn::Http2),
        Some(tls::ALPN_HTTP1) => Some(Alpn::Http1),
        _ => None,
    };
    serve(stream, alpn, connection, shared).await;
}

/// The HTTP version a TLS client and the gateway agreed on.
#[derive(Clone, Copy)]
enum Alpn {
    Http1,
    Http2,
}

/// Serves one connection under its timers (all from the first byte, whatever the protocol):
/// the first request head within `header_read_timeout` (this covers a silent client, the
/// HTTP/1-vs-HTTP/2 preface and the gap after a TLS handshake), an HTTP/2 SETTINGS ack
/// within `http2_settings_timeout`, PINGs answered within `http2_keep_alive_timeout`
/// (hyper), and once closing (idle, or shutdown), a hard close `close_grace` after nothing
/// is in flight, whether or not the peer answered the GOAWAY.
async fn serve<S>(
    stream: S,
    alpn: Option<Alpn>,
    connection: Arc<ConnectionInfo>,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Limits are read per connection, so a reload applies to new connections.
    let limits = shared.snapshot.load().limits.clone();
    let client = connection.client;
    // Without ALPN (plain listeners, or TLS clients that offer none) the preface decides.
    let builder = match alpn {
        None => builder(&limits),
        Some(Alpn::Http1) => builder(&limits).http1_only(),
        Some(Alpn::Http2) => builder(&limits).http2_only(),
    };
    let activity = Activity::new();
    let service = {
        let (snapshot, activity) = (shared.snapshot.clone(), activity.clone());
        let sampling = shared.sampling.clone();
        service_fn(move |req: Request<Incoming>| {
            let busy = activity.begin();
            // The snapshot is taken once per request and kept to its end.
            let future = handle(
                snapshot.load_full(),
                sampling.sampled(),
                connection.clone(),
                req,
            );
            async move {
                let response = future.await.map(|body| Tracked::new(body, busy));
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let (stream, seen) = H2Watch::new(stream);
    // With upgrades: a WebSocket handshake answered 101 hands the connection to forward.rs.
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let first_request = tokio::time::sleep(limits.header_read_timeout);
    tokio::pin!(first_request);
    let settings_overdue = h2_watch::settings_overdue(seen, limits.http2_settings_timeout);
    tokio::pin!(settings_overdue);
    let mut shutdown = shared.shutdown.clone();
    let mut waiting_for_first = true;
    // Set when the gateway starts closing (GOAWAY on HTTP/2).
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%client, "connection ended: {error}");
                }
                break;
            }
            () = &mut first_request, if waiting_for_first => {
                waiting_for_first = false;
                if !activity.started() {
                    tracing::debug!(
                        %client,
                        "no request head within limits.header_read_timeout ({:?}); closing",
                        limits.header_read_timeout
                    );
                    break;
                }
            }
            () = &mut settings_overdue => {
                tracing::debug!(
                    %client,
                    "HTTP/2 SETTINGS not acknowledged within limits.http2_settings_timeout ({:?}); closing",
                    limits.http2_settings_timeout
                );
                break;
            }
            // Graceful: a request in flight finishes, then the connection closes.
            _ = activity.idle_for(limits.idle_timeout), if closing.is_none() => {
                closing = Some(Instant::now());
                conn.as_mut().graceful_shutdown();
            }
            () = stopped(&mut shutdown), if closing.is_none() => {
                closing = Some(Instant::now());
                conn.as_mut().graceful_shutdown();
            }
            // A peer that ignores GOAWAY (or its PING) does not keep the socket.
            () = closing_overdue(&activity, closing, limits.close_grace), if closing.is_some() => {
                tracing::debug!(
                    %client,
                    "closed: limits.close_grace ({:?}) passed after GOAWAY, nothing in flight",
                    limits.close_grace
                );
                break;
            }
        }
    }
}

/// Resolves `grace` after closing began, once nothing is in flight.
async fn closing_overdue(activity: &Activity, since: Option<Instant>, grace: Duration) {
    if let Some(since) = since {
        tokio::time::sleep_until(since + grace).await;
    }
    activity.idle_for(Duration::ZERO).await;
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
        // A PING not answered in time closes the connection.
        .keep_alive_interval(limits.http2_keep_alive_interval)
        .keep_alive_timeout(limits.http2_keep_alive_timeout)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}
