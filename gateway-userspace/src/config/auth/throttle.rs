//! A route's `rate_limits`: `count` per `period` by client, consumer or header, with bursts.

use std::time::Duration;

use hyper::header::HeaderName;
use serde::Deserialize;

use crate::config::Problems;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    Ip,
    /// The verified identity; the client IP when there is none.
    Identity,
    /// The client certificate's identity (`client_auth`); the client IP when there is none.
    ClientCert,
    /// A request header's value; the client IP when it is absent.
    Header(HeaderName),
}

/// One limit: `count` requests per `period`, with bursts up to `burst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitRule {
    pub key: LimitKey,
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
    /// Most distinct keys tracked; the least recently used are evicted beyond.
    pub max_keys: usize,
    /// Counted cluster-wide through `[cluster]`'s Redis instead of on this node alone.
    pub cluster: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawRateLimit {
    key: String,
    rate: String,
    burst: Option<u32>,
    max_keys: Option<usize>,
    #[serde(default)]
    cluster: bool,
}

/// Distinct keys per limit unless `max_keys` says otherwise.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

pub(in crate::config) fn compile_rate_limits(
    raw: Vec<RawRateLimit>,
    key: &str,
    problems: &mut Problems,
) -> Vec<RateLimitRule> {
    let mut rules = Vec::new();
    for (index, raw) in raw.into_iter().enumerate() {
        let key = format!("{key}[{index}]");
        let limit_key = match raw.key.as_str() {
            "ip" => Some(LimitKey::Ip),
            "identity" => Some(LimitKey::Identity),
            "client_cert" => Some(LimitKey::ClientCert),
            other => match other
                .strip_prefix("header:")
                .map(|name| HeaderName::from_bytes(name.as_bytes()))
            {
                Some(Ok(name)) => Some(LimitKey::Header(name)),
                _ => {
                    problems.add(
                        format!("{key}.key"),
                        format!(
                            "{other:?}: use \"ip\", \"identity\", \"client_cert\" or \"header:<name>\""
                        ),
                    );
                    None
                }
            },
        };
        let Some((count, period)) = parse_rate(&raw.rate) else {
            problems.add(
                format!("{key}.rate"),
                format!(
                    "{:?} is not a rate: <count>/<s|sec|second|m|min|minute|h|hour|d|day> or <count>/<duration> (e.g. \"10/s\", \"100/10s\")",
                    raw.rate
                ),
            );
            continue;
        };
        let burst = raw.burst.unwrap_or(count);
        if burst == 0 {
            problems.add(format!("{key}.burst"), "must be at least 1");
        }
        let max_keys = raw.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
        if max_keys == 0 {
            problems.add(format!("{key}.max_keys"), "must be at least 1");
        }
        if let Some(limit_key) = limit_key {
            rules.push(RateLimitRule {
                key: limit_key,
                count,
                period,
                burst: burst.max(1),
                max_keys: max_keys.max(1),
                cluster: raw.cluster,
            });
        }
    }
    rules
}

const MAX_PERIOD: Duration = Duration::from_secs(366 * 86_400);

/// `10/s`, `100/min`, `10000/day`, `5/10s`.
pub fn parse_rate(text: &str) -> Option<(u32, Duration)> {
    let (count, per) = text.split_once('/')?;
    let count: u32 = count.trim().parse().ok().filter(|count| *count > 0)?;
    let per = per.trim();
    let period = match per {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        other => humantime::parse_duration(other).ok()?,
    };
    // GCRA needs a non-zero interval between two requests, and its arithmetic (nanoseconds
    // in a u64) a period far below 584 years: a year is plenty.
    (period.as_nanos() / u128::from(count) > 0 && period <= MAX_PERIOD).then_some((count, period))
}
