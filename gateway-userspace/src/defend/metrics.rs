//! The defender's metrics, added to the registry the daemon gives it and read at scrape time.

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::Defender;

impl Defender {
    /// Adds the defender's metrics (and the accept guard's refusals) to `registry`.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register_collector(Box::new(DefendCollector(self.clone())));
    }
}

struct DefendCollector(Arc<Defender>);

impl std::fmt::Debug for DefendCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DefendCollector")
    }
}

impl Collector for DefendCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (dropped, auto_bans, tracked) = self.0.counts();
        let counters = [
            (
                "gateway_defend_auto_bans",
                "Bans placed by L7 signals ([defend] triggers)",
                auto_bans,
            ),
            (
                "gateway_defend_reports_dropped",
                "Finished requests not counted because the defender's queue was full",
                dropped,
            ),
            (
                "gateway_defend_refused_connections",
                "Connections closed at accept because their source is banned (XDP off)",
                self.0.guard.refused(),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let tracked = ConstGauge::new(tracked as i64);
        tracked.encode(encoder.encode_descriptor(
            "gateway_defend_tracked_sources",
            "Sources whose L7 signals are being counted",
            None,
            tracked.metric_type(),
        )?)
    }
}
