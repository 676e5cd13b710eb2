//! What XDP counts, and the switches it holds: stats, under-attack mode, known-good sources.

use std::{net::IpAddr, time::Duration};

use super::{Firewall, FirewallError, FirewallResult};
use crate::{
    api::{InterfaceStats, ReasonStats, SourceDrops, Stats, XdpStats},
    xdp::{self, XdpFirewall},
};

/// Sources listed under "top sources" in stats.
const TOP_SOURCES: usize = 10;

impl Firewall {
    pub fn stats(&self) -> FirewallResult<Stats> {
        let inner = self.lock();
        let Some(xdp) = inner.xdp.as_ref() else {
            return Ok(Stats {
                xdp: XdpStats {
                    enabled: false,
                    interfaces: Vec::new(),
                    reasons: Vec::new(),
                    top_sources: Vec::new(),
                },
            });
        };
        let reason_stats = |counters: Vec<(gateway_common::Reason, gateway_common::Counter)>| {
            counters
                .into_iter()
                .map(|(reason, counter)| ReasonStats {
                    reason: reason.name().to_owned(),
                    verdict: if reason.is_drop() { "drop" } else { "pass" }.to_owned(),
                    packets: counter.packets,
                    bytes: counter.bytes,
                })
                .collect::<Vec<_>>()
        };
        let reasons = reason_stats(xdp.counters()?);
        let top_sources = xdp
            .top_dropped_sources(TOP_SOURCES)?
            .into_iter()
            .map(|(address, packets)| SourceDrops {
                address: address.to_string(),
                packets,
            })
            .collect();
        let interfaces = xdp
            .attachments()
            .iter()
            .enumerate()
            .map(|(index, attachment)| {
                Ok(InterfaceStats {
                    name: attachment.interface.clone(),
                    mode: attachment.mode,
                    reasons: reason_stats(xdp.interface_counters(index)?),
                })
            })
            .collect::<FirewallResult<_>>()?;
        Ok(Stats {
            xdp: XdpStats {
                enabled: true,
                interfaces,
                reasons,
                top_sources,
            },
        })
    }

    // ---- Under attack ----

    /// Switches XDP's under-attack mode (known-good sources and `budget` new ones pass).
    pub fn set_under_attack(&self, on: bool, budget: &xdp::NewSources) -> FirewallResult<()> {
        let mut inner = self.lock();
        let xdp = inner.xdp.as_mut().ok_or_else(|| {
            FirewallError::Conflict(
                "under-attack mode filters in XDP, and xdp.mode is \"off\": set xdp.mode and restart"
                    .to_owned(),
            )
        })?;
        xdp.set_under_attack(on, budget)?;
        Ok(())
    }

    /// Whether XDP is in under-attack mode (`None`: XDP is off).
    pub fn under_attack(&self) -> Option<bool> {
        self.lock().xdp.as_ref().map(XdpFirewall::under_attack)
    }

    /// Marks `source` known-good for `ttl` (admitted under attack). With XDP off there is
    /// nothing to admit: a no-op.
    pub fn mark_known_good(&self, source: IpAddr, ttl: Duration) -> FirewallResult<bool> {
        let mut inner = self.lock();
        match inner.xdp.as_mut() {
            Some(xdp) => {
                let source = crate::guard::canonical(source);
                xdp.mark_known_good(source, xdp::now().saturating_add(ttl))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Packets XDP dropped so far, all reasons (`None`: XDP is off).
    pub fn dropped_packets(&self) -> Option<u64> {
        let inner = self.lock();
        let counters = inner.xdp.as_ref()?.counters().ok()?;
        Some(
            counters
                .iter()
                .filter(|(reason, _)| reason.is_drop())
                .map(|(_, counter)| counter.packets)
                .sum(),
        )
    }
}
