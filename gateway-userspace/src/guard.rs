//! Bans as plain values: the order to place one ([`BanOrder`]), and the accept-stage ban
//! check used when XDP is off: the firewall publishes its bans into the
//! daemon's one [`AcceptGuard`], and the proxy looks every accepted connection up in it (one
//! hash lookup per distinct prefix length, on a snapshot read without a lock). A leaf: the
//! firewall, the proxy and the defender share it without knowing each other.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use ipnet::IpNet;

/// A ban to place: the defender orders it when a trigger is crossed, the firewall places it.
#[derive(Debug, Clone, PartialEq)]
pub struct BanOrder {
    pub net: IpNet,
    pub duration: std::time::Duration,
    pub comment: String,
}

/// Banned prefixes -> wall-clock expiry (Unix seconds; `f64::INFINITY`: until unbanned).
#[derive(Debug, Default)]
pub struct BanSet {
    bans: HashMap<IpNet, f64>,
    /// Prefix lengths present, per family, longest first.
    v4_lengths: Vec<u8>,
    v6_lengths: Vec<u8>,
}

impl BanSet {
    pub fn new(bans: impl IntoIterator<Item = (IpNet, Option<f64>)>) -> BanSet {
        let bans: HashMap<IpNet, f64> = bans
            .into_iter()
            .map(|(net, expires_at)| (net.trunc(), expires_at.unwrap_or(f64::INFINITY)))
            .collect();
        let lengths = |v4: bool| {
            let set: BTreeSet<u8> = bans
                .keys()
                .filter(|net| matches!(net, IpNet::V4(_)) == v4)
                .map(IpNet::prefix_len)
                .collect();
            set.into_iter().rev().collect()
        };
        BanSet {
            v4_lengths: lengths(true),
            v6_lengths: lengths(false),
            bans,
        }
    }

    /// The ban that holds `address` at `now` (Unix seconds), if any.
    pub fn find(&self, address: IpAddr, now: f64) -> Option<IpNet> {
        let address = canonical(address);
        let lengths = match address {
            IpAddr::V4(_) => &self.v4_lengths,
            IpAddr::V6(_) => &self.v6_lengths,
        };
        lengths.iter().find_map(|&len| {
            let net = IpNet::new(address, len).ok()?.trunc();
            self.bans
                .get(&net)
                .filter(|&&expires_at| expires_at > now)
                .map(|_| net)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }
}

/// `::ffff:a.b.c.d` (a dual-stack listener's view of an IPv4 client) as `a.b.c.d`.
pub fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// The bans enforced at accept, and what the accept stage counted. The daemon makes one and
/// hands it to the firewall (which publishes), the proxy (which checks) and the defender.
#[derive(Debug, Default)]
pub struct AcceptGuard {
    bans: ArcSwap<BanSet>,
    refused: AtomicU64,
    accepted: AtomicU64,
}

impl AcceptGuard {
    /// Counts a connection the proxy accepted (the `connections_per_second` load signal).
    pub fn count_accept(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Replaces the bans the accept stage enforces (empty while XDP enforces them).
    pub fn publish(&self, set: BanSet) {
        self.bans.store(Arc::new(set));
    }

    /// Whether the accept stage must close a connection from `address`; counts refusals.
    pub fn refuses(&self, address: IpAddr) -> bool {
        let bans = self.bans.load();
        if bans.is_empty() {
            return false;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        let banned = bans.find(address, now).is_some();
        if banned {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        banned
    }

    /// Connections closed at accept because their source is banned, since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_ban_covering_an_address() {
        let set = BanSet::new([
            ("192.0.2.7/32".parse().unwrap(), None),
            ("2001:db8:1::/64".parse().unwrap(), Some(100.0)),
            ("198.51.100.0/24".parse().unwrap(), Some(10.0)),
        ]);
        let at = |text: &str, now| set.find(text.parse().unwrap(), now);
        assert_eq!(at("192.0.2.7", 50.0), Some("192.0.2.7/32".parse().unwrap()));
        assert_eq!(
            at("::ffff:192.0.2.7", 50.0),
            Some("192.0.2.7/32".parse().unwrap())
        );
        assert_eq!(at("192.0.2.8", 50.0), None);
        assert_eq!(
            at("2001:db8:1::99", 50.0),
            Some("2001:db8:1::/64".parse().unwrap())
        );
        assert_eq!(at("2001:db8:1::99", 150.0), None, "expired");
        assert_eq!(
            at("198.51.100.3", 5.0),
            Some("198.51.100.0/24".parse().unwrap())
        );
        assert_eq!(at("198.51.100.3", 11.0), None);
    }

    #[test]
    fn the_guard_refuses_published_bans_and_counts() {
        let guard = AcceptGuard::default();
        let banned: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(!guard.refuses(banned), "nothing published yet");
        guard.publish(BanSet::new([("192.0.2.0/24".parse().unwrap(), None)]));
        for (address, refused) in [
            (banned, true),
            (mapped, true),
            ("192.0.3.1".parse().unwrap(), false),
        ] {
            assert_eq!(guard.refuses(address), refused, "{address}");
        }
        assert_eq!(guard.refused(), 2);
        guard.count_accept();
        assert_eq!(guard.accepted(), 1);
        guard.publish(BanSet::default());
        assert!(!guard.refuses(banned), "XDP took over: the set is empty");
    }
}
