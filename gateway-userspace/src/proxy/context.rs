//! Per-request state. The stages borrow the config snapshot; a [`RequestCtx`] holds only
//! what they learn about one request. After `route`, stages get the match as a typed
//! [`Routed`] (the route and its upstream, borrowed), never an index to look up again.

use std::sync::Arc;

use hyper::{
    Request,
    body::Body,
    header::{HeaderName, HeaderValue},
    http::uri::{Authority, PathAndQuery},
};

use crate::config::RouteConfig;

use super::{
    ConnectionInfo, Identity, cache::CacheState, headers, snapshot::Snapshot, snapshot::Upstream,
    trace::TraceContext,
};

/// What kind of request this is, decided once from the head as it came.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Class {
    /// `application/grpc*` (gRPC-Web too): errors are answered the gRPC way.
    pub grpc: bool,
    /// `application/grpc-web*`: gRPC over HTTP/1.1 as well.
    pub grpc_web: bool,
    /// An HTTP/1.1 WebSocket handshake: the one upgrade the proxy passes on.
    pub websocket: bool,
    /// A body follows the head (it may be empty, but is not known to be).
    pub has_body: bool,
}

impl Class {
    pub fn of<B: Body>(req: &Request<B>) -> Class {
        Class {
            grpc: headers::is_grpc(req.headers()),
            grpc_web: headers::is_grpc_web(req.headers()),
            websocket: headers::is_websocket(req),
            has_body: !req.body().is_end_stream(),
        }
    }
}

/// Everything the stages learn about one request.
pub struct RequestCtx {
    pub connection: Arc<ConnectionInfo>,
    pub request_id: HeaderValue,
    /// The W3C trace this request belongs to, and the gateway's span in it.
    pub trace: TraceContext,
    pub class: Class,
    /// Who is calling (set by authentication; `None` on routes without it).
    pub identity: Option<Identity>,
    /// A verified JWT's claims, for `authorize` (set by authentication).
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// Added to the response whatever it is, error or not: CORS, `WWW-Authenticate`,
    /// `RateLimit-*`.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// The normalised request path (set by `normalise`; the URI holds it too).
    pub path: Option<String>,
    /// Index into the upstream's targets, for the log (set by `balance`, moved by retries).
    pub target: Option<usize>,
    /// How long the upstream took to answer with a response head (set by `forward`).
    pub upstream_ms: Option<f64>,
    /// What the cache lookup left for the store (set by `cache::lookup` on a miss).
    pub cache: Option<CacheState>,
    /// The route caches, but this request went around the cache (credentials, no-store).
    pub cache_bypass: bool,
}

impl RequestCtx {
    pub fn new<B: Body>(connection: Arc<ConnectionInfo>, req: &Request<B>) -> RequestCtx {
        RequestCtx {
            connection,
            request_id: headers::request_id(req),
            trace: TraceContext::from_headers(req.headers()),
            class: Class::of(req),
            identity: None,
            claims: None,
            response_headers: Vec::new(),
            path: None,
            target: None,
            upstream_ms: None,
            cache: None,
            cache_bypass: false,
        }
    }

    /// The context of a background cache refresh for this request: same caller, trace and
    /// path, its own request id, no body, and the cache state it fills.
    pub fn for_refresh(&self, cache: CacheState) -> RequestCtx {
        RequestCtx {
            connection: self.connection.clone(),
            request_id: headers::request_id(&Request::new(())),
            trace: self.trace,
            class: Class {
                has_body: false,
                ..self.class
            },
            identity: self.identity.clone(),
            claims: self.claims.clone(),
            response_headers: Vec::new(),
            path: self.path.clone(),
            target: None,
            upstream_ms: None,
            cache: Some(cache),
            cache_bypass: false,
        }
    }
}

/// What `route` found: the route and its upstream, borrowed from the request's snapshot,
/// and where this request goes.
#[derive(Clone)]
pub struct Routed<'s> {
    /// The snapshot the request started with (a stage that spawns work clones the `Arc`).
    pub snapshot: &'s Arc<Snapshot>,
    /// The route's position in `snapshot.routes` (its per-route state is kept in that order).
    pub index: usize,
    pub route: &'s RouteConfig,
    /// The route's upstream (an aggregate route's calls go to it too).
    pub upstream: &'s Upstream,
    /// The authority the client addressed.
    pub host: Option<Authority>,
    /// Its host in lowercase without a trailing dot, only when that differs from the
    /// authority's own spelling (see [`Routed::host_name`]).
    lowered_host: Option<Box<str>>,
    /// Path and query for the upstream, after any prefix rewrite (authentication may strip
    /// a credential from the query).
    pub upstream_path: PathAndQuery,
}

impl<'s> Routed<'s> {
    pub fn new(
        snapshot: &'s Arc<Snapshot>,
        index: usize,
        host: Option<Authority>,
        upstream_path: PathAndQuery,
    ) -> Routed<'s> {
        let lowered_host = host.as_ref().and_then(lowered_host);
        Routed::matched(snapshot, index, host, lowered_host, upstream_path)
    }

    /// As [`Routed::new`], with the host already lowered by `route` (see [`lowered_host`]).
    pub fn matched(
        snapshot: &'s Arc<Snapshot>,
        index: usize,
        host: Option<Authority>,
        lowered_host: Option<Box<str>>,
        upstream_path: PathAndQuery,
    ) -> Routed<'s> {
        let route = &snapshot.routes[index];
        Routed {
            snapshot,
            index,
            route,
            upstream: &snapshot.upstreams[route.upstream],
            host,
            lowered_host,
            upstream_path,
        }
    }

    /// The host the client addressed, lowercase, without port or trailing dot: what routes
    /// and cache keys match on. Lowered once, by `route`.
    pub fn host_name(&self) -> Option<&str> {
        match &self.lowered_host {
            Some(lowered) => Some(lowered),
            None => self
                .host
                .as_ref()
                .map(|host| host.host().trim_end_matches('.')),
        }
    }
}

/// `authority`'s host lowercased without a trailing dot, or `None` when it already is
/// (most requests): no allocation then.
pub fn lowered_host(authority: &Authority) -> Option<Box<str>> {
    let host = authority.host().trim_end_matches('.');
    host.bytes()
        .any(|byte| byte.is_ascii_uppercase())
        .then(|| host.to_ascii_lowercase().into_boxed_str())
}
