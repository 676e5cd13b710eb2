//! Which rule holds which hit-counter slot, and what each trie entry holds, so that one rule
//! added, removed or promoted is one map write (plus the shadow rules inside it), not a
//! rewrite of every rule.
//!
//! A rule keeps its slot (its `id`, an index into `RULE_HITS`) for as long as it exists;
//! a removed rule's slot goes on a free list and is zeroed when it is given out again, so a
//! count always belongs to the rule listed with it.

use std::collections::{HashMap, HashSet};

use gateway_common::{ACTION_ALLOW, ACTION_DENY, ACTION_POLICY, ACTION_SHADOW, Rule};
use ipnet::IpNet;

use crate::config::Action;

/// A rule as the kernel gets it: network, action, and whether it is a dry run (shadow).
pub(super) type KernelRule = (IpNet, Action, bool);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub action: Action,
    pub shadow: bool,
    pub id: u32,
    /// For a shadow rule: what decides instead (the nearest real rule around it).
    pub fallback: u8,
}

impl Entry {
    fn value(&self) -> Rule {
        Rule {
            action: if self.shadow {
                ACTION_SHADOW
            } else {
                code(self.action)
            },
            fallback: self.fallback,
            _pad: [0; 2],
            id: self.id,
        }
    }
}

fn code(action: Action) -> u8 {
    match action {
        Action::Allow => ACTION_ALLOW,
        Action::Deny => ACTION_DENY,
    }
}

/// What to do to the maps, in this order: delete entries, zero counter slots, write entries.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Writes {
    pub delete: Vec<IpNet>,
    pub reset: Vec<u32>,
    pub put: Vec<(IpNet, Rule)>,
}

impl Writes {
    /// The writes of several changes made one after another, as one: for a network both
    /// put and deleted, only the later of the two is kept (deletes run first).
    pub fn merge(all: Vec<Writes>) -> Writes {
        let mut merged = Writes::default();
        if all.iter().all(|writes| writes.delete.is_empty()) {
            for writes in all {
                merged.reset.extend(writes.reset);
                merged.put.extend(writes.put);
            }
            return merged;
        }
        let mut last: HashMap<IpNet, Option<Rule>> = HashMap::new();
        for writes in all {
            merged.reset.extend(writes.reset);
            for net in writes.delete {
                last.insert(net, None);
            }
            for (net, rule) in writes.put {
                last.insert(net, Some(rule));
            }
        }
        for (net, rule) in last {
            match rule {
                Some(rule) => merged.put.push((net, rule)),
                None => merged.delete.push(net),
            }
        }
        merged
    }
}

/// The rules as written into the tries (the daemon's copy: never read back).
#[derive(Debug)]
pub(super) struct RuleSlots {
    entries: HashMap<IpNet, Entry>,
    /// The shadow rules, whose fallback follows the real rules around them.
    shadows: HashSet<IpNet>,
    free: Vec<u32>,
    next_id: u32,
    /// Whether slots never given out are known to be zero (the maps were made by this
    /// daemon): then only a reused slot is zeroed, not each of a million new rules'.
    unused_are_zero: bool,
    /// False until every entry was written once, and after a failed write: the next full
    /// [`reconcile`](Self::reconcile) writes every entry and the caller clears stale keys.
    pub synced: bool,
}

impl Default for RuleSlots {
    fn default() -> Self {
        RuleSlots {
            entries: HashMap::new(),
            shadows: HashSet::new(),
            free: Vec::new(),
            // 0 is no rule.
            next_id: 1,
            unused_are_zero: false,
            synced: false,
        }
    }
}

impl RuleSlots {
    /// `unused_are_zero`: the hit counters were just made (not adopted), all zero.
    pub fn new(unused_are_zero: bool) -> RuleSlots {
        RuleSlots {
            unused_are_zero,
            ..RuleSlots::default()
        }
    }

    /// What the tries hold as this daemon knows it: every entry, the free slots, the next
    /// new slot (saved at a clean stop, see `saved_slots`).
    pub fn parts(&self) -> (&HashMap<IpNet, Entry>, &[u32], u32) {
        (&self.entries, &self.free, self.next_id)
    }

    /// From [`parts`](Self::parts) saved by the daemon that wrote the (adopted) tries: they
    /// are known to hold exactly `entries`, so only what differs is written.
    pub fn from_parts(entries: HashMap<IpNet, Entry>, free: Vec<u32>, next_id: u32) -> RuleSlots {
        let shadows = entries
            .iter()
            .filter(|(_, entry)| entry.shadow)
            .map(|(net, _)| *net)
            .collect();
        RuleSlots {
            entries,
            shadows,
            free,
            next_id,
            unused_are_zero: false,
            synced: true,
        }
    }

    /// The counter slot of the rule for `net`.
    pub fn id(&self, net: &IpNet) -> Option<u32> {
        self.entries.get(net).map(|entry| entry.id)
    }

    /// Every rule and its counter slot.
    pub fn ids(&self) -> impl Iterator<Item = (IpNet, u32)> + '_ {
        self.entries.iter().map(|(net, entry)| (*net, entry.id))
    }

    /// One rule set (`Some`) or removed (`None`): what to write for it.
    pub fn set(&mut self, net: IpNet, rule: Option<(Action, bool)>) -> Writes {
        let mut writes = Writes::default();
        match rule {
            Some((action, shadow)) => self.place(net, action, shadow, &mut writes),
            None => self.unplace(net, &mut writes),
        }
        self.refresh_shadows_inside(net, &mut writes);
        writes
    }

    /// Makes the rules exactly `wanted` (a reload, a rate-limit change, the start): only
    /// what differs is written, unless not [`synced`](Self::synced).
    pub fn reconcile(&mut self, wanted: &[KernelRule]) -> Writes {
        let mut writes = Writes::default();
        let keep: HashSet<IpNet> = wanted.iter().map(|(net, ..)| *net).collect();
        let gone: Vec<IpNet> = self
            .entries
            .keys()
            .filter(|net| !keep.contains(net))
            .copied()
            .collect();
        for net in gone {
            self.unplace(net, &mut writes);
        }
        // Real rules first, so each shadow rule's fallback sees the real rules around it.
        let (shadows, reals): (Vec<&KernelRule>, Vec<&KernelRule>) =
            wanted.iter().partition(|(_, _, shadow)| *shadow);
        for &(net, action, shadow) in reals.into_iter().chain(shadows) {
            self.place(net, action, shadow, &mut writes);
        }
        if !self.synced {
            writes.put = self
                .entries
                .iter()
                .map(|(net, entry)| (*net, entry.value()))
                .collect();
        }
        writes
    }

    fn place(&mut self, net: IpNet, action: Action, shadow: bool, writes: &mut Writes) {
        let old = self.entries.get(&net).copied();
        let (id, never_used) = match old {
            Some(entry) => (entry.id, false),
            None => match self.free.pop() {
                Some(id) => (id, false),
                None => {
                    self.next_id += 1;
                    (self.next_id - 1, self.unused_are_zero)
                }
            },
        };
        let changed = old.map(|entry| (entry.action, entry.shadow)) != Some((action, shadow));
        if changed && !never_used {
            // A new rule, or a changed one: its count starts over.
            writes.reset.push(id);
        }
        let entry = Entry {
            action,
            shadow,
            id,
            fallback: if shadow {
                self.enclosing(net)
            } else {
                ACTION_POLICY
            },
        };
        if old != Some(entry) {
            writes.put.push((net, entry.value()));
        }
        self.entries.insert(net, entry);
        if shadow {
            self.shadows.insert(net);
        } else {
            self.shadows.remove(&net);
        }
    }

    fn unplace(&mut self, net: IpNet, writes: &mut Writes) {
        if let Some(entry) = self.entries.remove(&net) {
            self.free.push(entry.id);
            self.shadows.remove(&net);
            writes.delete.push(net);
        }
    }

    /// The action of the most specific real rule strictly around `net`.
    fn enclosing(&self, net: IpNet) -> u8 {
        std::iter::successors(net.supernet(), IpNet::supernet)
            .find_map(|outer| {
                self.entries
                    .get(&outer)
                    .filter(|entry| !entry.shadow)
                    .map(|entry| code(entry.action))
            })
            .unwrap_or(ACTION_POLICY)
    }

    /// Rewrites the shadow rules strictly inside `outer` whose fallback changed with it.
    fn refresh_shadows_inside(&mut self, outer: IpNet, writes: &mut Writes) {
        let inside: Vec<IpNet> = self
            .shadows
            .iter()
            .filter(|net| **net != outer && outer.contains(*net))
            .copied()
            .collect();
        for net in inside {
            let fallback = self.enclosing(net);
            if let Some(entry) = self.entries.get_mut(&net)
                && entry.fallback != fallback
            {
                entry.fallback = fallback;
                writes.put.push((net, entry.value()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn ids(writes: &Writes) -> Vec<(String, u8, u8, u32)> {
        writes
            .put
            .iter()
            .map(|(net, rule)| (net.to_string(), rule.action, rule.fallback, rule.id))
            .collect()
    }

    #[test]
    fn one_rule_added_or_removed_is_one_write() {
        let mut slots = RuleSlots::default();
        let wanted: Vec<KernelRule> = (0..1000u32)
            .map(|n| {
                let [_, a, b, c] = n.to_be_bytes();
                (net(&format!("10.{a}.{b}.{c}/32")), Action::Deny, false)
            })
            .collect();
        let first = slots.reconcile(&wanted);
        assert_eq!(first.put.len(), 1000, "the first apply writes everything");
        assert_eq!(first.reset.len(), 1000);
        slots.synced = true;
        assert_eq!(
            slots.reconcile(&wanted),
            Writes::default(),
            "nothing changed"
        );

        let added = slots.set(net("192.0.2.0/24"), Some((Action::Deny, false)));
        assert_eq!(added.put.len(), 1);
        assert_eq!(added.reset, [1001]);
        let removed = slots.set(net("10.0.0.5/32"), None);
        assert_eq!(removed.delete, [net("10.0.0.5/32")]);
        assert!(removed.put.is_empty() && removed.reset.is_empty());
        // The freed slot is given out again, zeroed.
        let reused = slots.set(net("192.0.2.7/32"), Some((Action::Allow, false)));
        assert_eq!(reused.reset, [6]);
        assert_eq!(ids(&reused), [("192.0.2.7/32".into(), ACTION_ALLOW, 0, 6)]);
        assert_eq!(slots.id(&net("10.0.0.6/32")), Some(7), "others keep theirs");
    }

    #[test]
    fn shadow_rules_follow_the_real_rule_around_them() {
        let mut slots = RuleSlots::default();
        slots.reconcile(&[(net("10.0.0.0/24"), Action::Deny, true)]);
        slots.synced = true;
        assert_eq!(slots.entries[&net("10.0.0.0/24")].fallback, ACTION_POLICY);

        // A real rule around it: the shadow rule's fallback is rewritten, its count kept.
        let around = slots.set(net("10.0.0.0/8"), Some((Action::Allow, false)));
        assert_eq!(
            ids(&around),
            [
                ("10.0.0.0/8".into(), ACTION_ALLOW, ACTION_POLICY, 2),
                ("10.0.0.0/24".into(), ACTION_SHADOW, ACTION_ALLOW, 1)
            ]
        );
        assert_eq!(around.reset, [2]);
        // A rule elsewhere leaves it alone.
        assert_eq!(
            slots
                .set(net("192.0.2.0/24"), Some((Action::Deny, false)))
                .put
                .len(),
            1
        );
        // Promoted: real now, its count starts over.
        let promoted = slots.set(net("10.0.0.0/24"), Some((Action::Deny, false)));
        assert_eq!(
            ids(&promoted),
            [("10.0.0.0/24".into(), ACTION_DENY, ACTION_POLICY, 1)]
        );
        assert_eq!(promoted.reset, [1]);
        // Removing the real rule around a shadow rule gives it the policy again.
        slots.set(net("10.0.0.0/25"), Some((Action::Deny, true)));
        let removed = slots.set(net("10.0.0.0/24"), None);
        assert_eq!(
            ids(&removed),
            [("10.0.0.0/25".into(), ACTION_SHADOW, ACTION_ALLOW, 4)]
        );
    }

    #[test]
    fn merged_writes_keep_the_later_of_a_put_and_a_delete() {
        let mut slots = RuleSlots::default();
        slots.reconcile(&[
            (net("10.0.0.0/8"), Action::Deny, false),
            (net("10.0.0.0/24"), Action::Deny, true),
            (net("192.0.2.0/24"), Action::Deny, false),
        ]);
        slots.synced = true;
        // The rule around a shadow rule goes (the shadow rule is rewritten), then the
        // shadow rule goes too: it must not come back.
        let outer = slots.set(net("10.0.0.0/8"), None);
        let inner = slots.set(net("10.0.0.0/24"), None);
        let added = slots.set(net("198.51.100.0/24"), Some((Action::Deny, false)));
        let mut merged = Writes::merge(vec![outer, inner, added]);
        merged.delete.sort();
        assert_eq!(merged.delete, [net("10.0.0.0/8"), net("10.0.0.0/24")]);
        assert_eq!(ids(&merged)[0].0, "198.51.100.0/24");
        assert_eq!(merged.put.len(), 1);
        // Only puts: kept as they are, in order.
        let a = slots.set(net("203.0.113.0/24"), Some((Action::Deny, false)));
        let b = slots.set(net("203.0.113.0/25"), Some((Action::Allow, false)));
        let both = Writes::merge(vec![a, b]);
        assert_eq!(both.put.len(), 2);
        assert_eq!(both.reset.len(), 2);
    }

    #[test]
    fn fresh_maps_zero_only_reused_slots() {
        let mut slots = RuleSlots::new(true);
        let first = slots.set(net("192.0.2.0/24"), Some((Action::Deny, false)));
        assert!(
            first.reset.is_empty(),
            "a never-used slot of fresh maps is zero"
        );
        slots.set(net("192.0.2.0/24"), None);
        let reused = slots.set(net("198.51.100.0/24"), Some((Action::Deny, false)));
        assert_eq!(reused.reset, [1], "a reused slot is zeroed");
        let promoted = slots.set(net("198.51.100.0/24"), Some((Action::Allow, false)));
        assert_eq!(promoted.reset, [1], "a changed rule's count starts over");
    }

    #[test]
    fn not_synced_writes_every_entry() {
        let mut slots = RuleSlots::default();
        let wanted = [(net("10.0.0.0/8"), Action::Deny, false)];
        slots.reconcile(&wanted);
        // As after a failed write.
        slots.synced = false;
        let again = slots.reconcile(&wanted);
        assert_eq!(again.put.len(), 1);
        assert!(again.reset.is_empty(), "the count is kept");
    }

    /// The tries after `writes`, in the order the maps are written: deletes, then puts.
    fn written(tries: &mut HashMap<IpNet, Rule>, writes: &Writes) {
        for net in &writes.delete {
            tries.remove(net);
        }
        for (net, rule) in &writes.put {
            tries.insert(*net, *rule);
        }
    }

    proptest::proptest! {
        /// Changes written merged leave the tries as the same changes written one by one.
        #[test]
        fn merged_writes_leave_the_tries_as_one_by_one(
            changes in proptest::collection::vec((0u8..16, 24u8..=26, 0u8..3), 1..60)
        ) {
            let (mut one_by_one, mut merged) = (RuleSlots::default(), RuleSlots::default());
            let (mut tries_one, mut tries_merged) = (HashMap::new(), HashMap::new());
            let mut batch = Vec::new();
            for (n, len, kind) in changes {
                let net = net(&format!("10.0.{n}.0/{len}")).trunc();
                let rule = match kind {
                    0 => None,
                    1 => Some((Action::Deny, false)),
                    _ => Some((Action::Deny, true)),
                };
                written(&mut tries_one, &one_by_one.set(net, rule));
                batch.push(merged.set(net, rule));
            }
            written(&mut tries_merged, &Writes::merge(batch));
            let values = |tries: &HashMap<IpNet, Rule>| {
                let mut all: Vec<(IpNet, u8, u8)> = tries
                    .iter()
                    .map(|(net, rule)| (*net, rule.action, rule.fallback))
                    .collect();
                all.sort();
                all
            };
            proptest::prop_assert_eq!(values(&tries_one), values(&tries_merged));
        }
    }
}
