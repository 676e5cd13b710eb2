//! The TOML configuration: serde structs that mirror the file (unknown keys are errors), and
//! `Config`, the validated runtime form the rest of the daemon uses. Validation happens once,
//! here, and names the offending key and the reason.

mod aggregate;
pub mod auth;
mod cache;
mod client_auth;
mod cluster;
mod defend;
mod firewall;
mod header_ops;
mod http_limits;
mod listeners;
mod normalise;
mod precedence;
mod proxy;
mod rate_limit;
mod resumption;
mod routes;
mod side_limits;
mod tls;
mod units;
mod upstream_tls;
mod upstreams;

use std::{fmt, path::Path, path::PathBuf};

use serde::Deserialize;

pub use aggregate::{AggregateCall, AggregateConfig, Merge, OnError, TemplatePart};
pub use cache::{CacheConfig, CacheStoreConfig};
pub use client_auth::{ClientAuth, ClientAuthMode, ClientIdentity};
pub use cluster::{ClusterConfig, DEFAULT_PASSWORD_ENV, OnRedisDown};
pub use defend::{
    AutoSwitch, DefendConfig, LoadSignal, Signal, TrapPath, Trigger, UnderAttackConfig,
};
pub use firewall::{Action, CidrRule, FirewallConfig, Policy, ProtectedPorts};
pub use header_ops::HeaderOps;
pub use http_limits::HttpLimits;
pub use listeners::{ListenerConfig, ListenerProtocol};
pub use normalise::{EscapedSlashes, NormaliseConfig};
pub use proxy::ProxyConfig;
pub use rate_limit::{Limits, RateClassConfig, RateLimitConfig, RawLimits};
pub use resumption::{DEFAULT_TICKET_ROTATION, ResumptionConfig};
pub use routes::{HostMatch, PathMatch, RouteConfig, RouteMatch};
pub use side_limits::SideLimits;
pub use upstream_tls::{Alpn, UpstreamTls};
pub use upstreams::{Balance, TargetConfig, UpstreamConfig, UpstreamProtocol};

/// Where the CLI and the daemon meet when the config does not say otherwise.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/gateway/admin.sock";
/// Where operator rules and bans persist unless the config says otherwise.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/gateway/state.json";
/// The firewall store's file name, beside `admin.state_file` unless `admin.store` is set.
pub const DEFAULT_STORE_NAME: &str = "firewall.redb";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub admin: AdminConfig,
    pub xdp: XdpConfig,
    /// Where the maps and links are pinned in bpffs (`xdp.pin_dir`), so the gate stays shut
    /// while the daemon is down; `None`: not pinned (`xdp.pin = false`, or XDP off).
    pub xdp_pin_dir: Option<PathBuf>,
    pub firewall: FirewallConfig,
    /// Listeners, limits, upstreams and routes of the L7 proxy.
    pub proxy: ProxyConfig,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None`: not at all.
    pub metrics: Option<MetricsConfig>,
    pub access_log: AccessLogConfig,
    /// Where request spans are exported; `None`: they are not.
    pub otlp: Option<OtlpConfig>,
    /// `[defend]`: L7 signals that ban sources.
    pub defend: DefendConfig,
    /// Redis shared with the other gateways of a cluster; `None`: this node stands alone.
    pub cluster: Option<ClusterConfig>,
    /// Things that are legal but probably not what the operator meant.
    pub warnings: Vec<String>,
    /// Explanations of what the rules do where that is not obvious (overlaps).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub socket: PathBuf,
    /// The state file of earlier versions: migrated into `store` once, at start.
    pub state_file: PathBuf,
    /// Where the operator's run-time rules and bans are kept across restarts (a redb file).
    pub store: PathBuf,
    /// Optional loopback TCP listener for the admin API, with its bearer token.
    pub tcp: Option<AdminTcp>,
    /// Caps and timers of each admin listener (the socket and TCP, separately).
    pub limits: SideLimits,
}

/// `[metrics]`: where the metrics and health endpoints listen, and their limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    pub address: std::net::SocketAddr,
    pub limits: SideLimits,
}

#[derive(Clone)]
pub struct AdminTcp {
    pub address: std::net::SocketAddr,
    /// Read from the environment variable `admin.token_env` names; never from the file.
    pub token: String,
}

impl fmt::Debug for AdminTcp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminTcp")
            .field("address", &self.address)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// The environment variable holding the admin TCP token unless `admin.token_env` says.
pub const DEFAULT_TOKEN_ENV: &str = "GATEWAY_ADMIN_TOKEN";
/// Shorter tokens are refused: they can be guessed.
const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdpMode {
    /// In the driver: fastest, needs driver support.
    Native,
    /// Generic XDP in the kernel stack: works on every interface.
    Skb,
    /// Native, falling back to skb where the driver lacks support.
    Auto,
    /// No kernel program; the rules are enforced in userspace.
    Off,
}

#[derive(Debug, Clone)]
pub struct XdpConfig {
    pub mode: XdpMode,
    pub interfaces: Vec<String>,
    /// Capacity of the IPv4 and IPv6 rule tries, fixed when the program loads.
    pub max_rules_v4: u32,
    pub max_rules_v6: u32,
    /// Sources tracked for rate limits (least recently seen are forgotten first).
    pub max_sources: u32,
    /// Bans per address family.
    pub max_bans: u32,
}

/// A config that could not be used: every problem found, each naming its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Syntax {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{path}: invalid configuration:\n{}", problems_list(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// One validation failure: the dotted key (with list indexes) and why it is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

fn problems_list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|problem| format!("  - {problem}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Collects problems while validating, so one run reports all of them.
#[derive(Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    pub(crate) fn add(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            reason: reason.into(),
        });
    }
}

// ---- The file's shape ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    xdp: RawXdp,
    #[serde(default)]
    firewall: firewall::RawFirewall,
    metrics: Option<RawMetrics>,
    #[serde(default)]
    access_log: RawAccessLog,
    otlp: Option<RawOtlp>,
    cluster: Option<cluster::RawCluster>,
    #[serde(default)]
    defend: defend::RawDefend,
    #[serde(default)]
    listeners: Vec<listeners::RawListener>,
    #[serde(default)]
    limits: http_limits::RawLimits,
    #[serde(default)]
    normalise: normalise::RawNormalise,
    #[serde(default)]
    upstreams: Vec<upstreams::RawUpstream>,
    #[serde(default)]
    routes: Vec<routes::RawRoute>,
    cache: Option<cache::RawCacheStore>,
    #[serde(default)]
    auth: auth::RawAuth,
    #[serde(default)]
    consumers: Vec<auth::RawConsumer>,
}

/// `[otlp]`: a server span per proxied request, exported to an OpenTelemetry collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Per export request.
    pub timeout: std::time::Duration,
}

/// The OTLP/HTTP encodings, named as `OTEL_EXPORTER_OTLP_PROTOCOL` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOtlp {
    endpoint: String,
    #[serde(default)]
    protocol: OtlpProtocol,
    service_name: Option<String>,
    timeout: Option<String>,
}

impl RawOtlp {
    fn compile(self, problems: &mut Problems) -> Option<OtlpConfig> {
        let uri = self.endpoint.parse::<hyper::Uri>().ok();
        match uri.as_ref().map(|uri| (uri.scheme_str(), uri.authority())) {
            Some((Some("http"), Some(_))) => {}
            Some((Some("https"), _)) => problems.add(
                "otlp.endpoint",
                format!(
                    "{:?}: https is not supported; export to a collector on this host or network \
                     over http (e.g. \"http://127.0.0.1:4318/v1/traces\") and let it forward with TLS",
                    self.endpoint
                ),
            ),
            _ => problems.add(
                "otlp.endpoint",
                format!(
                    "{:?} is not an http:// URL (e.g. \"http://127.0.0.1:4318/v1/traces\")",
                    self.endpoint
                ),
            ),
        }
        let timeout = units::duration(self.timeout, "otlp.timeout", problems);
        Some(OtlpConfig {
            endpoint: self.endpoint,
            protocol: self.protocol,
            service_name: self.service_name.unwrap_or_else(|| "gateway".to_owned()),
            timeout: timeout.unwrap_or(std::time::Duration::from_secs(10)),
        })
    }
}

/// `[access_log]`: one JSON line per proxied request.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    pub enabled: bool,
    /// A file to append to; `None`: standard output (the journal, under systemd).
    pub path: Option<PathBuf>,
    /// Fraction of requests logged, 0 to 1.
    pub sample: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    #[serde(default = "yes")]
    enabled: bool,
    path: Option<PathBuf>,
    #[serde(default = "all")]
    sample: f64,
}

impl Default for RawAccessLog {
    fn default() -> Self {
        RawAccessLog {
            enabled: true,
            path: None,
            sample: 1.0,
        }
    }
}

fn yes() -> bool {
    true
}

fn all() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    address: std::net::SocketAddr,
    max_connections: Option<u32>,
    header_read_timeout: Option<String>,
    request_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    socket: Option<PathBuf>,
    state_file: Option<PathBuf>,
    store: Option<PathBuf>,
    tcp: Option<std::net::SocketAddr>,
    token_env: Option<String>,
    max_connections: Option<u32>,
    header_read_timeout: Option<String>,
    request_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawXdp {
    #[serde(default = "default_xdp_mode")]
    mode: XdpMode,
    #[serde(default)]
    interfaces: Vec<String>,
    #[serde(default = "default_max_rules")]
    max_rules_v4: u32,
    #[serde(default = "default_max_rules")]
    max_rules_v6: u32,
    #[serde(default = "default_max_sources")]
    max_sources: u32,
    #[serde(default = "default_max_rules")]
    max_bans: u32,
    #[serde(default = "yes")]
    pin: bool,
    pin_dir: Option<PathBuf>,
}

/// Where pins go unless `xdp.pin_dir` says.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/gateway";

impl Default for RawXdp {
    fn default() -> Self {
        Self {
            mode: default_xdp_mode(),
            interfaces: Vec::new(),
            max_rules_v4: default_max_rules(),
            max_rules_v6: default_max_rules(),
            max_sources: default_max_sources(),
            max_bans: default_max_rules(),
            pin: true,
            pin_dir: None,
        }
    }
}

fn default_max_sources() -> u32 {
    1_000_000
}

fn default_xdp_mode() -> XdpMode {
    XdpMode::Auto
}

fn default_max_rules() -> u32 {
    100_000
}

/// Upper bound for a rule trie; far above any real list, low enough to catch typos.
const MAX_RULES_LIMIT: u32 = 16_000_000;

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|error| match error {
            ParseError::Syntax(source) => ConfigError::Syntax {
                path: path.to_owned(),
                source,
            },
            ParseError::Invalid(problems) => ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            },
        })
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ParseError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|error| ParseError::Syntax(Box::new(error)))?;
        let mut problems = Problems::default();
        let (mut warnings, mut notes) = (Vec::new(), Vec::new());

        let xdp_pin_dir = match (&raw.xdp.pin_dir, raw.xdp.pin, raw.xdp.mode) {
            (_, false, _) | (_, _, XdpMode::Off) => None,
            (Some(dir), true, _) if !dir.is_absolute() => {
                problems.add(
                    "xdp.pin_dir",
                    format!("{} must be an absolute path (on bpffs)", dir.display()),
                );
                None
            }
            (dir, true, _) => Some(
                dir.clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR)),
            ),
        };
        let xdp = compile_xdp(raw.xdp, &mut problems);
        let firewall = raw
            .firewall
            .compile(&xdp, &mut problems, &mut warnings, &mut notes);
        let proxy = proxy::RawProxy {
            listeners: raw.listeners,
            limits: raw.limits,
            normalise: raw.normalise,
            upstreams: raw.upstreams,
            routes: raw.routes,
            cache: raw.cache,
            auth: raw.auth,
            consumers: raw.consumers,
        }
        .compile(&mut problems, &mut warnings);
        let defend = raw.defend.compile(&mut problems);
        let state_file = raw
            .admin
            .state_file
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_FILE));
        let admin = AdminConfig {
            socket: raw
                .admin
                .socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET)),
            // Beside the state file unless set: configs that move one move both.
            store: raw
                .admin
                .store
                .unwrap_or_else(|| state_file.with_file_name(DEFAULT_STORE_NAME)),
            state_file,
            tcp: raw.admin.tcp.and_then(|address| {
                admin_tcp(address, raw.admin.token_env.as_deref(), &mut problems)
            }),
            limits: side_limits::RawSideLimits {
                max_connections: raw.admin.max_connections,
                header_read_timeout: raw.admin.header_read_timeout,
                request_timeout: raw.admin.request_timeout,
            }
            .compile("admin", SideLimits::ADMIN, &mut problems),
        };
        let metrics = raw.metrics.map(|metrics| MetricsConfig {
            address: metrics.address,
            limits: side_limits::RawSideLimits {
                max_connections: metrics.max_connections,
                header_read_timeout: metrics.header_read_timeout,
                request_timeout: metrics.request_timeout,
            }
            .compile("metrics", SideLimits::METRICS, &mut problems),
        });
        if admin.socket.as_os_str().is_empty() {
            problems.add("admin.socket", "must not be empty");
        }

        if !(0.0..=1.0).contains(&raw.access_log.sample) {
            problems.add(
                "access_log.sample",
                format!(
                    "{} is not a fraction between 0 and 1",
                    raw.access_log.sample
                ),
            );
        }
        let access_log = AccessLogConfig {
            enabled: raw.access_log.enabled,
            path: raw
                .access_log
                .path
                .filter(|path| path.as_os_str() != "stdout"),
            sample: raw.access_log.sample.clamp(0.0, 1.0),
        };
        let otlp = raw.otlp.and_then(|otlp| otlp.compile(&mut problems));
        let cluster_section = raw.cluster.is_some();
        let cluster = raw
            .cluster
            .and_then(|cluster| cluster.compile(&mut problems));
        if !cluster_section {
            for route in &proxy.routes {
                for (index, rule) in route.rate_limits.iter().enumerate() {
                    if rule.cluster {
                        problems.add(
                            format!("{}.rate_limits[{index}].cluster", route.origin),
                            "a cluster-wide limit needs a [cluster] section naming the Redis \
                             the gateways share",
                        );
                    }
                }
            }
        }
        if problems.0.is_empty() {
            Ok(Config {
                admin,
                xdp,
                xdp_pin_dir,
                firewall,
                proxy,
                metrics,
                access_log,
                otlp,
                defend,
                cluster,
                warnings,
                notes,
            })
        } else {
            Err(ParseError::Invalid(problems.0))
        }
    }
}

/// Failure of [`Config::parse`], before a file path is attached.
#[derive(Debug)]
pub enum ParseError {
    Syntax(Box<toml::de::Error>),
    Invalid(Vec<Problem>),
}

/// The admin API over TCP: loopback only, and only with a token from the environment.
fn admin_tcp(
    address: std::net::SocketAddr,
    token_env: Option<&str>,
    problems: &mut Problems,
) -> Option<AdminTcp> {
    if !address.ip().is_loopback() {
        problems.add(
            "admin.tcp",
            format!("{address} is not a loopback address: the admin API is for this host only (use 127.0.0.1 or [::1])"),
        );
        return None;
    }
    let variable = token_env.unwrap_or(DEFAULT_TOKEN_ENV);
    match std::env::var(variable) {
        Ok(token) if token.len() >= MIN_TOKEN_LEN => Some(AdminTcp { address, token }),
        Ok(_) => {
            problems.add(
                "admin.token_env",
                format!("the token in ${variable} is shorter than {MIN_TOKEN_LEN} characters"),
            );
            None
        }
        Err(_) => {
            problems.add(
                "admin.tcp",
                format!(
                    "needs a bearer token in the environment variable ${variable} (admin.token_env)"
                ),
            );
            None
        }
    }
}

fn compile_xdp(raw: RawXdp, problems: &mut Problems) -> XdpConfig {
    if raw.mode != XdpMode::Off && raw.interfaces.is_empty() {
        problems.add(
            "xdp.interfaces",
            "name at least one interface to protect (e.g. [\"eth0\"]), or set xdp.mode = \"off\"",
        );
    }
    for (index, name) in raw.interfaces.iter().enumerate() {
        let key = format!("xdp.interfaces[{index}]");
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ']) {
            problems.add(key, format!("{name:?} is not a valid interface name"));
        } else if raw.interfaces[..index].contains(name) {
            problems.add(key, format!("{name:?} is listed twice"));
        }
    }
    for (key, value) in [
        ("xdp.max_rules_v4", raw.max_rules_v4),
        ("xdp.max_rules_v6", raw.max_rules_v6),
        ("xdp.max_sources", raw.max_sources),
        ("xdp.max_bans", raw.max_bans),
    ] {
        if value == 0 || value > MAX_RULES_LIMIT {
            problems.add(
                key,
                format!("{value} is out of range 1..={MAX_RULES_LIMIT}"),
            );
        }
    }
    XdpConfig {
        mode: raw.mode,
        interfaces: raw.interfaces,
        max_rules_v4: raw.max_rules_v4,
        max_rules_v6: raw.max_rules_v6,
        max_sources: raw.max_sources,
        max_bans: raw.max_bans,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(text) {
            Err(ParseError::Invalid(problems)) => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    #[test]
    fn defaults_need_an_interface_unless_off() {
        assert_eq!(
            problems(""),
            [
                "xdp.interfaces: name at least one interface to protect (e.g. [\"eth0\"]), or set xdp.mode = \"off\""
            ]
        );
        let config = Config::parse("[xdp]\nmode = \"off\"").unwrap();
        assert_eq!(config.admin.socket, PathBuf::from(DEFAULT_ADMIN_SOCKET));
        assert_eq!(config.xdp.max_rules_v4, 100_000);
    }

    #[test]
    fn unknown_keys_are_named() {
        let Err(ParseError::Syntax(error)) = Config::parse("[xdp]\nmdoe = \"native\"") else {
            panic!("expected a syntax error");
        };
        assert!(
            error.to_string().contains("unknown field `mdoe`"),
            "{error}"
        );
    }

    #[test]
    fn bad_mode_is_named() {
        let Err(ParseError::Syntax(error)) = Config::parse("[xdp]\nmode = \"fast\"") else {
            panic!("expected a syntax error");
        };
        let message = error.to_string();
        assert!(message.contains("unknown variant `fast`"), "{message}");
        assert!(
            message.contains("expected one of `native`, `skb`, `auto`, `off`"),
            "{message}"
        );
    }

    #[test]
    fn interface_names_and_limits_are_checked() {
        let found = problems(
            "[xdp]\ninterfaces = [\"eth0\", \"eth0\", \"a-very-long-interface-name\"]\nmax_rules_v6 = 0",
        );
        assert_eq!(
            found,
            [
                "xdp.interfaces[1]: \"eth0\" is listed twice",
                "xdp.interfaces[2]: \"a-very-long-interface-name\" is not a valid interface name",
                "xdp.max_rules_v6: 0 is out of range 1..=16000000",
            ]
        );
    }
}
