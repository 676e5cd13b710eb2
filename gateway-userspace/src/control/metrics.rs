//! Prometheus metrics and health endpoints on their own listener (`[metrics] address`,
//! localhost): `/metrics`, `/healthz` (alive) and `/readyz` (serving: the XDP program is
//! attached and the listeners are bound). It serves the registry the daemon filled: each
//! service registered its own metrics in it; this file knows none of them.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes};
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::{net::TcpListener, task::JoinHandle};

use super::listen::serve_connections;
use crate::config::MetricsConfig;

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

    /// Adds the daemon's own metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gateway_config_reloads",
            "Config reloads (SIGHUP or gateway reload), by result",
            self.reloads.clone(),
        );
    }

    /// From now on `/readyz` answers 200.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }
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
    /// Serves `registry` (each service registered its own metrics in it) and the health
    /// endpoints.
    pub async fn bind(
        config: MetricsConfig,
        registry: Registry,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<MetricsServer> {
        let address = config.address;
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("metrics.address: binding {address}"))?;
        tracing::info!(address = %listener.local_addr()?, "metrics and health endpoints listening");
        let registry = Arc::new(registry);
        let task = tokio::spawn(serve_connections(
            listener,
            "metrics",
            config.limits,
            move |request: Request<hyper::body::Incoming>| {
                respond(registry.clone(), metrics.clone(), request)
            },
        ));
        Ok(MetricsServer { task })
    }
}

async fn respond<B>(
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    request: Request<B>,
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
            // Collectors read state behind locks (the firewall's): off the async workers.
            let encoded = tokio::task::spawn_blocking(move || {
                let mut body = String::new();
                prometheus_client::encoding::text::encode(&mut body, &registry).map(|()| body)
            })
            .await;
            match encoded {
                Ok(Ok(body)) => text(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Ok(Err(_)) | Err(_) => text(
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
