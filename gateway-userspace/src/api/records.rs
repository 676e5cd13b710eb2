//! The operator's additions as the firewall's store keeps them and the cluster carries them
//! between nodes: one record per rule and per ban, each held to the admin API's ranges when
//! it is read back. Here, below both services, so neither imports the other for them.

use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{RuleAction, valid};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorRule {
    pub cidr: IpNet,
    pub action: RuleAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Wall-clock expiry (Unix seconds); absent: until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<f64>,
    /// A dry run: counted, never dropping, until promoted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// Order of addition: rules are listed, and numbered in the kernel, in this order.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
}

fn is_zero(seq: &u64) -> bool {
    *seq == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorBan {
    pub cidr: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<f64>,
    /// Why: the operator's note, or the trigger of an auto-ban ("auto: 5 auth failures in 1m").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

pub fn remaining(expires_at: Option<f64>, now: f64) -> Option<f64> {
    expires_at.map(|at| (at - now).max(0.0))
}

pub fn is_expired(expires_at: Option<f64>, now: f64) -> bool {
    expires_at.is_some_and(|at| at <= now)
}

/// A saved network: host bits clear, as the API writes it.
fn check_saved_net(net: IpNet) -> Result<(), String> {
    if net.trunc() == net {
        Ok(())
    } else {
        Err(format!("cidr {net} has host bits set"))
    }
}

fn check_saved_expiry(expires_at: Option<f64>, now: f64) -> Result<(), String> {
    match expires_at {
        Some(at) => valid::expiry("expires_at", at, now)
            .map(|_| ())
            .map_err(|invalid| invalid.to_string()),
        None => Ok(()),
    }
}

impl OperatorRule {
    /// Whether a record read back is one the API could have written.
    pub fn check(&self, now: f64) -> Result<(), String> {
        if self.shadow && self.action != RuleAction::Deny {
            return Err("only deny rules can be shadow rules".to_owned());
        }
        check_saved_net(self.cidr)?;
        check_saved_expiry(self.expires_at, now)
    }
}

impl OperatorBan {
    pub fn check(&self, now: f64) -> Result<(), String> {
        check_saved_net(self.cidr)?;
        check_saved_expiry(self.expires_at, now)
    }
}
