//! The L7 proxy. This file is the only place the request stages are put in order:
//!
//! `accept` (listener.rs) -> `tls` (tls.rs; https listeners: handshake, SNI certificate, a
//! client certificate verified and named by client_cert.rs, ALPN) -> `limits` (request line,
//! headers) -> `normalise` (the one path every later stage, the log and the upstream see) ->
//! `route` -> `cors` (a preflight is answered here) ->
//! `authenticate` -> `authorize` -> `throttle` -> `limits` (body) -> `cache` (lookup: hit,
//! 304, stale; coalesce misses; on the client's request as it came) -> `headers` (request) ->
//! `aggregate` (composite routes) or `balance` -> `forward` -> `headers` (response) ->
//! `cache` (store; stale-if-error). Authentication runs before the cache: a cached response
//! is never served to an unauthenticated caller.
//!
//! Each stage is a plain function over the snapshot (before `route`) or the [`Routed`]
//! match (after it) and a [`RequestCtx`] that returns [`Flow::Continue`],
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
pub(crate) mod client_cert;
mod context;
mod cors;
pub mod credential;
mod cycle_io;
mod error;
mod expiry;
mod forward;
mod h2_watch;
mod handles;
mod headers;
mod health;
mod jwt;
mod limits;
mod listener;
mod metering;
pub mod normalise;
pub mod observe;
mod otlp;
mod register;
mod resumption;
mod route;
mod route_table;
mod series;
mod serve;
mod serve_http1;
mod snapshot;
mod throttle;
mod tickets;
pub(crate) mod tls;
pub mod trace;
mod upstream_tls;

use std::{net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use hyper::{Request, Response, body::Incoming};
use tokio::{
    sync::{Semaphore, watch},
    task::JoinSet,
};

use crate::config::ProxyConfig;

pub use access_log::AccessLogLayer;
pub use body::ProxyBody;
use context::{RequestCtx, Routed};
pub use error::{Cause, ErrorKind, ProxyError};
pub use handles::{
    Finished, Handles, RequestSignals, SharedDecision, SharedLimiter, SharedTicketKeys,
};
pub use observe::ProxyMetrics;
pub use otlp::Spans;
pub use register::metering;
use snapshot::Snapshot;

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
    /// The certificate the client showed at the TLS handshake, verified (`client_auth`).
    pub client_cert: Option<client_cert::ClientCert>,
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

/// Runs a stage; returns its early response from the pipeline if it gave one.
macro_rules! stage {
    ($stage:expr) => {
        match $stage? {
            Flow::Continue => {}
            Flow::Respond(response) => return Ok(response),
        }
    };
}

/// The request stages, in order. `routed` is filled by `route` for the response stages.
async fn pipeline<'s>(
    snapshot: &'s Arc<Snapshot>,
    ctx: &mut RequestCtx,
    routed: &mut Option<Routed<'s>>,
    mut req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    stage!(limits::limit_request_line(snapshot, ctx, &req));
    stage!(limits::limit_headers(snapshot, &req));
    stage!(normalise::normalise(snapshot, ctx, &mut req));
    let routed = routed.insert(route::route(snapshot, &req)?);
    stage!(cors::cors(routed, ctx, &req));
    stage!(authenticate::authenticate(routed, ctx, &mut req).await);
    stage!(authorize::authorize(routed, ctx));
    stage!(throttle::throttle(routed, ctx, &req).await);
    stage!(limits::limit_body(snapshot, ctx, &mut req));
    stage!(cache::lookup(routed, ctx, &mut req).await);
    stage!(headers::prepare_request(routed, ctx, &mut req));
    let response = match fetch(routed, ctx, req).await {
        Ok(response) => response,
        // stale-if-error covers upstream failures, not a client's broken request.
        Err(error) if error.cause() == Cause::Client => return Err(error),
        Err(error) => return cache::on_error(routed, ctx).ok_or(error),
    };
    cache::store(routed, ctx, response).await
}

/// The upstream's answer to a prepared request: `aggregate`, or `balance` -> `forward`; then
/// `headers` (response). Also used by the cache's background refresh.
async fn fetch(
    routed: &Routed<'_>,
    ctx: &mut RequestCtx,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let asked = std::time::Instant::now();
    let forwarded = match routed.route.aggregate {
        Some(_) => aggregate::respond(routed, ctx, req).await,
        None => {
            let target = balance::pick(routed, ctx, &req)?;
            forward::forward(routed, ctx, target, req).await
        }
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
    headers::prepare_response(routed, &mut response);
    Ok(response)
}

/// Serves one request: the request stages, then the response stages. `log_line`: the
/// access log records it (sampling).
async fn handle(
    snapshot: Arc<Snapshot>,
    log_line: bool,
    connection: Arc<ConnectionInfo>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let mut ctx = RequestCtx::new(connection, &req);
    let arrival = observe::Arrival::of(&req, log_line);
    // Every request is metered; the access log may sample. Counted in place: one box.
    let req =
        req.map(|incoming| body::boxed(observe::Counted::new(incoming, arrival.bytes_in.clone())));
    let mut routed = None;
    // Boxed: the pipeline's state is several KiB, and hyper moves the request's future
    // (memcpy) as it stores it; a box keeps what moves small.
    let outcome = Box::pin(pipeline(&snapshot, &mut ctx, &mut routed, req)).await;
    respond(ctx, routed.as_ref(), &snapshot, arrival, outcome)
}

/// The response stages, in order. Every request passes them, an early answer or an error
/// too: `answer` (errors to responses), `headers` (request id, the stages' fields),
/// `report` (the defender's L7 signals), `observe` (metrics, access log, span; when the
/// body has been sent).
fn respond(
    mut ctx: RequestCtx,
    routed: Option<&Routed<'_>>,
    snapshot: &Snapshot,
    arrival: observe::Arrival,
    outcome: Result<Response<ProxyBody>, ProxyError>,
) -> Response<ProxyBody> {
    let (mut response, failure) = answer(&ctx, &arrival, outcome);
    headers::finish_response(&mut ctx, &mut response);
    // From here on the normalised path; the raw one only if it was refused.
    let path = ctx
        .path
        .take()
        .unwrap_or_else(|| arrival.raw_path().to_owned());
    report(snapshot, &ctx, routed, &path, &response);
    observe::attach(snapshot, ctx, routed, arrival, path, failure, response)
}

/// The pipeline's response, or its error logged (by cause) and turned into one.
fn answer(
    ctx: &RequestCtx,
    arrival: &observe::Arrival,
    outcome: Result<Response<ProxyBody>, ProxyError>,
) -> (Response<ProxyBody>, Option<ErrorKind>) {
    let error = match outcome {
        Ok(response) => return (response, None),
        Err(error) => error,
    };
    let request_id = ctx.request_id.to_str().unwrap_or("");
    let client = ctx.connection.client;
    let method = &arrival.method;
    let path = ctx.path.as_deref().unwrap_or(arrival.raw_path());
    match error.kind.cause() {
        Cause::Client => tracing::debug!(%client, %method, path, request_id, "{error}"),
        Cause::Upstream => tracing::warn!(%client, %method, path, request_id, "{error}"),
        Cause::Gateway => tracing::error!(%client, %method, path, request_id, "{error}"),
    }
    let response = match ctx.class.grpc {
        true => error::respond_grpc(&error, request_id),
        false => error::respond(&error, request_id),
    };
    (response, Some(error.kind))
}

/// L7 signals for the defender (auto-bans, known-good sources): a non-blocking report.
fn report(
    snapshot: &Snapshot,
    ctx: &RequestCtx,
    routed: Option<&Routed<'_>>,
    path: &str,
    response: &Response<ProxyBody>,
) {
    let Some(signals) = &snapshot.handles.signals else {
        return;
    };
    signals.finished(Finished {
        client: ctx.connection.client.ip(),
        status: response.status().as_u16(),
        path,
        route: routed.map(|routed| snapshot.series[routed.index].route()),
        identity: ctx.identity.as_ref().map(|identity| identity.name.as_str()),
    });
}

/// The running proxy: its listeners and the current snapshot.
pub struct Proxy {
    snapshot: Arc<ArcSwap<Snapshot>>,
    listeners: Vec<crate::config::ListenerConfig>,
    shutdown: watch::Sender<bool>,
    connections: Arc<Semaphore>,
    max_connections: u32,
    tasks: JoinSet<()>,
    /// Which requests the access log records (`[access_log]`).
    sampling: Arc<observe::Sampling>,
    /// The rustls config of each `https` listener, by listener name; a reload swaps it.
    tls: Vec<(String, tls::Current)>,
    /// Session tickets and caches: kept across reloads.
    resumption: resumption::Resumption,
    /// The served certificates' expiry dates, for the metrics.
    expiry: Arc<expiry::CertificateExpiry>,
}

impl Proxy {
    /// Binds every listener (an address in use is an error naming the listener) and starts
    /// serving, with the neighbours the daemon hands it. With no listeners configured it
    /// does nothing.
    pub async fn start(config: &ProxyConfig, handles: Handles) -> anyhow::Result<Proxy> {
        let bound = listener::bind(&config.listeners).await?;
        let guard = handles.guard.clone();
        let resumption = resumption::Resumption::new(handles.ticket_keys.clone());
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(config, handles)));
        let max_connections = config.limits.max_connections;
        let connections = Arc::new(Semaphore::new(max_connections as usize));
        let (shutdown, stop) = watch::channel(false);
        let sampling = Arc::new(observe::Sampling::default());
        let shared = Arc::new(listener::Shared {
            snapshot: snapshot.clone(),
            connections: connections.clone(),
            shutdown: stop,
            guard,
            sampling: sampling.clone(),
        });
        let mut tasks = JoinSet::new();
        let expiry = Arc::new(expiry::CertificateExpiry::default());
        expiry.set(&config.listeners);
        let mut tls_configs = Vec::new();
        for (config, tcp) in bound {
            let tls = tls::server_config(&config, &resumption)
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
            sampling,
            tls: tls_configs,
            resumption,
            expiry,
        })
    }

    /// The response cache, for the admin API's purge (one store for the proxy's life).
    pub fn cache(&self) -> Arc<cache::Store> {
        self.snapshot.load().cache.clone()
    }

    /// Applies `[access_log]` (enabled, sample): at start and on reload.
    pub fn configure_access_log(&self, config: &crate::config::AccessLogConfig) {
        self.sampling.configure(config);
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
            .store(Arc::new(Snapshot::rebuild(config, &previous)));
        self.expiry.set(&config.listeners);
        for (name, current) in &self.tls {
            let Some(listener) = config.listeners.iter().find(|l| &l.name == name) else {
                continue;
            };
            match tls::server_config(listener, &self.resumption) {
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
