//! The proxy's compiled runtime config. A snapshot is immutable and shared by `Arc`: a
//! reload builds a new one and swaps it in, and requests in flight keep the one they began
//! with.

use crate::config::{HttpLimits, ProxyConfig, RouteConfig, UpstreamConfig};

use super::{
    balance::Balancer,
    forward::{UpstreamClient, client},
};

pub struct Snapshot {
    /// In precedence order.
    pub routes: Vec<RouteConfig>,
    pub upstreams: Vec<Upstream>,
    pub limits: HttpLimits,
}

pub struct Upstream {
    pub config: UpstreamConfig,
    pub balancer: Balancer,
    pub client: UpstreamClient,
}

impl Snapshot {
    /// Cannot fail: the config was validated when it was loaded.
    pub fn build(config: &ProxyConfig) -> Snapshot {
        Snapshot {
            routes: config.routes.clone(),
            upstreams: config
                .upstreams
                .iter()
                .map(|upstream| Upstream {
                    balancer: Balancer::new(upstream.balance, &upstream.targets),
                    client: client(upstream),
                    config: upstream.clone(),
                })
                .collect(),
            limits: config.limits.clone(),
        }
    }
}
