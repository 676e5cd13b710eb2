//! A route's metric series, resolved when the snapshot is built, so a finished request counts
//! itself with atomic adds: no label vectors, no family lookups on the request path. Each
//! series is taken from the proxy's families the first time it is used (a route that never
//! saw a DELETE has no DELETE series, as before), and the families outlive reloads, so a
//! reload keeps every count.

use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::{counter::Counter, histogram::Histogram};

use super::{metering::RouteMeter, observe::ProxyMetrics};

/// The `method` label: the common methods, anything else is "other".
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];
/// The `status_class` label: hyper's status codes are 100..=999.
const CLASSES: [&str; 9] = [
    "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx",
];

/// The label of a route-less request (refused before routing).
pub const UNROUTED: &str = "none";

/// One route's series (or the unrouted requests').
pub struct RouteSeries {
    route: Arc<str>,
    /// The route's upstream (`None`: aggregate routes and unrouted requests).
    upstream: Option<String>,
    /// By (method, status class): `METHODS.len() * CLASSES.len()` slots.
    requests: Box<[OnceLock<Counter>]>,
    duration: OnceLock<Histogram>,
    upstream_duration: OnceLock<Histogram>,
    /// This route's metering; the proxy's metrics keep it across reloads.
    pub meter: Arc<RouteMeter>,
}

impl RouteSeries {
    pub fn new(metrics: &ProxyMetrics, route: &str, upstream: Option<&str>) -> RouteSeries {
        RouteSeries {
            route: route.into(),
            upstream: upstream.map(str::to_owned),
            requests: (0..METHODS.len() * CLASSES.len())
                .map(|_| OnceLock::new())
                .collect(),
            duration: OnceLock::new(),
            upstream_duration: OnceLock::new(),
            meter: metrics.metering.route(route),
        }
    }

    /// The route's name, shared with whoever keeps it (the defender's reports).
    pub fn route(&self) -> &Arc<str> {
        &self.route
    }

    /// Counts one request: `gateway_http_requests` and the route's duration.
    pub fn request(&self, metrics: &ProxyMetrics, method: &str, status: u16, seconds: f64) {
        let method = METHODS[..METHODS.len() - 1]
            .iter()
            .position(|known| *known == method)
            .unwrap_or(METHODS.len() - 1);
        let class = (usize::from(status / 100)).clamp(1, CLASSES.len()) - 1;
        self.requests[method * CLASSES.len() + class]
            .get_or_init(|| {
                metrics
                    .requests
                    .get_or_create(&vec![
                        ("route", self.route.to_string()),
                        ("method", METHODS[method].to_owned()),
                        ("status_class", CLASSES[class].to_owned()),
                    ])
                    .clone()
            })
            .inc();
        self.duration
            .get_or_init(|| {
                metrics
                    .duration
                    .get_or_create(&vec![("route", self.route.to_string())])
                    .clone()
            })
            .observe(seconds);
    }

    /// The time until the upstream's response head, on the route's upstream's series.
    pub fn upstream_answered(&self, metrics: &ProxyMetrics, seconds: f64) {
        let Some(upstream) = &self.upstream else {
            return;
        };
        self.upstream_duration
            .get_or_init(|| {
                metrics
                    .upstream_duration
                    .get_or_create(&vec![("upstream", upstream.clone())])
                    .clone()
            })
            .observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prometheus_client::{encoding::text::encode, registry::Registry};

    use super::*;
    use crate::proxy::{Handles, snapshot::Snapshot};

    fn config(routes: &str) -> crate::config::ProxyConfig {
        crate::config::Config::parse(&format!(
            "[xdp]\nmode = \"off\"\n[[upstreams]]\nname = \"u\"\n\
             [[upstreams]]\nname = \"v\"\n{routes}"
        ))
        .unwrap()
        .proxy
    }

    /// The exposition text of the request families.
    fn scrape(metrics: &ProxyMetrics) -> String {
        let mut registry = Registry::default();
        registry.register("requests", "", metrics.requests.clone());
        registry.register("upstream", "", metrics.upstream_duration.clone());
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn methods_and_status_classes_by_label() {
        let metrics = ProxyMetrics::default();
        let series = RouteSeries::new(&metrics, "r", Some("u"));
        let table: &[(&str, u16, &str, &str)] = &[
            ("GET", 200, "GET", "2xx"),
            ("HEAD", 204, "HEAD", "2xx"),
            ("POST", 101, "POST", "1xx"),
            ("PUT", 302, "PUT", "3xx"),
            ("PATCH", 404, "PATCH", "4xx"),
            ("DELETE", 599, "DELETE", "5xx"),
            ("OPTIONS", 200, "OPTIONS", "2xx"),
            ("get", 200, "other", "2xx"),
            ("PROPFIND", 207, "other", "2xx"),
            ("CONNECT", 999, "other", "9xx"),
            ("", 600, "other", "6xx"),
            ("GETX", 100, "other", "1xx"),
        ];
        for (method, status, _, _) in table {
            series.request(&metrics, method, *status, 0.01);
        }
        let text = scrape(&metrics);
        for (_, _, method, class) in table {
            let line = format!(
                "requests_total{{route=\"r\",method=\"{method}\",status_class=\"{class}\"}}"
            );
            assert!(text.contains(&line), "{line} missing in\n{text}");
        }
        // Only the series that were used exist.
        assert_eq!(text.matches("requests_total{").count(), 11, "{text}");
    }

    #[test]
    fn a_reload_keeps_the_counts_and_follows_the_route_to_its_new_upstream() {
        let handles = Handles::default();
        let metrics = handles.metrics.clone();
        let before = config("[[routes]]\nname = \"r\"\nupstream = \"u\"\n");
        let first = Snapshot::build(&before, handles);
        for _ in 0..3 {
            first.series[0].request(&metrics, "GET", 200, 0.01);
            first.series[0].upstream_answered(&metrics, 0.01);
        }
        first.unrouted.request(&metrics, "GET", 404, 0.01);
        let after = config(
            "[[routes]]\nname = \"new\"\nupstream = \"u\"\n\
             [[routes]]\nname = \"r\"\nupstream = \"v\"\n",
        );
        let second = Snapshot::rebuild(&after, &first);
        assert!(Arc::ptr_eq(&second.handles.metrics, &metrics));
        second.series[1].request(&metrics, "GET", 200, 0.01);
        second.series[1].upstream_answered(&metrics, 0.01);
        second.unrouted.request(&metrics, "GET", 404, 0.01);
        let text = scrape(&metrics);
        for line in [
            "requests_total{route=\"r\",method=\"GET\",status_class=\"2xx\"} 4",
            "requests_total{route=\"none\",method=\"GET\",status_class=\"4xx\"} 2",
            "upstream_count{upstream=\"u\"} 3",
            "upstream_count{upstream=\"v\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("route=\"new\""), "{text}");
        // Metering is kept by route name too.
        let meter = |snapshot: &Snapshot, index: usize| snapshot.series[index].meter.clone();
        metrics.metering.record(&meter(&first, 0), Some("c"), 1, 2);
        metrics.metering.record(&meter(&second, 1), Some("c"), 3, 4);
        metrics.metering.record(&meter(&second, 0), None, 0, 0);
        let rows: Vec<_> = metrics
            .metering()
            .into_iter()
            .map(|(consumer, route, counts)| (consumer, route, counts.requests, counts.bytes_out))
            .collect();
        assert_eq!(
            rows,
            [
                ("anonymous".to_owned(), "new".to_owned(), 1, 0),
                ("c".to_owned(), "r".to_owned(), 2, 6)
            ]
        );
    }
}
