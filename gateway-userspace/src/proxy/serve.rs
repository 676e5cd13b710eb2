//! Serving one accepted connection: HTTP/1.1 or HTTP/2 as ALPN chose, or (plain listeners,
//! TLS clients that offer no ALPN) as the first bytes tell, under the configured timers (all
//! from the first byte, whatever the protocol): the first request head within
//! `header_read_timeout` (this covers a silent client, the HTTP/1-vs-HTTP/2 preface and the
//! gap after a TLS handshake), an HTTP/2 SETTINGS ack within `http2_settings_timeout`, PINGs
//! answered within `http2_keep_alive_timeout` (hyper), and once closing (idle, or shutdown),
//! a hard close `close_grace` after nothing is in flight, whether or not the peer answered
//! the GOAWAY. HTTP/1.1 runs in serve_http1.rs.

use std::{future::Future, io, sync::Arc, time::Duration};

use hyper::{
    Request,
    body::{Bytes, Incoming},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite},
    net::TcpStream,
    sync::watch,
    time::Instant,
};

use crate::config::HttpLimits;

use super::{
    ConnectionInfo,
    activity::{Activity, Tracked},
    cycle_io::{CycleIo, CycleState},
    h2_watch::{self, H2Watch, PREFACE},
    handle,
    listener::Shared,
    serve_http1,
};

/// A client socket that can wait for its peer's next bytes without reading them, so an idle
/// connection holds no read buffer.
pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Resolves once there is something to read (or the peer closed).
    fn readable(&mut self) -> impl Future<Output = io::Result<()>> + Send + '_;
}

impl Socket for TcpStream {
    fn readable(&mut self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        TcpStream::readable(self)
    }
}

impl Socket for tokio_rustls::server::TlsStream<TcpStream> {
    fn readable(&mut self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        // rustls may already hold a request: one that came with the end of the handshake, or
        // a pipelined one decrypted with the last. An error is for the next read to report.
        let buffered = self
            .get_mut()
            .1
            .process_new_packets()
            .map_or(true, |state| state.plaintext_bytes_to_read() > 0);
        let socket = self.get_ref().0;
        async move {
            if buffered {
                return Ok(());
            }
            socket.readable().await
        }
    }
}

/// The HTTP version a TLS client and the gateway agreed on.
#[derive(Clone, Copy)]
pub enum Alpn {
    Http1,
    Http2,
}

/// Serves one connection until it closes.
pub async fn serve<S: Socket>(
    mut stream: S,
    alpn: Option<Alpn>,
    connection: Arc<ConnectionInfo>,
    shared: Arc<Shared>,
) {
    // Limits are read per connection, so a reload applies to new connections.
    let limits = Arc::new(shared.snapshot.load().limits.clone());
    let activity = Activity::new();
    let (http2, first_bytes) = match alpn {
        Some(Alpn::Http1) => (false, Bytes::new()),
        Some(Alpn::Http2) => (true, Bytes::new()),
        None => {
            let deadline =
                activity.last_end() + limits.header_read_timeout.min(limits.idle_timeout);
            let mut shutdown = shared.shutdown.clone();
            let sniffed = tokio::select! {
                sniffed = tokio::time::timeout_at(deadline, sniff(&mut stream)) => sniffed,
                () = stopped(&mut shutdown) => return,
            };
            match sniffed {
                Ok(Ok(sniffed)) => sniffed,
                Ok(Err(error)) => {
                    tracing::debug!(client = %connection.client, "connection ended: {error}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(
                        client = %connection.client,
                        "no request head within limits.header_read_timeout ({:?}); closing",
                        limits.header_read_timeout
                    );
                    return;
                }
            }
        }
    };
    let service = service(&shared, connection, &activity);
    if http2 {
        // Boxed: the HTTP/2 state is not reserved in every connection's task.
        Box::pin(serve_http2(
            stream,
            first_bytes,
            limits,
            activity,
            service,
            shared,
        ))
        .await;
    } else {
        serve_http1::serve(stream, first_bytes, limits, activity, service, shared).await;
    }
}

/// Reads until the bytes are or are not the HTTP/2 preface (at most its 24 bytes); returns
/// whether they are, and the bytes read, to be replayed.
async fn sniff<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<(bool, Bytes)> {
    let mut bytes = [0u8; PREFACE.len()];
    let mut have = 0;
    while have < PREFACE.len() {
        let read = stream.read(&mut bytes[have..]).await?;
        if read == 0 {
            // Closed early: let hyper see the same bytes and the end.
            break;
        }
        have += read;
        if bytes[..have] != PREFACE[..have] {
            break;
        }
    }
    let http2 = bytes[..have] == *PREFACE;
    Ok((http2, Bytes::copy_from_slice(&bytes[..have])))
}

/// The per-connection service: each request counted in `activity` until its response body ends.
pub fn service(
    shared: &Shared,
    connection: Arc<ConnectionInfo>,
    activity: &Arc<Activity>,
) -> Service {
    let (snapshot, activity) = (shared.snapshot.clone(), activity.clone());
    let sampling = shared.sampling.clone();
    Service(Arc::new(move |req: Request<Incoming>| {
        let busy = activity.begin();
        // The snapshot is taken once per request and kept to its end.
        let future = handle(
            snapshot.load_full(),
            sampling.sampled(),
            connection.clone(),
            req,
        );
        Box::pin(async move {
            let response = future.await;
            if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
                busy.upgrading();
            }
            let response = response.map(|body| Tracked::new(body, busy));
            Ok::<_, std::convert::Infallible>(response)
        })
    }))
}

type Respond = std::pin::Pin<
    Box<dyn Future<Output = Result<hyper::Response<Tracked>, std::convert::Infallible>> + Send>,
>;

/// The service, shared by every cycle of a connection (a cheap clone).
#[derive(Clone)]
pub struct Service(Arc<dyn Fn(Request<Incoming>) -> Respond + Send + Sync>);

impl Service {
    pub fn hyper(
        &self,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = hyper::Response<Tracked>,
        Error = std::convert::Infallible,
        Future = Respond,
    > + Clone
    + Send
    + Sync
    + 'static {
        let this = self.0.clone();
        service_fn(move |req| this(req))
    }
}

/// HTTP/2: one hyper connection for the connection's life.
async fn serve_http2<S: Socket>(
    stream: S,
    first_bytes: Bytes,
    limits: Arc<HttpLimits>,
    activity: Arc<Activity>,
    service: Service,
    shared: Arc<Shared>,
) {
    let io = CycleIo::new(stream, first_bytes, CycleState::new_passing(), None);
    let (io, seen) = H2Watch::new(io);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_http2_streams)
        // A PING not answered in time closes the connection.
        .keep_alive_interval(limits.http2_keep_alive_interval)
        .keep_alive_timeout(limits.http2_keep_alive_timeout)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let builder = builder.http2_only();
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service.hyper());
    tokio::pin!(conn);
    let first_request = tokio::time::sleep_until(activity.last_end() + limits.header_read_timeout);
    tokio::pin!(first_request);
    let settings_overdue = h2_watch::settings_overdue(seen, limits.http2_settings_timeout);
    tokio::pin!(settings_overdue);
    let mut shutdown = shared.shutdown.clone();
    let mut waiting_for_first = true;
    // Set when the gateway starts closing (GOAWAY).
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!("connection ended: {error}");
                }
                break;
            }
            () = &mut first_request, if waiting_for_first => {
                waiting_for_first = false;
                if !activity.started() {
                    tracing::debug!(
                        "no request head within limits.header_read_timeout ({:?}); closing",
                        limits.header_read_timeout
                    );
                    break;
                }
            }
            () = &mut settings_overdue => {
                tracing::debug!(
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
                    "closed: limits.close_grace ({:?}) passed after GOAWAY, nothing in flight",
                    limits.close_grace
                );
                break;
            }
        }
    }
}

/// Resolves `grace` after closing began, once nothing is in flight.
pub async fn closing_overdue(activity: &Activity, since: Option<Instant>, grace: Duration) {
    if let Some(since) = since {
        tokio::time::sleep_until(since + grace).await;
    }
    activity.idle_for(Duration::ZERO).await;
}

/// Resolves once shutdown has begun (at once if it already has).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An error means the proxy is gone: stop as well.
    let _ = shutdown.wait_for(|stop| *stop).await;
}
