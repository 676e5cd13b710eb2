//! Accept loops of the side listeners (admin socket, admin TCP, metrics): each with its own
//! connection cap and timers, so filling one up refuses connections there and takes
//! nothing from the public listeners (their own semaphore, and descriptors reserved for
//! them by `rlimit.rs`).

use std::{convert::Infallible, future::Future, io, sync::Arc};

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
    sync::Semaphore,
};

use crate::config::SideLimits;

/// A listening socket of either kind.
pub trait Listen: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Listen for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Stream> {
        TcpListener::accept(self).await.map(|(stream, _)| stream)
    }
}

impl Listen for UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Stream> {
        UnixListener::accept(self).await.map(|(stream, _)| stream)
    }
}

/// Accepts forever, serving each connection with HTTP/1.1 and `respond`. A connection over
/// `limits.max_connections` is closed at once; a head not read within
/// `limits.header_read_timeout` (from accept, and between keep-alive requests) closes the
/// connection; a request not answered within `limits.request_timeout` gets 408 and a close.
pub async fn serve_connections<L, F, Fut>(
    listener: L,
    name: &'static str,
    limits: SideLimits,
    respond: F,
) where
    L: Listen,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = name, %error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(
                listener = name,
                max_connections = limits.max_connections,
                "connection refused: the listener's max_connections reached"
            );
            continue;
        };
        let respond = respond.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let answer = tokio::time::timeout(limits.request_timeout, respond(request));
                async move { Ok::<_, Infallible>(answer.await.unwrap_or_else(|_| timed_out())) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(listener = name, %error, "connection ended with an error");
            }
            drop(slot);
        });
    }
}

fn timed_out() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(
        b"{\"error\":\"the request was not read and answered within request_timeout\"}",
    )));
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    response.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    response
}
