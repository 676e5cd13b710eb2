//! What the cluster needs from this node's firewall to apply other nodes' changes: the daemon
//! hands it one (the firewall implements it), so the cluster holds no firewall of its own.

use ipnet::IpNet;

use super::ChangeSink;
use crate::{
    api::{BanRequest, RuleRequest},
    firewall::FirewallResult,
};

pub trait Replica: Send + Sync + 'static {
    /// From now on, this node's own changes are also sent to `sink`.
    fn set_change_sink(&self, sink: ChangeSink);
    fn ban(&self, request: &BanRequest) -> FirewallResult<()>;
    fn unban(&self, cidr: &str) -> FirewallResult<()>;
    fn add_rule(&self, request: &RuleRequest) -> FirewallResult<()>;
    fn remove_rule(&self, cidr: &str) -> FirewallResult<()>;
    fn promote(&self, cidr: &str) -> FirewallResult<()>;
    /// Whether a rule for `net` exists here, and if so whether it is a shadow rule.
    fn rule_is_shadow(&self, net: IpNet) -> Option<bool>;
    /// Whether `net` itself is banned here now.
    fn is_banned(&self, net: IpNet) -> bool;
}
