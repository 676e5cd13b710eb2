//! The L7 proxy. This file is the only place the request stages are put in order:
//!
//! `accept` (listener.rs) -> `tls` (tls.rs; https listeners: handshake, SNI certificate,
//! ALPN) -> `limits` (request line, headers) -> `normalise` (the one path every later stage,
//! the log and the upstream see) -> `route` -> `cors` (a preflight is answered here) ->
//! `authenticate` -> `authorize` -> `throttle` -> `limits` (body) -> `cache` (lookup: hit,
//! 304, stale; coalesce misses; on the client's request as it came) -> `headers` (request) ->
//! `aggregate` (composite routes) or `balance` -> `forward` -> `headers` (response) ->
//! `cache` (store; stale-if-error). Authentication runs before the cache: a cached response
//! is never served to an unauthenticated caller.
//!
//! Each stage is a plain function over a [`RequestContext`] that returns [`Flow::Continue`],
//! [`Flow::Respond`] with an early answer, or a [`ProxyError`]; error.rs alone turns errors
//! into responses. Malformed HTTP (bad framing, CL with TE, bad field syntax) is refused by
//! hyper's parser before any stage runs; the stages check what it lets through (Host).

mod access_log;
mod activity;
mod aggregate;
mod authenticate;
mod authorize;
mod balance;
mod body;
pub mod cache;
mod client_body;
mod cors;
pub mod credential;
mod error;
mod forward;
mod h2_watch;
mod headers;
mod health;
mod jwt;
mod limits;
mod listener;
pub mod normalise;
pub mod observe;
mod otlp;
mod route;
mod snapshot;
mod throttle;
pub(crate) mod tls;
pub mod trace;

use std::{net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use hyper::http::uri::Authority;
use hyper::{Request, Response, body::Incoming, header::HeaderValue, http::uri::PathAndQuery};
use tokio::{
    sync::{Semaphore, watch},
    task::JoinSet,
};

use crate::config::{ProxyConfig, RouteConfig};

pub use access_log::AccessLogLayer;
pub use body::ProxyBody;
pub use error::{Cause, ErrorKind, ProxyError};
pub use headers::HOP_BY_HOP;
pub use otlp::{start as start_otlp, stop as stop_otlp};
use snapshot::{Snapshot, Upstream};

/// What a stage decided.
pub enum Flow {
    /// Go on with the next stage.
    Continue,
    /// Answer the client now with this response (a later cache hit, a 401, a 429...).
    Respond(Response<ProxyBody>),
}

/// One client connection, as the stages see it.
pub struct ConnectionInfo {
    pub client: SocketAddr,
    /// `http` or `https` (a TLS listener), for the forwarding headers.
    pub scheme: &'static str,
    /// This connection's `limits.max_connections` slot, released when the last holder of
    /// the `ConnectionInfo` is gone: the connection and any WebSocket tunnel it became, so
    /// tunnels count as connections and shutdown drains them too.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// Who is calling, once authentication has verified it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// A JWT's subject, or the name of the consumer whose API key was presented.
    pub name: String,
    /// The consumer's groups (empty for a JWT that names no consumer).
    pub groups: Vec<String>,
}

/// Everything the stages learn about one request.
pub struct RequestContext {
    /// The config this request started with; a reload does not change it.
    pub snapshot: Arc<Snapshot>,
    pub connection: Arc<ConnectionInfo>,
    pub request_id: HeaderValue,
    /// The W3C trace this request belongs to, and the gateway's span in it.
    pub trace: trace::TraceContext,
    /// Who is calling (set by authentication; `None` on routes without it).
    pub identity: Option<Identity>,
    /// A verified JWT's claims, for `authorize` (set by authentication).
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// Added to the response whatever it is, error or not: CORS, `WWW-Authenticate`,
    /// `RateLimit-*`.
    pub response_headers: Vec<(hyper::header::HeaderName, HeaderValue)>,
    /// The normalised request path (set by `normalise`; the URI holds it too).
    pub path: Option<String>,
    /// The authority the client addressed (set by `route`).
    pub host: Option<Authority>,
    /// Index into `snapshot.routes` (set by `route`).
    pub route: Option<usize>,
    /// Path and query for the upstream, after any prefix rewrite (set by `route`).
    pub upstream_path: Option<PathAndQuery>,
    /// Index into the upstream's targets (set by `balance`).
    pub target: Option<usize>,
    /// How long the upstream took to answer with a response head (set by `forward`).
    pub upstream_ms: Option<f64>,
    /// What the cache lookup left for the store (set by `cache::lookup` on a miss).
    pub cache: Option<cache::CacheState>,
    /// The route caches, but this request went around the cache (credentials, no-store).
    pub cache_bypass: bool,
}

impl RequestContext {
    /// The matched route; only stages after `route` may call it.
    pub fn route(&self) -> &RouteConfig {
        &self.snapshot.routes[self.route.expect("the route stage ran")]
    }

    pub fn upstream(&self) -> &Upstream {
        &self.snapshot.upstreams[self.route().upstream]
    }
}

/// Runs a stage; returns its early response from the pipeline if it gave one.
macro_rules! stage {
    ($stage:expr) => {
        match $stage? {
            Flow::Continue => {}
            Flow::Respond(response) => return Ok(response),
        }
    };
}

async fn pipeline(
    ctx: &mut RequestContext,
    mut req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    stage!(limits::limit_request_line(ctx, &req));
    stage!(limits::limit_headers(ctx, &req));
    stage!(normalise::normalise(ctx, &mut req));
    stage!(route::route(ctx, &req));
    stage!(cors::cors(ctx, &req));
    stage!(authenticate::authenticate(ctx, &mut req).await);
    stage!(authorize::authorize(ctx));
    stage!(throttle::throttle(ctx, &req).await);
    stage!(limits::limit_body(ctx, &mut req));
    stage!(cache::lookup(ctx, &mut req).await);
    stage!(headers::prepare_request(ctx, &mut req));
    let response = match fetch(ctx, req).await {
        Ok(response) => response,
        // stale-if-error covers upstream failures, not a client's broken request.
        Err(error) if error.cause() == Cause::Client => return Err(error),
        Err(error) => return cache::on_error(ctx).ok_or(error),
    };
    cache::store(ctx, response).await
}

/// The upstream's answer to a prepared request: `aggregate`, or `balance` -> `forward`; then
/// `headers` (response). Also used by the cache's background refresh.
async fn fetch(
    ctx: &mut RequestContext,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let aggregate = ctx.route().aggregate.is_some();
    if !aggregate {
        stage!(balance::pick(ctx, &req));
    }
    let asked = std::time::Instant::now();
    let forwarded = match aggregate {
        true => aggregate::respond(ctx, req).await,
        false => forward::forward(ctx, req).await,
    };
    // A client's fault says nothing about the upstream's latency.
    if forwarded
        .as_ref()
        .err()
        .is_none_or(|error| error.cause() != Cause::Client)
    {
        ctx.upstream_ms = Some(asked.elapsed().as_secs_f64() * 1000.0);
    }
    let mut response = forwarded?;
    headers::prepare_response(ctx, &mut response);
    Ok(response)
}

/// Serves one request: the pipeline, then errors turned into responses.
async fn handle(
    snapshot: Arc<Snapshot>,
    connection: Arc<ConnectionInfo>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let mut ctx = RequestContext {
        request_id: headers::request_id(&req),
        trace: trace::TraceContext::from_headers(req.headers()),
        snapshot,
        connection,
        identity: None,
        claims: None,
        response_headers: Vec::new(),
        path: None,
        host: None,
        route: None,
        upstream_path: None,
        target: None,
        upstream_ms: None,
        cache: None,
        cache_bypass: false,
    };
    let (method, raw_path) = (req.method().clone(), req.uri().path().to_owned());
    let grpc = headers::is_grpc(req.headers());
    let started = std::time::Instant::now();
    let logged = observe::sampled();
    let bytes_in = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let host = req
        .uri()
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .or_else(|| {
            let host = req.headers().get(hyper::header::HOST)?;
            host.to_str().ok().map(str::to_owned)
        })
        .unwrap_or_default();
    // Every request is metered; the access log may sample.
    let req = req.map(|incoming| {
        body::boxed(observe::Counted::new(
            body::boxed(incoming),
            bytes_in.clone(),
        ))
    });
    let mut failure = None;
    let mut response = match pipeline(&mut ctx, req).await {
        Ok(response) => response,
        Err(error) => {
            failure = Some(error.kind);
            let request_id = ctx.request_id.to_str().unwrap_or("");
            let client = ctx.connection.client;
            let path = ctx.path.as_deref().unwrap_or(&raw_path);
            match error.kind.cause() {
                Cause::Client => {
                    tracing::debug!(%client, %method, path, request_id, "{error}")
                }
                Cause::Upstream => tracing::warn!(%client, %method, path, request_id, "{error}"),
                Cause::Gateway => tracing::error!(%client, %method, path, request_id, "{error}"),
            }
            match grpc {
                true => error::respond_grpc(&error, request_id),
                false => error::respond(&error, request_id),
            }
        }
    };
    headers::finish_response(&ctx, &mut response);
    for (name, value) in std::mem::take(&mut ctx.response_headers) {
        match name == hyper::header::VARY {
            true => response.headers_mut().append(name, value),
            false => response.headers_mut().insert(name, value).is_some(),
        };
    }
    // From here on the normalised path; the raw one only if it was refused.
    let path = ctx.path.take().unwrap_or(raw_path);
    // L7 signals for the defender (auto-bans, known-good sources): a non-blocking report.
    crate::defend::report(
        ctx.connection.client.ip(),
        response.status().as_u16(),
        &path,
        ctx.route.map(|_| ctx.route().name.as_str()),
        ctx.identity.as_ref().map(|identity| identity.name.as_str()),
    );
    let record = observe::Record {
        log_line: logged,
        upstream: ctx
            .route
            .filter(|_| ctx.route().aggregate.is_none())
            .map(|_| ctx.upstream().config.name.clone()),
        started,
        request_id: ctx.request_id.to_str().unwrap_or("").to_owned(),
        trace: ctx.trace,
        client: ctx.connection.client,
        method: method.to_string(),
        host,
        path,
        route: ctx.route.map(|_| ctx.route().name.clone()),
        identity: ctx.identity.as_ref().map(|identity| identity.name.clone()),
        target: ctx
            .target
            .zip(ctx.route)
            .map(|(target, _)| ctx.upstream().config.targets[target].address.clone()),
        status: response.status().as_u16(),
        error: failure,
        upstream_ms: ctx.upstream_ms,
        bytes_in,
    };
    response.map(|body| body::boxed(observe::Logged::new(body, record)))
}

/// The running proxy: its listeners and the current snapshot.
pub struct Proxy {
    snapshot: Arc<ArcSwap<Snapshot>>,
    listeners: Vec<crate::config::ListenerConfig>,
    shutdown: watch::Sender<bool>,
    connections: Arc<Semaphore>,
    max_connections: u32,
    tasks: JoinSet<()>,
    /// The rustls config of each `https` listener, by listener name; a reload swaps it.
    tls: Vec<(String, tls::Current)>,
}

impl Proxy {
    /// Binds every listener (an address in use is an error naming the listener) and starts
    /// serving. With no listeners configured it does nothing.
    pub async fn start(config: &ProxyConfig) -> anyhow::Result<Proxy> {
        let bound = listener::bind(&config.listeners).await?;
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(config)));
        let max_connections = config.limits.max_connections;
        let connections = Arc::new(Semaphore::new(max_connections as usize));
        let (shutdown, stop) = watch::channel(false);
        let shared = Arc::new(listener::Shared {
            snapshot: snapshot.clone(),
            connections: connections.clone(),
            shutdown: stop,
        });
        let mut tasks = JoinSet::new();
        let mut tls_configs = Vec::new();
        for (config, tcp) in bound {
            let tls = tls::server_config(&config)
                .map_err(|error| {
                    anyhow::anyhow!("listener {:?}: TLS setup failed: {error}", config.name)
                })?
                .map(|server| Arc::new(ArcSwap::new(server)));
            if let Some(current) = &tls {
                tls_configs.push((config.name.clone(), current.clone()));
            }
            tracing::info!(
                listener = config.name,
                address = %tcp.local_addr()?,
                protocol = config.protocol.scheme(),
                "proxy listening"
            );
            tasks.spawn(listener::accept_loop(config, tcp, shared.clone(), tls));
        }
        Ok(Proxy {
            snapshot,
            listeners: config.listeners.clone(),
            shutdown,
            connections,
            max_connections,
            tasks,
            tls: tls_configs,
        })
    }

    /// The response cache, for the admin API's purge (one store for the proxy's life).
    pub fn cache(&self) -> Arc<cache::Store> {
        self.snapshot.load().cache.clone()
    }

    /// The proxy's live state for `/metrics`.
    pub fn collector(&self) -> observe::ProxyCollector {
        observe::ProxyCollector {
            snapshot: self.snapshot.clone(),
            connections: self.connections.clone(),
            max_connections: self.max_connections,
        }
    }

    /// Swaps in a new, already validated config. Requests in flight finish on the snapshot
    /// they started with; new TLS connections get the new certificates. Listener and
    /// connection-limit changes need a restart.
    pub fn reload(&self, config: &ProxyConfig) {
        if listener::sockets_differ(&self.listeners, &config.listeners) {
            tracing::warn!("listeners changes take effect at the next restart");
        }
        if config.cache.max_size != self.snapshot.load().cache.max_size {
            tracing::warn!("cache.max_size changes take effect at the next restart");
        }
        if config.limits.max_connections != self.max_connections {
            tracing::warn!("limits.max_connections changes take effect at the next restart");
        }
        let previous = self.snapshot.load_full();
        self.snapshot
            .store(Arc::new(Snapshot::rebuild(config, Some(&previous))));
        for (name, current) in &self.tls {
            let Some(listener) = config.listeners.iter().find(|l| &l.name == name) else {
                continue;
            };
            match tls::server_config(listener) {
                Ok(Some(server)) => {
                    current.store(server);
                    tracing::info!(listener = name, "TLS certificates reloaded");
                }
                Ok(None) => {}
                Err(error) => tracing::error!(
                    listener = name,
                    "TLS certificates not reloaded, the running ones stay: {error}"
                ),
            }
        }
        tracing::info!(
            routes = config.routes.len(),
            upstreams = config.upstreams.len(),
            "proxy routes reloaded"
        );
    }

    /// Stops accepting, then waits up to `limits.drain_timeout` for open connections to
    /// finish their requests in flight (idle ones close at once).
    pub async fn shutdown(mut self) {
        if self.listeners.is_empty() {
            return;
        }
        let deadline = self.snapshot.load().limits.drain_timeout;
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        // Every connection holds a permit: all of them back means all connections closed.
        let drained = tokio::time::timeout(
            deadline,
            self.connections.acquire_many(self.max_connections),
        )
        .await;
        match drained {
            Ok(_) => tracing::info!("proxy drained"),
            Err(_) => tracing::warn!(
                open = self.max_connections as usize - self.connections.available_permits(),
                "drain deadline ({deadline:?}) passed; closing the remaining connections"
            ),
        }
    }
}
