//! Who hears of the operator's changes made on this node: in cluster mode, the cluster's
//! publisher. The firewall defines what it needs; the daemon wires the cluster in
//! (wiring.rs), so the firewall knows no cluster.

use crate::api::replication::Change;

pub trait ChangeListener: Send + Sync + 'static {
    /// `change` is committed here. Called under the firewall's lock: must never block.
    fn changed(&self, change: Change);
}
