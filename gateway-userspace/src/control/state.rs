//! What the daemon knows about its firewall: the rules from the config file, the rules and
//! bans an operator added at run time (persisted to the state file, restored at start), and
//! the XDP program they are written into. Every change is saved before it reaches the
//! kernel, so nothing an operator added is lost, and a failed step leaves both as they were.

use std::{
    collections::HashSet,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hyper::StatusCode;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::api::{
    Ban, BanList, BanRequest, Explanation, ImportRequest, InterfaceStats, RateClassView,
    RateLimits, RateState, RawLimits, ReasonStats, RuleEntry, RuleList, RuleRequest, SourceDrops,
    Stats, XdpStats,
};
use super::valid;
use crate::{
    config::{Action, CidrRule, FirewallConfig, XdpConfig},
    xdp::{self, XdpFirewall},
};

/// Sources listed under "top sources" in stats.
const TOP_SOURCES: usize = 10;
const STATE_VERSION: u32 = 1;

/// An admin API failure: the status and a message that says what to do.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault (a 400 about one value).
    pub field: Option<String>,
}

impl ApiFailure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiFailure {
        ApiFailure {
            status,
            message: message.into(),
            field: None,
        }
    }
}

pub type ApiResult<T> = Result<T, ApiFailure>;

fn fail(status: StatusCode, message: impl Into<String>) -> ApiFailure {
    ApiFailure::new(status, message)
}

fn internal(error: impl std::fmt::Display) -> ApiFailure {
    fail(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}

/// The operator's additions, as saved in the state file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorState {
    version: u32,
    rules: Vec<OperatorRule>,
    bans: Vec<OperatorBan>,
    /// Default-class rate limits set through the admin API; replace the config's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_limit_default: Option<RawLimits>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorRule {
    cidr: IpNet,
    action: RuleAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
    /// Wall-clock expiry (Unix seconds); absent: until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<f64>,
    /// A dry run: counted, never dropping, until promoted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    shadow: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorBan {
    cidr: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<f64>,
    /// Why: the operator's note, or the trigger of an auto-ban ("auto: 5 auth failures in 1m").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Allow,
    Deny,
}

impl From<RuleAction> for Action {
    fn from(action: RuleAction) -> Action {
        match action {
            RuleAction::Allow => Action::Allow,
            RuleAction::Deny => Action::Deny,
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

fn remaining(expires_at: Option<f64>, now: f64) -> Option<f64> {
    expires_at.map(|at| (at - now).max(0.0))
}

fn is_expired(expires_at: Option<f64>, now: f64) -> bool {
    expires_at.is_some_and(|at| at <= now)
}

/// The running daemon's firewall, shared by the admin API, the signal handler and the sweeper.
pub struct DaemonState {
    inner: Mutex<Inner>,
    pub metrics: super::metrics::Metrics,
    /// Cluster mode: told of every operator change made on this node.
    cluster: std::sync::OnceLock<crate::cluster::ChangeSink>,
}

struct Inner {
    xdp: Option<XdpFirewall>,
    /// From the config file; replaced on reload.
    firewall: FirewallConfig,
    /// Rule capacity the maps were sized with.
    capacity: (usize, usize),
    /// Bans per address family the maps hold (`xdp.max_bans`; also the cap with XDP off).
    max_bans: usize,
    operator: OperatorState,
    state_file: PathBuf,
}

impl DaemonState {
    /// Restores the operator's rules and unexpired bans from `state_file` (a missing file is an
    /// empty state; an unreadable one is an error: starting without them would open holes)
    /// and writes everything into `xdp`.
    pub fn start(
        xdp: Option<XdpFirewall>,
        firewall: FirewallConfig,
        limits: &XdpConfig,
        state_file: PathBuf,
    ) -> anyhow::Result<DaemonState> {
        let max_bans = limits.max_bans as usize;
        let operator = load_state(&state_file, max_bans)?;
        let mut inner = Inner {
            xdp,
            firewall,
            capacity: (limits.max_rules_v4 as usize, limits.max_rules_v6 as usize),
            max_bans,
            operator,
            state_file,
        };
        inner.drop_expired();
        inner
            .apply()
            .map_err(|failure| anyhow::anyhow!(failure.message))?;
        let now = unix_now();
        if let Some(xdp) = inner.xdp.as_mut() {
            // One ban the kernel refuses must not keep the daemon (and every other ban) down.
            inner.operator.bans.retain(|ban| {
                match xdp.ban(ban.cidr, kernel_expiry(ban.expires_at, now)) {
                    Ok(()) => true,
                    Err(error) => {
                        tracing::warn!(cidr = %ban.cidr, %error, "saved ban not restored: the kernel refused it");
                        false
                    }
                }
            });
        }
        inner.publish_bans();
        let (rules, bans) = (inner.operator.rules.len(), inner.operator.bans.len());
        if rules + bans > 0 {
            tracing::info!(rules, bans, file = %inner.state_file.display(), "operator rules and bans restored");
        }
        Ok(DaemonState {
            inner: Mutex::new(inner),
            metrics: Default::default(),
            cluster: Default::default(),
        })
    }

    /// Cluster mode: from now on, bans and operator rule changes are also sent to `sink`.
    pub fn set_cluster_sink(&self, sink: crate::cluster::ChangeSink) {
        let _ = self.cluster.set(sink);
    }

    fn publish(&self, change: crate::cluster::Change) {
        if let Some(sink) = self.cluster.get() {
            sink.send(change);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Attaches the (already filled) XDP program to `interface`.
    pub fn attach(
        &self,
        interface: &str,
        mode: crate::config::XdpMode,
    ) -> Result<xdp::AttachMode, xdp::XdpError> {
        match self.lock().xdp.as_mut() {
            Some(xdp) => xdp.attach(interface, mode),
            None => Err(xdp::XdpError::Off),
        }
    }

    /// Takes the XDP program out (to detach it on shutdown).
    pub fn take_xdp(&self) -> Option<XdpFirewall> {
        self.lock().xdp.take()
    }

    /// Replaces the config file's rules (SIGHUP). On failure the running rules stay.
    pub fn reload(&self, firewall: FirewallConfig) -> ApiResult<usize> {
        let mut inner = self.lock();
        let previous = std::mem::replace(&mut inner.firewall, firewall);
        if let Err(failure) = inner.apply() {
            inner.firewall = previous;
            return Err(failure);
        }
        Ok(inner.firewall.rules.len())
    }

    pub fn stats(&self) -> ApiResult<Stats> {
        let inner = self.lock();
        let Some(xdp) = inner.xdp.as_ref() else {
            return Ok(Stats {
                xdp: XdpStats {
                    enabled: false,
                    interfaces: Vec::new(),
                    reasons: Vec::new(),
                    top_sources: Vec::new(),
                },
            });
        };
        let reason_stats = |counters: Vec<(gateway_common::Reason, gateway_common::Counter)>| {
            counters
                .into_iter()
                .map(|(reason, counter)| ReasonStats {
                    reason: reason.name().to_owned(),
                    verdict: if reason.is_drop() { "drop" } else { "pass" }.to_owned(),
                    packets: counter.packets,
                    bytes: counter.bytes,
                })
                .collect::<Vec<_>>()
        };
        let reasons = reason_stats(xdp.counters().map_err(internal)?);
        let top_sources = xdp
            .top_dropped_sources(TOP_SOURCES)
            .map_err(internal)?
            .into_iter()
            .map(|(address, packets)| SourceDrops {
                address: address.to_string(),
                packets,
            })
            .collect();
        let interfaces = xdp
            .attachments()
            .iter()
            .enumerate()
            .map(|(index, attachment)| {
                Ok(InterfaceStats {
                    name: attachment.interface.clone(),
                    mode: attachment.mode,
                    reasons: reason_stats(xdp.interface_counters(index).map_err(internal)?),
                })
            })
            .collect::<ApiResult<_>>()?;
        Ok(Stats {
            xdp: XdpStats {
                enabled: true,
                interfaces,
                reasons,
                top_sources,
            },
        })
    }

    /// (rules from the config, operator rules, active bans), for metrics.
    pub fn counts(&self) -> (usize, usize, usize) {
        let inner = self.lock();
        let bans = inner.active_bans().map_or(0, |bans| bans.len());
        (inner.firewall.rules.len(), inner.operator.rules.len(), bans)
    }

    // ---- Under attack ----

    /// Switches XDP's under-attack mode (known-good sources and `budget` new ones pass).
    pub fn set_under_attack(&self, on: bool, budget: &xdp::NewSources) -> ApiResult<()> {
        let mut inner = self.lock();
        let xdp = inner.xdp.as_mut().ok_or_else(|| {
            fail(
                StatusCode::CONFLICT,
                "under-attack mode filters in XDP, and xdp.mode is \"off\": set xdp.mode and restart",
            )
        })?;
        xdp.set_under_attack(on, budget).map_err(internal)
    }

    /// Whether XDP is in under-attack mode (`None`: XDP is off).
    pub fn under_attack(&self) -> Option<bool> {
        self.lock().xdp.as_ref().map(XdpFirewall::under_attack)
    }

    /// Marks `source` known-good for `ttl` (admitted under attack). With XDP off there is
    /// nothing to admit: a no-op.
    pub fn mark_known_good(&self, source: IpAddr, ttl: Duration) -> ApiResult<bool> {
        let mut inner = self.lock();
        match inner.xdp.as_mut() {
            Some(xdp) => {
                let source = crate::defend::guard::canonical(source);
                xdp.mark_known_good(source, xdp::now().saturating_add(ttl))
                    .map_err(internal)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Packets XDP dropped so far, all reasons (`None`: XDP is off).
    pub fn dropped_packets(&self) -> Option<u64> {
        let inner = self.lock();
        let counters = inner.xdp.as_ref()?.counters().ok()?;
        Some(
            counters
                .iter()
                .filter(|(reason, _)| reason.is_drop())
                .map(|(_, counter)| counter.packets)
                .sum(),
        )
    }

    // ---- Rules ----

    /// What the kernel would do with a packet from `address` to a protected port, and why.
    pub fn explain(&self, address: &str) -> ApiResult<Explanation> {
        let address: IpAddr = address.parse().map_err(|_| {
            fail(
                StatusCode::BAD_REQUEST,
                format!("{address:?} is not an IP address"),
            )
        })?;
        let inner = self.lock();
        let effective = inner.effective();
        let now = xdp::now();
        let ban = inner
            .active_bans()?
            .into_iter()
            .filter(|ban| {
                ban.cidr
                    .parse::<IpNet>()
                    .is_ok_and(|net| net.contains(&address))
            })
            .max_by_key(|ban| ban.cidr.parse::<IpNet>().map_or(0, |net| net.prefix_len()));
        let matching = |shadow: bool| {
            effective
                .rules
                .iter()
                .filter(|rule| rule.shadow == shadow && rule.net.contains(&address))
                .max_by_key(|rule| rule.net.prefix_len())
        };
        let rule = matching(false);
        // A shadow rule decides nothing, but says what it would have done.
        let shadow = matching(true).filter(|shadow| {
            rule.is_none_or(|rule| shadow.net.prefix_len() > rule.net.prefix_len())
        });
        let policy = effective.policy;
        let known_good = match inner.xdp.as_ref() {
            Some(xdp) => xdp
                .known_good(crate::defend::guard::canonical(address))
                .map_err(internal)?
                .map(|until| until.saturating_sub(now).as_secs_f64()),
            None => None,
        };
        let under_attack = inner.xdp.as_ref().is_some_and(XdpFirewall::under_attack);
        let (verdict, reason, mut because) = match (&ban, rule, policy) {
            (Some(ban), ..) => ("drop", "dropped-banned", format!("banned ({})", ban.cidr)),
            (None, Some(rule), _) if rule.action == Action::Deny => (
                "drop",
                "dropped-deny",
                format!(
                    "the most specific rule denies it: {} ({})",
                    rule.net, rule.origin
                ),
            ),
            (None, Some(rule), _) => (
                "pass",
                "passed",
                format!(
                    "the most specific rule allows it: {} ({})",
                    rule.net, rule.origin
                ),
            ),
            (None, None, crate::config::Policy::AllowList) => (
                "drop",
                "dropped-not-allowed",
                "no rule matches and the policy is allow-list".to_owned(),
            ),
            (None, None, crate::config::Policy::DenyList) => (
                "pass",
                "passed",
                "no rule matches and the policy is deny-list".to_owned(),
            ),
        };
        let (verdict, reason) = if under_attack && verdict == "pass" && known_good.is_none() {
            because += "; under-attack mode: not known-good, so it passes only within the \
                        new-source budget";
            ("drop", "dropped-under-attack")
        } else {
            if under_attack && verdict == "pass" {
                because += "; under-attack mode: known-good, admitted";
            }
            (verdict, reason)
        };
        if let Some(shadow) = shadow {
            because += &format!(
                "; shadow rule {} would deny it (dry run, not dropping)",
                shadow.net
            );
        }
        let rate = match (&effective.rate_limit, inner.xdp.as_ref()) {
            (Some(rate), Some(xdp)) if verdict == "pass" => {
                let class = rate
                    .classes
                    .iter()
                    .filter_map(|class| {
                        let len = class
                            .cidrs
                            .iter()
                            .filter(|net| net.contains(&address))
                            .map(|net| net.prefix_len())
                            .max()?;
                        Some((len, class))
                    })
                    .max_by_key(|(len, _)| *len)
                    .map(|(_, class)| class);
                let limits = class.map_or(rate.default, |class| class.limits);
                let bucket = xdp.rate_bucket(address).map_err(internal)?;
                let now = now.as_nanos() as u64;
                // GCRA: tokens left = (burst window - time the arrival time is ahead) / interval.
                let available = |limit: Option<(u64, u64)>, tat: Option<u64>| {
                    limit.map(|(rate, burst)| {
                        let interval = (1_000_000_000 / rate).max(1);
                        let ahead = tat.map_or(0, |tat| tat.saturating_sub(now));
                        burst.saturating_sub(ahead.div_ceil(interval))
                    })
                };
                Some(RateState {
                    class: class.map_or("default".to_owned(), |class| class.name.clone()),
                    packets_available: available(limits.packets, bucket.map(|b| b.packet_tat)),
                    packet_burst: limits.packets.map(|(_, burst)| burst),
                    syns_available: available(limits.syns, bucket.map(|b| b.syn_tat)),
                    syn_burst: limits.syns.map(|(_, burst)| burst),
                    tracked: bucket.is_some(),
                })
            }
            _ => None,
        };
        let operator_comment = |net: IpNet| {
            inner
                .operator
                .rules
                .iter()
                .find(|rule| rule.cidr == net)
                .and_then(|rule| rule.comment.clone())
        };
        Ok(Explanation {
            address: address.to_string(),
            verdict: verdict.to_owned(),
            reason: reason.to_owned(),
            because,
            ban,
            rule: rule.map(|rule| RuleEntry {
                cidr: rule.net.to_string(),
                action: action_name(rule.action).to_owned(),
                origin: if rule.origin == "operator" {
                    "operator"
                } else {
                    "config"
                }
                .to_owned(),
                key: (rule.origin != "operator").then(|| rule.origin.clone()),
                comment: operator_comment(rule.net),
                expires_in_secs: None,
                hits: None,
                shadow: false,
            }),
            policy: match policy {
                crate::config::Policy::DenyList => "deny-list",
                crate::config::Policy::AllowList => "allow-list",
            }
            .to_owned(),
            protected_ports: if effective.protected_ports.is_all() {
                "all ports".to_owned()
            } else {
                format!(
                    "{} protected ports (traffic to others always passes)",
                    effective.protected_ports.entries().count()
                )
            },
            rate,
            l7: crate::defend::running().map(|defender| defender.view(address)),
            known_good_expires_in_secs: known_good,
            under_attack,
        })
    }

    pub fn rules(&self) -> ApiResult<RuleList> {
        let inner = self.lock();
        let hits: std::collections::HashMap<IpNet, u64> = match inner.xdp.as_ref() {
            Some(xdp) => xdp.rule_hits().map_err(internal)?.into_iter().collect(),
            None => Default::default(),
        };
        let now = unix_now();
        let from_config = inner.firewall.rules.iter().map(|rule| RuleEntry {
            cidr: rule.net.to_string(),
            action: action_name(rule.action).to_owned(),
            origin: "config".to_owned(),
            key: Some(rule.origin.clone()),
            comment: None,
            expires_in_secs: None,
            hits: hits.get(&rule.net).copied(),
            shadow: false,
        });
        let from_operator = inner.operator.rules.iter().map(|rule| RuleEntry {
            cidr: rule.cidr.to_string(),
            action: action_name(rule.action.into()).to_owned(),
            origin: "operator".to_owned(),
            key: None,
            comment: rule.comment.clone(),
            expires_in_secs: remaining(rule.expires_at, now),
            hits: hits.get(&rule.cidr).copied(),
            shadow: rule.shadow,
        });
        Ok(RuleList {
            policy: match inner.firewall.policy {
                crate::config::Policy::DenyList => "deny-list",
                crate::config::Policy::AllowList => "allow-list",
            }
            .to_owned(),
            rules: from_config.chain(from_operator).collect(),
        })
    }

    pub fn add_rule(&self, request: &RuleRequest) -> ApiResult<RuleEntry> {
        let valid = request.validate()?;
        let rule = OperatorRule {
            cidr: valid.net,
            action: valid.action,
            comment: valid.comment,
            expires_at: valid.ttl.map(|ttl| unix_now() + ttl.as_secs_f64()),
            shadow: valid.shadow,
        };
        let entry = RuleEntry {
            cidr: rule.cidr.to_string(),
            action: action_name(rule.action.into()).to_owned(),
            origin: "operator".to_owned(),
            key: None,
            comment: rule.comment.clone(),
            expires_in_secs: valid.ttl.map(|ttl| ttl.as_secs_f64()),
            hits: Some(0),
            shadow: rule.shadow,
        };
        let change = crate::cluster::Change::AddRule {
            cidr: entry.cidr.clone(),
            action: rule.action,
            comment: rule.comment.clone(),
            expires_at: rule.expires_at,
            shadow: rule.shadow,
        };
        self.lock().change(|state, inner| {
            inner.check_new_rules(std::slice::from_ref(&rule))?;
            state.rules.push(rule);
            Ok(())
        })?;
        self.publish(change);
        tracing::info!(cidr = %entry.cidr, action = %entry.action, "operator rule added");
        Ok(entry)
    }

    /// Makes a shadow rule drop, in one map update.
    pub fn promote(&self, cidr: &str) -> ApiResult<()> {
        let net = valid::cidr("cidr", cidr)?;
        self.lock().change(|state, _| {
            match state.rules.iter_mut().find(|rule| rule.cidr == net) {
                Some(rule) if rule.shadow => {
                    rule.shadow = false;
                    Ok(())
                }
                Some(_) => Err(fail(
                    StatusCode::CONFLICT,
                    format!("{net} is not a shadow rule"),
                )),
                None => Err(fail(
                    StatusCode::NOT_FOUND,
                    format!("no operator rule for {net}"),
                )),
            }
        })?;
        self.publish(crate::cluster::Change::Promote {
            cidr: net.to_string(),
        });
        tracing::info!(%net, "shadow rule promoted: it drops now");
        Ok(())
    }

    pub fn remove_rule(&self, cidr: &str) -> ApiResult<()> {
        let net = valid::cidr("cidr", cidr)?;
        self.lock().change(|state, inner| {
            let before = state.rules.len();
            state.rules.retain(|rule| rule.cidr != net);
            if state.rules.len() == before {
                return Err(
                    match inner.firewall.rules.iter().find(|rule| rule.net == net) {
                        Some(rule) => fail(
                            StatusCode::CONFLICT,
                            format!(
                                "{net} comes from the config file ({}): edit the file and reload",
                                rule.origin
                            ),
                        ),
                        None => fail(StatusCode::NOT_FOUND, format!("no operator rule for {net}")),
                    },
                );
            }
            Ok(())
        })?;
        self.publish(crate::cluster::Change::RemoveRule {
            cidr: net.to_string(),
        });
        tracing::info!(%net, "operator rule removed");
        Ok(())
    }

    /// Adds every line of `request.text` as a rule, or none of them.
    pub fn import(&self, request: &ImportRequest) -> ApiResult<usize> {
        let (nets, comment) = request.validate()?;
        let rules: Vec<OperatorRule> = nets
            .into_iter()
            .map(|cidr| OperatorRule {
                cidr,
                action: request.action,
                comment: comment.clone(),
                expires_at: None,
                shadow: false,
            })
            .collect();
        let count = rules.len();
        let changes: Vec<_> = rules
            .iter()
            .map(|rule| crate::cluster::Change::AddRule {
                cidr: rule.cidr.to_string(),
                action: rule.action,
                comment: rule.comment.clone(),
                expires_at: None,
                shadow: false,
            })
            .collect();
        self.lock().change(|state, inner| {
            inner.check_new_rules(&rules)?;
            state.rules.extend(rules);
            Ok(())
        })?;
        changes.into_iter().for_each(|change| self.publish(change));
        tracing::info!(count, "operator rules imported");
        Ok(count)
    }

    // ---- Rate limits ----

    pub fn rate_limits(&self) -> RateLimits {
        let inner = self.lock();
        let effective = inner.effective();
        let origin = match (&inner.operator.rate_limit_default, &effective.rate_limit) {
            (Some(_), _) => "operator",
            (None, Some(_)) => "config",
            (None, None) => "off",
        };
        let rate = effective.rate_limit.unwrap_or_default();
        RateLimits {
            default_origin: origin.to_owned(),
            default: rate.default.into(),
            classes: rate
                .classes
                .into_iter()
                .map(|class| RateClassView {
                    name: class.name,
                    cidrs: class.cidrs.iter().map(ToString::to_string).collect(),
                    limits: class.limits.into(),
                })
                .collect(),
        }
    }

    /// Replaces the default class's limits (`None`: back to the config's).
    pub fn set_rate_limits(&self, limits: Option<RawLimits>) -> ApiResult<RateLimits> {
        if let Some(limits) = &limits {
            limits.validate("default").map_err(|problems| {
                let message: Vec<String> = problems.iter().map(ToString::to_string).collect();
                let mut failure = fail(StatusCode::BAD_REQUEST, message.join("; "));
                failure.field = problems.first().map(|problem| {
                    let key = problem.key.strip_prefix("default.");
                    key.unwrap_or(&problem.key).to_owned()
                });
                failure
            })?;
        }
        self.lock().change(|state, _| {
            state.rate_limit_default = limits.clone();
            Ok(())
        })?;
        tracing::info!(?limits, "default rate limits changed");
        Ok(self.rate_limits())
    }

    // ---- Bans ----

    /// Bans in force: in the kernel's maps, or (XDP off) the ones the accept stage enforces.
    pub fn bans(&self) -> ApiResult<BanList> {
        let mut bans = self.lock().active_bans()?;
        bans.sort_by(|a, b| a.cidr.cmp(&b.cidr));
        Ok(BanList { bans })
    }

    pub fn ban(&self, request: &BanRequest) -> ApiResult<Ban> {
        let valid = request.validate()?;
        let ban = OperatorBan {
            cidr: valid.net,
            expires_at: valid.duration.map(|left| unix_now() + left.as_secs_f64()),
            comment: valid.comment,
        };
        self.lock().place_ban(&ban)?;
        self.publish(crate::cluster::Change::Ban {
            cidr: ban.cidr.to_string(),
            expires_at: ban.expires_at,
            comment: ban.comment.clone(),
        });
        tracing::info!(net = %ban.cidr, duration = ?valid.duration, comment = ?ban.comment, "source banned");
        Ok(Ban {
            cidr: ban.cidr.to_string(),
            expires_in_secs: valid.duration.map(|left| left.as_secs_f64()),
            comment: ban.comment,
        })
    }

    /// A ban placed by the defender (L7 signals). An existing longer or permanent ban of the
    /// same prefix is kept as it is.
    pub fn auto_ban(&self, net: IpNet, duration: Duration, comment: &str) -> ApiResult<()> {
        // The config may ask for more than the state file keeps.
        let expires_at = unix_now() + duration.min(valid::MAX_DURATION).as_secs_f64();
        let mut inner = self.lock();
        let longer = inner
            .operator
            .bans
            .iter()
            .any(|ban| ban.cidr == net && ban.expires_at.is_none_or(|at| at >= expires_at));
        if longer {
            return Ok(());
        }
        inner.place_ban(&OperatorBan {
            cidr: net,
            expires_at: Some(expires_at),
            comment: Some(comment.to_owned()),
        })?;
        drop(inner);
        // Every node of a cluster bans what one node's L7 signals caught.
        self.publish(crate::cluster::Change::Ban {
            cidr: net.to_string(),
            expires_at: Some(expires_at),
            comment: Some(comment.to_owned()),
        });
        Ok(())
    }

    pub fn unban(&self, cidr: &str) -> ApiResult<()> {
        let net = valid::cidr("cidr", cidr)?;
        let mut inner = self.lock();
        let lifted = match inner.xdp.as_mut() {
            Some(xdp) => xdp.unban(net).map_err(internal)?,
            None => false,
        };
        let known = inner.operator.bans.iter().any(|ban| ban.cidr == net);
        if !lifted && !known {
            return Err(fail(StatusCode::NOT_FOUND, format!("{net} is not banned")));
        }
        inner.change(|state, _| {
            state.bans.retain(|ban| ban.cidr != net);
            Ok(())
        })?;
        inner.publish_bans();
        drop(inner);
        self.publish(crate::cluster::Change::Unban {
            cidr: net.to_string(),
        });
        tracing::info!(%net, "ban lifted");
        Ok(())
    }

    /// Drops expired rules and bans: bans already stopped matching in the kernel; rules are
    /// removed from the maps here.
    pub fn sweep(&self) {
        let mut inner = self.lock();
        let now = unix_now();
        // Every ban is in the operator state: look at the kernel only when one has expired.
        let bans_expired = inner
            .operator
            .bans
            .iter()
            .any(|ban| is_expired(ban.expires_at, now));
        if let (true, Some(xdp)) = (bans_expired, inner.xdp.as_mut()) {
            match xdp.sweep_expired_bans() {
                Ok(expired) => expired
                    .iter()
                    .for_each(|net| tracing::info!(%net, "ban expired")),
                Err(error) => tracing::warn!(%error, "sweeping expired bans failed"),
            }
        }
        let expired = |state: &OperatorState| {
            state
                .rules
                .iter()
                .any(|rule| is_expired(rule.expires_at, now))
                || state.bans.iter().any(|ban| is_expired(ban.expires_at, now))
        };
        if expired(&inner.operator) {
            let result = inner.change(|state, _| {
                for rule in state
                    .rules
                    .iter()
                    .filter(|rule| is_expired(rule.expires_at, now))
                {
                    tracing::info!(cidr = %rule.cidr, "operator rule expired");
                }
                state.rules.retain(|rule| !is_expired(rule.expires_at, now));
                state.bans.retain(|ban| !is_expired(ban.expires_at, now));
                Ok(())
            });
            if let Err(failure) = result {
                tracing::warn!("removing expired rules failed: {}", failure.message);
            }
            inner.publish_bans();
        }
    }
}

impl Inner {
    /// Saves `ban` (replacing one of the same prefix), then enforces it: in the kernel, or
    /// at accept when XDP is off.
    fn place_ban(&mut self, ban: &OperatorBan) -> ApiResult<()> {
        let max_bans = self.max_bans;
        self.change(|state, _| {
            state.bans.retain(|old| old.cidr != ban.cidr);
            let family = |net: &IpNet| matches!(net, IpNet::V4(_));
            let same_family = state
                .bans
                .iter()
                .filter(|old| family(&old.cidr) == family(&ban.cidr))
                .count();
            if same_family >= max_bans {
                return Err(fail(
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!(
                        "{same_family} bans of this address family are in place, the most \
                         xdp.max_bans allows: lift some, or raise xdp.max_bans and restart"
                    ),
                ));
            }
            state.bans.push(ban.clone());
            Ok(())
        })?;
        if let Some(xdp) = self.xdp.as_mut()
            && let Err(error) = xdp.ban(ban.cidr, kernel_expiry(ban.expires_at, unix_now()))
        {
            // Not in force: not kept either, or it would come back at every start.
            let _ = self.change(|state, _| {
                state.bans.retain(|old| old.cidr != ban.cidr);
                Ok(())
            });
            return Err(internal(error));
        }
        self.publish_bans();
        Ok(())
    }

    /// The bans in force, with their comments: the kernel's maps are the truth when XDP is
    /// on; with XDP off, the saved bans that have not expired.
    fn active_bans(&self) -> ApiResult<Vec<Ban>> {
        let comment = |net: IpNet| {
            self.operator
                .bans
                .iter()
                .find(|ban| ban.cidr == net)
                .and_then(|ban| ban.comment.clone())
        };
        match self.xdp.as_ref() {
            Some(xdp) => {
                let now = xdp::now();
                Ok(xdp
                    .bans()
                    .map_err(internal)?
                    .into_iter()
                    .map(|(net, expires)| Ban {
                        cidr: net.to_string(),
                        expires_in_secs: expires.map(|at| at.saturating_sub(now).as_secs_f64()),
                        comment: comment(net),
                    })
                    .collect())
            }
            None => {
                let now = unix_now();
                Ok(self
                    .operator
                    .bans
                    .iter()
                    .filter(|ban| !is_expired(ban.expires_at, now))
                    .map(|ban| Ban {
                        cidr: ban.cidr.to_string(),
                        expires_in_secs: remaining(ban.expires_at, now),
                        comment: ban.comment.clone(),
                    })
                    .collect())
            }
        }
    }

    /// Hands the bans to the accept stage when XDP is off (with XDP on it enforces none).
    fn publish_bans(&self) {
        let set = match self.xdp {
            Some(_) => crate::defend::guard::BanSet::default(),
            None => crate::defend::guard::BanSet::new(
                self.operator
                    .bans
                    .iter()
                    .map(|ban| (ban.cidr, ban.expires_at)),
            ),
        };
        crate::defend::guard::publish(set);
    }

    fn drop_expired(&mut self) {
        let now = unix_now();
        self.operator
            .rules
            .retain(|rule| !is_expired(rule.expires_at, now));
        self.operator
            .bans
            .retain(|ban| !is_expired(ban.expires_at, now));
    }

    /// Config rules plus the operator's (a network in both keeps the config's).
    fn effective(&self) -> FirewallConfig {
        let mut firewall = self.firewall.clone();
        // Validated when set; a state file edited by hand is checked again here.
        if let Some(limits) = self
            .operator
            .rate_limit_default
            .as_ref()
            .and_then(|spec| spec.validate("rate_limit_default").ok())
        {
            firewall
                .rate_limit
                .get_or_insert_with(Default::default)
                .default = limits;
        }
        let configured: HashSet<IpNet> = firewall.rules.iter().map(|rule| rule.net).collect();
        firewall.rules.extend(
            self.operator
                .rules
                .iter()
                .filter(|rule| !configured.contains(&rule.cidr))
                .map(|rule| CidrRule {
                    net: rule.cidr,
                    action: rule.action.into(),
                    origin: "operator".to_owned(),
                    shadow: rule.shadow,
                }),
        );
        firewall
    }

    fn apply(&mut self) -> ApiResult<()> {
        let effective = self.effective();
        let v4 = effective.rules_v4().count();
        let v6 = effective.rules_v6().count();
        if v4 > self.capacity.0 || v6 > self.capacity.1 {
            return Err(fail(
                StatusCode::INSUFFICIENT_STORAGE,
                format!(
                    "{v4} IPv4 and {v6} IPv6 rules do not fit the maps ({} and {}): raise \
                     xdp.max_rules_v4/v6 and restart",
                    self.capacity.0, self.capacity.1
                ),
            ));
        }
        if let Some(xdp) = self.xdp.as_mut() {
            xdp.apply(&effective).map_err(internal)?;
        }
        Ok(())
    }

    /// New operator rules must not repeat a rule that exists (in the file or added before).
    fn check_new_rules(&self, rules: &[OperatorRule]) -> ApiResult<()> {
        let mut seen: std::collections::HashMap<IpNet, String> = self
            .firewall
            .rules
            .iter()
            .map(|rule| (rule.net, format!("the config file ({})", rule.origin)))
            .chain(
                self.operator
                    .rules
                    .iter()
                    .map(|rule| (rule.cidr, "an operator rule".to_owned())),
            )
            .collect();
        for (index, rule) in rules.iter().enumerate() {
            if let Some(owner) = seen.insert(rule.cidr, format!("line {}", index + 1)) {
                return Err(fail(
                    StatusCode::CONFLICT,
                    format!("{} is already in {owner}; remove it first", rule.cidr),
                ));
            }
        }
        Ok(())
    }

    /// Applies `edit` to a copy of the operator state, saves it, then writes the maps. A
    /// failure at any step leaves memory, file and kernel as they were.
    fn change(
        &mut self,
        edit: impl FnOnce(&mut OperatorState, &Inner) -> ApiResult<()>,
    ) -> ApiResult<()> {
        let mut next = self.operator.clone();
        edit(&mut next, self)?;
        next.version = STATE_VERSION;
        save_state(&self.state_file, &next).map_err(|error| {
            internal(format!(
                "saving the state file {} failed, nothing changed: {error:#}",
                self.state_file.display()
            ))
        })?;
        // Bans live in their own maps: only rule and limit changes need the rules rewritten.
        let rules_changed = next.rules != self.operator.rules
            || next.rate_limit_default != self.operator.rate_limit_default;
        let previous = std::mem::replace(&mut self.operator, next);
        let applied = if rules_changed { self.apply() } else { Ok(()) };
        if let Err(failure) = applied {
            self.operator = previous;
            let _ = save_state(&self.state_file, &self.operator);
            return Err(failure);
        }
        Ok(())
    }
}

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Allow => "allow",
        Action::Deny => "deny",
    }
}

/// Wall-clock expiry -> the monotonic clock the kernel reads. Total: any number, even one
/// no request could set, gives an expiry (a past one expires now, a far one lasts the
/// longest a ban can).
fn kernel_expiry(expires_at: Option<f64>, now: f64) -> Option<Duration> {
    expires_at.map(|at| {
        // `max` maps NaN to 0; `min` caps infinity.
        let left = (at - now).max(0.0).min(valid::MAX_DURATION.as_secs_f64());
        xdp::now().saturating_add(Duration::from_secs_f64(left))
    })
}

/// The state file as written, its entries not yet checked: one bad entry is skipped, not
/// the whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedState {
    #[serde(default)]
    version: u32,
    #[serde(default)]
    rules: Vec<serde_json::Value>,
    #[serde(default)]
    bans: Vec<serde_json::Value>,
    #[serde(default)]
    rate_limit_default: Option<serde_json::Value>,
}

impl SavedState {
    /// The entries the daemon can use, held to the API's ranges; every other one is
    /// skipped with a warning that shows it.
    fn check(self, path: &Path, now: f64, max_bans: usize) -> OperatorState {
        let skip = |what: &str, entry: &serde_json::Value, reason: &str| {
            tracing::warn!(file = %path.display(), %entry, "saved {what} skipped: {reason}");
        };
        let mut rules: Vec<OperatorRule> = Vec::new();
        for entry in self.rules {
            match serde_json::from_value::<OperatorRule>(entry.clone())
                .map_err(|error| error.to_string())
                .and_then(|rule| rule.check(now).map(|()| rule))
            {
                Ok(rule) if rules.iter().any(|kept| kept.cidr == rule.cidr) => {
                    skip("rule", &entry, "an earlier rule has the same network")
                }
                Ok(rule) => rules.push(rule),
                Err(reason) => skip("rule", &entry, &reason),
            }
        }
        let mut bans: Vec<OperatorBan> = Vec::new();
        for entry in self.bans {
            match serde_json::from_value::<OperatorBan>(entry.clone())
                .map_err(|error| error.to_string())
                .and_then(|ban| ban.check(now).map(|()| ban))
            {
                Ok(ban) if bans.iter().any(|kept| kept.cidr == ban.cidr) => {
                    skip("ban", &entry, "an earlier ban has the same network")
                }
                Ok(ban)
                    if bans
                        .iter()
                        .filter(|kept| kept.cidr.addr().is_ipv4() == ban.cidr.addr().is_ipv4())
                        .count()
                        >= max_bans =>
                {
                    skip("ban", &entry, "more bans than xdp.max_bans")
                }
                Ok(ban) => bans.push(ban),
                Err(reason) => skip("ban", &entry, &reason),
            }
        }
        let rate_limit_default = self.rate_limit_default.and_then(|entry| {
            let limits = serde_json::from_value::<RawLimits>(entry.clone())
                .map_err(|error| error.to_string())
                .and_then(|limits| {
                    limits
                        .validate("rate_limit_default")
                        .map(|_| limits)
                        .map_err(|problems| {
                            let reasons: Vec<String> =
                                problems.iter().map(ToString::to_string).collect();
                            reasons.join("; ")
                        })
                });
            limits
                .inspect_err(|reason| skip("rate_limit_default", &entry, reason))
                .ok()
        });
        OperatorState {
            version: self.version,
            rules,
            bans,
            rate_limit_default,
        }
    }
}

/// A saved network: host bits clear, as the API writes it.
fn check_saved_net(net: IpNet) -> Result<(), String> {
    if net.trunc() == net {
        Ok(())
    } else {
        Err(format!("cidr {net} has host bits set"))
    }
}

fn check_saved_expiry(expires_at: Option<f64>, now: f64) -> Result<(), String> {
    match expires_at {
        Some(at) => valid::expiry("expires_at", at, now)
            .map(|_| ())
            .map_err(|invalid| invalid.to_string()),
        None => Ok(()),
    }
}

impl OperatorRule {
    fn check(&self, now: f64) -> Result<(), String> {
        if self.shadow && self.action != RuleAction::Deny {
            return Err("only deny rules can be shadow rules".to_owned());
        }
        check_saved_net(self.cidr)?;
        check_saved_expiry(self.expires_at, now)
    }
}

impl OperatorBan {
    fn check(&self, now: f64) -> Result<(), String> {
        check_saved_net(self.cidr)?;
        check_saved_expiry(self.expires_at, now)
    }
}

fn load_state(path: &Path, max_bans: usize) -> anyhow::Result<OperatorState> {
    use anyhow::Context as _;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(OperatorState::default());
        }
        Err(error) => {
            return Err(error)
                .with_context(|| format!("reading the state file {}", path.display()));
        }
    };
    let saved: SavedState = serde_json::from_str(&text).with_context(|| {
        format!(
            "the state file {} is not valid: fix it or move it away (it holds the operator's \
             rules and bans)",
            path.display()
        )
    })?;
    Ok(saved.check(path, unix_now(), max_bans))
}

/// Writes the state atomically: a temporary file in the same folder, fsync, rename over the
/// old one, fsync the folder. A crash leaves the old file or the new one, never half of one.
fn save_state(path: &Path, state: &OperatorState) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    serde_json::to_writer_pretty(&mut temp, state)?;
    temp.write_all(b"\n")?;
    temp.as_file().sync_all()?;
    temp.persist(path)
        .with_context(|| format!("renaming over {}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(load_state(&path, 10).unwrap(), OperatorState::default());
        let state = OperatorState {
            version: STATE_VERSION,
            rules: vec![OperatorRule {
                cidr: "192.0.2.0/24".parse().unwrap(),
                action: RuleAction::Deny,
                comment: Some("scanner".into()),
                // Whole seconds: serde_json parses floats to within an ulp, not exactly.
                expires_at: Some((unix_now() + 3600.0).round()),
                shadow: true,
            }],
            bans: vec![OperatorBan {
                cidr: "2001:db8::/64".parse().unwrap(),
                expires_at: None,
                comment: Some("auto: trap /.env".into()),
            }],
            rate_limit_default: Some(RawLimits {
                packets_per_second: Some(10),
                ..RawLimits::default()
            }),
        };
        save_state(&path, &state).unwrap();
        assert_eq!(load_state(&path, 10).unwrap(), state);
        // Only the state file remains: the temporary file was renamed over it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn saved_entries_out_of_range_are_skipped_and_the_rest_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let now = unix_now();
        let max = valid::MAX_DURATION.as_secs_f64();
        let text = serde_json::json!({
            "version": 1,
            "rules": [
                {"cidr": "192.0.2.0/24", "action": "deny", "expires_at": now + 3600.0},
                {"cidr": "192.0.2.0/24", "action": "allow"},
                {"cidr": "198.51.100.0/24", "action": "deny", "expires_at": 1e20},
                {"cidr": "198.51.100.7/24", "action": "deny"},
                {"cidr": "203.0.113.0/24", "action": "allow", "shadow": true},
                {"cidr": "203.0.113.0/24", "action": "block"},
                {"cidr": "203.0.113.0/24", "action": "deny", "expires_at": "soon"},
                {"cidr": "203.0.113.0/24", "action": "deny", "ttl": 5},
                "192.0.2.9",
                {"cidr": "2001:db8::/32", "action": "allow", "expires_at": now + max},
            ],
            "bans": [
                {"cidr": "192.0.2.7/32", "expires_at": 1.0000000000179665e20},
                {"cidr": "192.0.2.8/32", "expires_at": f64::MAX},
                {"cidr": "192.0.2.9/32", "expires_at": -1e300},
                {"cidr": "not an address"},
                {"cidr": "192.0.2.10/32", "comment": "kept"},
                {"cidr": "192.0.2.11/32"},
                {"cidr": "2001:db8::7/128", "expires_at": now + 60.0},
                null,
                [],
            ],
            "rate_limit_default": {"packets_per_second": 0},
        });
        std::fs::write(&path, text.to_string()).unwrap();
        // Two bans of one family at most.
        let state = load_state(&path, 2).unwrap();
        let nets = |list: Vec<IpNet>| list.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            nets(state.rules.iter().map(|rule| rule.cidr).collect()),
            ["192.0.2.0/24", "2001:db8::/32"]
        );
        assert_eq!(
            nets(state.bans.iter().map(|ban| ban.cidr).collect()),
            ["192.0.2.9/32", "192.0.2.10/32", "2001:db8::7/128"]
        );
        assert_eq!(state.rate_limit_default, None);
    }

    #[test]
    fn kernel_expiry_is_total() {
        let now = unix_now();
        let soon = xdp::now();
        let longest = soon + valid::MAX_DURATION;
        let values = [
            1e20,
            f64::MAX,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -1e300,
            0.0,
            now,
            now + 1.5,
        ];
        for at in values {
            let expiry = kernel_expiry(Some(at), now).unwrap();
            assert!(expiry >= soon, "{at}");
            // A little slack: the monotonic clock moves on while the table is checked.
            assert!(
                expiry <= longest + Duration::from_secs(60),
                "{at}: {expiry:?}"
            );
        }
        assert_eq!(kernel_expiry(None, now), None);
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{\"version\": 1, \"rules\": [").unwrap();
        let error = format!("{:#}", load_state(&path, 10).unwrap_err());
        assert!(
            error.contains("is not valid: fix it or move it away"),
            "{error}"
        );
    }
}
