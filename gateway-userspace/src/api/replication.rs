//! What travels between the nodes of a cluster: the firewall reports each operator change
//! made here as a [`Change`], and applies other nodes' additions as [`Replicated`] batches.
//! Below both services, so the firewall and the cluster share these without importing each
//! other.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    RuleAction,
    records::{OperatorBan, OperatorRule},
};

/// One change to the operator's firewall, as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    Ban {
        cidr: String,
        /// Unix seconds; absent: until unbanned.
        expires_at: Option<f64>,
        /// Why (an operator's note, or the auto-ban's trigger).
        #[serde(default)]
        comment: Option<String>,
    },
    Unban {
        cidr: String,
    },
    AddRule {
        cidr: String,
        action: RuleAction,
        comment: Option<String>,
        expires_at: Option<f64>,
        shadow: bool,
    },
    RemoveRule {
        cidr: String,
    },
    Promote {
        cidr: String,
    },
}

impl Change {
    /// Unban and RemoveRule: what the cluster's hashes never hold.
    pub fn is_removal(&self) -> bool {
        matches!(self, Change::Unban { .. } | Change::RemoveRule { .. })
    }
}

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
