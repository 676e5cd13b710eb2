//! The `route` stage: find the first route (in precedence order) that matches the request
//! (looked up in the compiled [`RouteTable`](super::route_table::RouteTable)), and work out
//! the path the upstream sees.

use hyper::{
    HeaderMap, Method, Request, Version,
    header::HOST,
    http::uri::{Authority, PathAndQuery},
};

use crate::config::{EscapedSlashes, HostMatch, PathMatch, RouteConfig, RouteMatch};

use std::sync::Arc;

use super::{
    Routed,
    body::ProxyBody,
    error::{ErrorKind, ProxyError},
    normalise::has_escaped_slash,
    snapshot::Snapshot,
};

/// The first route that matches, with the authority addressed and the upstream's path and
/// query; 404 when no route matches.
pub fn route<'s>(
    snapshot: &'s Arc<Snapshot>,
    req: &Request<ProxyBody>,
) -> Result<Routed<'s>, ProxyError> {
    let authority = authority(req)?;
    let lowered = authority.as_ref().and_then(super::context::lowered_host);
    let host = match &lowered {
        Some(lowered) => Some(&**lowered),
        None => authority
            .as_ref()
            .map(|authority| authority.host().trim_end_matches('.')),
    };
    let path = req.uri().path();
    // A CORS preflight is matched by the method it asks about (cors.rs answers it).
    let method = super::cors::is_preflight(req)
        .then(|| req.headers()[hyper::header::ACCESS_CONTROL_REQUEST_METHOD].as_bytes())
        .and_then(|method| Method::from_bytes(method).ok())
        .unwrap_or_else(|| req.method().clone());
    let Some(index) = snapshot
        .route_table
        .find(host, path, &method, req.headers())
    else {
        return Err(ProxyError::new(
            ErrorKind::NoRoute,
            format!("{} {}{path}", req.method(), host.unwrap_or("")),
        ));
    };
    let route = &snapshot.routes[index];
    // normalise.rs let escaped slashes through because some route keeps them; this one?
    if route.escaped_slashes == EscapedSlashes::Reject && has_escaped_slash(path) {
        return Err(ProxyError::new(
            ErrorKind::BadRequest,
            format!(
                "path {path:?}: an encoded slash or backslash, and route {:?} does not keep them",
                route.name
            ),
        ));
    }
    let upstream_path = upstream_path(route, req)?;
    Ok(Routed::matched(
        snapshot,
        index,
        authority,
        lowered,
        upstream_path,
    ))
}

/// The authority the client addressed: the Host field (exactly one, valid, no userinfo), or
/// the request target's authority (HTTP/2 `:authority`, absolute-form). HTTP/1.1 needs one.
fn authority(req: &Request<ProxyBody>) -> Result<Option<Authority>, ProxyError> {
    let bad = |detail: &str| Err(ProxyError::new(ErrorKind::BadRequest, detail));
    let mut hosts = req.headers().get_all(HOST).iter();
    let from_header = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return bad("more than one Host field"),
        (Some(value), None) => match value.to_str().ok().map(str::parse::<Authority>) {
            Some(Ok(authority)) if !authority.as_str().contains('@') => Some(authority),
            _ => return bad("invalid Host field"),
        },
        (None, _) => None,
    };
    if let Some(authority) = req.uri().authority() {
        if authority.as_str().contains('@') {
            return bad("userinfo in the request target");
        }
        // HTTP/2: a Host naming another server than :authority is malformed (RFC 9113
        // 8.3.1). HTTP/1.1's absolute-form ignores Host (RFC 9112 3.2.2); either way the
        // upstream gets Host = this authority (headers.rs).
        if req.version() == Version::HTTP_2
            && from_header.is_some_and(|host| !same_host(&host, authority))
        {
            return bad("Host field differs from :authority");
        }
        // The request target wins over Host (RFC 9112 3.2.2, RFC 9113 8.3.1).
        return Ok(Some(authority.clone()));
    }
    if from_header.is_none() && req.version() == Version::HTTP_11 {
        return bad("HTTP/1.1 request without Host");
    }
    Ok(from_header)
}

/// Whether two authorities name the same host and port (host names ignore case and a
/// trailing dot).
fn same_host(a: &Authority, b: &Authority) -> bool {
    let (host_a, host_b) = (
        a.host().trim_end_matches('.'),
        b.host().trim_end_matches('.'),
    );
    host_a.eq_ignore_ascii_case(host_b) && a.port_u16() == b.port_u16()
}

/// Whether `matcher` takes a request with this (lowercase, port-less) host, path, method and
/// headers.
pub fn matches(
    matcher: &RouteMatch,
    host: Option<&str>,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
) -> bool {
    let host_ok = match (&matcher.host, host) {
        (HostMatch::Any, _) => true,
        (HostMatch::Exact(exact), Some(host)) => host == exact,
        (HostMatch::Suffix(suffix), Some(host)) => {
            host.len() > suffix.len() && host.ends_with(suffix.as_str())
        }
        (_, None) => false,
    };
    let path_ok = match &matcher.path {
        PathMatch::Any => true,
        PathMatch::Exact(exact) => path == exact,
        PathMatch::Prefix(prefix) => PathMatch::prefix_matches(prefix, path),
        PathMatch::Regex(regex) => regex.is_match(path),
    };
    host_ok
        && path_ok
        && (matcher.methods.is_empty() || matcher.methods.contains(method))
        && matcher
            .headers
            .iter()
            .all(|(name, value)| headers.get_all(name).iter().any(|found| found == value))
}

/// The path and query sent upstream: the client's, with the matched prefix replaced when the
/// route says so.
fn upstream_path(
    route: &RouteConfig,
    req: &Request<ProxyBody>,
) -> Result<PathAndQuery, ProxyError> {
    let original = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let (Some(replacement), PathMatch::Prefix(prefix)) =
        (&route.rewrite_prefix, &route.matcher.path)
    else {
        return Ok(original);
    };
    // What follows the prefix, as "" or "/...": a prefix's trailing slash is a separator.
    let after = &original.path()[prefix.len()..];
    let rest = if prefix.ends_with('/') {
        format!("/{after}")
    } else {
        after.to_owned()
    };
    let mut path = format!("{}{rest}", replacement.trim_end_matches('/'));
    if path.is_empty() {
        path.push('/');
    }
    if let Some(query) = original.query() {
        path.push('?');
        path.push_str(query);
    }
    path.parse().map_err(|_| {
        ProxyError::new(
            ErrorKind::Internal,
            format!("rewritten path {path:?} is invalid"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// `rewrite` "" means `strip_prefix = true`.
    fn rewrite(prefix: &str, rewrite: &str, target: &str) -> String {
        let edit = if rewrite.is_empty() {
            "strip_prefix = true".to_owned()
        } else {
            format!("rewrite_prefix = \"{rewrite}\"")
        };
        let config = Config::parse(&format!(
            "[xdp]\nmode = \"off\"\n[[upstreams]]\nname = \"u\"\n\
             [[routes]]\nname = \"r\"\nupstream = \"u\"\nmatch = {{ path_prefix = \"{prefix}\" }}\n{edit}\n"
        ))
        .unwrap();
        let req = Request::builder()
            .uri(target)
            .body(super::super::body::empty())
            .unwrap();
        upstream_path(&config.proxy.routes[0], &req)
            .unwrap()
            .to_string()
    }

    #[test]
    fn prefix_rewrites() {
        assert_eq!(rewrite("/v1", "", "/v1/users?id=3"), "/users?id=3");
        assert_eq!(rewrite("/v1", "", "/v1"), "/");
        assert_eq!(rewrite("/v1", "", "/v1?x"), "/?x");
        assert_eq!(rewrite("/v1/", "", "/v1/users"), "/users");
        assert_eq!(rewrite("/v1", "/api/v1", "/v1/users"), "/api/v1/users");
        assert_eq!(rewrite("/v1", "/", "/v1/users"), "/users");
        assert_eq!(rewrite("/v1", "/", "/v1"), "/");
        assert_eq!(rewrite("/v1", "/api/", "/v1"), "/api");
        assert_eq!(rewrite("/old/", "/new/", "/old/x"), "/new/x");
    }

    #[test]
    fn host_and_path_matching() {
        let matcher = |text: &str| {
            let config = Config::parse(&format!(
                "[xdp]\nmode = \"off\"\n[[upstreams]]\nname = \"u\"\n\
                 [[routes]]\nname = \"r\"\nupstream = \"u\"\nmatch = {{ {text} }}\n"
            ))
            .unwrap();
            config.proxy.routes[0].matcher.clone()
        };
        let headers = HeaderMap::new();
        let get = Method::GET;
        let wild = matcher("host = \"*.example.com\"");
        assert!(matches(&wild, Some("a.example.com"), "/", &get, &headers));
        assert!(matches(&wild, Some("a.b.example.com"), "/", &get, &headers));
        assert!(!matches(&wild, Some("example.com"), "/", &get, &headers));
        assert!(!matches(&wild, Some("badexample.com"), "/", &get, &headers));
        assert!(!matches(&wild, None, "/", &get, &headers));
        let prefix = matcher("path_prefix = \"/v1\"");
        assert!(matches(&prefix, None, "/v1", &get, &headers));
        assert!(matches(&prefix, None, "/v1/x", &get, &headers));
        assert!(!matches(&prefix, None, "/v10", &get, &headers));
        let regex = matcher("path_regex = \"/items/[0-9]+\"");
        assert!(matches(&regex, None, "/items/42", &get, &headers));
        assert!(!matches(&regex, None, "/items/42/x", &get, &headers));
        let methods = matcher("methods = [\"post\"]");
        assert!(matches(&methods, None, "/", &Method::POST, &headers));
        assert!(!matches(&methods, None, "/", &get, &headers));
    }
}
