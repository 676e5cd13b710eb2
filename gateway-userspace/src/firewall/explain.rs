//! `gateway firewall explain ADDRESS`: what the kernel would do with a packet from an
//! address to a protected port, and why (ban, rule, shadow rule, policy, rate limit,
//! under-attack mode, the defender's view).

use ipnet::IpNet;

use super::{
    Firewall, FirewallResult,
    rules::{action_name, policy_name},
};
use crate::{
    api::{Explanation, RateState, RuleEntry, valid},
    config::Action,
    xdp::{self, XdpFirewall},
};

impl Firewall {
    /// What the kernel would do with a packet from `address` to a protected port, and why.
    pub fn explain(&self, address: &str) -> FirewallResult<Explanation> {
        let address = valid::address("address", address)?;
        let inner = self.lock();
        let effective = inner.effective();
        let now = xdp::now();
        let ban = Firewall::ban_covering(&inner, address);
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
                .known_good(crate::guard::canonical(address))?
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
                let bucket = xdp.rate_bucket(address)?;
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
                .get(&net)
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
            policy: policy_name(policy).to_owned(),
            protected_ports: if effective.protected_ports.is_all() {
                "all ports".to_owned()
            } else {
                format!(
                    "{} protected ports (traffic to others always passes)",
                    effective.protected_ports.entries().count()
                )
            },
            rate,
            l7: None, // the admin API adds the defender's view
            known_good_expires_in_secs: known_good,
            under_attack,
        })
    }
}
