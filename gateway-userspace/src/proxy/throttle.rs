//! The `throttle` stage: L7 rate limits per route, keyed by client IP, identity or a header.
//! Each limit is GCRA (the `governor` crate) per key; a request must pass every limit of its
//! route. The answer carries `RateLimit-Limit/-Remaining/-Reset` for the tightest limit, and a
//! refusal is 429 with `Retry-After`.
//!
//! A limit with `cluster = true` is counted across every gateway of the cluster instead, by
//! `cluster::ClusterLimiter` (GCRA in Redis with leased batches; `cluster.on_redis_down`
//! decides what happens while Redis is away: this node's own limit, or 503).
//!
//! Memory is bounded: each limit keeps its per-key limiters in a `quick_cache` of at most
//! `max_keys` entries (default 100,000, a few hundred bytes each); beyond, the least recently
//! used keys are evicted, which only forgets their history (an evicted key starts with a full
//! burst again).

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use prometheus_client::metrics::counter::Counter;

use governor::{
    Quota, RateLimiter,
    clock::{Clock as _, DefaultClock},
    middleware::StateInformationMiddleware,
    state::{InMemoryState, NotKeyed},
};
use hyper::{
    Request,
    header::{HeaderName, HeaderValue, RETRY_AFTER},
};
use sha2::Digest as _;

use crate::config::{
    RouteConfig,
    auth::{LimitKey, RateLimitRule},
};

use super::{
    Flow, RequestCtx, Routed,
    body::ProxyBody,
    client_cert,
    error::{ErrorKind, ProxyError},
    handles::SharedDecision,
    observe::ProxyMetrics,
};

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// Keys longer than this (header values) are kept as their hash.
const MAX_KEY_BYTES: usize = 128;

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// One limit's state: a limiter per key, bounded.
pub struct Limit {
    rule: RateLimitRule,
    quota: Quota,
    clock: DefaultClock,
    keys: quick_cache::sync::Cache<String, Arc<Limiter>>,
}

/// A route's limits. Kept across a reload when the route keeps the same name and limits.
pub struct RouteLimits {
    route: String,
    limits: Vec<Limit>,
    /// This route's series of `gateway_rate_limited`, resolved once.
    refused: Counter,
}

/// How one check went.
enum Outcome {
    /// Allowed; this many more requests would be allowed right now.
    Allowed { remaining: u32 },
    /// Refused until this long from now.
    Refused { wait: Duration },
}

impl Limit {
    pub fn new(rule: &RateLimitRule) -> Limit {
        let interval = rule.period / rule.count;
        let quota = Quota::with_period(interval)
            .expect("config checked the interval is above zero")
            .allow_burst(NonZeroU32::new(rule.burst).expect("config checked burst >= 1"));
        Limit {
            rule: rule.clone(),
            quota,
            clock: DefaultClock::default(),
            keys: quick_cache::sync::Cache::new(rule.max_keys),
        }
    }

    fn check(&self, key: &str) -> Outcome {
        let limiter = self
            .keys
            .get_or_insert_with(key, || {
                Ok::<_, std::convert::Infallible>(Arc::new(
                    RateLimiter::direct_with_clock(self.quota, self.clock.clone())
                        .with_middleware::<StateInformationMiddleware>(),
                ))
            })
            .unwrap_or_else(|never| match never {});
        match limiter.check() {
            Ok(state) => Outcome::Allowed {
                remaining: state.remaining_burst_capacity(),
            },
            Err(not_until) => Outcome::Refused {
                wait: not_until.wait_time_from(self.clock.now()),
            },
        }
    }

    /// Keys currently tracked (bounded by `max_keys`).
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.keys.len()
    }

    fn interval(&self) -> Duration {
        self.rule.period / self.rule.count
    }
}

impl RouteLimits {
    /// The limits of `route`, reusing `previous` (the running snapshot's) when unchanged.
    pub fn build(
        route: &RouteConfig,
        previous: Option<&Arc<RouteLimits>>,
        metrics: &ProxyMetrics,
    ) -> Option<Arc<RouteLimits>> {
        if route.rate_limits.is_empty() {
            return None;
        }
        if let Some(previous) = previous
            && previous.route == route.name
            && previous.limits.len() == route.rate_limits.len()
            && previous
                .limits
                .iter()
                .zip(&route.rate_limits)
                .all(|(limit, rule)| &limit.rule == rule)
        {
            return Some(previous.clone());
        }
        Some(Arc::new(RouteLimits {
            route: route.name.clone(),
            limits: route.rate_limits.iter().map(Limit::new).collect(),
            refused: metrics
                .rate_limited
                .get_or_create(&vec![("route", route.name.clone())])
                .clone(),
        }))
    }

    pub fn route(&self) -> &str {
        &self.route
    }
}

pub async fn throttle(
    routed: &Routed<'_>,
    ctx: &mut RequestCtx,
    req: &Request<ProxyBody>,
) -> Result<Flow, ProxyError> {
    let Some(limits) = &routed.snapshot.throttles[routed.index] else {
        return Ok(Flow::Continue);
    };
    // The tightest limit so far: (burst, remaining, seconds until full).
    let mut tightest: Option<(u32, u32, u64)> = None;
    for (index, limit) in limits.limits.iter().enumerate() {
        let key = key(ctx, req, &limit.rule.key);
        let cluster = routed.snapshot.handles.limiter.as_ref();
        let outcome = match cluster.filter(|_| limit.rule.cluster) {
            Some(cluster) => {
                let shared_key = format!("{}|{index}|{key}", limits.route);
                let (count, period) = (limit.rule.count, limit.rule.period);
                match cluster
                    .check(&shared_key, count, period, limit.rule.burst)
                    .await
                {
                    SharedDecision::Allowed { remaining } => Outcome::Allowed { remaining },
                    SharedDecision::Refused { retry_after } => Outcome::Refused {
                        wait: retry_after.unwrap_or(limit.interval()),
                    },
                    SharedDecision::Unavailable => {
                        return Err(ProxyError::new(
                            ErrorKind::LimitUnavailable,
                            format!(
                                "route {}: Redis is down and cluster.on_redis_down is \"deny\"",
                                limits.route
                            ),
                        ));
                    }
                }
            }
            // A node-local limit, or cluster mode not started (config requires it).
            None => limit.check(&key),
        };
        match outcome {
            Outcome::Allowed { remaining } => {
                let used = limit.rule.burst - remaining.min(limit.rule.burst);
                let reset = limit.interval().as_secs_f64() * f64::from(used);
                let reset = reset.ceil() as u64;
                if tightest.is_none_or(|(_, left, _)| remaining < left) {
                    tightest = Some((limit.rule.burst, remaining, reset));
                }
            }
            Outcome::Refused { wait } => {
                let seconds = (wait.as_secs_f64().ceil() as u64).max(1);
                limits.refused.inc();
                ctx.response_headers
                    .push((RETRY_AFTER, HeaderValue::from(seconds)));
                push_headers(ctx, limit.rule.burst, 0, seconds);
                return Err(ProxyError::new(
                    ErrorKind::RateLimited,
                    format!(
                        "{key} over {} on route {}",
                        describe(&limit.rule),
                        limits.route
                    ),
                ));
            }
        }
    }
    if let Some((limit, remaining, reset)) = tightest {
        push_headers(ctx, limit, remaining, reset);
    }
    Ok(Flow::Continue)
}

fn push_headers(ctx: &mut RequestCtx, limit: u32, remaining: u32, reset: u64) {
    ctx.response_headers.extend([
        (RATELIMIT_LIMIT, HeaderValue::from(limit)),
        (RATELIMIT_REMAINING, HeaderValue::from(remaining)),
        (RATELIMIT_RESET, HeaderValue::from(reset)),
    ]);
}

/// The key a request counts against. Identity falls back to the IP for anonymous callers,
/// and a header to the IP when it is absent, so neither can share one bucket with everyone.
fn key(ctx: &RequestCtx, req: &Request<ProxyBody>, key: &LimitKey) -> String {
    let ip = || format!("ip:{}", ctx.connection.client.ip().to_canonical());
    let key = match key {
        LimitKey::Ip => ip(),
        LimitKey::Identity => ctx
            .identity
            .as_ref()
            .map_or_else(ip, |identity| format!("id:{}", identity.name)),
        LimitKey::ClientCert => match client_cert::identity(ctx) {
            Some(identity) => format!("cert:{identity}"),
            None => ip(),
        },
        LimitKey::Header(name) => match req.headers().get(name) {
            Some(value) => format!("h:{}", String::from_utf8_lossy(value.as_bytes())),
            None => ip(),
        },
    };
    if key.len() > MAX_KEY_BYTES {
        return format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(key.as_bytes()))
        );
    }
    key
}

fn describe(rule: &RateLimitRule) -> String {
    format!("{}/{:?} burst {}", rule.count, rule.period, rule.burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(count: u32, period: Duration, burst: u32, max_keys: usize) -> RateLimitRule {
        RateLimitRule {
            key: LimitKey::Ip,
            count,
            period,
            burst,
            max_keys,
            cluster: false,
        }
    }

    #[test]
    fn burst_then_refused_then_back() {
        let limit = Limit::new(&rule(20, Duration::from_secs(1), 3, 10));
        for left in [2, 1, 0] {
            assert!(
                matches!(limit.check("a"), Outcome::Allowed { remaining } if remaining == left)
            );
        }
        let Outcome::Refused { wait } = limit.check("a") else {
            panic!("a fourth request in a burst of 3 passed");
        };
        assert!(wait <= Duration::from_millis(50), "{wait:?}");
        // Another key has its own budget.
        assert!(matches!(limit.check("b"), Outcome::Allowed { .. }));
        std::thread::sleep(Duration::from_millis(120));
        assert!(matches!(limit.check("a"), Outcome::Allowed { .. }));
    }

    #[test]
    fn keys_are_bounded() {
        let limit = Limit::new(&rule(1, Duration::from_secs(60), 1, 100));
        for index in 0..5_000 {
            let _ = limit.check(&format!("key-{index}"));
        }
        assert!(limit.tracked() <= 100, "{} keys tracked", limit.tracked());
        assert!(limit.tracked() > 0);
    }
}
