//! The composition root's adapters: each service defines the trait it needs of a neighbour,
//! and this file implements it for the neighbour that answers, so no service imports
//! another. The daemon passes the results in.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;

use crate::{
    api::Metering,
    cluster::{ChangeSink, LocalMetering, Replica, Replicated},
    defend::{BanOrder, Defender, Enforcer},
    firewall::{Firewall, FirewallResult},
    proxy::{Finished, RequestSignals},
    xdp::NewSources,
};

/// The proxy's finished requests are the defender's L7 signals.
impl RequestSignals for Defender {
    fn finished(&self, request: Finished<'_>) {
        self.report(
            request.client,
            request.status,
            request.path,
            request.route,
            request.identity,
        );
    }
}

/// The cluster pushes what this node's proxy metered.
pub struct ProxyMetering;

impl LocalMetering for ProxyMetering {
    fn totals(&self) -> Metering {
        crate::proxy::metering()
    }
}

/// The defender acts on the kernel through the firewall.
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

/// Other nodes' changes reach this node's firewall.
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
