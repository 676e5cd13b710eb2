//! The admin API's JSON shapes, shared by the daemon (server) and the CLI (client), and
//! their ranges ([`valid`]). Below the services: each speaks these types, none needs another
//! service or the HTTP adapter (control/) for them.

pub mod failure;
pub mod import_lines;
pub mod records;
pub mod replication;
pub mod tickets;
pub mod valid;

use serde::{Deserialize, Serialize};

/// How the XDP program ended up attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    Native,
    Skb,
}

/// `GET /v1/stats`.
pub const STATS_PATH: &str = "/v1/stats";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub xdp: XdpStats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct XdpStats {
    /// False when `xdp.mode = "off"`.
    pub enabled: bool,
    pub interfaces: Vec<InterfaceStats>,
    /// One entry per reason, in counter order.
    pub reasons: Vec<ReasonStats>,
    /// The sources with the most dropped packets, most first.
    #[serde(default)]
    pub top_sources: Vec<SourceDrops>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InterfaceStats {
    pub name: String,
    pub mode: AttachMode,
    /// This interface's packets per reason, in counter order.
    #[serde(default)]
    pub reasons: Vec<ReasonStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReasonStats {
    pub reason: String,
    /// "pass" or "drop".
    pub verdict: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Body of every non-2xx admin response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    /// The request field at fault, when one is (`duration_secs`, `cidr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `GET` lists bans, `POST` adds one ([`BanRequest`]).
pub const BANS_PATH: &str = "/v1/bans";
/// `POST` lifts a ban ([`UnbanRequest`]).
pub const UNBAN_PATH: &str = "/v1/bans/remove";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BanRequest {
    /// An address or CIDR (`192.0.2.7`, `2001:db8::/64`).
    pub cidr: String,
    /// How long; absent means until unbanned.
    pub duration_secs: Option<f64>,
    /// Why (shown by `gateway bans`).
    #[serde(default)]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnbanRequest {
    pub cidr: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ban {
    pub cidr: String,
    /// Seconds left; absent for a ban without expiry.
    pub expires_in_secs: Option<f64>,
    /// Why: the operator's comment, or an auto-ban's trigger ("auto: 5 auth failures in 1m").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BanList {
    pub bans: Vec<Ban>,
    /// More follow: ask again with `after` set to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceDrops {
    pub address: String,
    pub packets: u64,
}

/// `GET` lists rules (config and operator), `POST` adds an operator rule ([`RuleRequest`]).
pub const RULES_PATH: &str = "/v1/rules";
/// `POST` removes an operator rule ([`RemoveRuleRequest`]).
pub const REMOVE_RULE_PATH: &str = "/v1/rules/remove";
/// `POST` adds many operator rules at once, or none: the lines streamed as the body
/// (`Content-Type: text/plain`, the rest in the query: [`ImportQuery`]), or a JSON
/// [`ImportRequest`] of at most 1 MiB.
pub const IMPORT_PATH: &str = "/v1/rules/import";
/// The content type of a streamed import's lines.
pub const IMPORT_LINES_TYPE: &str = "text/plain";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleRequest {
    pub cidr: String,
    pub action: RuleAction,
    pub comment: Option<String>,
    /// Removed after this many seconds; absent: until removed.
    pub ttl_secs: Option<f64>,
    /// A dry-run deny rule: counted, not dropping, until promoted.
    #[serde(default)]
    pub shadow: bool,
}

/// `POST` makes a shadow rule drop ([`RemoveRuleRequest`] names it).
pub const PROMOTE_PATH: &str = "/v1/rules/promote";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveRuleRequest {
    pub cidr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportRequest {
    pub action: RuleAction,
    /// One address or CIDR per line; `#` starts a comment.
    pub text: String,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportResult {
    pub imported: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleEntry {
    pub cidr: String,
    /// "allow" or "deny".
    pub action: String,
    /// "config" or "operator".
    pub origin: String,
    /// The config key, for rules from the file.
    pub key: Option<String>,
    pub comment: Option<String>,
    pub expires_in_secs: Option<f64>,
    /// Packets matched by this rule (absent with XDP off). For a shadow rule: the packets
    /// it would have dropped.
    pub hits: Option<u64>,
    #[serde(default)]
    pub shadow: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleList {
    pub policy: String,
    pub rules: Vec<RuleEntry>,
    /// More follow: ask again with `after` set to this (a page was asked for with `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A page of a listing: `?limit=N&after=CIDR` on `GET` [`RULES_PATH`] and [`BANS_PATH`].
/// Without `limit`, everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<usize>,
    pub after: Option<String>,
}

/// Most entries one page holds.
pub const MAX_PAGE: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Allow,
    Deny,
}

impl From<RuleAction> for crate::config::Action {
    fn from(action: RuleAction) -> crate::config::Action {
        match action {
            RuleAction::Allow => crate::config::Action::Allow,
            RuleAction::Deny => crate::config::Action::Deny,
        }
    }
}

/// Answer of calls that only change something.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Done {
    pub ok: bool,
}

/// `POST` re-reads the config file, as SIGHUP does.
pub const RELOAD_PATH: &str = "/v1/reload";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reloaded {
    /// What was reloaded.
    pub message: String,
}

/// `GET /v1/explain?address=ADDR`: what the kernel would do with a packet from ADDR, and why.
pub const EXPLAIN_PATH: &str = "/v1/explain";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Explanation {
    pub address: String,
    /// "pass" or "drop", for traffic to a protected port.
    pub verdict: String,
    /// The reason counter the packet would be counted under.
    pub reason: String,
    /// Why, in words.
    pub because: String,
    pub ban: Option<Ban>,
    /// The most specific rule that matches, if any.
    pub rule: Option<RuleEntry>,
    pub policy: String,
    /// "all ports", or how many are protected (others always pass).
    pub protected_ports: String,
    pub rate: Option<RateState>,
    /// What the defender saw from this source: trigger progress and recent L7 decisions
    /// (absent when no defender runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7: Option<crate::api::SourceView>,
    /// Seconds the source stays known-good (admitted under attack); absent: not known-good.
    #[serde(default)]
    pub known_good_expires_in_secs: Option<f64>,
    /// Whether XDP is in under-attack mode.
    #[serde(default)]
    pub under_attack: bool,
}

/// `GET` shows under-attack mode, `POST` switches it ([`UnderAttackRequest`]).
pub const UNDER_ATTACK_PATH: &str = "/v1/defend/under-attack";
/// `POST` marks a source known-good ([`KnownGoodRequest`]).
pub const KNOWN_GOOD_PATH: &str = "/v1/defend/known-good";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnderAttackRequest {
    pub on: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnderAttackStatus {
    pub on: bool,
    /// Who switched it last: "operator", "auto: ...", or "start".
    pub switched_by: String,
    /// Seconds since the last switch.
    pub since_secs: f64,
    pub new_sources_per_second: u32,
    pub new_source_burst: u32,
    /// "dropped_packets_per_second >= 50000, off below 25000 for 30s", or "off".
    pub auto: String,
    /// The load signal's last sample (per second), when auto is on.
    pub last_sample: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KnownGoodRequest {
    pub address: String,
    /// How long; absent: `defend.under_attack.known_good_ttl`.
    pub ttl_secs: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KnownGood {
    pub address: String,
    pub expires_in_secs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RateState {
    /// "default" or the class name.
    pub class: String,
    /// Packets the source may still send at once (the bucket's tokens), if packets are limited.
    pub packets_available: Option<u64>,
    pub packet_burst: Option<u64>,
    pub syns_available: Option<u64>,
    pub syn_burst: Option<u64>,
    /// False when the program has not seen the source (its bucket is full).
    pub tracked: bool,
}

/// `GET` shows the rate limits in force, `POST` replaces the default class's limits
/// ([`RawLimits`], kept across restarts).
pub const RATE_LIMITS_PATH: &str = "/v1/rate-limits";
/// `POST` drops the operator's default limits: the config's apply again.
pub const RATE_LIMITS_RESET_PATH: &str = "/v1/rate-limits/reset";

pub use crate::config::RawLimits;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RateLimits {
    /// "config", "operator" (set through the API), or "off".
    pub default_origin: String,
    pub default: RawLimits,
    pub classes: Vec<RateClassView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RateClassView {
    pub name: String,
    pub cidrs: Vec<String>,
    pub limits: RawLimits,
}

/// `GET`: requests and bytes per consumer and route since the daemon started.
pub const METERING_PATH: &str = "/v1/metering";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metering {
    pub rows: Vec<MeteringRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeteringRow {
    /// The authenticated identity, or "anonymous".
    pub consumer: String,
    /// The route name, or "none" for requests no route took.
    pub route: String,
    pub requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// `POST` removes cached responses ([`PurgeRequest`]), answering [`Purged`].
pub const CACHE_PURGE_PATH: &str = "/v1/cache/purge";

/// Exactly one of `key` and `prefix`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// A cache key as the cache names it: `GET host/path?query` (host lowercase, no port),
    /// e.g. `GET api.example.com/v1/users/7`.
    pub key: Option<String>,
    /// A prefix of `host/path` (`api.example.com/v1/users`), or of the path alone when it
    /// starts with `/` (`/v1/users`, on any host).
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Purged {
    /// Responses removed (every variant counts).
    pub purged: usize,
}

/// One request from a source, as explain shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct L7Decision {
    /// Unix seconds.
    pub at: f64,
    pub status: u16,
    pub path: String,
    pub route: Option<String>,
    pub identity: Option<String>,
    /// The signals this request counted as (`auth-failure`, `trap`, ...).
    #[serde(default)]
    pub signals: Vec<String>,
}

/// What the defender knows about one source, for explain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceView {
    /// The key signals are counted under: the address, or its /64 for IPv6.
    pub counted_as: String,
    /// In `defend.never_ban`: signals are recorded, never acted on.
    pub never_ban: bool,
    /// Per trigger: "auth-failure: 2/5 in 1m".
    pub progress: Vec<String>,
    /// Most recent last.
    pub recent: Vec<L7Decision>,
}
