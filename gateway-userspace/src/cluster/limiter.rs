//! Cluster-wide rate limits: GCRA (the generic cell rate algorithm) kept in Redis, one
//! theoretical arrival time (TAT) per key, updated by one atomic Lua script that reads the
//! time from Redis (so the nodes' clocks do not matter).
//!
//! Local fast path ("token leasing"): a node takes a small batch of tokens from Redis at a
//! time and spends them locally without a round trip; the batch is `burst / 4` (at least 1,
//! at most [`LimiterOptions::max_batch`]). Leased tokens are already spent in Redis, so the
//! cluster never admits more than the quota; the trade-off is the other way: tokens leased
//! by one node and not used are lost to the others, so a client may be refused up to
//! `(batch - 1) x nodes` requests early, and a lease lapses after `batch x interval` (at
//! least 100 ms, at most one second) so that tokens are not hoarded; using a token up to that
//! long after Redis counted it shifts at most `batch x nodes` requests in time. With `burst < 8` the batch is 1: every request
//! asks Redis, exactly.
//!
//! While Redis is unreachable (see [`RedisLink`]) decisions take the configured fallback at
//! once, without waiting for a timeout: `local` (fail open: a local GCRA at the full rate,
//! per node) or `deny` (fail closed). The link logs "down" and "up" once each, and the
//! limiter goes back to Redis by itself when the link's health check sees it answer.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock as _, DefaultClock},
    middleware::StateInformationMiddleware,
    state::{InMemoryState, NotKeyed},
};

use super::link::RedisLink;
use crate::config::OnRedisDown;

/// `count` requests per `period` (the emission interval is `period / count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

impl Rate {
    pub fn per_second(count: u32) -> Rate {
        Rate {
            count,
            period: Duration::from_secs(1),
        }
    }

    pub fn per_minute(count: u32) -> Rate {
        Rate {
            count,
            period: Duration::from_secs(60),
        }
    }

    /// Time between two requests at the steady rate, in microseconds (at least 1).
    fn interval_micros(&self) -> u64 {
        (self.period.as_micros() as u64 / u64::from(self.count.max(1))).max(1)
    }
}

/// Where a decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Redis answered (a new lease, or a refusal).
    Cluster,
    /// A token leased from Redis earlier.
    Lease,
    /// Redis down, `on_redis_down = "local"`: this node's own limiter.
    LocalFallback,
    /// A [`LocalLimiter`] (not cluster-wide by design).
    Local,
    /// Redis down, `on_redis_down = "deny"`: refused without asking anyone.
    DenyFallback,
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests left in the current burst (for `RateLimit-Remaining`; approximate when leased).
    pub remaining: u32,
    /// Until the bucket is full again (for `RateLimit-Reset`).
    pub reset_after: Duration,
    /// When refused: how long to wait (for `Retry-After`).
    pub retry_after: Option<Duration>,
    pub source: Source,
}

impl Decision {
    /// Refused because Redis is down and the config says fail closed: answer 503, not 429.
    pub fn is_unavailable(&self) -> bool {
        self.source == Source::DenyFallback
    }
}

/// Tuning of the local fast path.
#[derive(Debug, Clone, Copy)]
pub struct LimiterOptions {
    /// Most tokens leased at once (1: every request asks Redis).
    pub max_batch: u32,
}

impl Default for LimiterOptions {
    fn default() -> Self {
        LimiterOptions { max_batch: 16 }
    }
}

/// GCRA with a wanted number of tokens; grants what is available up to it.
/// KEYS[1]: the TAT key. ARGV: interval (us), burst, tokens wanted.
/// Returns {granted, remaining, reset_after_us, retry_after_us}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local available = math.floor((now + burst * interval - tat) / interval)
if available < 1 then
  local retry = tat - (burst - 1) * interval - now
  if retry < 1 then retry = 1 end
  return {0, 0, tat - now, retry}
end
local granted = want
if available < want then granted = available end
tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
return {granted, available - granted, tat - now, 0}
"#;

struct Lease {
    tokens: u32,
    until: Instant,
    remaining: u32,
    reset_at: Instant,
}

/// How long leased tokens stay usable: their slots' span (`batch x interval`), but at least
/// [`MIN_LEASE`] (at high rates the span is microseconds) and at most [`MAX_LEASE`].
const MIN_LEASE: Duration = Duration::from_millis(100);
const MAX_LEASE: Duration = Duration::from_secs(1);

/// The lease table is trimmed of lapsed entries when it grows past this; the local limiter
/// keeps at most this many keys.
const TRIM_AT: usize = 65_536;

/// A rate limiter shared by every node of the cluster.
pub struct ClusterLimiter {
    link: Arc<RedisLink>,
    prefix: String,
    on_down: OnRedisDown,
    options: LimiterOptions,
    script: redis::Script,
    leases: Mutex<HashMap<String, Lease>>,
    /// The fallback while Redis is down (`on_redis_down = "local"`).
    local: LocalLimiter,
}

impl ClusterLimiter {
    pub fn new(
        link: Arc<RedisLink>,
        key_prefix: &str,
        on_down: OnRedisDown,
        options: LimiterOptions,
    ) -> ClusterLimiter {
        ClusterLimiter {
            link,
            prefix: format!("{key_prefix}:rl:"),
            on_down,
            options,
            script: redis::Script::new(GCRA),
            leases: Mutex::new(HashMap::new()),
            local: LocalLimiter::default(),
        }
    }

    pub fn link(&self) -> &Arc<RedisLink> {
        &self.link
    }

    fn batch(&self, burst: u32) -> u32 {
        (burst / 4).clamp(1, self.options.max_batch.max(1))
    }

    /// One request under `key` (say `route|consumer`), limited to `rate` with bursts of
    /// `burst` across the cluster.
    pub async fn check(&self, key: &str, rate: Rate, burst: u32) -> Decision {
        let burst = burst.max(1);
        let now = Instant::now();
        if let Some(decision) = self.take_leased(key, now) {
            return decision;
        }
        let Some(mut connection) = self.link.connection() else {
            return self.fallback(key, rate, burst);
        };
        let interval = rate.interval_micros();
        let want = self.batch(burst);
        let result: redis::RedisResult<(u64, u64, u64, u64)> = self
            .script
            .key(format!("{}{key}", self.prefix))
            .arg(interval)
            .arg(burst)
            .arg(want)
            .invoke_async(&mut connection)
            .await;
        self.link.record(&result);
        let (granted, remaining, reset_us, retry_us) = match result {
            Ok(answer) => answer,
            Err(error) => {
                tracing::debug!(%error, "cluster limiter: Redis failed; fallback");
                return self.fallback(key, rate, burst);
            }
        };
        let reset_after = Duration::from_micros(reset_us);
        if granted == 0 {
            return Decision {
                allowed: false,
                remaining: 0,
                reset_after,
                retry_after: Some(Duration::from_micros(retry_us)),
                source: Source::Cluster,
            };
        }
        let granted = granted as u32;
        if granted > 1 {
            let lifetime = Duration::from_micros(interval.saturating_mul(u64::from(granted)))
                .clamp(MIN_LEASE, MAX_LEASE);
            let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            if leases.len() >= TRIM_AT {
                leases.retain(|_, lease| lease.until > now);
            }
            leases.insert(
                key.to_owned(),
                Lease {
                    tokens: granted - 1,
                    until: now + lifetime,
                    remaining: remaining as u32,
                    reset_at: now + reset_after,
                },
            );
        }
        Decision {
            allowed: true,
            remaining: remaining as u32 + granted - 1,
            reset_after,
            retry_after: None,
            source: Source::Cluster,
        }
    }

    fn take_leased(&self, key: &str, now: Instant) -> Option<Decision> {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let lease = leases.get_mut(key)?;
        if lease.tokens == 0 || lease.until <= now {
            leases.remove(key);
            return None;
        }
        lease.tokens -= 1;
        Some(Decision {
            allowed: true,
            remaining: lease.remaining + lease.tokens,
            reset_after: lease.reset_at.saturating_duration_since(now),
            retry_after: None,
            source: Source::Lease,
        })
    }

    fn fallback(&self, key: &str, rate: Rate, burst: u32) -> Decision {
        self.link.metrics.fallbacks.inc();
        match self.on_down {
            OnRedisDown::Deny => Decision {
                allowed: false,
                remaining: 0,
                reset_after: Duration::from_secs(1),
                retry_after: Some(Duration::from_secs(1)),
                source: Source::DenyFallback,
            },
            OnRedisDown::Local => Decision {
                source: Source::LocalFallback,
                ..self.local.check(key, rate, burst)
            },
        }
    }
}

/// One key's limiter on this node (governor's GCRA, with the state it was left in).
type KeyLimiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// GCRA on this node alone, per key: the fallback while Redis is down, and the "locally
/// limited" side of the bench. The `governor` crate does the arithmetic (as the throttle
/// stage's node-local limits do); the Redis-side GCRA above stays a script because it must
/// run atomically inside Redis, on Redis's clock, for every node at once, which an
/// in-process limiter cannot. Memory is bounded: at most [`TRIM_AT`] keys, least recently
/// used evicted (an evicted key starts with a full burst again).
pub struct LocalLimiter {
    clock: DefaultClock,
    /// By key and limit, so a changed rate or burst starts a limiter of its own.
    keys: quick_cache::sync::Cache<(String, u64, u32), Arc<KeyLimiter>>,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        LocalLimiter {
            clock: DefaultClock::default(),
            keys: quick_cache::sync::Cache::new(TRIM_AT),
        }
    }
}

impl LocalLimiter {
    pub fn check(&self, key: &str, rate: Rate, burst: u32) -> Decision {
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let interval_micros = rate.interval_micros();
        let interval = Duration::from_micros(interval_micros);
        let limiter = self
            .keys
            .get_or_insert_with(&(key.to_owned(), interval_micros, burst.get()), || {
                let quota = Quota::with_period(interval)
                    .expect("the interval is at least 1 us")
                    .allow_burst(burst);
                Ok::<_, std::convert::Infallible>(Arc::new(
                    RateLimiter::direct_with_clock(quota, self.clock.clone())
                        .with_middleware::<StateInformationMiddleware>(),
                ))
            })
            .unwrap_or_else(|never| match never {});
        match limiter.check() {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                Decision {
                    allowed: true,
                    remaining,
                    reset_after: interval * (burst.get() - remaining.min(burst.get())),
                    retry_after: None,
                    source: Source::Local,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision {
                    allowed: false,
                    remaining: 0,
                    reset_after: wait + interval * (burst.get() - 1),
                    retry_after: Some(wait),
                    source: Source::Local,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_gcra_allows_a_burst_then_the_rate() {
        let limiter = LocalLimiter::default();
        let rate = Rate::per_second(20);
        let decisions: Vec<_> = (0..4).map(|_| limiter.check("k", rate, 3)).collect();
        assert_eq!(
            decisions.iter().map(|d| d.allowed).collect::<Vec<_>>(),
            [true, true, true, false]
        );
        assert_eq!(decisions[0].remaining, 2);
        let wait = decisions[3].retry_after.unwrap();
        assert!(wait <= Duration::from_millis(50), "{wait:?}");
        std::thread::sleep(wait + Duration::from_millis(5));
        assert!(limiter.check("k", rate, 3).allowed);
        assert!(limiter.check("other", rate, 3).allowed);
    }

    #[test]
    fn local_gcra_admits_exactly_the_burst_for_every_limit() {
        // Slow rates (no refill while the test runs) and bursts from 1 to large.
        for (rate, burst) in [
            (Rate::per_minute(1), 1),
            (Rate::per_minute(6), 2),
            (Rate::per_minute(60), 7),
            (Rate::per_minute(1), 100),
            (
                Rate {
                    count: 1,
                    period: Duration::from_secs(3600),
                },
                1000,
            ),
        ] {
            let limiter = LocalLimiter::default();
            let decisions: Vec<Decision> = (0..burst + 3)
                .map(|_| limiter.check("k", rate, burst))
                .collect();
            let admitted = decisions.iter().filter(|d| d.allowed).count();
            assert_eq!(admitted, burst as usize, "{rate:?} burst {burst}");
            assert!(decisions[..burst as usize].iter().all(|d| d.allowed));
            // Remaining counts down to 0, then refusals say how long to wait (about one
            // interval: at most the whole period).
            let remaining: Vec<u32> = decisions[..burst as usize]
                .iter()
                .map(|d| d.remaining)
                .collect();
            assert_eq!(remaining, (0..burst).rev().collect::<Vec<_>>());
            for refused in &decisions[burst as usize..] {
                let wait = refused.retry_after.expect("a refusal says when");
                assert!(wait > Duration::ZERO && wait <= rate.period, "{wait:?}");
                assert!(refused.reset_after >= wait);
                assert_eq!(refused.source, Source::Local);
            }
            // Another key, or the same key under another limit, has a burst of its own.
            assert!(limiter.check("other", rate, burst).allowed);
            assert!(limiter.check("k", rate, burst + 1).allowed);
        }
        // A burst of 0 counts as 1, never as "nothing is ever allowed".
        let limiter = LocalLimiter::default();
        assert!(limiter.check("k", Rate::per_minute(1), 0).allowed);
        assert!(!limiter.check("k", Rate::per_minute(1), 0).allowed);
    }
}
