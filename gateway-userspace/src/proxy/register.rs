//! The proxy's metrics, added to the registry the daemon gives it: the request counters and
//! histograms, the live state (connections, targets) and the metering totals, read at scrape
//! time. Names and labels are the operator's contract: tests/tests/proxy_metrics.rs pins them.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter},
    registry::Registry,
};

use std::sync::Arc;

use super::{Proxy, metering::Metered, observe::ProxyMetrics};

impl Proxy {
    /// Adds the proxy's metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let proxy = self.snapshot.load().handles.metrics.clone();
        registry.register(
            "gateway_http_requests",
            "Proxied requests by route, method and status class",
            proxy.requests.clone(),
        );
        registry.register(
            "gateway_http_request_duration_seconds",
            "Time from request to the end of the response, by route",
            proxy.duration.clone(),
        );
        registry.register(
            "gateway_upstream_response_seconds",
            "Time until the upstream's response head, by upstream",
            proxy.upstream_duration.clone(),
        );
        registry.register(
            "gateway_request_errors",
            "Requests that failed, by whose fault (client, upstream, gateway) and error code",
            proxy.errors.clone(),
        );
        registry.register(
            "gateway_tls_handshake_failures",
            "TLS handshakes that failed (error) or did not finish in time (timeout), by listener",
            proxy.tls_handshake_failures.clone(),
        );
        registry.register(
            "gateway_cache_requests",
            "Cache lookups by route and result (hit, miss, stale, revalidated, bypass)",
            proxy.cache.clone(),
        );
        registry.register(
            "gateway_auth_failures",
            "Requests refused by authentication or authorization, by reason",
            proxy.auth_failures.clone(),
        );
        registry.register(
            "gateway_rate_limited",
            "Requests refused by an L7 rate limit, by route",
            proxy.rate_limited.clone(),
        );
        registry.register_collector(Box::new(self.collector()));
        registry.register_collector(Box::new(super::expiry::ExpiryCollector(
            self.expiry.clone(),
        )));
        registry.register_collector(Box::new(MeteringCollector(proxy)));
    }
}

/// This node's metering totals per consumer and route, since start, as the admin API and
/// the cluster's metering push see them.
pub fn metering(metrics: &ProxyMetrics) -> crate::api::Metering {
    let rows = metrics
        .metering()
        .into_iter()
        .map(|(consumer, route, counts)| crate::api::MeteringRow {
            consumer,
            route,
            requests: counts.requests,
            bytes_in: counts.bytes_in,
            bytes_out: counts.bytes_out,
        })
        .collect();
    crate::api::Metering { rows }
}

/// A metering series: name, help, and which count it shows.
type MeteredSeries = (&'static str, &'static str, fn(&Metered) -> u64);

/// The metering totals per consumer and route, read at scrape time.
struct MeteringCollector(Arc<ProxyMetrics>);

impl std::fmt::Debug for MeteringCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeteringCollector")
    }
}

impl Collector for MeteringCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Bounded: consumers and routes are capped where they are recorded.
        let metering = self.0.metering();
        let series: [MeteredSeries; 3] = [
            (
                "gateway_metered_requests",
                "Requests by consumer and route",
                |m| m.requests,
            ),
            (
                "gateway_metered_bytes_in",
                "Request body bytes by consumer and route",
                |m| m.bytes_in,
            ),
            (
                "gateway_metered_bytes_out",
                "Response body bytes by consumer and route",
                |m| m.bytes_out,
            ),
        ];
        for (name, help, value) in series {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (consumer, route, counts) in &metering {
                let labels = [("consumer", consumer.as_str()), ("route", route.as_str())];
                ConstCounter::new(value(counts)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
