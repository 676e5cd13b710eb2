//! Bans and rules from the other nodes of a cluster, a batch at a time: one store transaction
//! per batch, and map writes for what the batch changes only. A node catching up with a
//! million rules pays neither a transaction nor a scan of every rule per rule.

use std::collections::{HashMap, HashSet};

use ipnet::IpNet;

use super::{
    Firewall, FirewallResult, Inner,
    records::{OperatorBan, OperatorRule, is_expired, unix_now},
    store::Op,
};
use crate::api::replication::Replicated;

impl Firewall {
    /// Applies `batch` in order; returns how many bans and rules it changed. What is here
    /// already, or expired, is skipped. Rules and bans are each all or none.
    pub fn replicate(&self, batch: &[Replicated]) -> FirewallResult<usize> {
        let now = unix_now();
        let mut inner = self.lock();
        // The last ban of a network in the batch wins; one equal to this node's is no change.
        let mut bans: Vec<OperatorBan> = Vec::new();
        let mut ban_at: HashMap<IpNet, usize> = HashMap::new();
        let mut rules = Vec::new();
        for item in batch {
            match item {
                Replicated::Ban(ban) => {
                    if is_expired(ban.expires_at, now) {
                        continue;
                    }
                    match ban_at.get(&ban.cidr) {
                        Some(&index) => bans[index] = ban.clone(),
                        None => {
                            ban_at.insert(ban.cidr, bans.len());
                            bans.push(ban.clone());
                        }
                    }
                }
                rule => rules.push(rule),
            }
        }
        bans.retain(|ban| inner.operator.bans.get(&ban.cidr) != Some(ban));
        let changed_rules = inner.replicate_rules(&rules, now)?;
        if !bans.is_empty() {
            inner.place_bans(&bans)?;
        }
        Ok(changed_rules + bans.len())
    }
}

impl Inner {
    /// Adds the rules this node lacks and promotes the shadow rules promoted elsewhere:
    /// committed in one transaction, then written into the kernel rule by rule. A rule of the
    /// config file for the same network wins.
    fn replicate_rules(&mut self, items: &[&Replicated], now: f64) -> FirewallResult<usize> {
        if items.is_empty() {
            return Ok(0);
        }
        let configured: HashSet<IpNet> = self.firewall.rules.iter().map(|rule| rule.net).collect();
        let mut added: Vec<OperatorRule> = Vec::new();
        let mut added_at: HashMap<IpNet, usize> = HashMap::new();
        let mut promoted: Vec<IpNet> = Vec::new();
        let mut promoting: HashSet<IpNet> = HashSet::new();
        for item in items {
            let (net, promote) = match item {
                Replicated::Rule(rule) => {
                    if is_expired(rule.expires_at, now) || configured.contains(&rule.cidr) {
                        continue;
                    }
                    if !self.operator.rules.contains(&rule.cidr)
                        && !added_at.contains_key(&rule.cidr)
                    {
                        added_at.insert(rule.cidr, added.len());
                        added.push(rule.clone());
                        continue;
                    }
                    // There already: promoted elsewhere (a missed Promote) if it drops there.
                    (rule.cidr, !rule.shadow)
                }
                Replicated::Promote(net) => (*net, true),
                Replicated::Ban(_) => continue,
            };
            if !promote {
                continue;
            }
            if let Some(rule) = self.operator.rules.get(&net) {
                if rule.shadow && promoting.insert(net) {
                    promoted.push(net);
                }
            } else if let Some(&index) = added_at.get(&net) {
                added[index].shadow = false;
            }
        }
        if added.is_empty() && promoted.is_empty() {
            return Ok(0);
        }
        let v4 = added
            .iter()
            .filter(|rule| rule.cidr.addr().is_ipv4())
            .count();
        self.check_capacity(v4, added.len() - v4)?;
        let first = self.operator.next_seq;
        for (offset, rule) in added.iter_mut().enumerate() {
            rule.seq = first + offset as u64;
        }
        let was_shadow: Vec<OperatorRule> = promoted
            .iter()
            .filter_map(|net| self.operator.rules.get(net).cloned())
            .collect();
        let now_real = was_shadow.iter().map(|rule| OperatorRule {
            shadow: false,
            ..rule.clone()
        });
        let ops = added
            .iter()
            .cloned()
            .chain(now_real)
            .map(Op::PutRule)
            .collect();
        self.store.commit(ops)?;
        self.operator.next_seq += added.len() as u64;
        for rule in &added {
            self.operator.rules.insert(rule.clone());
        }
        for rule in &was_shadow {
            self.operator.rules.insert(OperatorRule {
                shadow: false,
                ..rule.clone()
            });
        }
        let written = self.write_replicated(&added, &promoted);
        if let Err(failure) = written {
            // Not in force: not kept either (memory, store, kernel as before the batch).
            for rule in &added {
                self.operator.rules.remove(&rule.cidr);
            }
            self.operator.next_seq = first;
            for old in &was_shadow {
                self.operator.rules.insert(old.clone());
            }
            let undo = added
                .iter()
                .map(|rule| Op::DeleteRule(rule.cidr))
                .chain(was_shadow.into_iter().map(Op::PutRule))
                .collect();
            if let Err(error) = self.store.commit(undo) {
                tracing::error!(%error, "undoing a refused batch in the store failed");
            }
            if let Err(error) = self.apply() {
                tracing::error!(%error, "rewriting the rules after a refused batch failed");
            }
            return Err(failure);
        }
        Ok(added.len() + promoted.len())
    }

    /// The added and promoted rules into the kernel: one trie entry each.
    fn write_replicated(
        &mut self,
        added: &[OperatorRule],
        promoted: &[IpNet],
    ) -> FirewallResult<()> {
        let Some(xdp) = self.xdp.as_mut() else {
            return Ok(());
        };
        let rules = &self.operator.rules;
        let promoted = promoted.iter().filter_map(|net| rules.get(net));
        let rules: Vec<_> = added
            .iter()
            .chain(promoted)
            .map(|rule| (rule.cidr, Some((rule.action.into(), rule.shadow))))
            .collect();
        xdp.set_rules(&rules)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RuleAction;

    fn firewall(dir: &std::path::Path, config_rules: &str) -> Firewall {
        let config = crate::config::Config::parse(&format!(
            "[admin]\nstate_file = \"{}/state.json\"\n[xdp]\nmode = \"off\"\n{config_rules}",
            dir.display()
        ))
        .unwrap();
        Firewall::start(None, config.firewall, &config.xdp, &config.admin).unwrap()
    }

    fn rule(cidr: &str, shadow: bool, expires_at: Option<f64>) -> Replicated {
        Replicated::Rule(OperatorRule {
            cidr: cidr.parse().unwrap(),
            action: RuleAction::Deny,
            comment: Some("from node-a".into()),
            expires_at,
            shadow,
            seq: 0,
        })
    }

    fn ban(cidr: &str, expires_at: Option<f64>, comment: &str) -> Replicated {
        Replicated::Ban(OperatorBan {
            cidr: cidr.parse().unwrap(),
            expires_at,
            comment: Some(comment.into()),
        })
    }

    /// (cidr, shadow) of the operator's rules, and (cidr, comment) of the bans, as listed.
    type Listing = (Vec<(String, bool)>, Vec<(String, Option<String>)>);

    fn listing(firewall: &Firewall) -> Listing {
        let rules = firewall.rules(Default::default()).unwrap().rules;
        let bans = firewall.bans(Default::default()).unwrap().bans;
        (
            rules
                .into_iter()
                .filter(|rule| rule.origin == "operator")
                .map(|rule| (rule.cidr, rule.shadow))
                .collect(),
            bans.into_iter()
                .map(|ban| (ban.cidr, ban.comment))
                .collect(),
        )
    }

    #[test]
    fn a_batch_applies_in_order_once_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let now = unix_now();
        let firewall = firewall(dir.path(), "[firewall]\nallow = [\"203.0.113.0/24\"]");
        let batch = [
            rule("192.0.2.0/24", false, None),
            // Added as a shadow rule, promoted later in the same batch.
            rule("198.51.100.0/24", true, None),
            Replicated::Promote("198.51.100.0/24".parse().unwrap()),
            // A shadow rule that stays one.
            rule("198.51.100.128/25", true, None),
            // Twice in one batch: once.
            rule("192.0.2.0/24", false, None),
            // Expired: skipped.
            rule("10.9.0.0/16", false, Some(now - 1.0)),
            // The config file's network: the config's rule wins.
            rule("203.0.113.0/24", false, None),
            ban("192.0.2.7/32", None, "first"),
            ban("192.0.2.7/32", Some(now + 600.0), "last wins"),
            ban("2001:db8::/64", None, "v6"),
            ban("192.0.2.9/32", Some(now - 5.0), "expired"),
        ];
        assert_eq!(firewall.replicate(&batch).unwrap(), 5);
        let expected = (
            vec![
                ("192.0.2.0/24".to_owned(), false),
                ("198.51.100.0/24".to_owned(), false),
                ("198.51.100.128/25".to_owned(), true),
            ],
            vec![
                ("192.0.2.7/32".to_owned(), Some("last wins".to_owned())),
                ("2001:db8::/64".to_owned(), Some("v6".to_owned())),
            ],
        );
        assert_eq!(listing(&firewall), expected);
        // Again: nothing changes (a resync of a node in step writes nothing).
        assert_eq!(firewall.replicate(&batch).unwrap(), 0);
        // A non-shadow copy of a shadow rule here promotes it (a missed Promote); a shadow
        // copy of a real rule does not demote it.
        let heal = [
            rule("198.51.100.128/25", false, None),
            rule("192.0.2.0/24", true, None),
        ];
        assert_eq!(firewall.replicate(&heal).unwrap(), 1);
        let mut healed = expected.clone();
        healed.0[2].1 = false;
        assert_eq!(listing(&firewall), healed);
        // What was applied is in the store: it is there after a restart.
        drop(firewall);
        let restarted = self::firewall(dir.path(), "[firewall]\nallow = [\"203.0.113.0/24\"]");
        assert_eq!(listing(&restarted), healed);
    }

    #[test]
    fn a_batch_that_does_not_fit_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config::parse(&format!(
            "[admin]\nstate_file = \"{}/state.json\"\n[xdp]\nmode = \"off\"\nmax_rules_v4 = 3",
            dir.path().display()
        ))
        .unwrap();
        let firewall = Firewall::start(None, config.firewall, &config.xdp, &config.admin).unwrap();
        let batch: Vec<Replicated> = (0..4)
            .map(|n| rule(&format!("192.0.2.{n}/32"), false, None))
            .collect();
        assert!(matches!(
            firewall.replicate(&batch),
            Err(crate::firewall::FirewallError::Full(_))
        ));
        assert_eq!(listing(&firewall), (vec![], vec![]));
        assert_eq!(firewall.replicate(&batch[..3]).unwrap(), 3);
    }

    #[test]
    fn thousands_of_entries_in_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let firewall = firewall(dir.path(), "");
        let rules = (0..5_000u32).map(|n| {
            let [_, _, a, b] = n.to_be_bytes();
            rule(&format!("10.1.{a}.{b}/32"), n % 7 == 0, None)
        });
        assert_eq!(
            firewall.replicate(&rules.collect::<Vec<_>>()).unwrap(),
            5_000
        );
        let bans = (0..5_000u32).map(|n| {
            let [_, _, a, b] = n.to_be_bytes();
            ban(&format!("10.2.{a}.{b}/32"), None, "auto")
        });
        assert_eq!(
            firewall.replicate(&bans.collect::<Vec<_>>()).unwrap(),
            5_000
        );
        let (rules, bans) = listing(&firewall);
        assert_eq!((rules.len(), bans.len()), (5_000, 5_000));
        assert_eq!(rules.iter().filter(|(_, shadow)| *shadow).count(), 715);
    }
}
