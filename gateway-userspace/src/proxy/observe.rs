//! `observe`: what happens after the response, for every request: metrics (requests by route,
//! method and status class; latency per route and per upstream), metering (requests and bytes
//! per consumer and route), and the access log. All of it is recorded when the response body
//! has been sent (or dropped, if the client went away), so bytes out and the total duration are
//! real. Log lines go through tracing (target `access_log`) to a non-blocking writer set up at
//! start: a slow disk drops lines rather than stalling requests.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use hyper::body::{Body, Bytes, Frame, SizeHint};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::Counter,
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
};

use super::{
    body::{BoxError, ProxyBody},
    metering::{Metered, Metering},
};
use crate::config::AccessLogConfig;

/// The tracing target access-log lines use; the log setup routes it to its own writer.
pub const TARGET: &str = "access_log";

/// Which requests get an access-log line (`[access_log]` enabled and sample), owned by the
/// proxy and applied at start and on reload.
pub struct Sampling {
    enabled: AtomicBool,
    /// Fraction of requests logged, in millionths.
    ppm: AtomicU32,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            enabled: AtomicBool::new(true),
            ppm: AtomicU32::new(1_000_000),
        }
    }
}

impl Sampling {
    pub fn configure(&self, config: &AccessLogConfig) {
        self.enabled.store(config.enabled, Ordering::Relaxed);
        self.ppm.store(
            (config.sample * 1_000_000.0).round() as u32,
            Ordering::Relaxed,
        );
    }

    /// Whether this request is logged (the off switch, then sampling).
    pub fn sampled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
            && fastrand::u32(0..1_000_000) < self.ppm.load(Ordering::Relaxed)
    }
}

/// Labels of one series: a few known values each, never addresses or raw paths.
pub type Labels = Vec<(&'static str, String)>;

/// Proxy metrics, shared with the metrics endpoint (control/metrics.rs registers them).
pub struct ProxyMetrics {
    /// route, method, status class.
    pub requests: Family<Labels, Counter>,
    /// Seconds from request to the end of the response, by route.
    pub duration: Family<Labels, Histogram, fn() -> Histogram>,
    /// Seconds until the upstream's response head, by upstream (never for a client's fault).
    pub upstream_duration: Family<Labels, Histogram, fn() -> Histogram>,
    /// Failed requests by cause (client, upstream, gateway) and error code.
    pub errors: Family<Labels, Counter>,
    /// TLS handshakes that failed, by listener and reason ("error", "timeout").
    pub tls_handshake_failures: Family<Labels, Counter>,
    /// Cache lookups by route and result (hit, miss, stale, revalidated, bypass).
    pub cache: Family<Labels, Counter>,
    /// Refused credentials and authorizations, by reason (a fixed set of values).
    pub auth_failures: Family<Labels, Counter>,
    /// Requests refused by a rate limit, by route.
    pub rate_limited: Family<Labels, Counter>,
    /// Requests and bytes per consumer and route.
    pub metering: Metering,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        ProxyMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            upstream_duration: Family::new_with_constructor(latency_histogram),
            errors: Family::default(),
            tls_handshake_failures: Family::default(),
            cache: Family::default(),
            auth_failures: Family::default(),
            rate_limited: Family::default(),
            metering: Metering::default(),
        }
    }
}

impl ProxyMetrics {
    /// A refused credential or authorization (`reason`: one of a fixed set).
    pub fn auth_failed(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// A TLS handshake that failed on `listener` ("error" or "timeout").
    pub fn handshake_failed(&self, listener: &str, reason: &'static str) {
        self.tls_handshake_failures
            .get_or_create(&vec![
                ("listener", listener.to_owned()),
                ("reason", reason.to_owned()),
            ])
            .inc();
    }

    /// (consumer, route) -> counts, sorted, for the admin API. Survives reloads.
    pub fn metering(&self) -> Vec<(String, String, Metered)> {
        self.metering.rows()
    }

    fn record(&self, record: &Record, bytes_out: u64, seconds: f64) {
        let series = &record.series;
        series.request(self, &record.method, record.status, seconds);
        if let Some(error) = record.error {
            self.errors
                .get_or_create(&vec![
                    ("cause", error.cause().as_str().to_owned()),
                    ("code", error.code().to_owned()),
                ])
                .inc();
        }
        if let (Some(_), Some(ms)) = (&record.upstream, record.upstream_ms) {
            series.upstream_answered(self, ms / 1000.0);
        }
        self.metering.record(
            &series.meter,
            record.identity.as_deref(),
            record.bytes_in.load(Ordering::Relaxed),
            bytes_out,
        );
    }
}

/// A per-target gauge: name, help, and what it shows.
type TargetSeries = (
    &'static str,
    &'static str,
    fn(&super::health::TargetState) -> i64,
);

/// The proxy's live state, read at scrape time: open client connections, and each upstream
/// target's availability and requests in flight (targets come from the config: bounded).
pub struct ProxyCollector {
    pub(super) snapshot: Arc<arc_swap::ArcSwap<super::snapshot::Snapshot>>,
    pub(super) connections: Arc<tokio::sync::Semaphore>,
    pub(super) max_connections: u32,
}

impl std::fmt::Debug for ProxyCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyCollector")
    }
}

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let open = self.max_connections as usize - self.connections.available_permits();
        let open = ConstGauge::new(open as i64);
        open.encode(encoder.encode_descriptor(
            "gateway_proxy_connections",
            "Open client connections (TLS handshakes and WebSocket tunnels included)",
            None,
            open.metric_type(),
        )?)?;
        let snapshot = self.snapshot.load();
        let series: [TargetSeries; 2] = [
            (
                "gateway_upstream_target_up",
                "1 if the target takes traffic (healthy and not ejected), else 0",
                |target| i64::from(target.available()),
            ),
            (
                "gateway_upstream_target_outstanding",
                "Requests in flight to the target",
                |target| target.outstanding() as i64,
            ),
        ];
        for (name, help, value) in series {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for upstream in &snapshot.upstreams {
                for (config, state) in upstream.config.targets.iter().zip(&upstream.targets) {
                    let labels = [
                        ("upstream", upstream.config.name.as_str()),
                        ("target", config.address.as_str()),
                    ];
                    ConstGauge::new(value(state)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// What is known about a request when its response starts; completed as the body is sent.
pub struct Record {
    /// Where the request is counted (the snapshot's metrics and span export).
    pub metrics: Arc<ProxyMetrics>,
    /// The request's route's series (resolved once per snapshot).
    pub series: Arc<super::series::RouteSeries>,
    pub spans: Option<Arc<super::otlp::Spans>>,
    /// Whether this request gets an access-log line (sampling); metrics always count it.
    pub log_line: bool,
    /// The upstream's name (metrics label; bounded by the config).
    pub upstream: Option<String>,
    pub started: Instant,
    pub request_id: String,
    /// The W3C trace and the gateway's span in it, as sent upstream in `traceparent`.
    pub trace: super::trace::TraceContext,
    pub client: std::net::SocketAddr,
    pub method: String,
    pub host: String,
    pub path: String,
    pub route: Option<String>,
    /// The verified caller (JWT subject or consumer), if the route authenticates.
    pub identity: Option<String>,
    /// The identity of the client certificate the connection showed (`client_auth`).
    pub client_cert: Option<String>,
    pub target: Option<String>,
    pub status: u16,
    /// What failed, if the request did (its cause says whose fault it was).
    pub error: Option<super::error::ErrorKind>,
    /// How long the upstream took to answer; `None` when it was not asked or the failure
    /// was the client's.
    pub upstream_ms: Option<f64>,
    /// Request body bytes read so far (the request body may still be streaming).
    pub bytes_in: Arc<AtomicU64>,
}

/// What is known of a request when it arrives, before any stage runs: for the log and the
/// metrics, whatever the stages make of it.
pub struct Arrival {
    pub method: hyper::Method,
    /// The target as it came (its path: the log shows it only when normalising refused
    /// it). A cheap clone of the request's; text is made only for a detailed record.
    uri: hyper::Uri,
    /// The Host field, when the target names no authority.
    host_field: Option<hyper::header::HeaderValue>,
    pub started: Instant,
    /// Whether this request gets an access-log line.
    pub log_line: bool,
    /// Request body bytes read so far.
    pub bytes_in: Arc<AtomicU64>,
}

impl Arrival {
    pub fn of<B>(req: &hyper::Request<B>, log_line: bool) -> Arrival {
        let host_field = match req.uri().authority() {
            Some(_) => None,
            None => req.headers().get(hyper::header::HOST).cloned(),
        };
        Arrival {
            method: req.method().clone(),
            uri: req.uri().clone(),
            host_field,
            started: Instant::now(),
            log_line,
            bytes_in: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The path as it came.
    pub fn raw_path(&self) -> &str {
        self.uri.path()
    }

    /// The authority the client addressed, as sent (URI, else the Host field).
    fn host(&self) -> String {
        match (self.uri.authority(), &self.host_field) {
            (Some(authority), _) => authority.as_str().to_owned(),
            (None, Some(field)) => field.to_str().unwrap_or_default().to_owned(),
            (None, None) => String::new(),
        }
    }
}

/// The `observe` response stage: the response's body records the request (metrics, access
/// log, span) when it has been sent or dropped.
pub fn attach(
    snapshot: &super::snapshot::Snapshot,
    ctx: super::RequestCtx,
    routed: Option<&super::Routed<'_>>,
    arrival: Arrival,
    path: String,
    error: Option<super::error::ErrorKind>,
    response: hyper::Response<ProxyBody>,
) -> hyper::Response<ProxyBody> {
    let handles = &snapshot.handles;
    let series = match routed {
        Some(routed) => &snapshot.series[routed.index],
        None => &snapshot.unrouted,
    };
    // Metrics need only route, method, status and upstream: the text fields the log and
    // the span show are made only when one of them takes this request.
    let detailed = arrival.log_line || handles.spans.is_some();
    let record = Record {
        metrics: handles.metrics.clone(),
        series: series.clone(),
        spans: handles.spans.clone(),
        log_line: arrival.log_line,
        upstream: routed
            .filter(|routed| routed.route.aggregate.is_none())
            .map(|routed| routed.upstream.config.name.clone()),
        started: arrival.started,
        request_id: match detailed {
            true => ctx.request_id.to_str().unwrap_or("").to_owned(),
            false => String::new(),
        },
        trace: ctx.trace,
        client: ctx.connection.client,
        method: arrival.method.to_string(),
        host: match detailed {
            true => arrival.host(),
            false => String::new(),
        },
        path,
        route: routed.map(|routed| routed.route.name.clone()),
        client_cert: super::client_cert::identity(&ctx).map(str::to_owned),
        identity: ctx.identity.map(|identity| identity.name),
        target: ctx
            .target
            .zip(routed)
            .filter(|_| detailed)
            .map(|(target, routed)| routed.upstream.config.targets[target].address.clone()),
        status: response.status().as_u16(),
        error,
        upstream_ms: ctx.upstream_ms,
        bytes_in: arrival.bytes_in,
    };
    response.map(|body| super::body::boxed(Logged::new(body, record)))
}

/// Counts the bytes of a body as they pass (the request body, for `bytes_in`). Generic, so
/// the client's body is counted in place and boxed once.
pub struct Counted<B = ProxyBody> {
    inner: B,
    bytes: Arc<AtomicU64>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, bytes: Arc<AtomicU64>) -> Counted<B> {
        Counted { inner, bytes }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body, logging its request's line when it ends or is dropped.
pub struct Logged {
    inner: ProxyBody,
    record: Option<Record>,
    bytes_out: u64,
}

impl Logged {
    pub fn new(inner: ProxyBody, record: Record) -> Logged {
        Logged {
            inner,
            record: Some(record),
            bytes_out: 0,
        }
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes_out += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.write_line(true),
            Poll::Ready(Some(Err(_))) => self.write_line(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // Not sent to the end: the client went away, or the body was empty and never polled.
        let complete = self.inner.is_end_stream();
        self.write_line(complete);
    }
}

impl Logged {
    fn write_line(&mut self, complete: bool) {
        let Some(record) = self.record.take() else {
            return;
        };
        let elapsed = record.started.elapsed();
        let seconds = elapsed.as_secs_f64();
        record.metrics.record(&record, self.bytes_out, seconds);
        if let Some(spans) = &record.spans {
            spans.export(&record, record.status, elapsed);
        }
        if !record.log_line {
            return;
        }
        let mut trace_id = [0; 32];
        tracing::info!(
            target: TARGET,
            request_id = record.request_id,
            trace_id = record.trace.trace_id_hex(&mut trace_id),
            client_ip = %record.client.ip(),
            method = record.method,
            host = record.host,
            path = record.path,
            route = record.route,
            identity = record.identity,
            client_cert = record.client_cert,
            upstream_target = record.target,
            status = record.status,
            fault = record.error.map(|error| error.cause().as_str()),
            error = record.error.map(super::error::ErrorKind::code),
            bytes_in = record.bytes_in.load(Ordering::Relaxed),
            bytes_out = self.bytes_out,
            duration_ms = seconds * 1000.0,
            upstream_ms = record.upstream_ms,
            complete,
        );
    }
}
