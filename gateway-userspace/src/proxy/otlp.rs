//! OTLP trace export (`[otlp]`): one server span per proxied request, with the ids of the
//! `traceparent` the upstream got (trace.rs), so the gateway's span joins the caller's and
//! the upstream's in one trace. Spans go to the OpenTelemetry SDK's batch processor: queuing
//! never blocks a request (a full queue drops the span), and export runs on its own thread.

use std::{
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use opentelemetry::{
    InstrumentationScope, KeyValue,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    trace::{BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanProcessor as _},
};

use crate::config::{OtlpConfig, OtlpProtocol};

use super::observe::Record;

/// How often queued spans are sent (the SDK's default is 5 s).
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// Spans waiting for export; beyond, new ones are dropped.
const QUEUE: usize = 8192;

static EXPORT: OnceLock<BatchSpanProcessor> = OnceLock::new();

/// Starts exporting (once per process: endpoint changes take effect at restart).
pub fn start(config: &OtlpConfig) -> anyhow::Result<()> {
    let protocol = match config.protocol {
        OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
        OtlpProtocol::HttpJson => Protocol::HttpJson,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(&config.endpoint)
        .with_protocol(protocol)
        .with_timeout(config.timeout)
        .build()
        .map_err(|error| anyhow::anyhow!("otlp: cannot export to {}: {error}", config.endpoint))?;
    let batches = BatchConfigBuilder::default()
        .with_scheduled_delay(EXPORT_EVERY)
        .with_max_queue_size(QUEUE)
        .build();
    let mut processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batches)
        .build();
    processor.set_resource(
        &Resource::builder()
            .with_service_name(config.service_name.clone())
            .build(),
    );
    if EXPORT.set(processor).is_err() {
        tracing::warn!("otlp export already started; [otlp] changes take effect at restart");
    } else {
        tracing::info!(
            endpoint = config.endpoint,
            "exporting request spans over OTLP"
        );
    }
    Ok(())
}

/// Sends what is queued (bounded by the export timeout); at shutdown.
pub fn stop() {
    if let Some(processor) = EXPORT.get()
        && let Err(error) = processor.shutdown()
    {
        tracing::warn!("otlp: spans not flushed at shutdown: {error}");
    }
}

/// Whether spans are exported (`[otlp]` on): the request record then needs its text fields.
pub fn enabled() -> bool {
    EXPORT.get().is_some()
}

/// Queues the span of a finished request, if export is on and the trace is sampled.
pub fn export(record: &Record, status: u16, elapsed: Duration) {
    let Some(processor) = EXPORT.get() else {
        return;
    };
    let trace = &record.trace;
    if !trace.sampled {
        return;
    }
    let end_time = SystemTime::now();
    let name = match &record.route {
        Some(route) => format!("{} {route}", record.method),
        None => record.method.clone(),
    };
    let mut attributes = vec![
        KeyValue::new("http.request.method", record.method.clone()),
        KeyValue::new("url.path", record.path.clone()),
        KeyValue::new("http.response.status_code", i64::from(status)),
        KeyValue::new("client.address", record.client.ip().to_string()),
        KeyValue::new("server.address", record.host.clone()),
        KeyValue::new("gateway.request_id", record.request_id.clone()),
    ];
    let optional = [
        ("http.route", &record.route),
        ("enduser.id", &record.identity),
        ("gateway.upstream", &record.upstream),
        ("gateway.upstream_target", &record.target),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            attributes.push(KeyValue::new(key, value.clone()));
        }
    }
    processor.on_end(SpanData {
        span_context: SpanContext::new(
            TraceId::from(trace.trace_id),
            SpanId::from(trace.span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id: SpanId::from(trace.parent_id.unwrap_or(0)),
        parent_span_is_remote: trace.parent_id.is_some(),
        span_kind: SpanKind::Server,
        name: name.into(),
        start_time: end_time - elapsed,
        end_time,
        attributes,
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        // OpenTelemetry's HTTP conventions: 5xx is a server span's error, 4xx is not.
        status: if status >= 500 {
            Status::error(format!("status {status}"))
        } else {
            Status::Unset
        },
        instrumentation_scope: InstrumentationScope::builder("gateway").build(),
    });
}
