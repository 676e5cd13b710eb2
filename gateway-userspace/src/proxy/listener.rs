//! The `accept` stage: bind the listeners, cap concurrent connections, and serve each
//! connection (serve.rs) with HTTP/1.1 or HTTP/2 (prior knowledge) under the configured
//! limits. On `https` listeners the `tls` stage runs first: a handshake bounded by
//! `limits.tls_handshake_timeout`, then HTTP/2 or HTTP/1.1 as ALPN chose.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};
use tokio_rustls::TlsAcceptor;

use crate::{config::ListenerConfig, guard::AcceptGuard};

use super::{
    ConnectionInfo, client_cert,
    serve::{Alpn, serve, stopped},
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
        let connection = ConnectionInfo {
            client,
            scheme,
            client_cert: None,
            _slot: permit,
        };
        match &tls {
            None => {
                tokio::spawn(serve(stream, None, Arc::new(connection), shared.clone()));
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
    mut connection: ConnectionInfo,
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
    let session = stream.get_ref().1;
    let alpn = match session.alpn_protocol() {
        Some(tls::ALPN_H2) => Some(Alpn::Http2),
        Some(tls::ALPN_HTTP1) => Some(Alpn::Http1),
        _ => None,
    };
    // rustls verified it against the listener's `client_auth` (CA, CRLs) already.
    if let Some(leaf) = session.peer_certificates().and_then(|chain| chain.first()) {
        let snapshot = shared.snapshot.load();
        let identity = snapshot
            .client_identities
            .iter()
            .find(|(name, _)| *name == listener)
            .map(|(_, identity)| *identity)
            .unwrap_or_default();
        connection.client_cert = client_cert::describe(leaf, identity);
    }
    serve(stream, alpn, Arc::new(connection), shared).await;
}
