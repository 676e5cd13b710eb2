//! `[[upstreams]]`: the targets behind each upstream, how one is picked, and how the gateway
//! checks, retries and ejects them.

use std::time::Duration;

use hyper::{header::HeaderName, http::uri::Authority};
use serde::Deserialize;

use super::{Problems, proxy::check_name, units::duration};

use super::upstream_tls::{RawUpstreamTls, UpstreamTls, compile_tls};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub name: String,
    pub targets: Vec<TargetConfig>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    /// From sending the request to receiving the response head (504 beyond).
    pub request_timeout: Duration,
    /// Pooled keep-alive connections unused this long are closed.
    pub idle_timeout: Duration,
    /// For `balance = "consistent-hash"`: hash this request header (client IP when absent).
    pub hash_header: Option<HeaderName>,
    pub health_check: Option<HealthCheckConfig>,
    /// Passive ejection: this many failures in a row (connect errors, 5xx) take a target out
    /// for `ejection_time`; 0 turns it off.
    pub consecutive_failures: u32,
    pub ejection_time: Duration,
    pub retry: Option<RetryConfig>,
    pub protocol: UpstreamProtocol,
    /// TLS to the targets (`https`), when set.
    pub tls: Option<UpstreamTls>,
}

/// What the gateway speaks to an upstream's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive; gRPC requests still go over h2c (they need trailers).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge, for every request: many requests share one connection.
    H2c,
    /// HTTP/2 over TLS (ALPN h2), for every request; needs `tls`.
    H2,
}

impl UpstreamProtocol {
    /// Every request goes over HTTP/2.
    pub fn http2_only(self) -> bool {
        matches!(self, UpstreamProtocol::H2c | UpstreamProtocol::H2)
    }
}

/// Active health checks: `GET path` on every target each `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Successes in a row that bring an unhealthy target back.
    pub healthy_threshold: u32,
    /// Failures in a row that take a healthy target out.
    pub unhealthy_threshold: u32,
}

/// Retries of idempotent, bodiless requests on another target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryConfig {
    /// Retries after the first try, at most.
    pub attempts: u32,
    /// Response statuses that are retried (connect failures always are).
    pub on_status: Vec<u16>,
    /// Retries may add at most this percentage to the requests of the last 10 seconds...
    pub budget_percent: u32,
    /// ...plus this many retries per second.
    pub budget_min_per_second: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    /// `host:port`.
    pub address: String,
    /// Share of requests; 0 takes none (drained).
    pub weight: u32,
}

/// How an upstream picks a target (see proxy/balance.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Smooth weighted round robin (as nginx does it).
    #[default]
    RoundRobin,
    /// The target with the fewest requests in flight (relative to its weight).
    LeastOutstanding,
    /// Power of two random choices, scored by EWMA latency x (requests in flight + 1).
    P2cEwma,
    /// A hash ring over the client IP or `hash_header`.
    ConsistentHash,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    name: String,
    #[serde(default)]
    targets: Vec<RawTarget>,
    #[serde(default)]
    balance: Balance,
    connect_timeout: Option<String>,
    request_timeout: Option<String>,
    idle_timeout: Option<String>,
    hash_header: Option<String>,
    health_check: Option<RawHealthCheck>,
    #[serde(default)]
    consecutive_failures: u32,
    ejection_time: Option<String>,
    retry: Option<RawRetry>,
    #[serde(default)]
    protocol: UpstreamProtocol,
    tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    #[serde(default = "default_health_path")]
    path: String,
    interval: Option<String>,
    timeout: Option<String>,
    #[serde(default = "default_healthy_threshold")]
    healthy_threshold: u32,
    #[serde(default = "default_unhealthy_threshold")]
    unhealthy_threshold: u32,
}

fn default_health_path() -> String {
    "/healthz".into()
}

fn default_healthy_threshold() -> u32 {
    2
}

fn default_unhealthy_threshold() -> u32 {
    3
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default = "default_retry_attempts")]
    attempts: u32,
    #[serde(default)]
    on_status: Vec<u16>,
    #[serde(default = "default_budget_percent")]
    budget_percent: u32,
    #[serde(default = "default_budget_min_per_second")]
    budget_min_per_second: u32,
}

fn default_retry_attempts() -> u32 {
    1
}

fn default_budget_percent() -> u32 {
    20
}

fn default_budget_min_per_second() -> u32 {
    3
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    address: String,
    #[serde(default = "default_weight")]
    weight: u32,
}

fn default_weight() -> u32 {
    1
}

pub(super) fn compile_upstreams(
    raw: Vec<RawUpstream>,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> Vec<UpstreamConfig> {
    let mut upstreams: Vec<UpstreamConfig> = Vec::new();
    for (index, upstream) in raw.into_iter().enumerate() {
        let key = format!("upstreams[{index}]");
        check_name(&upstream.name, &format!("{key}.name"), problems);
        if upstreams.iter().any(|other| other.name == upstream.name) {
            problems.add(
                format!("{key}.name"),
                format!("{:?} is used twice", upstream.name),
            );
        }
        let mut targets = Vec::new();
        for (at, target) in upstream.targets.into_iter().enumerate() {
            let target_key = format!("{key}.targets[{at}]");
            match target.address.parse::<Authority>() {
                Ok(authority) if authority.port().is_some() && !target.address.contains('@') => {}
                _ => problems.add(
                    format!("{target_key}.address"),
                    format!(
                        "{:?} is not host:port (e.g. \"127.0.0.1:9000\", \"users.internal:80\")",
                        target.address
                    ),
                ),
            }
            if targets
                .iter()
                .any(|other: &TargetConfig| other.address == target.address)
            {
                problems.add(
                    format!("{target_key}.address"),
                    format!("{:?} is listed twice", target.address),
                );
            }
            if target.weight > 10_000 {
                problems.add(
                    format!("{target_key}.weight"),
                    format!("{} is out of range 0..=10000", target.weight),
                );
            }
            targets.push(TargetConfig {
                address: target.address,
                weight: target.weight,
            });
        }
        if targets.iter().all(|target| target.weight == 0) {
            warnings.push(format!(
                "{key} ({:?}): no target with a weight above 0: requests routed to it get 503",
                upstream.name
            ));
        }
        let timeout = |value: Option<String>, name: &str, default: u64, problems: &mut Problems| {
            duration(value, &format!("{key}.{name}"), problems)
                .unwrap_or(Duration::from_secs(default))
        };
        let hash_header = match upstream.hash_header {
            None => None,
            Some(name) => {
                if upstream.balance != Balance::ConsistentHash {
                    problems.add(
                        format!("{key}.hash_header"),
                        "only used with balance = \"consistent-hash\"",
                    );
                }
                match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(header) => Some(header),
                    Err(_) => {
                        problems.add(
                            format!("{key}.hash_header"),
                            format!("{name:?} is not a header name"),
                        );
                        None
                    }
                }
            }
        };
        let health_check = upstream.health_check.map(|raw| {
            let check_key = format!("{key}.health_check");
            if !raw.path.starts_with('/')
                || raw.path.parse::<hyper::http::uri::PathAndQuery>().is_err()
            {
                problems.add(
                    format!("{check_key}.path"),
                    format!("{:?} is not a path (e.g. \"/healthz\")", raw.path),
                );
            }
            for (name, value) in [
                ("healthy_threshold", raw.healthy_threshold),
                ("unhealthy_threshold", raw.unhealthy_threshold),
            ] {
                if !(1..=100).contains(&value) {
                    problems.add(
                        format!("{check_key}.{name}"),
                        format!("{value} is out of range 1..=100"),
                    );
                }
            }
            let interval = timeout(raw.interval, "health_check.interval", 5, problems);
            let check_timeout = timeout(raw.timeout, "health_check.timeout", 2, problems);
            if check_timeout > interval {
                problems.add(
                    format!("{check_key}.timeout"),
                    format!("{check_timeout:?} is longer than the interval ({interval:?})"),
                );
            }
            HealthCheckConfig {
                path: raw.path,
                interval,
                timeout: check_timeout,
                healthy_threshold: raw.healthy_threshold,
                unhealthy_threshold: raw.unhealthy_threshold,
            }
        });
        if upstream.consecutive_failures > 1000 {
            problems.add(
                format!("{key}.consecutive_failures"),
                format!("{} is out of range 0..=1000", upstream.consecutive_failures),
            );
        }
        if upstream.ejection_time.is_some() && upstream.consecutive_failures == 0 {
            problems.add(
                format!("{key}.ejection_time"),
                "only used with consecutive_failures above 0",
            );
        }
        let retry = upstream.retry.map(|raw| {
            let retry_key = format!("{key}.retry");
            if raw.attempts > 10 {
                problems.add(
                    format!("{retry_key}.attempts"),
                    format!("{} is out of range 0..=10", raw.attempts),
                );
            }
            for (at, status) in raw.on_status.iter().enumerate() {
                if !(500..=599).contains(status) {
                    problems.add(
                        format!("{retry_key}.on_status[{at}]"),
                        format!("{status} is not a 5xx status"),
                    );
                }
            }
            if raw.budget_percent > 100 {
                problems.add(
                    format!("{retry_key}.budget_percent"),
                    format!("{} is out of range 0..=100", raw.budget_percent),
                );
            }
            RetryConfig {
                attempts: raw.attempts,
                on_status: raw.on_status,
                budget_percent: raw.budget_percent,
                budget_min_per_second: raw.budget_min_per_second,
            }
        });
        if upstream.protocol == UpstreamProtocol::H2 && upstream.tls.is_none() {
            problems.add(
                format!("{key}.protocol"),
                "\"h2\" is HTTP/2 over TLS: it needs tls (cleartext HTTP/2 is \"h2c\")",
            );
        }
        upstreams.push(UpstreamConfig {
            connect_timeout: timeout(upstream.connect_timeout, "connect_timeout", 5, problems),
            request_timeout: timeout(upstream.request_timeout, "request_timeout", 30, problems),
            idle_timeout: timeout(upstream.idle_timeout, "idle_timeout", 90, problems),
            ejection_time: timeout(upstream.ejection_time, "ejection_time", 10, problems),
            name: upstream.name,
            targets,
            balance: upstream.balance,
            hash_header,
            health_check,
            consecutive_failures: upstream.consecutive_failures,
            retry,
            tls: upstream
                .tls
                .and_then(|raw| compile_tls(raw, upstream.protocol, &key, problems, warnings)),
            protocol: upstream.protocol,
        });
    }
    upstreams
}
