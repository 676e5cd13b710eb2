//! The firewall's metrics, added to the registry the daemon gives it: the kernel's counters,
//! the rules and bans, read at scrape time, so a scrape always shows what the kernel counted,
//! with nothing cached in between. Reading takes the firewall's lock: the metrics endpoint
//! encodes off the async workers.

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::Firewall;

impl Firewall {
    /// Adds the firewall's and the kernel's metrics to `registry`.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register_collector(Box::new(KernelCollector {
            state: self.clone(),
        }));
    }
}

/// Reads the kernel counters and the firewall state on each scrape.
struct KernelCollector {
    state: Arc<Firewall>,
}

impl std::fmt::Debug for KernelCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelCollector")
    }
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(stats) = self.state.stats() else {
            return Ok(());
        };
        if stats.xdp.enabled {
            let totals: Vec<_> = stats.xdp.reasons.iter().map(|r| (None, r)).collect();
            encode_reasons(&mut encoder, "gateway_xdp", "by verdict reason", &totals)?;
            // The same per interface (names come from the config: bounded).
            let per_interface: Vec<_> = stats
                .xdp
                .interfaces
                .iter()
                .flat_map(|i| i.reasons.iter().map(|r| (Some(i.name.as_str()), r)))
                .collect();
            encode_reasons(
                &mut encoder,
                "gateway_xdp_interface",
                "by interface and verdict reason",
                &per_interface,
            )?;
            let attached = ConstGauge::new(stats.xdp.interfaces.len() as i64);
            attached.encode(encoder.encode_descriptor(
                "gateway_xdp_attached_interfaces",
                "Interfaces the XDP program is attached to",
                None,
                attached.metric_type(),
            )?)?;
        }
        let under_attack = ConstGauge::new(i64::from(self.state.under_attack().unwrap_or(false)));
        under_attack.encode(encoder.encode_descriptor(
            "gateway_xdp_under_attack",
            "1 while XDP is in under-attack mode",
            None,
            under_attack.metric_type(),
        )?)?;
        let (config_rules, operator_rules, bans) = self.state.counts();
        let mut rules = encoder.encode_descriptor(
            "gateway_firewall_rules",
            "Source CIDR rules, by origin",
            None,
            MetricType::Gauge,
        )?;
        for (origin, count) in [("config", config_rules), ("operator", operator_rules)] {
            ConstGauge::new(count as i64).encode(rules.encode_family(&[("origin", origin)])?)?;
        }
        let bans = ConstGauge::new(bans as i64);
        bans.encode(encoder.encode_descriptor(
            "gateway_bans_active",
            "Sources or prefixes banned now",
            None,
            bans.metric_type(),
        )?)
    }
}

/// `<prefix>_packets` and `<prefix>_bytes` counter families: a series per row, labelled by
/// reason and verdict (and interface, when the row has one).
fn encode_reasons(
    encoder: &mut DescriptorEncoder,
    prefix: &str,
    by: &str,
    rows: &[(Option<&str>, &crate::api::ReasonStats)],
) -> Result<(), std::fmt::Error> {
    for (unit, what) in [("packets", "Packets"), ("bytes", "Bytes")] {
        let name = format!("{prefix}_{unit}");
        let help = format!("{what} seen by the XDP program, {by}");
        let mut family = encoder.encode_descriptor(&name, &help, None, MetricType::Counter)?;
        for (interface, reason) in rows {
            let value = match unit {
                "packets" => reason.packets,
                _ => reason.bytes,
            };
            let mut labels = Vec::with_capacity(3);
            if let Some(interface) = interface {
                labels.push(("interface", *interface));
            }
            labels.push(("reason", reason.reason.as_str()));
            labels.push(("verdict", reason.verdict.as_str()));
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}
