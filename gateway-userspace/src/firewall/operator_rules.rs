//! The operator's rules in memory, in order of addition and by network, with a count per
//! address family: finding, adding and removing one rule, and the capacity and duplicate
//! checks, cost the same at a million rules as at ten.

use std::collections::{BTreeMap, HashMap};

use ipnet::IpNet;

use super::records::OperatorRule;

#[derive(Debug, Default)]
pub(super) struct OperatorRules {
    /// By order number (`seq`): the order they are listed, and numbered in the kernel, in.
    by_seq: BTreeMap<u64, OperatorRule>,
    by_net: HashMap<IpNet, u64>,
    /// Rules per family: (IPv4, IPv6).
    counts: (usize, usize),
}

impl OperatorRules {
    /// From rules in order of addition; a network repeated keeps its last rule.
    pub fn new(rules: Vec<OperatorRule>) -> OperatorRules {
        let mut all = OperatorRules::default();
        for rule in rules {
            all.insert(rule);
        }
        all
    }

    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// (IPv4, IPv6) rules.
    pub fn counts(&self) -> (usize, usize) {
        self.counts
    }

    pub fn get(&self, net: &IpNet) -> Option<&OperatorRule> {
        self.by_net.get(net).and_then(|seq| self.by_seq.get(seq))
    }

    pub fn contains(&self, net: &IpNet) -> bool {
        self.by_net.contains_key(net)
    }

    /// The order number of the newest rule.
    pub fn last_seq(&self) -> Option<u64> {
        self.by_seq.keys().next_back().copied()
    }

    /// In order of addition.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &OperatorRule> {
        self.by_seq.values()
    }

    /// In order of addition, after the rule for `net` (`None`: `net` has no rule).
    pub fn after(&self, net: IpNet) -> Option<impl Iterator<Item = &OperatorRule>> {
        let seq = *self.by_net.get(&net)?;
        Some(
            self.by_seq
                .range((std::ops::Bound::Excluded(seq), std::ops::Bound::Unbounded))
                .map(|(_, rule)| rule),
        )
    }

    /// Adds `rule`, or replaces the rule for its network (then at `rule.seq`).
    pub fn insert(&mut self, rule: OperatorRule) {
        self.remove(&rule.cidr);
        self.count(&rule.cidr, 1);
        self.by_net.insert(rule.cidr, rule.seq);
        self.by_seq.insert(rule.seq, rule);
    }

    pub fn remove(&mut self, net: &IpNet) -> Option<OperatorRule> {
        let seq = self.by_net.remove(net)?;
        let rule = self.by_seq.remove(&seq)?;
        self.count(net, -1);
        Some(rule)
    }

    /// Keeps the rules `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&OperatorRule) -> bool) {
        let gone: Vec<IpNet> = self
            .iter()
            .filter(|rule| !keep(rule))
            .map(|rule| rule.cidr)
            .collect();
        for net in gone {
            self.remove(&net);
        }
    }

    fn count(&mut self, net: &IpNet, by: isize) {
        let count = match net {
            IpNet::V4(_) => &mut self.counts.0,
            IpNet::V6(_) => &mut self.counts.1,
        };
        *count = count.saturating_add_signed(by);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RuleAction;

    fn rule(cidr: &str, seq: u64) -> OperatorRule {
        OperatorRule {
            cidr: cidr.parse().unwrap(),
            action: RuleAction::Deny,
            comment: None,
            expires_at: None,
            shadow: false,
            seq,
        }
    }

    fn nets<'a>(rules: impl Iterator<Item = &'a OperatorRule>) -> Vec<String> {
        rules.map(|rule| rule.cidr.to_string()).collect()
    }

    #[test]
    fn order_index_and_counts_agree_through_every_change() {
        let mut all = OperatorRules::new(vec![
            rule("10.0.0.0/8", 1),
            rule("2001:db8::/32", 2),
            rule("192.0.2.0/24", 3),
        ]);
        assert_eq!(all.counts(), (2, 1));
        assert_eq!(
            nets(all.after("10.0.0.0/8".parse().unwrap()).unwrap()),
            ["2001:db8::/32", "192.0.2.0/24"]
        );
        assert!(all.after("198.51.100.0/24".parse().unwrap()).is_none());

        // Replacing a network's rule keeps one rule for it, at its new place.
        all.insert(rule("10.0.0.0/8", 4));
        assert_eq!(all.len(), 3);
        assert_eq!(all.counts(), (2, 1));
        assert_eq!(
            nets(all.iter()),
            ["2001:db8::/32", "192.0.2.0/24", "10.0.0.0/8"]
        );
        assert_eq!(all.last_seq(), Some(4));

        assert!(all.remove(&"2001:db8::/32".parse().unwrap()).is_some());
        assert!(all.remove(&"2001:db8::/32".parse().unwrap()).is_none());
        assert_eq!(all.counts(), (2, 0));
        all.retain(|rule| rule.seq != 3);
        assert_eq!(nets(all.iter()), ["10.0.0.0/8"]);
        assert_eq!(all.counts(), (1, 0));
        assert!(all.contains(&"10.0.0.0/8".parse().unwrap()));
        assert_eq!(all.get(&"10.0.0.0/8".parse().unwrap()).unwrap().seq, 4);
    }

    proptest::proptest! {
        /// Whatever the changes, the index answers as a plain list in order of addition.
        #[test]
        fn the_index_answers_as_a_list_would(
            changes in proptest::collection::vec((0u8..3, 0u8..24, proptest::bool::ANY), 0..100)
        ) {
            let mut all = OperatorRules::default();
            let mut model: Vec<OperatorRule> = Vec::new();
            for (seq, (kind, n, v6)) in changes.into_iter().enumerate() {
                let cidr = if v6 { format!("2001:db8:{n}::/48") } else { format!("10.{n}.0.0/16") };
                let net: IpNet = cidr.parse().unwrap();
                match kind {
                    0 | 1 => {
                        model.retain(|rule| rule.cidr != net);
                        model.push(rule(&cidr, seq as u64 + 1));
                        all.insert(rule(&cidr, seq as u64 + 1));
                    }
                    _ => {
                        let gone = all.remove(&net).map(|rule| rule.cidr);
                        let had = model.iter().any(|rule| rule.cidr == net);
                        model.retain(|rule| rule.cidr != net);
                        proptest::prop_assert_eq!(gone.is_some(), had);
                    }
                }
                proptest::prop_assert_eq!(nets(all.iter()), nets(model.iter()));
                let v4 = model.iter().filter(|rule| rule.cidr.addr().is_ipv4()).count();
                proptest::prop_assert_eq!(all.counts(), (v4, model.len() - v4));
                for (index, rule) in model.iter().enumerate() {
                    proptest::prop_assert_eq!(all.get(&rule.cidr), Some(rule));
                    proptest::prop_assert_eq!(
                        nets(all.after(rule.cidr).unwrap()),
                        nets(model[index + 1..].iter())
                    );
                }
            }
        }
    }
}
