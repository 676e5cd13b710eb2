//! What the cluster needs from this node's firewall to apply other nodes' changes: the daemon
//! hands it one (the firewall implements it), so the cluster holds no firewall of its own.

use ipnet::IpNet;

use super::ChangeSink;
use crate::firewall::{
    FirewallResult,
    records::{OperatorBan, OperatorRule},
};

/// A ban or rule another node holds, checked as the admin API checks a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Replicated {
    /// Placed here, replacing this node's ban of the same network if it differs.
    Ban(OperatorBan),
    /// Added unless a rule for the network exists here; a shadow rule here is promoted when
    /// this one drops (its Promote was missed).
    Rule(OperatorRule),
    /// The shadow rule for the network drops from now on.
    Promote(IpNet),
}

pub trait Replica: Send + Sync + 'static {
    /// From now on, this node's own changes are also sent to `sink`.
    fn set_change_sink(&self, sink: ChangeSink);
    /// Applies `batch` in order, in one store transaction for its rules and one for its
    /// bans; returns how many entries changed here.
    fn replicate(&self, batch: &[Replicated]) -> FirewallResult<usize>;
    fn unban(&self, cidr: &str) -> FirewallResult<()>;
    fn remove_rule(&self, cidr: &str) -> FirewallResult<()>;
}
