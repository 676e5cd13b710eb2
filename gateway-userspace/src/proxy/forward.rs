//! The `forward` stage: send the request to the chosen target over a pooled keep-alive
//! client, within the upstream's timeouts, and hand back its response; retries (within a
//! budget) on another target, and feeds target health (health.rs) with each outcome.
//!
//! Each failure says whose fault it is. The client's body failing (malformed, aborted, too
//! slow, too large; client_body.rs) is the client's, even though it surfaces as the upstream
//! exchange failing: it never counts against the target (no ejection, no EWMA sample).

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use http_body_util::BodyExt as _;
use hyper::{
    Method, Request, Response, StatusCode, Uri, Version, http::uri::PathAndQuery,
    upgrade::OnUpgrade,
};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};

use crate::config::{UpstreamConfig, UpstreamProtocol};

use super::{
    ConnectionInfo, RequestCtx, Routed, balance,
    body::{ProxyBody, boxed, empty},
    client_body::{BodyWatch, ClientBodyError, ClientFault},
    error::{Cause, ErrorKind, ProxyError},
    snapshot::Upstream,
    upstream_tls,
};

/// One pool per upstream, so each has its own timeouts (and TLS settings: the connector
/// speaks TLS for an upstream with `tls`, plain HTTP otherwise).
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// The pool for the upstream's `protocol`.
pub fn client(config: &UpstreamConfig) -> UpstreamClient {
    match config.protocol {
        UpstreamProtocol::Http1 => builder(config).build(connector(config, false)),
        UpstreamProtocol::H2c | UpstreamProtocol::H2 => h2c_client(config),
    }
}

/// HTTP/2 only (h2c, or h2 over TLS): for gRPC, so trailers go through, and for upstreams
/// with `protocol = "h2c"` or `"h2"`.
pub fn h2c_client(config: &UpstreamConfig) -> UpstreamClient {
    builder(config)
        .http2_only(true)
        .timer(TokioTimer::new())
        .build(connector(config, true))
}

fn connector(config: &UpstreamConfig, h2_only: bool) -> HttpsConnector<HttpConnector> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    upstream_tls::connector(connector, config.tls.as_ref(), h2_only)
}

fn builder(config: &UpstreamConfig) -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(config.idle_timeout)
        .pool_timer(TokioTimer::new());
    builder
}

/// Sends the request to `ctx.target`; for an upstream with `retry`, an idempotent bodiless
/// request (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) that could not connect, timed out
/// connecting, was dropped unanswered (the connection closed or reset before a response
/// head, as nginx's `proxy_next_upstream error` and Envoy's `retry_on: reset`), or got one
/// of the `on_status` statuses is sent again to a target it has not tried, up to `attempts`
/// more times and within the upstream's [`RetryBudget`]. Requests with a body are never
/// retried (it is streamed, not buffered); POST and PATCH never are.
/// A WebSocket handshake is never retried: on a 101 the two connections are joined.
pub async fn forward(
    routed: &Routed<'_>,
    ctx: &mut RequestCtx,
    target: usize,
    mut req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let upstream = routed.upstream;
    let path = routed.upstream_path.clone();
    let grpc = ctx.class.grpc && !ctx.class.grpc_web;
    let websocket = ctx.class.websocket.then(|| hyper::upgrade::on(&mut req));
    let retry = upstream.config.retry.as_ref().filter(|retry| {
        retry.attempts > 0
            && is_idempotent(req.method())
            && !ctx.class.has_body
            && websocket.is_none()
    });
    let Some(retry) = retry else {
        let response = attempt(upstream, target, path, grpc, req).await?;
        return Ok(match websocket {
            Some(client) => tunnel(client, response, ctx.connection.clone()),
            None => response,
        });
    };
    upstream.retry_budget.record_request();
    // What a retry resends: the body is empty, so method, headers and version are all.
    let (method, headers) = (req.method().clone(), req.headers().clone());
    let key = balance::request_key(upstream, ctx.connection.client.ip(), &headers);
    let mut tried = Vec::new();
    let mut next = Some(req);
    let mut target = target;
    loop {
        tried.push(target);
        let req = next.take().unwrap_or_else(|| {
            let mut req = Request::new(empty());
            *req.method_mut() = method.clone();
            *req.headers_mut() = headers.clone();
            req
        });
        let result = attempt(upstream, target, path.clone(), grpc, req).await;
        let failed = match &result {
            Ok(response) => retry.on_status.contains(&response.status().as_u16()),
            // Only idempotent requests get here.
            Err(error) => error.retry_allowed(true),
        };
        if !failed || tried.len() > retry.attempts as usize {
            return result;
        }
        let Some(other) = balance::choose(upstream, key, &tried) else {
            return result;
        };
        if !upstream.retry_budget.try_retry() {
            tracing::debug!(
                upstream = upstream.config.name,
                "retry budget spent: not retrying"
            );
            return result;
        }
        tracing::debug!(
            upstream = upstream.config.name,
            from = upstream.config.targets[target].address,
            to = upstream.config.targets[other].address,
            "retrying on another target"
        );
        ctx.target = Some(other);
        target = other;
    }
}

/// On the upstream's 101, copies bytes both ways between the client's and the upstream's
/// upgraded connections (once the 101 has reached the client) until either side closes.
/// Any other answer goes back as it is. The tunnel keeps the client connection's slot.
fn tunnel(
    client: OnUpgrade,
    mut response: Response<ProxyBody>,
    connection: Arc<ConnectionInfo>,
) -> Response<ProxyBody> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return response;
    }
    let upstream = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(error) => {
                tracing::debug!("WebSocket upgrade failed: {error}");
                return;
            }
        };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!("WebSocket connection ended: {error}");
        }
        drop(connection);
    });
    response
}

fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ]
    .contains(method)
}

/// One try on one target: counts it in flight, times it, and records the outcome for
/// passive ejection (connect errors, timeouts and 5xx are failures). `grpc`: a gRPC
/// request (not gRPC-Web), which goes on over HTTP/2 when the client spoke HTTP/2.
pub(super) async fn attempt(
    upstream: &Upstream,
    index: usize,
    path: PathAndQuery,
    grpc: bool,
    mut req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let target = &upstream.config.targets[index];
    let state = &upstream.targets[index];
    *req.uri_mut() = Uri::builder()
        .scheme(upstream_tls::scheme(&upstream.config))
        .authority(target.address.as_str())
        .path_and_query(path)
        .build()
        .map_err(|error| ProxyError::new(ErrorKind::Internal, format!("upstream URI: {error}")))?;
    // Upstreams get their `protocol` whatever the client spoke; gRPC from an HTTP/2 client
    // goes on over HTTP/2 (h2c), for its trailers (gRPC-Web works over HTTP/1.1).
    let grpc = grpc && req.version() == Version::HTTP_2;
    let h2c = upstream.config.protocol.http2_only();
    *req.version_mut() = if grpc || h2c {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let client = if grpc && !h2c {
        &upstream.h2c_client
    } else {
        &upstream.client
    };

    let timeout = upstream.config.request_timeout;
    let describe = |what: &str| format!("{what} {} ({})", target.address, upstream.config.name);
    let body = req.extensions().get::<BodyWatch>().cloned();
    let started = Instant::now();
    let in_flight = state.begin();
    let result = match tokio::time::timeout(timeout, client.request(req)).await {
        // Still waiting for the client's body: the upstream cannot be expected to answer.
        Err(_elapsed) if body.as_ref().is_some_and(BodyWatch::waiting_on_client) => {
            Err(ProxyError::new(
                ErrorKind::BodyTimeout,
                describe(&format!(
                    "request_timeout ({timeout:?}) passed with the client's body still arriving for"
                )),
            ))
        }
        Err(_elapsed) => Err(ProxyError {
            sent: true,
            ..ProxyError::new(
                ErrorKind::UpstreamTimeout,
                describe(&format!("no response within {timeout:?} from")),
            )
        }),
        Ok(Ok(mut response)) => {
            // The client gets its own protocol version back, not the upstream's.
            *response.version_mut() = Version::HTTP_11;
            // In flight until the body is streamed (or dropped): the guard lives in it.
            Ok(response.map(|body| {
                boxed(body.map_frame(move |frame| {
                    let _ = &in_flight;
                    frame
                }))
            }))
        }
        Ok(Err(error)) => Err(classify(&error, body.as_ref(), describe)),
    };
    let success = match &result {
        Ok(response) => {
            state.observe_latency(started.elapsed());
            !response.status().is_server_error()
        }
        // The client's fault, not the target's: no ejection streak, no latency sample.
        Err(error) if error.cause() == Cause::Client => return result,
        Err(_) => {
            // A failure counts as slow as the connect timeout, for P2C-EWMA.
            state.observe_latency(started.elapsed().max(upstream.config.connect_timeout));
            false
        }
    };
    if state.record(success, &upstream.config) {
        tracing::warn!(
            upstream = upstream.config.name,
            target = target.address,
            "target ejected for {:?} after {} failures in a row",
            upstream.config.ejection_time,
            upstream.config.consecutive_failures
        );
    }
    result
}

/// Caps retries at `percent` of the requests of the last [`RetryBudget::WINDOW`] seconds,
/// plus `min_per_second` retries per second of the window (so a quiet upstream can still
/// retry). Like Finagle's and Envoy's retry budgets: retries cannot multiply load.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    min_per_second: u64,
    /// Per second: (second since `origin`, requests, retries); the slot is the second
    /// modulo the window.
    slots: Mutex<[(u64, u64, u64); RetryBudget::WINDOW as usize]>,
    origin: Instant,
}

impl RetryBudget {
    pub const WINDOW: u64 = 10;

    pub fn new(percent: u32, min_per_second: u32) -> RetryBudget {
        RetryBudget {
            percent: u64::from(percent),
            min_per_second: u64::from(min_per_second),
            slots: Mutex::new([(u64::MAX, 0, 0); Self::WINDOW as usize]),
            origin: Instant::now(),
        }
    }

    /// Counts one first try of a retryable request.
    pub fn record_request(&self) {
        let now = self.origin.elapsed().as_secs();
        Self::slot(&mut *self.lock(), now).1 += 1;
    }

    /// Takes one retry from the budget, or says there is none left.
    pub fn try_retry(&self) -> bool {
        let now = self.origin.elapsed().as_secs();
        let mut slots = self.lock();
        let (mut requests, mut retries) = (0, 0);
        for &(second, slot_requests, slot_retries) in slots.iter() {
            if second != u64::MAX && now.saturating_sub(second) < Self::WINDOW {
                requests += slot_requests;
                retries += slot_retries;
            }
        }
        let allowed = self.min_per_second * Self::WINDOW + requests * self.percent / 100;
        if retries >= allowed {
            return false;
        }
        Self::slot(&mut *slots, now).2 += 1;
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [(u64, u64, u64); RetryBudget::WINDOW as usize]> {
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This second's slot, emptied first if it last held an older second.
    fn slot(slots: &mut [(u64, u64, u64)], now: u64) -> &mut (u64, u64, u64) {
        let slot = &mut slots[(now % Self::WINDOW) as usize];
        if slot.0 != now {
            *slot = (now, 0, 0);
        }
        slot
    }
}

/// Maps an upstream client error to who caused it: the client's body (400, 408, 413, 499:
/// whatever the exchange then did, the body failed first), a connect timeout (504), or any
/// other upstream failure (502), telling apart a request the upstream dropped unanswered.
fn classify(
    error: &hyper_util::client::legacy::Error,
    body: Option<&BodyWatch>,
    describe: impl Fn(&str) -> String,
) -> ProxyError {
    let tagged = || chain(error).find_map(|cause| cause.downcast_ref::<ClientBodyError>());
    if let Some(fault) = body
        .and_then(BodyWatch::fault)
        .or_else(|| Some(tagged()?.fault))
    {
        let kind = match fault {
            ClientFault::Malformed => ErrorKind::BodyMalformed,
            ClientFault::Aborted => ErrorKind::ClientClosed,
            ClientFault::TimedOut => ErrorKind::BodyTimeout,
            ClientFault::TooLarge => ErrorKind::BodyTooLarge,
        };
        let detail = tagged().map_or_else(|| format!("{fault:?}"), ToString::to_string);
        return ProxyError::new(kind, format!("{}: {detail}", describe("sending to")));
    }
    let io_kind = |wanted: &[std::io::ErrorKind]| {
        chain(error).any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| wanted.contains(&io.kind()))
        })
    };
    let timed_out = io_kind(&[std::io::ErrorKind::TimedOut]);
    let hyper_error = chain(error).find_map(|cause| cause.downcast_ref::<hyper::Error>());
    // No response head came (that would have been an `Ok`): closed or reset before one.
    let unanswered = hyper_error.is_some_and(|e| e.is_incomplete_message() || e.is_canceled())
        || io_kind(&[
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::ConnectionAborted,
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::UnexpectedEof,
        ]);
    if let Some(reason) = upstream_tls::failure(error) {
        return ProxyError {
            sent: !error.is_connect(),
            unanswered: !error.is_connect(),
            ..ProxyError::new(
                ErrorKind::UpstreamTls,
                format!("{}: {reason}", describe("TLS failed with")),
            )
        };
    }
    let (kind, what) = match (error.is_connect(), timed_out) {
        (true, true) => (ErrorKind::UpstreamTimeout, "connect timed out to"),
        (true, false) => (ErrorKind::UpstreamFailed, "cannot connect to"),
        (false, _) if unanswered => (
            ErrorKind::UpstreamFailed,
            "connection dropped unanswered by",
        ),
        (false, _) => (ErrorKind::UpstreamFailed, "request failed to"),
    };
    ProxyError {
        // Not connected: nothing reached the upstream, so any request may be retried.
        sent: !error.is_connect(),
        unanswered,
        ..ProxyError::new(
            kind,
            format!(
                "{}: {}",
                describe(what),
                chain(error).last().map_or(String::new(), |e| e.to_string())
            ),
        )
    }
}

fn chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |error| error.source())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_budget_caps_retries() {
        let budget = RetryBudget::new(20, 0);
        for _ in 0..100 {
            budget.record_request();
        }
        let granted = (0..100).filter(|_| budget.try_retry()).count();
        assert_eq!(granted, 20);
        let floor = RetryBudget::new(20, 1);
        let granted = (0..100).filter(|_| floor.try_retry()).count();
        assert_eq!(granted, RetryBudget::WINDOW as usize);
    }

    #[test]
    fn only_idempotent_methods_retry() {
        assert!(is_idempotent(&Method::GET) && is_idempotent(&Method::DELETE));
        assert!(!is_idempotent(&Method::POST) && !is_idempotent(&Method::PATCH));
    }
}
