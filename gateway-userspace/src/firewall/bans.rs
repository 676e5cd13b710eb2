//! Bans: placed by the operator, by the defender (auto-bans, a batch at a time) or by
//! another node; listed a page at a time; swept when they expire.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;

use super::{
    Firewall, FirewallError, FirewallResult, Inner,
    records::{OperatorBan, is_expired, remaining, unix_now},
    store::Op,
};
use crate::{
    api::{
        Ban, BanList, BanRequest,
        replication::Change,
        valid::{self, ValidPage},
    },
    guard::BanOrder,
    xdp,
};

/// Wall-clock expiry -> the monotonic clock the kernel reads. Total: any number, even one
/// no request could set, gives an expiry (a past one expires now, a far one lasts the
/// longest a ban can).
pub(super) fn kernel_expiry(expires_at: Option<f64>, now: f64) -> Option<Duration> {
    expires_at.map(|at| {
        // `max` maps NaN to 0; `min` caps infinity.
        let left = (at - now).max(0.0).min(valid::MAX_DURATION.as_secs_f64());
        xdp::now().saturating_add(Duration::from_secs_f64(left))
    })
}

/// How often the sweep scans every rule and ban even when none should have expired.
const FULL_SCAN_EVERY_SECS: f64 = 60.0;

impl Firewall {
    /// Bans in force, in address order: all of them, or one page.
    pub fn bans(&self, page: ValidPage) -> FirewallResult<BanList> {
        let inner = self.lock();
        let now = unix_now();
        let from = match page.after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        let limit = page.limit.unwrap_or(usize::MAX);
        let mut bans: Vec<Ban> = inner
            .operator
            .bans
            .range((from, std::ops::Bound::Unbounded))
            .map(|(_, ban)| ban)
            .filter(|ban| !is_expired(ban.expires_at, now))
            .take(limit.saturating_add(1))
            .map(|ban| Ban {
                cidr: ban.cidr.to_string(),
                expires_in_secs: remaining(ban.expires_at, now),
                comment: ban.comment.clone(),
            })
            .collect();
        let next = (bans.len() > limit).then(|| {
            bans.truncate(limit);
            bans.last().map(|ban| ban.cidr.clone())
        });
        Ok(BanList {
            bans,
            next: next.flatten(),
        })
    }

    /// Whether `net` itself is banned now.
    pub fn is_banned(&self, net: IpNet) -> bool {
        let now = unix_now();
        self.lock()
            .operator
            .bans
            .get(&net)
            .is_some_and(|ban| !is_expired(ban.expires_at, now))
    }

    /// The most specific ban in force that covers `address`.
    pub(super) fn ban_covering(inner: &Inner, address: IpAddr) -> Option<Ban> {
        let now = unix_now();
        let max_len = if address.is_ipv4() { 32 } else { 128 };
        // One lookup per prefix length, most specific first: no scan of every ban.
        (0..=max_len).rev().find_map(|len| {
            let net = IpNet::new(address, len).ok()?.trunc();
            let ban = inner.operator.bans.get(&net)?;
            (!is_expired(ban.expires_at, now)).then(|| Ban {
                cidr: ban.cidr.to_string(),
                expires_in_secs: remaining(ban.expires_at, now),
                comment: ban.comment.clone(),
            })
        })
    }

    pub fn ban(&self, request: &BanRequest) -> FirewallResult<Ban> {
        let valid = request.validate()?;
        let ban = OperatorBan {
            cidr: valid.net,
            expires_at: valid.duration.map(|left| unix_now() + left.as_secs_f64()),
            comment: valid.comment,
        };
        self.lock().place_bans(std::slice::from_ref(&ban))?;
        self.publish(Change::Ban {
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

    /// Bans placed by the defender (L7 signals), in one store transaction. An existing
    /// longer or permanent ban of the same prefix is kept as it is. Returns the bans placed.
    pub fn auto_ban(&self, orders: &[BanOrder]) -> FirewallResult<Vec<IpNet>> {
        let now = unix_now();
        let mut inner = self.lock();
        let mut bans: Vec<OperatorBan> = Vec::with_capacity(orders.len());
        for order in orders {
            // The config may ask for more than the store keeps.
            let expires_at = now + order.duration.min(valid::MAX_DURATION).as_secs_f64();
            let longer = |ban: &OperatorBan| ban.expires_at.is_none_or(|at| at >= expires_at);
            if inner.operator.bans.get(&order.net).is_some_and(longer)
                || bans.iter().any(|ban| ban.cidr == order.net && longer(ban))
            {
                continue;
            }
            bans.retain(|ban| ban.cidr != order.net);
            bans.push(OperatorBan {
                cidr: order.net,
                expires_at: Some(expires_at),
                comment: Some(order.comment.clone()),
            });
        }
        if bans.is_empty() {
            return Ok(Vec::new());
        }
        inner.place_bans(&bans)?;
        drop(inner);
        // Every node of a cluster bans what one node's L7 signals caught.
        for ban in &bans {
            self.publish(Change::Ban {
                cidr: ban.cidr.to_string(),
                expires_at: ban.expires_at,
                comment: ban.comment.clone(),
            });
        }
        Ok(bans.into_iter().map(|ban| ban.cidr).collect())
    }

    /// Lifts the operator's ban on `cidr` and tells the cluster.
    pub fn unban(&self, cidr: &str) -> FirewallResult<()> {
        let net = self.lift_ban(cidr)?;
        self.publish(Change::Unban {
            cidr: net.to_string(),
        });
        Ok(())
    }

    /// Lifts the ban on `cidr` as another node did: not published again.
    pub fn unban_replicated(&self, cidr: &str) -> FirewallResult<()> {
        self.lift_ban(cidr).map(drop)
    }

    fn lift_ban(&self, cidr: &str) -> FirewallResult<IpNet> {
        let net = valid::cidr("cidr", cidr)?;
        {
            let mut inner = self.lock();
            let known = inner.operator.bans.contains_key(&net);
            let lifted = match inner.xdp.as_mut() {
                Some(xdp) => xdp.unban(net)?,
                None => false,
            };
            if !lifted && !known {
                return Err(FirewallError::NotFound(format!("{net} is not banned")));
            }
            inner.store.commit(vec![Op::DeleteBan(net)])?;
            inner.operator.bans.remove(&net);
            inner.publish_bans();
        }
        tracing::info!(%net, "ban lifted");
        Ok(net)
    }

    /// Drops expired rules and bans: bans already stopped matching in the kernel; rules are
    /// removed from the maps here.
    pub fn sweep(&self) {
        let mut inner = self.lock();
        let now = unix_now();
        // Nothing expires yet: no scan of every rule and ban while holding the lock. A full
        // scan a minute still runs, whatever the hint says.
        let operator = &mut inner.operator;
        if now < operator.next_expiry && now - operator.last_scan < FULL_SCAN_EVERY_SECS {
            return;
        }
        operator.last_scan = now;
        operator.next_expiry = operator
            .rules
            .iter()
            .map(|rule| rule.expires_at)
            .chain(operator.bans.values().map(|ban| ban.expires_at))
            .flatten()
            .filter(|&at| !is_expired(Some(at), now))
            .fold(f64::INFINITY, f64::min);
        let bans: Vec<IpNet> = inner
            .operator
            .bans
            .values()
            .filter(|ban| is_expired(ban.expires_at, now))
            .map(|ban| ban.cidr)
            .collect();
        let rules: Vec<IpNet> = inner
            .operator
            .rules
            .iter()
            .filter(|rule| is_expired(rule.expires_at, now))
            .map(|rule| rule.cidr)
            .collect();
        if bans.is_empty() && rules.is_empty() {
            return;
        }
        if let (false, Some(xdp)) = (bans.is_empty(), inner.xdp.as_mut()) {
            match xdp.sweep_expired_bans() {
                Ok(expired) => expired
                    .iter()
                    .for_each(|net| tracing::info!(%net, "ban expired")),
                Err(error) => tracing::warn!(%error, "sweeping expired bans failed"),
            }
        }
        let ops = bans
            .iter()
            .map(|&net| Op::DeleteBan(net))
            .chain(rules.iter().map(|&net| Op::DeleteRule(net)))
            .collect();
        // What expired stays gone, even if the kernel refuses: the next apply retries.
        let result = inner.change_rules(
            (ops, Vec::new()),
            |operator| {
                operator
                    .bans
                    .retain(|_, ban| !is_expired(ban.expires_at, now));
                operator
                    .rules
                    .retain(|rule| !is_expired(rule.expires_at, now));
            },
            |_| {},
            Some(&rules),
        );
        match result {
            Ok(()) => rules
                .iter()
                .for_each(|net| tracing::info!(cidr = %net, "operator rule expired")),
            Err(failure) => tracing::warn!("removing expired rules failed: {failure}"),
        }
        inner.publish_bans();
    }
}

impl Inner {
    /// Stores `bans` (each replacing one of the same prefix) in one transaction, then
    /// enforces them: in the kernel, or at accept when XDP is off. All or none.
    pub(super) fn place_bans(&mut self, bans: &[OperatorBan]) -> FirewallResult<()> {
        let family = |net: &IpNet| net.addr().is_ipv4();
        // Both families together fit: each does (no count of every ban).
        let room = self.max_bans.saturating_sub(self.operator.bans.len());
        for v4 in [true, false].into_iter().filter(|_| bans.len() > room) {
            let adding = bans
                .iter()
                .filter(|ban| {
                    family(&ban.cidr) == v4 && !self.operator.bans.contains_key(&ban.cidr)
                })
                .count();
            if adding == 0 {
                continue;
            }
            let present = self
                .operator
                .bans
                .keys()
                .filter(|net| family(net) == v4)
                .count();
            if present + adding > self.max_bans {
                return Err(FirewallError::Full(format!(
                    "{present} bans of this address family are in place, the most xdp.max_bans \
                     allows is {}: lift some, or raise xdp.max_bans and restart",
                    self.max_bans
                )));
            }
        }
        let previous: Vec<(IpNet, Option<OperatorBan>)> = bans
            .iter()
            .map(|ban| (ban.cidr, self.operator.bans.get(&ban.cidr).cloned()))
            .collect();
        self.store
            .commit(bans.iter().cloned().map(Op::PutBan).collect())?;
        for ban in bans {
            self.operator.note_expiry(ban.expires_at);
            self.operator.bans.insert(ban.cidr, ban.clone());
        }
        let now = unix_now();
        // In batches (a catch-up or an auto-ban burst places thousands): a refused batch
        // undoes every ban of the call below, written or not.
        let refused = self.xdp.as_mut().and_then(|xdp| {
            let entries: Vec<_> = bans
                .iter()
                .map(|ban| (ban.cidr, kernel_expiry(ban.expires_at, now)))
                .collect();
            xdp.ban_all(&entries).err()
        });
        if let Some(error) = refused {
            // Not in force: not kept either, or it would come back at every start.
            let mut undo = Vec::new();
            for (net, old) in previous {
                if let Some(xdp) = self.xdp.as_mut() {
                    let restored = match &old {
                        Some(old) => xdp.ban(net, kernel_expiry(old.expires_at, now)),
                        None => xdp.unban(net).map(|_| ()),
                    };
                    if let Err(error) = restored {
                        tracing::warn!(%net, %error, "restoring a ban after a refused change failed");
                    }
                }
                match old {
                    Some(old) => {
                        self.operator.note_expiry(old.expires_at);
                        self.operator.bans.insert(net, old.clone());
                        undo.push(Op::PutBan(old));
                    }
                    None => {
                        self.operator.bans.remove(&net);
                        undo.push(Op::DeleteBan(net));
                    }
                }
            }
            if let Err(error) = self.store.commit(undo) {
                tracing::error!(%error, "undoing a refused ban in the store failed");
            }
            return Err(error.into());
        }
        self.publish_bans();
        Ok(())
    }

    /// At start: every stored ban into the kernel, and out of it every ban the store does
    /// not hold (left in pinned maps by a daemon that died mid-change). One the kernel
    /// refuses must not keep the daemon (and every other ban) down.
    pub(super) fn restore_bans(&mut self) {
        let Some(xdp) = self.xdp.as_mut() else {
            return;
        };
        let now = unix_now();
        let all: Vec<_> = self
            .operator
            .bans
            .iter()
            .map(|(net, ban)| (*net, kernel_expiry(ban.expires_at, now)))
            .collect();
        // All at once; if the kernel refuses some, one by one to keep the rest.
        let batched = xdp.ban_all(&all);
        self.operator.bans.retain(|net, ban| {
            if batched.is_ok() {
                return true;
            }
            match xdp.ban(*net, kernel_expiry(ban.expires_at, now)) {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(cidr = %net, %error, "saved ban not restored: the kernel refused it");
                    false
                }
            }
        });
        // Fresh maps hold only what was just written: nothing to lift.
        if !xdp.adopted() {
            return;
        }
        match xdp.bans() {
            Ok(in_kernel) => {
                for (net, _) in in_kernel {
                    if !self.operator.bans.contains_key(&net) {
                        tracing::info!(%net, "ban in the pinned maps but not in the store: lifted");
                        if let Err(error) = xdp.unban(net) {
                            tracing::warn!(%net, %error, "lifting a ban the store does not hold failed");
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "reading the kernel's bans failed"),
        }
    }

    /// Hands the bans to the accept stage when XDP is off (with XDP on it enforces none).
    pub(super) fn publish_bans(&self) {
        let set = match self.xdp {
            Some(_) => crate::guard::BanSet::default(),
            None => crate::guard::BanSet::new(
                self.operator
                    .bans
                    .values()
                    .map(|ban| (ban.cidr, ban.expires_at)),
            ),
        };
        self.guard.publish(set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
