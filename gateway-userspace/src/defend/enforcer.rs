//! What the defender needs from the firewall, and nothing more: the daemon hands it one
//! (the firewall implements it), so the defender holds no firewall of its own.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;

use super::BanOrder;
use crate::{api::failure::ServiceResult, xdp::NewSources};

pub trait Enforcer: Send + Sync + 'static {
    /// Places `orders` (one store transaction for the batch); returns the networks banned
    /// (a longer ban in place is kept, and not counted).
    fn auto_ban(&self, orders: &[BanOrder]) -> ServiceResult<Vec<IpNet>>;
    /// Switches XDP's under-attack mode (known-good sources and `budget` new ones pass).
    fn set_under_attack(&self, on: bool, budget: &NewSources) -> ServiceResult<()>;
    /// Whether XDP is in under-attack mode (`None`: XDP is off).
    fn under_attack(&self) -> Option<bool>;
    /// Marks `source` known-good for `ttl`; `false` with XDP off (nothing to admit).
    fn mark_known_good(&self, source: IpAddr, ttl: Duration) -> ServiceResult<bool>;
    /// Packets XDP dropped so far, all reasons (`None`: XDP is off).
    fn dropped_packets(&self) -> Option<u64>;
}
