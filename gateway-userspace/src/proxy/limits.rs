//! The `limits` stages: header bytes (431) and the request body (413). Header read time
//! and connection counts are enforced earlier, by the listener.

use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper::{Request, body::Body as _, header::CONTENT_LENGTH};

use super::{
    Flow, RequestContext,
    body::{ProxyBody, empty},
    error::{ErrorKind, ProxyError},
};

/// Refuses a request whose head (request line and header fields, as on the wire) is over
/// `limits.max_header_bytes`. hyper refuses far larger heads before they are parsed.
pub fn limit_headers(
    ctx: &mut RequestContext,
    req: &Request<ProxyBody>,
) -> Result<Flow, ProxyError> {
    let max = ctx.snapshot.limits.max_header_bytes;
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

/// Refuses a declared length over the limit at once, and caps a streamed body so that it
/// fails (and the request with it) as soon as it crosses the limit.
pub fn limit_body(
    ctx: &mut RequestContext,
    req: &mut Request<ProxyBody>,
) -> Result<Flow, ProxyError> {
    let max = ctx.snapshot.limits.max_body_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max) {
        return Err(too_large(max));
    }
    // An empty body has nothing to cap; keep its exact size hint (no chunked upstream).
    if !req.body().is_end_stream() {
        let body = std::mem::replace(req.body_mut(), empty());
        *req.body_mut() = Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX)).boxed();
    }
    Ok(Flow::Continue)
}

fn too_large(max: u64) -> ProxyError {
    ProxyError::new(
        ErrorKind::BodyTooLarge,
        format!("request body over limits.max_body_bytes = {max}"),
    )
}

/// Whether `error` (anywhere in its source chain) is the body limit being crossed.
pub fn is_body_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<LengthLimitError>() {
            return true;
        }
        current = error.source();
    }
    false
}
