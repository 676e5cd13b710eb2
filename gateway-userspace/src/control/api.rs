//! The admin API's JSON shapes, shared by the daemon (server) and the CLI (client).

use serde::{Deserialize, Serialize};

use crate::xdp::AttachMode;

/// `GET /v1/stats`.
pub const STATS_PATH: &str = "/v1/stats";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub xdp: XdpStats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct XdpStats {
    /// False when `xdp.mode = "off"`.
    pub enabled: bool,
    pub interfaces: Vec<InterfaceStats>,
    /// One entry per reason, in counter order.
    pub reasons: Vec<ReasonStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InterfaceStats {
    pub name: String,
    pub mode: AttachMode,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReasonStats {
    pub reason: String,
    /// "pass" or "drop".
    pub verdict: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Body of every non-2xx admin response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}
