//! The firewall behind the narrow interfaces its neighbours define: the defender's
//! [`Enforcer`] and the cluster's [`Replica`].

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;

use super::{Firewall, FirewallResult};
use crate::{
    cluster::{ChangeSink, Replica, Replicated},
    defend::{BanOrder, Enforcer},
    xdp::NewSources,
};

impl Enforcer for Firewall {
    fn auto_ban(&self, orders: &[BanOrder]) -> FirewallResult<Vec<IpNet>> {
        Firewall::auto_ban(self, orders)
    }

    fn set_under_attack(&self, on: bool, budget: &NewSources) -> FirewallResult<()> {
        Firewall::set_under_attack(self, on, budget)
    }

    fn under_attack(&self) -> Option<bool> {
        Firewall::under_attack(self)
    }

    fn mark_known_good(&self, source: IpAddr, ttl: Duration) -> FirewallResult<bool> {
        Firewall::mark_known_good(self, source, ttl)
    }

    fn dropped_packets(&self) -> Option<u64> {
        Firewall::dropped_packets(self)
    }
}

impl Replica for Firewall {
    fn set_change_sink(&self, sink: ChangeSink) {
        self.set_cluster_sink(sink);
    }

    fn replicate(&self, batch: &[Replicated]) -> FirewallResult<usize> {
        Firewall::replicate(self, batch)
    }

    fn unban(&self, cidr: &str) -> FirewallResult<()> {
        Firewall::unban(self, cidr)
    }

    fn remove_rule(&self, cidr: &str) -> FirewallResult<()> {
        Firewall::remove_rule(self, cidr)
    }
}
