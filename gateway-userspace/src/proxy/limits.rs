//! The `limits` stages: the request line (501, 400), header bytes (431) and the request body
//! (413, and 408 when it is too slow; client_body.rs). Header read time and connection counts
//! are enforced earlier, by the listener.

use http_body_util::BodyExt as _;
use hyper::{
    Method, Request,
    header::{CONNECTION, CONTENT_LENGTH, HeaderValue},
};

use crate::config::HttpLimits;

use super::{
    Flow, RequestCtx,
    body::{ProxyBody, empty},
    client_body::{BodyLimits, ClientBody},
    error::{ErrorKind, ProxyError},
    snapshot::Snapshot,
};

/// Checks the request line beyond what the HTTP parser does. A method token over
/// `limits.max_method_bytes`, or not in `limits.methods` when that allow-list is set, is
/// answered 501, as a method the gateway does not know (RFC 9110 15.6.2), on every protocol
/// (hyper accepts any token, even 16 KiB). The asterisk-form target `*` is only for OPTIONS
/// (RFC 9112 3.2.4): with another method (`PRI * HTTP/1.1`, say) it is a 400.
pub fn limit_request_line(
    snapshot: &Snapshot,
    ctx: &mut RequestCtx,
    req: &Request<ProxyBody>,
) -> Result<Flow, ProxyError> {
    let refused = request_line_problem(&snapshot.limits, req);
    if refused.is_some() {
        // A client that sends such a line is not worth keeping (HTTP/1; h2 drops the field).
        ctx.response_headers
            .push((CONNECTION, HeaderValue::from_static("close")));
    }
    refused.map_or(Ok(Flow::Continue), Err)
}

fn request_line_problem(limits: &HttpLimits, req: &Request<ProxyBody>) -> Option<ProxyError> {
    let method = req.method();
    let length = method.as_str().len();
    if length > limits.max_method_bytes {
        return Some(ProxyError::new(
            ErrorKind::MethodNotImplemented,
            format!(
                "a method of {length} bytes, over limits.max_method_bytes = {}",
                limits.max_method_bytes
            ),
        ));
    }
    if !limits.methods.is_empty() && !limits.methods.contains(method) {
        return Some(ProxyError::new(
            ErrorKind::MethodNotImplemented,
            format!("method {method} is not in limits.methods"),
        ));
    }
    if req.uri().path() == "*" && method != Method::OPTIONS {
        return Some(ProxyError::new(
            ErrorKind::BadRequest,
            format!("the target * with method {method}: only OPTIONS may use it"),
        ));
    }
    None
}

/// Refuses a request whose head (request line and header fields, as on the wire) is over
/// `limits.max_header_bytes`. hyper refuses far larger heads before they are parsed.
pub fn limit_headers(snapshot: &Snapshot, req: &Request<ProxyBody>) -> Result<Flow, ProxyError> {
    let max = snapshot.limits.max_header_bytes;
    // "METHOD target HTTP/1.1\r\n"; the target is origin-form unless it has an authority.
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len() + 8);
    let line = req.method().as_str().len() + target + 11;
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if line + fields > max {
        return Err(ProxyError::new(
            ErrorKind::HeadersTooLarge,
            format!(
                "request head of {} bytes over limits.max_header_bytes = {max}",
                line + fields
            ),
        ));
    }
    Ok(Flow::Continue)
}

/// Refuses a declared length over the limit at once, and caps and times a streamed body so
/// that it fails (and the request with it, as the client's fault) as soon as it crosses the
/// limit or is too slow. Its [`BodyWatch`](super::client_body::BodyWatch) goes along as a
/// request extension, for forward.rs.
pub fn limit_body(
    snapshot: &Snapshot,
    ctx: &mut RequestCtx,
    req: &mut Request<ProxyBody>,
) -> Result<Flow, ProxyError> {
    let max = snapshot.limits.max_body_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max) {
        return Err(too_large(max));
    }
    // An empty body has nothing to cap; keep its exact size hint (no chunked upstream).
    if ctx.class.has_body {
        let limits = &snapshot.limits;
        let limits = BodyLimits {
            max_bytes: max,
            read_timeout: limits.body_read_timeout,
            min_rate: limits.min_body_rate,
        };
        let body = std::mem::replace(req.body_mut(), empty());
        let (body, watch) = ClientBody::new(body, limits);
        *req.body_mut() = body.boxed();
        req.extensions_mut().insert(watch);
    }
    Ok(Flow::Continue)
}

fn too_large(max: u64) -> ProxyError {
    ProxyError::new(
        ErrorKind::BodyTooLarge,
        format!("request body over limits.max_body_bytes = {max}"),
    )
}
