//! Prometheus metrics and health endpoints on their own listener (`[metrics] address`,
//! localhost): `/metrics`, `/healthz` (alive) and `/readyz` (serving: the XDP program is
//! attached and the listeners are bound). Kernel counters are read at scrape time, so a
//! scrape always shows what the kernel counted, with nothing cached in between.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
    },
    registry::Registry,
};
use tokio::{net::TcpListener, task::JoinHandle};

use super::listen::serve_connections;
use crate::config::MetricsConfig;
use crate::firewall::Firewall;

/// Metrics the daemon updates as things happen (the kernel's are read at scrape time).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Config reloads by result ("success", "failure").
    pub reloads: Family<Vec<(&'static str, &'static str)>, Counter>,
    ready: AtomicBool,
}

impl Metrics {
    pub fn reload_finished(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.get_or_create(&vec![("result", result)]).inc();
    }

    /// From now on `/readyz` answers 200.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }
}

/// A metering series: name, help, and which count it shows.
type MeteredSeries = (
    &'static str,
    &'static str,
    fn(&crate::proxy::observe::Metered) -> u64,
);

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
        // Metering, bounded: consumers and routes are capped where they are recorded.
        let metering = crate::proxy::observe::METRICS.metering();
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
        if let Some(defender) = crate::defend::running() {
            let (dropped, auto_bans, tracked) = defender.counts();
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
                    crate::defend::guard::refused(),
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
            let gauges = [
                (
                    "gateway_defend_tracked_sources",
                    "Sources whose L7 signals are being counted",
                    tracked as i64,
                ),
                (
                    "gateway_xdp_under_attack",
                    "1 while XDP is in under-attack mode",
                    i64::from(self.state.under_attack().unwrap_or(false)),
                ),
            ];
            for (name, help, value) in gauges {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
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

/// The metrics listener; dropping it stops serving.
pub struct MetricsServer {
    task: JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MetricsServer {
    pub async fn bind(
        config: MetricsConfig,
        state: Arc<Firewall>,
        metrics: Arc<Metrics>,
        proxy_state: crate::proxy::observe::ProxyCollector,
    ) -> anyhow::Result<MetricsServer> {
        let address = config.address;
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("metrics.address: binding {address}"))?;
        tracing::info!(address = %listener.local_addr()?, "metrics and health endpoints listening");
        let mut registry = Registry::default();
        registry.register(
            "gateway_config_reloads",
            "Config reloads (SIGHUP or gateway reload), by result",
            metrics.reloads.clone(),
        );
        let proxy = &crate::proxy::observe::METRICS;
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
        if crate::cluster::CLUSTER.get().is_some() {
            let cluster = &crate::cluster::METRICS;
            registry.register(
                "gateway_cluster_redis_up",
                "1 while the cluster's Redis answers, 0 while it does not",
                cluster.redis_up.clone(),
            );
            registry.register(
                "gateway_cluster_fallbacks",
                "Rate-limit decisions taken by cluster.on_redis_down because Redis was down",
                cluster.fallbacks.clone(),
            );
        }
        registry.register_collector(Box::new(proxy_state));
        registry.register_collector(Box::new(KernelCollector {
            state: state.clone(),
        }));
        let shared = Arc::new((registry, metrics));
        let task = tokio::spawn(serve_connections(
            listener,
            "metrics",
            config.limits,
            move |request: Request<hyper::body::Incoming>| {
                let response = respond(&shared.0, &shared.1, &request);
                async move { response }
            },
        ));
        Ok(MetricsServer { task })
    }
}

fn respond<B>(
    registry: &Registry,
    metrics: &Metrics,
    request: &Request<B>,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, content_type: &'static str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "encoding failed\n".into(),
                ),
            }
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") if metrics.ready.load(Ordering::Relaxed) => {
            text(StatusCode::OK, "text/plain", "ready\n".into())
        }
        (&Method::GET, "/readyz") => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "starting\n".into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}
