//! The header stages: what the upstream sees (hop-by-hop fields removed, forwarding fields,
//! the request id, the route's edits) and what the client gets back.

use std::{fmt::Write as _, net::IpAddr};

use hyper::{
    HeaderMap, Method, Request, Response, StatusCode, Version,
    body::Bytes,
    header::{CONNECTION, CONTENT_TYPE, HOST, HeaderName, HeaderValue, TE, UPGRADE, VARY},
};

use crate::config::HeaderOps;

use super::{
    Flow, RequestCtx, Routed, body::ProxyBody, client_cert, error::ProxyError, trace::TRACEPARENT,
};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// `crate::http::HOP_BY_HOP` as typed names: removing by `&str` parses and hashes the name
/// again on every request.
static HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    HeaderName::from_static("trailer"),
    HeaderName::from_static("transfer-encoding"),
    UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Longest client-supplied request id kept; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// The client's `X-Request-Id` if it is sane, a new random one otherwise.
pub fn request_id<B>(req: &Request<B>) -> HeaderValue {
    if let Some(value) = req.headers().get(X_REQUEST_ID) {
        let bytes = value.as_bytes();
        if !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID
            && bytes.iter().all(|byte| byte.is_ascii_graphic())
        {
            return value.clone();
        }
    }
    let mut id = [0; 32];
    super::trace::lower_hex_into(&mut id, fastrand::u128(..));
    HeaderValue::from_bytes(&id).expect("hex is a valid header value")
}

/// Whether this is a gRPC request (`application/grpc`, `+proto`, `-web`...): its errors are
/// answered the gRPC way (error.rs).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

/// gRPC-Web (`application/grpc-web*`): gRPC over HTTP/1.1 as well.
pub fn is_grpc_web(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc-web"))
}

/// Whether this is an HTTP/1.1 WebSocket handshake (`GET`, `Connection: upgrade`,
/// `Upgrade: websocket`): the only upgrade the proxy passes on.
pub fn is_websocket<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && names_websocket(req.headers())
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

fn names_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(UPGRADE)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Puts back the two fields of a WebSocket handshake after the hop-by-hop removal.
fn keep_websocket(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
}

/// Prepares the request for the upstream.
pub fn prepare_request(
    routed: &Routed<'_>,
    ctx: &mut RequestCtx,
    req: &mut Request<ProxyBody>,
) -> Result<Flow, ProxyError> {
    let websocket = ctx.class.websocket;
    // gRPC servers want `TE: trailers`, the one TE value HTTP/2 allows.
    let te_trailers = ctx.class.grpc
        && req
            .headers()
            .get(TE)
            .is_some_and(|value| value == "trailers");
    let headers = req.headers_mut();
    remove_hop_by_hop(headers);
    // Only the gateway says which certificate the client showed (Envoy's XFCC).
    client_cert::remove_spoofed(headers);
    if let Some(cert) = &ctx.connection.client_cert {
        headers.insert(client_cert::XFCC, cert.xfcc.clone());
    }
    if websocket {
        keep_websocket(headers);
    }
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }

    let client = ctx.connection.client.ip();
    let proto = ctx.connection.scheme;
    let host = routed.host.as_ref().map(|host| host.as_str());
    let mut client_text = String::with_capacity(48);
    let _ = write!(client_text, "{client}");
    append(headers, X_FORWARDED_FOR, client_text);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    let mut forwarded = String::with_capacity(64);
    forwarded.push_str("for=");
    forwarded_node(&mut forwarded, client);
    forwarded.push_str(";proto=");
    forwarded.push_str(proto);
    if let Some(host) = host {
        if let Ok(value) = HeaderValue::from_str(host) {
            headers.insert(X_FORWARDED_HOST, value.clone());
            // HTTP/2 clients send no Host field: the upstream (HTTP/1.1) needs one.
            headers.insert(HOST, value);
        }
        forwarded.push_str(";host=\"");
        forwarded.push_str(host);
        forwarded.push('"');
    }
    append(headers, FORWARDED, forwarded);
    headers.insert(X_REQUEST_ID, ctx.request_id.clone());
    headers.insert(TRACEPARENT, ctx.trace.traceparent());

    apply(&routed.route.request_headers, headers);
    Ok(Flow::Continue)
}

/// Prepares the upstream's response for the client.
pub fn prepare_response(routed: &Routed<'_>, response: &mut Response<ProxyBody>) {
    let websocket =
        response.status() == StatusCode::SWITCHING_PROTOCOLS && names_websocket(response.headers());
    remove_hop_by_hop(response.headers_mut());
    if websocket {
        keep_websocket(response.headers_mut());
    }
    apply(&routed.route.response_headers, response.headers_mut());
}

/// Every response, the gateway's own errors included, carries the request id and the
/// fields the stages asked for (CORS, `WWW-Authenticate`, `RateLimit-*`).
pub fn finish_response(ctx: &mut RequestCtx, response: &mut Response<ProxyBody>) {
    let headers = response.headers_mut();
    headers.insert(X_REQUEST_ID, ctx.request_id.clone());
    for (name, value) in std::mem::take(&mut ctx.response_headers) {
        match name == VARY {
            true => headers.append(name, value),
            false => headers.insert(name, value).is_some(),
        };
    }
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Appends to a list-valued field, as one comma-separated line. The line is built in one
/// buffer that becomes the header value without a copy.
fn append(headers: &mut HeaderMap, name: HeaderName, item: String) {
    let mut joined = String::new();
    for value in headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        if !joined.is_empty() {
            joined.push_str(", ");
        }
        joined.push_str(value);
    }
    let joined = match joined.is_empty() {
        true => item,
        false => joined + ", " + &item,
    };
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
        headers.insert(name, value);
    }
}

/// `Forwarded: for=` syntax (RFC 7239): IPv6 addresses are bracketed and quoted.
fn forwarded_node(out: &mut String, ip: IpAddr) {
    let _ = match ip {
        IpAddr::V4(v4) => write!(out, "{v4}"),
        IpAddr::V6(v6) => write!(out, "\"[{v6}]\""),
    };
}

/// The route's edits: remove, then set (replace), then add (append).
fn apply(ops: &HeaderOps, headers: &mut HeaderMap) {
    for name in &ops.remove {
        headers.remove(name);
    }
    for (name, value) in &ops.set {
        headers.insert(name, value.clone());
    }
    for (name, value) in &ops.add {
        headers.append(name, value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_listed_fields_go() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("close, x-private"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("upgrade", HeaderValue::from_static("h2c"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers);
        assert_eq!(
            headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["x-kept"]
        );
    }

    #[test]
    fn typed_hop_by_hop_names_are_the_shared_list() {
        let typed: Vec<&str> = HOP_BY_HOP.iter().map(HeaderName::as_str).collect();
        assert_eq!(typed, crate::http::HOP_BY_HOP);
    }

    #[test]
    fn only_websocket_upgrades_are_recognised() {
        let req = |upgrade: &str, connection: &str| {
            Request::builder()
                .header(UPGRADE, upgrade)
                .header(CONNECTION, connection)
                .body(())
                .unwrap()
        };
        assert!(is_websocket(&req("websocket", "keep-alive, Upgrade")));
        assert!(is_websocket(&req("WebSocket", "upgrade")));
        assert!(!is_websocket(&req("h2c", "upgrade")));
        assert!(!is_websocket(&req("websocket", "keep-alive")));
    }

    #[test]
    fn forwarding_lists_are_appended() {
        let mut headers = HeaderMap::new();
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("192.0.2.1"));
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("192.0.2.2"));
        append(&mut headers, X_FORWARDED_FOR, "127.0.0.1".to_owned());
        assert_eq!(headers[X_FORWARDED_FOR], "192.0.2.1, 192.0.2.2, 127.0.0.1");
        append(&mut headers, FORWARDED, "for=192.0.2.9".to_owned());
        assert_eq!(headers[FORWARDED], "for=192.0.2.9");
        // A value that is not text is dropped from the joined line, as before.
        headers.insert(X_REQUEST_ID, HeaderValue::from_bytes(b"\xff").unwrap());
        append(&mut headers, X_REQUEST_ID, "a".to_owned());
        assert_eq!(headers[X_REQUEST_ID], "a");
        for (ip, node) in [
            ("::1", "\"[::1]\""),
            ("2001:db8::7", "\"[2001:db8::7]\""),
            ("::ffff:192.0.2.1", "\"[::ffff:192.0.2.1]\""),
            ("192.0.2.1", "192.0.2.1"),
            ("0.0.0.0", "0.0.0.0"),
        ] {
            let mut out = String::new();
            forwarded_node(&mut out, ip.parse().unwrap());
            assert_eq!(out, node);
        }
    }

    #[test]
    fn request_ids_are_kept_when_sane() {
        let req = |id: &str| {
            Request::builder()
                .header(X_REQUEST_ID, id)
                .body(())
                .unwrap()
        };
        assert_eq!(request_id(&req("abc-123")), "abc-123");
        let replaced = request_id(&req(&"x".repeat(200)));
        assert_eq!(replaced.len(), 32);
        let fresh = request_id(&Request::new(()));
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh, request_id(&Request::new(())));
    }
}
