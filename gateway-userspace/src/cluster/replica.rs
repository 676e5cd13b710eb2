//! What the cluster needs from this node's firewall to apply other nodes' changes: the daemon
//! hands it one (the firewall implements it), so the cluster holds no firewall of its own.

use super::ChangeSink;
use crate::api::{failure::ServiceResult, replication::Replicated};

/// What is applied through these methods came from another node: it is never sent to the
/// change sink again (only this node's own changes are).
pub trait Replica: Send + Sync + 'static {
    /// From now on, this node's own changes are also sent to `sink`.
    fn set_change_sink(&self, sink: ChangeSink);
    /// Applies `batch` in order, in one store transaction for its rules and one for its
    /// bans; returns how many entries changed here.
    fn replicate(&self, batch: &[Replicated]) -> ServiceResult<usize>;
    fn unban(&self, cidr: &str) -> ServiceResult<()>;
    fn remove_rule(&self, cidr: &str) -> ServiceResult<()>;
}
