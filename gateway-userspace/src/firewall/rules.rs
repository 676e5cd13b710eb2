//! Operator rules: listed (a page at a time), added, promoted, removed, imported in bulk, and
//! the default rate limits.

use std::collections::{HashMap, HashSet};

use ipnet::IpNet;

use super::{
    Firewall, FirewallError, FirewallResult, Inner,
    records::{OperatorRule, remaining, unix_now},
    store::Op,
};
use crate::{
    api::{
        RateClassView, RateLimits, RawLimits, RuleEntry, RuleList, RuleRequest,
        replication::Change,
        valid::{self, ValidPage},
    },
    config::{Action, Policy},
};

pub(super) fn action_name(action: Action) -> &'static str {
    match action {
        Action::Allow => "allow",
        Action::Deny => "deny",
    }
}

pub(super) fn policy_name(policy: Policy) -> &'static str {
    match policy {
        Policy::DenyList => "deny-list",
        Policy::AllowList => "allow-list",
    }
}

impl Firewall {
    /// Config rules, then operator rules in order of addition: all of them, or one page.
    pub fn rules(&self, page: ValidPage) -> FirewallResult<RuleList> {
        let inner = self.lock();
        let now = unix_now();
        // Entries are made for the page only, and a page starts at its cursor through the
        // index: walking a million rules page by page is not quadratic.
        let operator_from = |start: Start| -> Box<dyn Iterator<Item = &OperatorRule> + '_> {
            match start {
                Start::Config(_) => Box::new(inner.operator.rules.iter()),
                Start::After(net) => {
                    Box::new(inner.operator.rules.after(net).into_iter().flatten())
                }
            }
        };
        let entries = |start: Start| {
            let configured = match start {
                Start::Config(index) => index.min(inner.firewall.rules.len()),
                Start::After(_) => inner.firewall.rules.len(),
            };
            let from_config = inner.firewall.rules[configured..]
                .iter()
                .map(|rule| RuleEntry {
                    cidr: rule.net.to_string(),
                    action: action_name(rule.action).to_owned(),
                    origin: "config".to_owned(),
                    key: Some(rule.origin.clone()),
                    comment: None,
                    expires_in_secs: None,
                    hits: None,
                    shadow: false,
                });
            let from_operator = operator_from(start).map(|rule| RuleEntry {
                cidr: rule.cidr.to_string(),
                action: action_name(rule.action.into()).to_owned(),
                origin: "operator".to_owned(),
                key: None,
                comment: rule.comment.clone(),
                expires_in_secs: remaining(rule.expires_at, now),
                hits: None,
                shadow: rule.shadow,
            });
            from_config.chain(from_operator)
        };
        let start = match page.after {
            Some(after) => inner
                .firewall
                .rules
                .iter()
                .position(|rule| rule.net == after)
                .map(|index| Start::Config(index + 1))
                .or_else(|| {
                    inner
                        .operator
                        .rules
                        .contains(&after)
                        .then_some(Start::After(after))
                })
                .ok_or_else(|| {
                    FirewallError::NotFound(format!(
                        "no rule {after} to list after: it was removed; list from the start"
                    ))
                })?,
            None => Start::Config(0),
        };
        let limit = page.limit.unwrap_or(usize::MAX);
        let mut rules: Vec<RuleEntry> = entries(start).take(limit.saturating_add(1)).collect();
        let next = (rules.len() > limit).then(|| {
            rules.truncate(limit);
            rules.last().map(|rule| rule.cidr.clone())
        });
        if let Some(xdp) = inner.xdp.as_ref() {
            let wanted: HashSet<IpNet> = rules
                .iter()
                .filter_map(|rule| rule.cidr.parse().ok())
                .collect();
            let hits: HashMap<IpNet, u64> = xdp.rule_hits_of(&wanted)?.into_iter().collect();
            for rule in &mut rules {
                rule.hits = rule
                    .cidr
                    .parse()
                    .ok()
                    .and_then(|net: IpNet| hits.get(&net).copied());
            }
        }
        Ok(RuleList {
            policy: policy_name(inner.firewall.policy).to_owned(),
            rules,
            next: next.flatten(),
        })
    }

    pub fn add_rule(&self, request: &RuleRequest) -> FirewallResult<RuleEntry> {
        let valid = request.validate()?;
        let mut rule = OperatorRule {
            cidr: valid.net,
            action: valid.action,
            comment: valid.comment,
            expires_at: valid.ttl.map(|ttl| unix_now() + ttl.as_secs_f64()),
            shadow: valid.shadow,
            seq: 0,
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
        let change = Change::AddRule {
            cidr: entry.cidr.clone(),
            action: rule.action,
            comment: rule.comment.clone(),
            expires_at: rule.expires_at,
            shadow: rule.shadow,
        };
        {
            let mut inner = self.lock();
            inner.check_new_rules(std::slice::from_ref(&rule.cidr))?;
            let (v4, v6) = if rule.cidr.addr().is_ipv4() {
                (1, 0)
            } else {
                (0, 1)
            };
            inner.check_capacity(v4, v6)?;
            rule.seq = inner.operator.next_seq;
            let net = rule.cidr;
            inner.change_rules(
                (vec![Op::PutRule(rule.clone())], vec![Op::DeleteRule(net)]),
                |operator| {
                    operator.next_seq += 1;
                    operator.note_expiry(rule.expires_at);
                    operator.rules.insert(rule);
                },
                |operator| {
                    operator.next_seq -= 1;
                    operator.rules.remove(&net);
                },
                Some(&[net]),
            )?;
        }
        self.publish(change);
        tracing::info!(cidr = %entry.cidr, action = %entry.action, "operator rule added");
        Ok(entry)
    }

    /// Makes a shadow rule drop, in one map update.
    pub fn promote(&self, cidr: &str) -> FirewallResult<()> {
        let net = valid::cidr("cidr", cidr)?;
        {
            let mut inner = self.lock();
            let old = inner.operator_rule(net)?.clone();
            if !old.shadow {
                return Err(FirewallError::Conflict(format!(
                    "{net} is not a shadow rule"
                )));
            }
            let promoted = OperatorRule {
                shadow: false,
                ..old.clone()
            };
            inner.change_rules(
                (
                    vec![Op::PutRule(promoted.clone())],
                    vec![Op::PutRule(old.clone())],
                ),
                |operator| operator.rules.insert(promoted),
                |operator| operator.rules.insert(old),
                Some(&[net]),
            )?;
        }
        self.publish(Change::Promote {
            cidr: net.to_string(),
        });
        tracing::info!(%net, "shadow rule promoted: it drops now");
        Ok(())
    }

    /// Removes the operator's rule for `cidr` and tells the cluster.
    pub fn remove_rule(&self, cidr: &str) -> FirewallResult<()> {
        let net = self.drop_rule(cidr)?;
        self.publish(Change::RemoveRule {
            cidr: net.to_string(),
        });
        Ok(())
    }

    /// Removes the rule for `cidr` as another node did: not published again.
    pub fn remove_rule_replicated(&self, cidr: &str) -> FirewallResult<()> {
        self.drop_rule(cidr).map(drop)
    }

    fn drop_rule(&self, cidr: &str) -> FirewallResult<IpNet> {
        let net = valid::cidr("cidr", cidr)?;
        {
            let mut inner = self.lock();
            let old = inner.operator_rule(net)?.clone();
            inner.change_rules(
                (vec![Op::DeleteRule(net)], vec![Op::PutRule(old.clone())]),
                |operator| {
                    operator.rules.remove(&net);
                },
                |operator| {
                    operator.note_expiry(old.expires_at);
                    operator.rules.insert(old);
                },
                Some(&[net]),
            )?;
        }
        tracing::info!(%net, "operator rule removed");
        Ok(net)
    }

    /// Whether a rule for `net` exists (config or operator), and if so whether it is a
    /// shadow rule.
    pub fn rule_is_shadow(&self, net: IpNet) -> Option<bool> {
        let inner = self.lock();
        if inner.firewall.rules.iter().any(|rule| rule.net == net) {
            return Some(false);
        }
        inner.operator.rules.get(&net).map(|rule| rule.shadow)
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
    pub fn set_rate_limits(&self, limits: Option<RawLimits>) -> FirewallResult<RateLimits> {
        if let Some(limits) = &limits {
            limits.validate("default").map_err(|problems| {
                let message: Vec<String> = problems.iter().map(ToString::to_string).collect();
                let field = problems.first().map_or("default", |problem| {
                    problem.key.strip_prefix("default.").unwrap_or(&problem.key)
                });
                FirewallError::Invalid(valid::Invalid {
                    field: field.to_owned(),
                    reason: message.join("; "),
                })
            })?;
        }
        {
            let mut inner = self.lock();
            let old = inner.operator.rate_limit_default.clone();
            let new = limits.clone();
            inner.change_rules(
                (
                    vec![Op::SetRateLimits(limits.clone())],
                    vec![Op::SetRateLimits(old.clone())],
                ),
                |operator| operator.rate_limit_default = new,
                |operator| operator.rate_limit_default = old,
                None,
            )?;
        }
        tracing::info!(?limits, "default rate limits changed");
        Ok(self.rate_limits())
    }
}

/// Where a page of the rule listing starts: at an index of the config file's rules, or
/// after an operator rule.
#[derive(Clone, Copy)]
enum Start {
    Config(usize),
    After(IpNet),
}

impl Inner {
    /// The operator rule for `net`; a config-file rule or none is an error.
    fn operator_rule(&self, net: IpNet) -> FirewallResult<&OperatorRule> {
        if let Some(rule) = self.operator.rules.get(&net) {
            return Ok(rule);
        }
        Err(
            match self.firewall.rules.iter().find(|rule| rule.net == net) {
                Some(rule) => FirewallError::Conflict(format!(
                    "{net} comes from the config file ({}): edit the file and reload",
                    rule.origin
                )),
                None => FirewallError::NotFound(format!("no operator rule for {net}")),
            },
        )
    }

    /// New operator rules must not repeat a rule that exists (in the file or added before):
    /// one index lookup per new rule.
    pub(super) fn check_new_rules(&self, nets: &[IpNet]) -> FirewallResult<()> {
        let config: HashMap<IpNet, &str> = self
            .firewall
            .rules
            .iter()
            .map(|rule| (rule.net, rule.origin.as_str()))
            .collect();
        let conflict = |net: IpNet, owner: String| {
            FirewallError::Conflict(format!("{net} is already in {owner}; remove it first"))
        };
        let mut seen: HashMap<IpNet, usize> = HashMap::with_capacity(nets.len());
        for (index, &net) in nets.iter().enumerate() {
            if let Some(origin) = config.get(&net) {
                return Err(conflict(net, format!("the config file ({origin})")));
            }
            if self.operator.rules.contains(&net) {
                return Err(conflict(net, "an operator rule".to_owned()));
            }
            if let Some(line) = seen.insert(net, index + 1) {
                return Err(conflict(net, format!("line {line}")));
            }
        }
        Ok(())
    }
}
