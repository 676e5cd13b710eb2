//! The composition root's adapters: each service defines the trait it needs of a neighbour,
//! and this file implements it for the neighbour that answers, so no service imports
//! another. The daemon passes the results in.

use std::{net::IpAddr, sync::Arc, time::Duration};

use futures_util::{FutureExt as _, future::BoxFuture};

use ipnet::IpNet;

use crate::{
    api::{
        Metering,
        failure::ServiceResult,
        replication::{Change, Replicated},
        tickets::{KeyBytes, TicketKeys},
    },
    cluster::{ChangeSink, ClusterLimiter, ClusterTickets, LocalMetering, Rate, Replica},
    defend::{BanOrder, Defender, Enforcer},
    firewall::{ChangeListener, Firewall},
    proxy::{
        Finished, ProxyMetrics, RequestSignals, SharedDecision, SharedLimiter, SharedTicketKeys,
    },
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

/// The proxy's cluster-wide rate limits are the cluster's.
impl SharedLimiter for ClusterLimiter {
    fn check<'a>(
        &'a self,
        key: &'a str,
        count: u32,
        period: Duration,
        burst: u32,
    ) -> BoxFuture<'a, SharedDecision> {
        let rate = Rate { count, period };
        ClusterLimiter::check(self, key, rate, burst)
            .map(|decision| match decision.retry_after {
                _ if decision.is_unavailable() => SharedDecision::Unavailable,
                None if decision.allowed => SharedDecision::Allowed {
                    remaining: decision.remaining,
                },
                retry_after => SharedDecision::Refused { retry_after },
            })
            .boxed()
    }
}

/// The proxy's session ticket keys are the cluster's.
impl SharedTicketKeys for ClusterTickets {
    fn sync<'a>(
        &'a self,
        listener: &'a str,
        rotation: Duration,
        fresh: KeyBytes,
    ) -> BoxFuture<'a, Option<TicketKeys>> {
        ClusterTickets::sync(self, listener, rotation, fresh).boxed()
    }
}

/// What this node's proxy metered: the cluster pushes it, the admin API shows it.
pub struct ProxyMetering(pub Arc<ProxyMetrics>);

impl LocalMetering for ProxyMetering {
    fn totals(&self) -> Metering {
        crate::proxy::metering(&self.0)
    }
}

/// The defender acts on the kernel through the firewall.
impl Enforcer for Firewall {
    fn auto_ban(&self, orders: &[BanOrder]) -> ServiceResult<Vec<IpNet>> {
        Firewall::auto_ban(self, orders).map_err(Into::into)
    }

    fn set_under_attack(&self, on: bool, budget: &NewSources) -> ServiceResult<()> {
        Firewall::set_under_attack(self, on, budget).map_err(Into::into)
    }

    fn under_attack(&self) -> Option<bool> {
        Firewall::under_attack(self)
    }

    fn mark_known_good(&self, source: IpAddr, ttl: Duration) -> ServiceResult<bool> {
        Firewall::mark_known_good(self, source, ttl).map_err(Into::into)
    }

    fn dropped_packets(&self) -> Option<u64> {
        Firewall::dropped_packets(self)
    }
}

/// This node's firewall changes reach the cluster's publisher.
impl ChangeListener for ChangeSink {
    fn changed(&self, change: Change) {
        self.send(change);
    }
}

/// Other nodes' changes reach this node's firewall.
impl Replica for Firewall {
    fn set_change_sink(&self, sink: ChangeSink) {
        self.set_change_listener(Box::new(sink));
    }

    fn replicate(&self, batch: &[Replicated]) -> ServiceResult<usize> {
        Firewall::replicate(self, batch).map_err(Into::into)
    }

    fn unban(&self, cidr: &str) -> ServiceResult<()> {
        Firewall::unban_replicated(self, cidr).map_err(Into::into)
    }

    fn remove_rule(&self, cidr: &str) -> ServiceResult<()> {
        Firewall::remove_rule_replicated(self, cidr).map_err(Into::into)
    }
}
