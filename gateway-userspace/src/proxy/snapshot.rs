//! The proxy's compiled runtime config. A snapshot is immutable and shared by `Arc`: a
//! reload builds a new one and swaps it in, and requests in flight keep the one they began
//! with. Target health (health.rs) is the exception: it is carried over to the new snapshot
//! for targets that stay.

use std::sync::Arc;

use crate::config::{
    ClientIdentity, EscapedSlashes, HttpLimits, ProxyConfig, RouteConfig, UpstreamConfig,
    auth::AuthConfig,
};

use super::{
    Handles,
    balance::Balancer,
    cache::{Counters, Store},
    forward::{RetryBudget, UpstreamClient, client, h2c_client},
    health::{self, HealthTask, TargetState},
    jwt::Provider,
    normalise,
    route_table::RouteTable,
    series::{RouteSeries, UNROUTED},
    throttle::RouteLimits,
};

pub struct Snapshot {
    /// In precedence order.
    pub routes: Vec<RouteConfig>,
    /// The routes' matchers compiled for lookup by host and path (route_table.rs).
    pub route_table: RouteTable,
    pub upstreams: Vec<Upstream>,
    pub limits: HttpLimits,
    /// How request paths are normalised (`[normalise]`, and whether any route keeps
    /// escaped slashes).
    pub normalise: normalise::Options,
    /// The response cache; one store for the proxy's life, carried over by reloads.
    pub cache: Arc<Store>,
    /// Per route (in `routes` order): its cache lookup counters, if it caches.
    pub cache_counters: Vec<Option<Counters>>,
    /// Providers and consumers (API keys), as configured.
    pub auth: AuthConfig,
    /// Per `auth.providers` entry: keys, the verified-token cache, the JWKS refresh.
    pub providers: Vec<Arc<Provider>>,
    /// Per route: its rate limiters (`None`: no limits).
    pub throttles: Vec<Option<Arc<RouteLimits>>>,
    /// Per route (in `routes` order): its metric series.
    pub series: Vec<Arc<RouteSeries>>,
    /// The series of requests refused before a route matched.
    pub unrouted: Arc<RouteSeries>,
    /// Per `client_auth` listener (by name): which part of a client certificate names the
    /// caller. Here, not in the accept loop, so a reload changes it.
    pub client_identities: Vec<(String, ClientIdentity)>,
    /// The neighbours the daemon handed the proxy; the same for the proxy's life.
    pub handles: Handles,
}

pub struct Upstream {
    pub config: UpstreamConfig,
    pub balancer: Balancer,
    pub client: UpstreamClient,
    /// HTTP/2 with prior knowledge (h2c), for gRPC to an `http1` upstream: its own pool.
    pub h2c_client: UpstreamClient,
    /// Live state per target, in target order.
    pub targets: Vec<Arc<TargetState>>,
    pub retry_budget: RetryBudget,
    /// The active health checks, stopped with the snapshot (or at the next reload).
    pub health: Option<HealthTask>,
}

impl Snapshot {
    /// Cannot fail: the config was validated when it was loaded.
    pub fn build(config: &ProxyConfig, handles: Handles) -> Snapshot {
        Self::assemble(config, handles, None)
    }

    /// Like [`Snapshot::build`], keeping the target health of `previous` (the running
    /// snapshot) for targets that stay, and stopping its health checks.
    pub fn rebuild(config: &ProxyConfig, previous: &Snapshot) -> Snapshot {
        for upstream in &previous.upstreams {
            if let Some(health) = &upstream.health {
                health.stop();
            }
        }
        Self::assemble(config, previous.handles.clone(), Some(previous))
    }

    fn assemble(config: &ProxyConfig, handles: Handles, previous: Option<&Snapshot>) -> Snapshot {
        Snapshot {
            routes: config.routes.clone(),
            route_table: RouteTable::new(config.routes.iter().map(|route| &route.matcher)),
            upstreams: config
                .upstreams
                .iter()
                .map(|upstream| {
                    let old = previous.and_then(|previous| {
                        let old = previous
                            .upstreams
                            .iter()
                            .find(|old| old.config.name == upstream.name)?;
                        Some((&old.config, old.targets.as_slice()))
                    });
                    let targets = health::states(upstream, old);
                    let client = client(upstream);
                    Upstream {
                        balancer: Balancer::new(upstream.balance, &upstream.targets),
                        health: health::spawn(upstream, &targets, &client),
                        retry_budget: upstream
                            .retry
                            .as_ref()
                            .map(|retry| {
                                RetryBudget::new(retry.budget_percent, retry.budget_min_per_second)
                            })
                            .unwrap_or_else(|| RetryBudget::new(0, 0)),
                        targets,
                        client,
                        h2c_client: h2c_client(upstream),
                        config: upstream.clone(),
                    }
                })
                .collect(),
            limits: config.limits.clone(),
            normalise: normalise::Options {
                merge_slashes: config.normalise.merge_slashes,
                escaped_slashes: match config
                    .routes
                    .iter()
                    .any(|route| route.escaped_slashes == EscapedSlashes::Keep)
                {
                    true => EscapedSlashes::Keep,
                    false => EscapedSlashes::Reject,
                },
            },
            cache_counters: config
                .routes
                .iter()
                .map(|route| {
                    route
                        .cache
                        .as_ref()
                        .map(|_| Counters::for_route(&handles.metrics, &route.name))
                })
                .collect(),
            cache: previous
                .map(|previous| previous.cache.clone())
                .unwrap_or_else(|| Store::new(&config.cache)),
            auth: config.auth.clone(),
            // JWKS key sets and limiter state survive a reload where nothing changed.
            providers: config
                .auth
                .providers
                .iter()
                .map(|provider| {
                    let old = previous.and_then(|previous| {
                        previous
                            .providers
                            .iter()
                            .find(|old| old.config.name == provider.name)
                    });
                    Arc::new(Provider::new(provider, old.map(|old| &**old)))
                })
                .collect(),
            throttles: config
                .routes
                .iter()
                .map(|route| {
                    let old = previous.and_then(|previous| {
                        previous
                            .throttles
                            .iter()
                            .flatten()
                            .find(|old| old.route() == route.name)
                    });
                    RouteLimits::build(route, old, &handles.metrics)
                })
                .collect(),
            series: config
                .routes
                .iter()
                .map(|route| {
                    // Aggregate routes fan out: no one upstream's latency to count.
                    let upstream = route
                        .aggregate
                        .is_none()
                        .then(|| config.upstreams[route.upstream].name.as_str());
                    Arc::new(RouteSeries::new(&handles.metrics, &route.name, upstream))
                })
                .collect(),
            unrouted: Arc::new(RouteSeries::new(&handles.metrics, UNROUTED, None)),
            client_identities: config
                .listeners
                .iter()
                .filter_map(|listener| {
                    let client_auth = listener.client_auth.as_ref()?;
                    Some((listener.name.clone(), client_auth.identity))
                })
                .collect(),
            handles,
        }
    }
}
