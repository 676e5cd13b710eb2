//! The L7 proxy's config: `[[listeners]]`, `[limits]`, `[[upstreams]]` and `[[routes]]`.
//!
//! Routes compile into one list in precedence order (most specific first), so the proxy takes
//! the first route that matches; routes that can never match are reported as warnings.

use std::{
    cmp::Ordering, collections::HashMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration,
};

use hyper::{
    Method,
    header::{HeaderName, HeaderValue},
    http::uri::Authority,
};
use regex::Regex;
use serde::Deserialize;

use super::{
    Problems,
    aggregate::{AggregateConfig, RawAggregate},
    auth::{self, AuthConfig, Authorize, Cors, RateLimitRule, RouteAuth},
    cache::{CacheConfig, CacheStoreConfig, RawCache, RawCacheStore, check_identity_keying},
    normalise::{EscapedSlashes, NormaliseConfig, RawNormalise},
};

// ---- The validated form ----

#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    pub listeners: Vec<ListenerConfig>,
    pub limits: HttpLimits,
    /// `[normalise]`: how request paths are made canonical before routing.
    pub normalise: NormaliseConfig,
    pub upstreams: Vec<UpstreamConfig>,
    /// In precedence order: the first route that matches a request takes it.
    pub routes: Vec<RouteConfig>,
    /// `[cache]`: the response cache's store.
    pub cache: CacheStoreConfig,
    /// JWT providers and API-key consumers (config/auth.rs).
    pub auth: AuthConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: ListenerProtocol,
    /// Certificates of an `https` listener (`None` for `http`).
    pub tls: Option<TlsConfig>,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerProtocol {
    /// HTTP/1.1, and HTTP/2 with prior knowledge (h2c).
    #[default]
    Http,
    /// TLS 1.2/1.3 with the listener's `tls` certificates; HTTP/2 or HTTP/1.1 by ALPN.
    Https,
}

impl ListenerProtocol {
    /// The scheme clients used, for `X-Forwarded-Proto` and `Forwarded: proto=`.
    pub fn scheme(self) -> &'static str {
        match self {
            ListenerProtocol::Http => "http",
            ListenerProtocol::Https => "https",
        }
    }
}

/// An `https` listener's certificates, loaded and checked when the config is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub certificates: Vec<TlsCertificate>,
    /// Index into `certificates`: served without SNI or for a name no certificate lists.
    pub default: usize,
}

#[derive(Clone)]
pub struct TlsCertificate {
    /// The PEM files; `None` for a `self_signed` certificate (made in memory at load).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// SNI names served with it: exact, or `*.example.com` (one label, as in certificates).
    pub names: Vec<HostMatch>,
    /// The chain (leaf first) and its private key, checked to match.
    pub certified: Arc<rustls::sign::CertifiedKey>,
}

impl PartialEq for TlsCertificate {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert
            && self.key == other.key
            && self.names == other.names
            && self.certified.cert == other.certified.cert
    }
}

impl Eq for TlsCertificate {}

impl std::fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// Client-facing limits, shared by every listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Request line and header fields together (431 beyond).
    pub max_header_bytes: usize,
    /// Request body (413 beyond).
    pub max_body_bytes: u64,
    /// The longest wait for the next bytes of a request body (408 beyond, the client's fault).
    pub body_read_timeout: Duration,
    /// Bytes per second a request body must average: it may take `body_read_timeout` plus one
    /// second per `min_body_rate` bytes received (408 beyond). 0: no rate bound.
    pub min_body_rate: u64,
    /// Time to receive a complete request head; the connection is closed after it.
    pub header_read_timeout: Duration,
    /// Time for a TLS client to complete its handshake; the connection is closed after it.
    pub tls_handshake_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Client connections open at once; more are closed as soon as they are accepted.
    pub max_connections: u32,
    /// Concurrent streams per HTTP/2 connection.
    pub max_http2_streams: u32,
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
    /// HTTP/2: a connection quiet this long is sent a PING...
    pub http2_keep_alive_interval: Duration,
    /// ...and closed when it is not answered in this time.
    pub http2_keep_alive_timeout: Duration,
    /// HTTP/2: the client must acknowledge the gateway's SETTINGS in this time.
    pub http2_settings_timeout: Duration,
    /// Once closing (idle, or shutdown; HTTP/2 sends GOAWAY) with nothing in flight, the
    /// peer has this long to finish the exchange before the socket is closed.
    pub close_grace: Duration,
    /// Longer method tokens are answered 501.
    pub max_method_bytes: usize,
    /// When not empty, the only methods served; others are answered 501.
    pub methods: Vec<hyper::Method>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_header_bytes: 64 * 1024,
            max_body_bytes: 1024 * 1024,
            body_read_timeout: Duration::from_secs(10),
            min_body_rate: 1024,
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_http2_streams: 100,
            drain_timeout: Duration::from_secs(30),
            http2_keep_alive_interval: Duration::from_secs(30),
            http2_keep_alive_timeout: Duration::from_secs(10),
            http2_settings_timeout: Duration::from_secs(10),
            close_grace: Duration::from_secs(5),
            max_method_bytes: 32,
            methods: Vec::new(),
        }
    }
}

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

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// Where it was declared, e.g. `routes[2]`.
    pub origin: String,
    pub matcher: RouteMatch,
    /// Index into [`ProxyConfig::upstreams`] (for an aggregate route: its first call's).
    pub upstream: usize,
    /// A composite route: calls several upstreams and merges their JSON (proxy/aggregate.rs).
    pub aggregate: Option<Arc<AggregateConfig>>,
    /// Response caching (proxy/cache.rs); `None`: not cached.
    pub cache: Option<CacheConfig>,
    /// Replaces the matched path prefix (empty: strips it).
    pub rewrite_prefix: Option<String>,
    /// Whether `%2F` and `%5C` in the path are refused (the default) or forwarded.
    pub escaped_slashes: EscapedSlashes,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// Credentials the route requires (`None`: anyone may call it).
    pub auth: Option<RouteAuth>,
    pub authorize: Option<Authorize>,
    /// Every one applies; empty: no L7 rate limit.
    pub rate_limits: Vec<RateLimitRule>,
    pub cors: Option<Cors>,
}

#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    pub host: HostMatch,
    pub path: PathMatch,
    /// Empty: any method.
    pub methods: Vec<Method>,
    /// Every one must be present with exactly this value.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HostMatch {
    #[default]
    Any,
    /// Lowercase, no port.
    Exact(String),
    /// `*.example.com` is stored as `.example.com`: one or more labels before it.
    Suffix(String),
}

#[derive(Debug, Clone, Default)]
pub enum PathMatch {
    #[default]
    Any,
    Exact(String),
    /// Whole segments: `/v1` matches `/v1` and `/v1/users`, not `/v10`.
    Prefix(String),
    /// Must match the whole path (anchored when compiled).
    Regex(Regex),
}

impl PathMatch {
    /// Whether `prefix` (a [`PathMatch::Prefix`]) matches `path`, segment-wise.
    pub fn prefix_matches(prefix: &str, path: &str) -> bool {
        match path.strip_prefix(prefix) {
            Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

/// Header edits, applied in this order: remove, set (replace), add (append).
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub remove: Vec<HeaderName>,
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
}

// ---- The file's shape ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    name: String,
    address: String,
    #[serde(default)]
    protocol: ListenerProtocol,
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    certificates: Vec<RawCertificate>,
    /// A name listed by one of the certificates; without it, the first certificate.
    default: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    /// Instead of cert and key: a certificate for `names` made at load, for trying HTTPS.
    #[serde(default)]
    self_signed: bool,
    #[serde(default)]
    names: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_header_bytes: Option<Size>,
    max_body_bytes: Option<Size>,
    body_read_timeout: Option<String>,
    min_body_rate: Option<Size>,
    header_read_timeout: Option<String>,
    tls_handshake_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<u32>,
    max_http2_streams: Option<u32>,
    drain_timeout: Option<String>,
    http2_keep_alive_interval: Option<String>,
    http2_keep_alive_timeout: Option<String>,
    http2_settings_timeout: Option<String>,
    close_grace: Option<String>,
    max_method_bytes: Option<usize>,
    methods: Option<Vec<String>>,
}

/// A byte count: `65536` or `"64KiB"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Size {
    Bytes(u64),
    Text(String),
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    name: String,
    #[serde(rename = "match", default)]
    matcher: RawMatch,
    upstream: Option<String>,
    aggregate: Option<RawAggregate>,
    cache: Option<RawCache>,
    #[serde(default)]
    strip_prefix: bool,
    rewrite_prefix: Option<String>,
    #[serde(default)]
    escaped_slashes: EscapedSlashes,
    #[serde(default)]
    request_headers: RawHeaderOps,
    #[serde(default)]
    response_headers: RawHeaderOps,
    auth: Option<auth::RawRouteAuth>,
    authorize: Option<auth::RawAuthorize>,
    #[serde(default)]
    rate_limits: Vec<auth::RawRateLimit>,
    cors: Option<auth::RawCors>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    host: Option<String>,
    path: Option<String>,
    path_prefix: Option<String>,
    path_regex: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    headers: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderOps {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    set: HashMap<String, String>,
    #[serde(default)]
    add: HashMap<String, String>,
}

// ---- Compiling ----

const MAX_HEADER_BYTES: u64 = 16 * 1024 * 1024;
const MAX_CONNECTIONS: u32 = 1_000_000;
/// Far above any method in use; a longer token is an attack, not a method.
const MAX_METHOD_BYTES: usize = 1024;

/// The raw sections of the file that belong to the proxy.
pub(super) struct RawProxy {
    pub listeners: Vec<RawListener>,
    pub limits: RawLimits,
    pub normalise: RawNormalise,
    pub upstreams: Vec<RawUpstream>,
    pub routes: Vec<RawRoute>,
    pub cache: Option<RawCacheStore>,
    pub auth: auth::RawAuth,
    pub consumers: Vec<auth::RawConsumer>,
}

impl RawProxy {
    pub(super) fn compile(
        self,
        problems: &mut Problems,
        warnings: &mut Vec<String>,
    ) -> ProxyConfig {
        let listeners = compile_listeners(self.listeners, problems, warnings);
        let limits = self.limits.compile(problems);
        let normalise = self.normalise.compile();
        let upstreams = compile_upstreams(self.upstreams, problems, warnings);
        let cache = RawCacheStore::compile(self.cache, problems);
        let auth = auth::compile(self.auth, self.consumers, problems);
        let mut routes = compile_routes(self.routes, &upstreams, &cache, &auth, problems);
        // Stable sort: equally specific routes keep their file order.
        routes.sort_by(|a, b| precedence(&a.matcher, &b.matcher));
        report_shadowed(&routes, warnings);
        if !routes.is_empty() && listeners.is_empty() {
            warnings.push("routes: no [[listeners]] is configured, so no route is served".into());
        }
        ProxyConfig {
            listeners,
            limits,
            normalise,
            upstreams,
            routes,
            cache,
            auth,
        }
    }
}

fn compile_listeners(
    raw: Vec<RawListener>,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> Vec<ListenerConfig> {
    let mut listeners: Vec<ListenerConfig> = Vec::new();
    for (index, listener) in raw.into_iter().enumerate() {
        let key = format!("listeners[{index}]");
        check_name(&listener.name, &format!("{key}.name"), problems);
        if listeners.iter().any(|other| other.name == listener.name) {
            problems.add(
                format!("{key}.name"),
                format!("{:?} is used twice", listener.name),
            );
        }
        let Ok(address) = listener.address.parse::<SocketAddr>() else {
            problems.add(
                format!("{key}.address"),
                format!(
                    "{:?} is not an IP:port address (e.g. \"0.0.0.0:8080\", \"[::]:8080\")",
                    listener.address
                ),
            );
            continue;
        };
        if let Some(other) = listeners.iter().find(|other| other.address == address) {
            problems.add(
                format!("{key}.address"),
                format!("{address} is also the address of listener {:?}", other.name),
            );
        }
        let tls = match (listener.protocol, listener.tls) {
            (ListenerProtocol::Https, Some(tls)) => {
                compile_tls(tls, &format!("{key}.tls"), problems, warnings)
            }
            (ListenerProtocol::Https, None) => {
                problems.add(
                    format!("{key}.tls"),
                    "protocol = \"https\" needs tls = { certificates = [{ cert = \"...\", key = \"...\" }] }",
                );
                None
            }
            (ListenerProtocol::Http, Some(_)) => {
                problems.add(format!("{key}.tls"), "only used with protocol = \"https\"");
                None
            }
            (ListenerProtocol::Http, None) => None,
        };
        listeners.push(ListenerConfig {
            name: listener.name,
            address,
            protocol: listener.protocol,
            tls,
        });
    }
    listeners
}

/// Loads every certificate and key (each problem names the key and the file), checks the
/// SNI names, and picks the default certificate.
fn compile_tls(
    raw: RawTls,
    key: &str,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<TlsConfig> {
    if raw.certificates.is_empty() {
        problems.add(
            format!("{key}.certificates"),
            "needs at least one { cert = \"chain.pem\", key = \"key.pem\" }",
        );
        return None;
    }
    let mut certificates: Vec<TlsCertificate> = Vec::new();
    let mut complete = true;
    for (index, certificate) in raw.certificates.into_iter().enumerate() {
        let entry = format!("{key}.certificates[{index}]");
        let mut names = Vec::new();
        for (at, name) in certificate.names.iter().enumerate() {
            let name_key = format!("{entry}.names[{at}]");
            let host = compile_host(name, &name_key, problems);
            let earlier = certificates
                .iter()
                .position(|other| other.names.contains(&host))
                .map(|other| format!("{key}.certificates[{other}]"))
                .or_else(|| names.contains(&host).then(|| entry.clone()));
            if let Some(earlier) = earlier {
                problems.add(name_key, format!("{name:?} is also a name of {earlier}"));
            }
            names.push(host);
        }
        let loaded = match (&certificate.cert, &certificate.key, certificate.self_signed) {
            (Some(cert), Some(key), false) => crate::certs::load(cert, key),
            (None, None, true) if names.is_empty() => {
                problems.add(
                    format!("{entry}.names"),
                    "a self_signed certificate needs the names it is for, e.g. [\"localhost\"]",
                );
                complete = false;
                continue;
            }
            (None, None, true) => {
                warnings.push(format!(
                    "{entry}: a self-signed certificate for {:?}: clients will not trust it \
                     unless told to (curl -k); for trying HTTPS out, not for production",
                    certificate.names
                ));
                crate::certs::self_signed(&certificate.names)
            }
            (_, _, true) => {
                problems.add(
                    format!("{entry}.self_signed"),
                    "give either cert and key, or self_signed = true, not both",
                );
                complete = false;
                continue;
            }
            (cert, _, false) => {
                let missing = if cert.is_none() { "cert" } else { "key" };
                problems.add(
                    format!("{entry}.{missing}"),
                    "missing: give cert and key (PEM files), or self_signed = true",
                );
                complete = false;
                continue;
            }
        };
        let file = certificate.cert.as_ref().map_or_else(
            || "(self-signed)".to_owned(),
            |cert| cert.display().to_string(),
        );
        match loaded {
            Ok(loaded) => {
                if let Some(problem) = loaded
                    .validity
                    .as_ref()
                    .and_then(|validity| validity.problem())
                {
                    warnings.push(format!("{entry}.cert: the certificate in {file} {problem}"));
                }
                for (at, (name, host)) in certificate.names.iter().zip(&names).enumerate() {
                    if !sni_probe(host).is_none_or(|probe| loaded.covers(&probe)) {
                        warnings.push(format!(
                            "{entry}.names[{at}]: the certificate in {file} is not valid for \
                             {name:?} (see its subject alternative names): clients will refuse it"
                        ));
                    }
                }
                certificates.push(TlsCertificate {
                    cert: certificate.cert,
                    key: certificate.key,
                    names,
                    certified: loaded.key,
                });
            }
            Err(crate::certs::LoadError::Cert(reason)) => {
                problems.add(format!("{entry}.cert"), reason);
                complete = false;
            }
            Err(crate::certs::LoadError::Key(reason)) => {
                problems.add(format!("{entry}.key"), reason);
                complete = false;
            }
        }
    }
    if !complete {
        return None;
    }
    let default = match raw.default {
        None => 0,
        Some(name) => {
            let wanted = name.to_ascii_lowercase();
            let found = certificates.iter().position(|certificate| {
                certificate.names.iter().any(|host| match host {
                    HostMatch::Exact(exact) => *exact == wanted,
                    HostMatch::Suffix(suffix) => wanted.strip_prefix('*') == Some(suffix),
                    HostMatch::Any => false,
                })
            });
            let Some(found) = found else {
                problems.add(
                    format!("{key}.default"),
                    format!("{name:?} is not among the certificates' names"),
                );
                return None;
            };
            found
        }
    };
    for (index, certificate) in certificates.iter().enumerate() {
        if index != default && certificate.names.is_empty() {
            warnings.push(format!(
                "{key}.certificates[{index}]: no names and not the default: it is never served"
            ));
        }
    }
    Some(TlsConfig {
        certificates,
        default,
    })
}

/// The name a certificate must be valid for to serve `host`: the name itself, or for a
/// wildcard a name one label under it. `None` (anything goes) for `HostMatch::Any`.
fn sni_probe(host: &HostMatch) -> Option<String> {
    match host {
        HostMatch::Exact(name) => Some(name.clone()),
        HostMatch::Suffix(suffix) => Some(format!("sni-probe{suffix}")),
        HostMatch::Any => None,
    }
}

impl RawLimits {
    fn compile(self, problems: &mut Problems) -> HttpLimits {
        let defaults = HttpLimits::default();
        let header_bytes = size(self.max_header_bytes, "limits.max_header_bytes", problems)
            .unwrap_or(defaults.max_header_bytes as u64);
        if !(1024..=MAX_HEADER_BYTES).contains(&header_bytes) {
            problems.add(
                "limits.max_header_bytes",
                format!("{header_bytes} bytes is out of range 1KiB..=16MiB"),
            );
        }
        let limits = HttpLimits {
            max_header_bytes: header_bytes.min(MAX_HEADER_BYTES) as usize,
            max_body_bytes: size(self.max_body_bytes, "limits.max_body_bytes", problems)
                .unwrap_or(defaults.max_body_bytes),
            body_read_timeout: duration(
                self.body_read_timeout,
                "limits.body_read_timeout",
                problems,
            )
            .unwrap_or(defaults.body_read_timeout),
            min_body_rate: rate(self.min_body_rate, "limits.min_body_rate", problems)
                .unwrap_or(defaults.min_body_rate),
            header_read_timeout: duration(
                self.header_read_timeout,
                "limits.header_read_timeout",
                problems,
            )
            .unwrap_or(defaults.header_read_timeout),
            tls_handshake_timeout: duration(
                self.tls_handshake_timeout,
                "limits.tls_handshake_timeout",
                problems,
            )
            .unwrap_or(defaults.tls_handshake_timeout),
            idle_timeout: duration(self.idle_timeout, "limits.idle_timeout", problems)
                .unwrap_or(defaults.idle_timeout),
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            max_http2_streams: self.max_http2_streams.unwrap_or(defaults.max_http2_streams),
            drain_timeout: duration(self.drain_timeout, "limits.drain_timeout", problems)
                .unwrap_or(defaults.drain_timeout),
            http2_keep_alive_interval: duration(
                self.http2_keep_alive_interval,
                "limits.http2_keep_alive_interval",
                problems,
            )
            .unwrap_or(defaults.http2_keep_alive_interval),
            http2_keep_alive_timeout: duration(
                self.http2_keep_alive_timeout,
                "limits.http2_keep_alive_timeout",
                problems,
            )
            .unwrap_or(defaults.http2_keep_alive_timeout),
            http2_settings_timeout: duration(
                self.http2_settings_timeout,
                "limits.http2_settings_timeout",
                problems,
            )
            .unwrap_or(defaults.http2_settings_timeout),
            close_grace: duration(self.close_grace, "limits.close_grace", problems)
                .unwrap_or(defaults.close_grace),
            max_method_bytes: self.max_method_bytes.unwrap_or(defaults.max_method_bytes),
            methods: compile_methods(self.methods.unwrap_or_default(), problems),
        };
        if !(1..=MAX_METHOD_BYTES).contains(&limits.max_method_bytes) {
            problems.add(
                "limits.max_method_bytes",
                format!(
                    "{} is out of range 1..={MAX_METHOD_BYTES}",
                    limits.max_method_bytes
                ),
            );
        }
        if !(1..=MAX_CONNECTIONS).contains(&limits.max_connections) {
            problems.add(
                "limits.max_connections",
                format!(
                    "{} is out of range 1..={MAX_CONNECTIONS}",
                    limits.max_connections
                ),
            );
        }
        if limits.max_http2_streams == 0 {
            problems.add("limits.max_http2_streams", "must be at least 1");
        }
        limits
    }
}

/// `limits.methods`: each must be a valid method token.
fn compile_methods(raw: Vec<String>, problems: &mut Problems) -> Vec<hyper::Method> {
    let mut methods = Vec::new();
    for (index, name) in raw.into_iter().enumerate() {
        match hyper::Method::from_bytes(name.as_bytes()) {
            Ok(method) if !name.is_empty() => methods.push(method),
            _ => problems.add(
                format!("limits.methods[{index}]"),
                format!("{name:?} is not a method token (e.g. \"GET\", \"PURGE\")"),
            ),
        }
    }
    methods
}

fn compile_upstreams(
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
            protocol: upstream.protocol,
        });
    }
    upstreams
}

fn compile_routes(
    raw: Vec<RawRoute>,
    upstreams: &[UpstreamConfig],
    cache_store: &CacheStoreConfig,
    auth: &AuthConfig,
    problems: &mut Problems,
) -> Vec<RouteConfig> {
    let mut routes: Vec<RouteConfig> = Vec::new();
    for (index, route) in raw.into_iter().enumerate() {
        let key = format!("routes[{index}]");
        check_name(&route.name, &format!("{key}.name"), problems);
        if routes.iter().any(|other| other.name == route.name) {
            problems.add(
                format!("{key}.name"),
                format!("{:?} is used twice", route.name),
            );
        }
        let mut matcher = route.matcher.compile(&format!("{key}.match"), problems);
        if route.aggregate.is_some() {
            // Calls are GETs: a composite route answers GET and HEAD only.
            if matcher.methods.is_empty() {
                matcher.methods = vec![Method::GET, Method::HEAD];
            } else if matcher
                .methods
                .iter()
                .any(|method| method != Method::GET && method != Method::HEAD)
            {
                problems.add(
                    format!("{key}.match.methods"),
                    "an aggregate route answers GET and HEAD only",
                );
            }
        }
        let aggregate = route
            .aggregate
            .map(|aggregate| Arc::new(aggregate.compile(&key, &matcher.path, upstreams, problems)));
        let upstream = match (&route.upstream, &aggregate) {
            (Some(name), None) => {
                let found = upstreams.iter().position(|upstream| &upstream.name == name);
                if found.is_none() {
                    problems.add(
                        format!("{key}.upstream"),
                        format!("no upstream is named {name:?}"),
                    );
                }
                found
            }
            (None, Some(aggregate)) => aggregate.calls.first().map(|call| call.upstream),
            (Some(_), Some(_)) => {
                problems.add(&key, "set upstream or aggregate, not both");
                None
            }
            (None, None) => {
                problems.add(&key, "needs upstream (or aggregate)");
                None
            }
        };
        let route_auth = route
            .auth
            .map(|raw| auth::compile_route_auth(raw, &format!("{key}.auth"), auth, problems));
        let cache = route.cache.map(|cache| {
            let cache = cache.compile(&key, cache_store, problems);
            let requires_authorization = matcher
                .headers
                .iter()
                .any(|(name, _)| name == hyper::header::AUTHORIZATION);
            check_identity_keying(
                route_auth.is_some(),
                requires_authorization,
                &cache,
                &key,
                problems,
            );
            cache
        });
        let rewrite_prefix = match (route.strip_prefix, route.rewrite_prefix) {
            (true, Some(_)) => {
                problems.add(
                    format!("{key}.rewrite_prefix"),
                    "set strip_prefix or rewrite_prefix, not both",
                );
                None
            }
            (true, None) => Some(String::new()),
            (false, Some(prefix)) => {
                if !prefix.starts_with('/') {
                    problems.add(
                        format!("{key}.rewrite_prefix"),
                        format!("{prefix:?} must start with \"/\""),
                    );
                }
                Some(prefix)
            }
            (false, None) => None,
        };
        if rewrite_prefix.is_some() && aggregate.is_some() {
            problems.add(
                format!("{key}.rewrite_prefix"),
                "an aggregate route's calls name their own paths",
            );
        }
        if rewrite_prefix.is_some() && !matches!(matcher.path, PathMatch::Prefix(_)) {
            problems.add(
                format!(
                    "{key}.{}",
                    if route.strip_prefix {
                        "strip_prefix"
                    } else {
                        "rewrite_prefix"
                    }
                ),
                "needs match.path_prefix: there is no matched prefix to replace",
            );
        }
        let authorize = route.authorize.map(|raw| {
            let key = format!("{key}.authorize");
            auth::compile_authorize(raw, &key, route_auth.as_ref(), auth, problems)
        });
        routes.push(RouteConfig {
            rate_limits: auth::compile_rate_limits(
                route.rate_limits,
                &format!("{key}.rate_limits"),
                problems,
            ),
            cors: route
                .cors
                .map(|raw| auth::compile_cors(raw, &format!("{key}.cors"), problems)),
            auth: route_auth,
            authorize,
            origin: key.clone(),
            name: route.name,
            matcher,
            upstream: upstream.unwrap_or(0),
            aggregate,
            cache,
            rewrite_prefix,
            escaped_slashes: route.escaped_slashes,
            request_headers: route
                .request_headers
                .compile(&format!("{key}.request_headers"), problems),
            response_headers: route
                .response_headers
                .compile(&format!("{key}.response_headers"), problems),
        });
    }
    routes
}

impl RawMatch {
    fn compile(self, key: &str, problems: &mut Problems) -> RouteMatch {
        let host = match self.host {
            None => HostMatch::Any,
            Some(host) => compile_host(&host, &format!("{key}.host"), problems),
        };
        let given = [&self.path, &self.path_prefix, &self.path_regex]
            .iter()
            .filter(|value| value.is_some())
            .count();
        if given > 1 {
            problems.add(key, "set at most one of path, path_prefix and path_regex");
        }
        let path = if let Some(path) = self.path {
            check_path(&path, &format!("{key}.path"), problems);
            PathMatch::Exact(path)
        } else if let Some(prefix) = self.path_prefix {
            check_path(&prefix, &format!("{key}.path_prefix"), problems);
            PathMatch::Prefix(prefix)
        } else if let Some(pattern) = self.path_regex {
            match Regex::new(&format!("^(?:{pattern})$")) {
                Ok(regex) => PathMatch::Regex(regex),
                Err(error) => {
                    problems.add(
                        format!("{key}.path_regex"),
                        format!("{pattern:?} is not a valid regex: {error}"),
                    );
                    PathMatch::Any
                }
            }
        } else {
            PathMatch::Any
        };
        let mut methods = Vec::new();
        for (index, method) in self.methods.iter().enumerate() {
            let upper = method.to_ascii_uppercase();
            match Method::from_bytes(upper.as_bytes()) {
                Ok(parsed) if !method.is_empty() && !methods.contains(&parsed) => {
                    methods.push(parsed)
                }
                Ok(_) => problems.add(
                    format!("{key}.methods[{index}]"),
                    format!("{method:?} is listed twice"),
                ),
                Err(_) => problems.add(
                    format!("{key}.methods[{index}]"),
                    format!("{method:?} is not an HTTP method"),
                ),
            }
        }
        let mut headers = sorted_pairs(self.headers, &format!("{key}.headers"), problems);
        headers.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        RouteMatch {
            host,
            path,
            methods,
            headers,
        }
    }
}

impl RawHeaderOps {
    fn compile(self, key: &str, problems: &mut Problems) -> HeaderOps {
        let mut remove = Vec::new();
        for (index, name) in self.remove.iter().enumerate() {
            if let Some(name) = header_name(name, &format!("{key}.remove[{index}]"), problems) {
                remove.push(name);
            }
        }
        HeaderOps {
            remove,
            set: sorted_pairs(self.set, &format!("{key}.set"), problems),
            add: sorted_pairs(self.add, &format!("{key}.add"), problems),
        }
    }
}

/// Header fields that are the proxy's own business, so config may not edit them: the
/// hop-by-hop fields the proxy removes, and the framing it sets.
fn is_reserved_header(name: &str) -> bool {
    crate::http::HOP_BY_HOP.contains(&name) || name == "content-length"
}

fn header_name(name: &str, key: &str, problems: &mut Problems) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(parsed) if is_reserved_header(parsed.as_str()) => {
            problems.add(
                key,
                format!("{name:?} is managed by the proxy (framing or hop-by-hop) and cannot be configured"),
            );
            None
        }
        Ok(parsed) => Some(parsed),
        Err(_) => {
            problems.add(key, format!("{name:?} is not a valid header name"));
            None
        }
    }
}

/// Name/value pairs in name order (TOML tables have no order we could keep).
fn sorted_pairs(
    table: HashMap<String, String>,
    key: &str,
    problems: &mut Problems,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut pairs: Vec<(String, String)> = table.into_iter().collect();
    pairs.sort();
    let mut compiled = Vec::new();
    for (name, value) in pairs {
        let entry_key = format!("{key}.{name:?}");
        let Some(parsed) = header_name(&name, &entry_key, problems) else {
            continue;
        };
        match HeaderValue::from_str(&value) {
            Ok(value) => compiled.push((parsed, value)),
            Err(_) => problems.add(
                entry_key,
                format!("{value:?} is not a valid header value (visible ASCII only)"),
            ),
        }
    }
    compiled
}

fn compile_host(host: &str, key: &str, problems: &mut Problems) -> HostMatch {
    let lower = host.to_ascii_lowercase();
    let (wildcard, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
        problems.add(
            key,
            format!(
                "{host:?} is not a host name (e.g. \"api.example.com\" or \"*.example.com\"; no port, no other wildcards)"
            ),
        );
    }
    if wildcard {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(lower)
    }
}

fn check_path(path: &str, key: &str, problems: &mut Problems) {
    if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
        problems.add(
            key,
            format!("{path:?} must start with \"/\" and hold no query, fragment or space"),
        );
    }
}

fn check_name(name: &str, key: &str, problems: &mut Problems) {
    if name.is_empty() || name.len() > 64 || name.contains(char::is_whitespace) {
        problems.add(
            key,
            format!("{name:?}: names are 1 to 64 characters without spaces"),
        );
    }
}

/// A byte rate: `1024` or `"1KiB/s"` (bytes per second).
fn rate(value: Option<Size>, key: &str, problems: &mut Problems) -> Option<u64> {
    let per_second = match value? {
        Size::Bytes(bytes) => return Some(bytes),
        Size::Text(text) => match text.strip_suffix("/s") {
            Some(size) => size.trim().to_owned(),
            None => {
                problems.add(
                    key,
                    format!("{text:?} is not a rate (e.g. 1024, \"1KiB/s\")"),
                );
                return None;
            }
        },
    };
    size(Some(Size::Text(per_second)), key, problems)
}

pub(super) fn size(value: Option<Size>, key: &str, problems: &mut Problems) -> Option<u64> {
    match value? {
        Size::Bytes(bytes) => Some(bytes),
        Size::Text(text) => match text.parse::<bytesize::ByteSize>() {
            Ok(size) => Some(size.as_u64()),
            Err(_) => {
                problems.add(
                    key,
                    format!("{text:?} is not a size (e.g. 65536, \"64KiB\", \"8MiB\")"),
                );
                None
            }
        },
    }
}

pub(super) fn duration(
    value: Option<String>,
    key: &str,
    problems: &mut Problems,
) -> Option<Duration> {
    let text = value?;
    match humantime::parse_duration(&text) {
        Ok(duration) if !duration.is_zero() => Some(duration),
        Ok(_) => {
            problems.add(key, "must be longer than 0s");
            None
        }
        Err(_) => {
            problems.add(
                key,
                format!("{text:?} is not a duration (e.g. \"500ms\", \"30s\", \"2m\")"),
            );
            None
        }
    }
}

// ---- Precedence and shadowing ----

/// Most specific first: exact host, then longer wildcard suffixes, then any host; within a
/// host class, exact path, then longer prefixes, then regex, then any path; then more
/// method/header constraints. `Ordering::Equal` keeps file order (the sort is stable).
fn precedence(a: &RouteMatch, b: &RouteMatch) -> Ordering {
    fn host_rank(host: &HostMatch) -> (u8, std::cmp::Reverse<usize>) {
        match host {
            HostMatch::Exact(_) => (0, std::cmp::Reverse(0)),
            HostMatch::Suffix(suffix) => (1, std::cmp::Reverse(suffix.len())),
            HostMatch::Any => (2, std::cmp::Reverse(0)),
        }
    }
    fn path_rank(path: &PathMatch) -> (u8, std::cmp::Reverse<usize>) {
        match path {
            PathMatch::Exact(_) => (0, std::cmp::Reverse(0)),
            PathMatch::Prefix(prefix) => (1, std::cmp::Reverse(prefix.len())),
            PathMatch::Regex(_) => (2, std::cmp::Reverse(0)),
            PathMatch::Any => (3, std::cmp::Reverse(0)),
        }
    }
    let constraints = |m: &RouteMatch| usize::from(!m.methods.is_empty()) + m.headers.len();
    host_rank(&a.host)
        .cmp(&host_rank(&b.host))
        .then(path_rank(&a.path).cmp(&path_rank(&b.path)))
        .then(constraints(b).cmp(&constraints(a)))
}

/// Warns about every route that an earlier route (in precedence order) fully covers.
fn report_shadowed(routes: &[RouteConfig], warnings: &mut Vec<String>) {
    for (at, route) in routes.iter().enumerate() {
        if let Some(earlier) = routes[..at]
            .iter()
            .find(|earlier| covers(&earlier.matcher, &route.matcher))
        {
            warnings.push(format!(
                "{} ({:?}) can never match: every request it matches goes to {} ({:?}), which takes precedence",
                route.origin, route.name, earlier.origin, earlier.name
            ));
        }
    }
}

/// Whether every request `narrow` matches is also matched by `broad`. Conservative: `false`
/// when it cannot tell (regexes other than identical ones).
fn covers(broad: &RouteMatch, narrow: &RouteMatch) -> bool {
    let host = match (&broad.host, &narrow.host) {
        (HostMatch::Any, _) => true,
        (HostMatch::Exact(a), HostMatch::Exact(b)) => a == b,
        (HostMatch::Suffix(a), HostMatch::Exact(b)) => b.ends_with(a.as_str()),
        (HostMatch::Suffix(a), HostMatch::Suffix(b)) => b.ends_with(a.as_str()),
        _ => false,
    };
    let path = match (&broad.path, &narrow.path) {
        (PathMatch::Any, _) => true,
        (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
        (PathMatch::Prefix(a), PathMatch::Exact(b) | PathMatch::Prefix(b)) => {
            PathMatch::prefix_matches(a, b)
        }
        (PathMatch::Regex(a), PathMatch::Regex(b)) => a.as_str() == b.as_str(),
        (PathMatch::Regex(a), PathMatch::Exact(b)) => a.is_match(b),
        _ => false,
    };
    let methods = broad.methods.is_empty()
        || (!narrow.methods.is_empty()
            && narrow
                .methods
                .iter()
                .all(|method| broad.methods.contains(method)));
    let headers = broad
        .headers
        .iter()
        .all(|pair| narrow.headers.contains(pair));
    host && path && methods && headers
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ParseError};

    const BASE: &str = "[xdp]\nmode = \"off\"\n";

    fn parse(text: &str) -> Config {
        Config::parse(&format!("{BASE}{text}")).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(&format!("{BASE}{text}")) {
            Err(ParseError::Invalid(problems)) => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    const UPSTREAM: &str =
        "[[upstreams]]\nname = \"u\"\ntargets = [{ address = \"127.0.0.1:9000\" }]\n";

    #[test]
    fn balancing_health_and_retry_keys() {
        let config = parse(
            "[[upstreams]]\nname = \"u\"\ntargets = [{ address = \"127.0.0.1:9000\" }]\n\
             balance = \"consistent-hash\"\nhash_header = \"X-User\"\n\
             health_check = { path = \"/up\", interval = \"2s\", timeout = \"1s\" }\n\
             consecutive_failures = 3\nejection_time = \"5s\"\n\
             retry = { attempts = 2, on_status = [502, 503] }\n",
        );
        let upstream = &config.proxy.upstreams[0];
        assert_eq!(upstream.balance, super::Balance::ConsistentHash);
        assert_eq!(upstream.hash_header.as_ref().unwrap(), "x-user");
        let check = upstream.health_check.as_ref().unwrap();
        assert_eq!((check.healthy_threshold, check.unhealthy_threshold), (2, 3));
        assert_eq!(check.interval.as_secs(), 2);
        assert_eq!(upstream.consecutive_failures, 3);
        assert_eq!(upstream.ejection_time.as_secs(), 5);
        let retry = upstream.retry.as_ref().unwrap();
        assert_eq!((retry.attempts, retry.budget_percent), (2, 20));
        assert_eq!(retry.on_status, [502, 503]);
        let defaults = parse(UPSTREAM);
        let upstream = &defaults.proxy.upstreams[0];
        assert!(upstream.health_check.is_none() && upstream.retry.is_none());
        assert_eq!(upstream.consecutive_failures, 0);

        let found = problems(
            "[[upstreams]]\nname = \"u\"\ntargets = [{ address = \"127.0.0.1:9000\" }]\n\
             hash_header = \"bad name\"\nejection_time = \"1s\"\n\
             health_check = { path = \"up\", interval = \"1s\", timeout = \"2s\", healthy_threshold = 0 }\n\
             retry = { attempts = 11, on_status = [404], budget_percent = 101 }\n",
        );
        for prefix in [
            "upstreams[0].hash_header: only used with balance = \"consistent-hash\"",
            "upstreams[0].hash_header: \"bad name\" is not a header name",
            "upstreams[0].ejection_time: only used with consecutive_failures above 0",
            "upstreams[0].health_check.path: \"up\" is not a path",
            "upstreams[0].health_check.healthy_threshold: 0 is out of range",
            "upstreams[0].health_check.timeout: 2s is longer than the interval",
            "upstreams[0].retry.attempts: 11 is out of range",
            "upstreams[0].retry.on_status[0]: 404 is not a 5xx status",
            "upstreams[0].retry.budget_percent: 101 is out of range",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(prefix)),
                "{prefix}\nnot in {found:#?}"
            );
        }
    }

    #[test]
    fn limits_default_and_accept_human_units() {
        let config = parse("");
        assert_eq!(config.proxy.limits.max_header_bytes, 64 * 1024);
        assert_eq!(config.proxy.limits.max_body_bytes, 1024 * 1024);
        assert_eq!(config.proxy.limits.header_read_timeout.as_secs(), 10);
        assert_eq!(config.proxy.limits.drain_timeout.as_secs(), 30);
        assert!(config.proxy.listeners.is_empty());
        let config = parse(
            "[limits]\nmax_header_bytes = \"8KiB\"\nmax_body_bytes = 4096\nheader_read_timeout = \"1500ms\"\n",
        );
        assert_eq!(config.proxy.limits.max_header_bytes, 8192);
        assert_eq!(config.proxy.limits.max_body_bytes, 4096);
        assert_eq!(config.proxy.limits.header_read_timeout.as_millis(), 1500);
    }

    #[test]
    fn body_timers_default_parse_and_name_the_key() {
        let limits = parse("").proxy.limits;
        assert_eq!(limits.body_read_timeout.as_secs(), 10);
        assert_eq!(limits.min_body_rate, 1024);
        let table = [
            ("\"2KiB/s\"", 2048),
            ("\"100 B/s\"", 100),
            ("512", 512),
            ("0", 0),
        ];
        for (text, bytes) in table {
            let limits = parse(&format!(
                "[limits]\nmin_body_rate = {text}\nbody_read_timeout = \"2s\"\n"
            ))
            .proxy
            .limits;
            assert_eq!(limits.min_body_rate, bytes, "{text}");
            assert_eq!(limits.body_read_timeout.as_secs(), 2);
        }
        for (text, problem) in [
            (
                "min_body_rate = \"1KiB\"",
                "limits.min_body_rate: \"1KiB\" is not a rate",
            ),
            (
                "min_body_rate = \"fast/s\"",
                "limits.min_body_rate: \"fast\" is not a size",
            ),
            ("body_read_timeout = \"0s\"", "limits.body_read_timeout:"),
        ] {
            let found = problems(&format!("[limits]\n{text}\n"));
            assert!(
                found.iter().any(|p| p.starts_with(problem)),
                "{problem}\nnot in {found:#?}"
            );
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let found = problems(
            "[limits]\nmax_body_bytes = \"lots\"\nidle_timeout = \"soon\"\nmax_connections = 0\n\
             [[listeners]]\nname = \"a\"\naddress = \"localhost\"\n\
             [[upstreams]]\nname = \"u\"\ntargets = [{ address = \"no-port\" }]\n\
             [[routes]]\nname = \"r\"\nupstream = \"missing\"\nstrip_prefix = true\n\
             match = { path_regex = \"(\", methods = [\"G ET\"], headers = { \"bad name\" = \"x\" } }\n\
             request_headers = { set = { connection = \"close\" } }\n",
        );
        let expected = [
            "listeners[0].address: \"localhost\" is not an IP:port address (e.g. \"0.0.0.0:8080\", \"[::]:8080\")",
            "limits.max_body_bytes: \"lots\" is not a size (e.g. 65536, \"64KiB\", \"8MiB\")",
            "limits.idle_timeout: \"soon\" is not a duration (e.g. \"500ms\", \"30s\", \"2m\")",
            "limits.max_connections: 0 is out of range 1..=1000000",
            "upstreams[0].targets[0].address: \"no-port\" is not host:port (e.g. \"127.0.0.1:9000\", \"users.internal:80\")",
            "routes[0].upstream: no upstream is named \"missing\"",
        ];
        for line in expected {
            assert!(found.iter().any(|p| p == line), "{line}\nnot in {found:#?}");
        }
        for prefix in [
            "routes[0].match.path_regex: \"(\" is not a valid regex",
            "routes[0].match.methods[0]: \"G ET\" is not an HTTP method",
            "routes[0].match.headers.\"bad name\": \"bad name\" is not a valid header name",
            "routes[0].request_headers.set.\"connection\": \"connection\" is managed by the proxy",
            "routes[0].strip_prefix: needs match.path_prefix",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(prefix)),
                "{prefix}\nnot in {found:#?}"
            );
        }
    }

    #[test]
    fn unknown_route_keys_are_errors() {
        let text = format!(
            "{BASE}{UPSTREAM}[[routes]]\nname = \"r\"\nupstream = \"u\"\nmatch = {{ pth = \"/\" }}\n"
        );
        let Err(ParseError::Syntax(error)) = Config::parse(&text) else {
            panic!("expected a syntax error");
        };
        assert!(error.to_string().contains("unknown field `pth`"), "{error}");
    }

    fn route_order(routes: &str) -> Vec<String> {
        parse(&format!("{UPSTREAM}{routes}"))
            .proxy
            .routes
            .iter()
            .map(|route| route.name.clone())
            .collect()
    }

    #[test]
    fn precedence_is_most_specific_first_then_file_order() {
        let order = route_order(
            "[[routes]]\nname = \"any\"\nupstream = \"u\"\n\
             [[routes]]\nname = \"regex\"\nupstream = \"u\"\nmatch = { path_regex = \"/r/[0-9]+\" }\n\
             [[routes]]\nname = \"short-prefix\"\nupstream = \"u\"\nmatch = { path_prefix = \"/v1\" }\n\
             [[routes]]\nname = \"long-prefix\"\nupstream = \"u\"\nmatch = { path_prefix = \"/v1/users\" }\n\
             [[routes]]\nname = \"prefix-with-header\"\nupstream = \"u\"\nmatch = { path_prefix = \"/v1\", headers = { accept-version = \"2\" } }\n\
             [[routes]]\nname = \"exact\"\nupstream = \"u\"\nmatch = { path = \"/v1\" }\n\
             [[routes]]\nname = \"wildcard\"\nupstream = \"u\"\nmatch = { host = \"*.example.com\" }\n\
             [[routes]]\nname = \"longer-wildcard\"\nupstream = \"u\"\nmatch = { host = \"*.api.example.com\" }\n\
             [[routes]]\nname = \"host\"\nupstream = \"u\"\nmatch = { host = \"API.example.com\" }\n\
             [[routes]]\nname = \"regex-2\"\nupstream = \"u\"\nmatch = { path_regex = \"/s/.*\" }\n",
        );
        assert_eq!(
            order,
            [
                "host",
                "longer-wildcard",
                "wildcard",
                "exact",
                "long-prefix",
                "prefix-with-header",
                "short-prefix",
                "regex",
                "regex-2",
                "any",
            ]
        );
    }

    #[test]
    fn shadowed_routes_are_reported() {
        let config = parse(&format!(
            "{UPSTREAM}\
             [[routes]]\nname = \"reads\"\nupstream = \"u\"\nmatch = {{ path_prefix = \"/a\", methods = [\"GET\", \"HEAD\"] }}\n\
             [[routes]]\nname = \"gets\"\nupstream = \"u\"\nmatch = {{ path_prefix = \"/a\", methods = [\"GET\"] }}\n\
             [[routes]]\nname = \"dup\"\nupstream = \"u\"\nmatch = {{ path_prefix = \"/a\", methods = [\"HEAD\", \"GET\"] }}\n\
             [[routes]]\nname = \"sub\"\nupstream = \"u\"\nmatch = {{ host = \"*.example.com\" }}\n\
             [[routes]]\nname = \"sub-sub\"\nupstream = \"u\"\nmatch = {{ host = \"*.example.com\", path_regex = \"/x\" }}\n\
             [[routes]]\nname = \"fine\"\nupstream = \"u\"\nmatch = {{ path_prefix = \"/a\", methods = [\"POST\"] }}\n\
             [[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n"
        ));
        assert_eq!(
            config.warnings,
            [
                "routes[1] (\"gets\") can never match: every request it matches goes to routes[0] (\"reads\"), which takes precedence",
                "routes[2] (\"dup\") can never match: every request it matches goes to routes[0] (\"reads\"), which takes precedence",
            ]
        );
    }

    #[test]
    fn versioning_by_prefix_and_header_compiles() {
        let config = parse(&format!(
            "{UPSTREAM}\
             [[routes]]\nname = \"v1\"\nupstream = \"u\"\nmatch = {{ path_prefix = \"/v1\" }}\nstrip_prefix = true\n\
             [[routes]]\nname = \"v2\"\nupstream = \"u\"\nmatch = {{ path_prefix = \"/v2\" }}\nrewrite_prefix = \"/api/v2\"\n\
             [[routes]]\nname = \"v2-header\"\nupstream = \"u\"\nmatch = {{ headers = {{ Accept-Version = \"2\" }} }}\n"
        ));
        let routes = &config.proxy.routes;
        assert_eq!(routes[0].rewrite_prefix.as_deref(), Some(""));
        assert_eq!(routes[1].rewrite_prefix.as_deref(), Some("/api/v2"));
        assert_eq!(routes[2].matcher.headers[0].0.as_str(), "accept-version");
    }

    #[test]
    fn tls_listener_problems_name_the_key_and_the_file() {
        let found = problems(
            "[limits]\ntls_handshake_timeout = \"0s\"\n\
             [[listeners]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nprotocol = \"https\"\n\
             [[listeners]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\n\
             tls = { certificates = [] }\n\
             [[listeners]]\nname = \"c\"\naddress = \"127.0.0.1:3\"\nprotocol = \"https\"\n\
             tls = { certificates = [] }\n\
             [[listeners]]\nname = \"d\"\naddress = \"127.0.0.1:4\"\nprotocol = \"https\"\n\
             tls = { default = \"x.test\", certificates = [{ cert = \"/nonexistent/d.pem\", \
             key = \"/nonexistent/d.key\", names = [\"bad name\", \"*.ok.test\", \"*.ok.test\"] }] }\n",
        );
        for prefix in [
            "limits.tls_handshake_timeout: must be longer than 0s",
            "listeners[0].tls: protocol = \"https\" needs tls",
            "listeners[1].tls: only used with protocol = \"https\"",
            "listeners[2].tls.certificates: needs at least one",
            "listeners[3].tls.certificates[0].names[0]: \"bad name\" is not a host name",
            "listeners[3].tls.certificates[0].names[2]: \"*.ok.test\" is also a name of listeners[3].tls.certificates[0]",
            "listeners[3].tls.certificates[0].cert: cannot read /nonexistent/d.pem",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(prefix)),
                "{prefix}\nnot in {found:#?}"
            );
        }
    }

    #[test]
    fn unknown_tls_keys_are_errors() {
        let text = format!(
            "{BASE}[[listeners]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nprotocol = \"https\"\n\
             tls = {{ certificates = [{{ cert = \"c\", key = \"k\", name = \"x\" }}] }}\n"
        );
        let Err(ParseError::Syntax(error)) = Config::parse(&text) else {
            panic!("expected a syntax error");
        };
        assert!(
            error.to_string().contains("unknown field `name`"),
            "{error}"
        );
    }
}
