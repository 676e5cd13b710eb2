//! `[limits]`: client-facing sizes, timers and counts, shared by every listener.

use std::time::Duration;

use serde::Deserialize;

use super::{
    Problems,
    units::{Size, duration, rate, size},
};

/// Client-facing limits, shared by every listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Request line and header fields together (431 beyond).
    pub max_header_bytes: usize,
    /// Request body (413 beyond).
    pub max_body_bytes: u64,
    /// The longest wait for the next bytes of a request body (408 beyond, the client's fault).
    pub body_read_timeout: Duration,
    /// Bytes per second a request body must average: it may take `body_read_timeout` plus one
    /// second per `min_body_rate` bytes received (408 beyond). 0: no rate bound.
    pub min_body_rate: u64,
    /// Time to receive a complete request head; the connection is closed after it.
    pub header_read_timeout: Duration,
    /// Time for a TLS client to complete its handshake; the connection is closed after it.
    pub tls_handshake_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Client connections open at once; more are closed as soon as they are accepted.
    pub max_connections: u32,
    /// Concurrent streams per HTTP/2 connection.
    pub max_http2_streams: u32,
    /// On shutdown, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
    /// HTTP/2: a connection quiet this long is sent a PING...
    pub http2_keep_alive_interval: Duration,
    /// ...and closed when it is not answered in this time.
    pub http2_keep_alive_timeout: Duration,
    /// HTTP/2: the client must acknowledge the gateway's SETTINGS in this time.
    pub http2_settings_timeout: Duration,
    /// Once closing (idle, or shutdown; HTTP/2 sends GOAWAY) with nothing in flight, the
    /// peer has this long to finish the exchange before the socket is closed.
    pub close_grace: Duration,
    /// Longer method tokens are answered 501.
    pub max_method_bytes: usize,
    /// When not empty, the only methods served; others are answered 501.
    pub methods: Vec<hyper::Method>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_header_bytes: 64 * 1024,
            max_body_bytes: 1024 * 1024,
            body_read_timeout: Duration::from_secs(10),
            min_body_rate: 1024,
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_http2_streams: 100,
            drain_timeout: Duration::from_secs(30),
            http2_keep_alive_interval: Duration::from_secs(30),
            http2_keep_alive_timeout: Duration::from_secs(10),
            http2_settings_timeout: Duration::from_secs(10),
            close_grace: Duration::from_secs(5),
            max_method_bytes: 32,
            methods: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_header_bytes: Option<Size>,
    max_body_bytes: Option<Size>,
    body_read_timeout: Option<String>,
    min_body_rate: Option<Size>,
    header_read_timeout: Option<String>,
    tls_handshake_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<u32>,
    max_http2_streams: Option<u32>,
    drain_timeout: Option<String>,
    http2_keep_alive_interval: Option<String>,
    http2_keep_alive_timeout: Option<String>,
    http2_settings_timeout: Option<String>,
    close_grace: Option<String>,
    max_method_bytes: Option<usize>,
    methods: Option<Vec<String>>,
}

const MAX_HEADER_BYTES: u64 = 16 * 1024 * 1024;
const MAX_CONNECTIONS: u32 = 1_000_000;
/// Far above any method in use; a longer token is an attack, not a method.
const MAX_METHOD_BYTES: usize = 1024;

impl RawLimits {
    pub(super) fn compile(self, problems: &mut Problems) -> HttpLimits {
        let defaults = HttpLimits::default();
        let header_bytes = size(self.max_header_bytes, "limits.max_header_bytes", problems)
            .unwrap_or(defaults.max_header_bytes as u64);
        if !(1024..=MAX_HEADER_BYTES).contains(&header_bytes) {
            problems.add(
                "limits.max_header_bytes",
                format!("{header_bytes} bytes is out of range 1KiB..=16MiB"),
            );
        }
        let limits = HttpLimits {
            max_header_bytes: header_bytes.min(MAX_HEADER_BYTES) as usize,
            max_body_bytes: size(self.max_body_bytes, "limits.max_body_bytes", problems)
                .unwrap_or(defaults.max_body_bytes),
            body_read_timeout: duration(
                self.body_read_timeout,
                "limits.body_read_timeout",
                problems,
            )
            .unwrap_or(defaults.body_read_timeout),
            min_body_rate: rate(self.min_body_rate, "limits.min_body_rate", problems)
                .unwrap_or(defaults.min_body_rate),
            header_read_timeout: duration(
                self.header_read_timeout,
                "limits.header_read_timeout",
                problems,
            )
            .unwrap_or(defaults.header_read_timeout),
            tls_handshake_timeout: duration(
                self.tls_handshake_timeout,
                "limits.tls_handshake_timeout",
                problems,
            )
            .unwrap_or(defaults.tls_handshake_timeout),
            idle_timeout: duration(self.idle_timeout, "limits.idle_timeout", problems)
                .unwrap_or(defaults.idle_timeout),
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            max_http2_streams: self.max_http2_streams.unwrap_or(defaults.max_http2_streams),
            drain_timeout: duration(self.drain_timeout, "limits.drain_timeout", problems)
                .unwrap_or(defaults.drain_timeout),
            http2_keep_alive_interval: duration(
                self.http2_keep_alive_interval,
                "limits.http2_keep_alive_interval",
                problems,
            )
            .unwrap_or(defaults.http2_keep_alive_interval),
            http2_keep_alive_timeout: duration(
                self.http2_keep_alive_timeout,
                "limits.http2_keep_alive_timeout",
                problems,
            )
            .unwrap_or(defaults.http2_keep_alive_timeout),
            http2_settings_timeout: duration(
                self.http2_settings_timeout,
                "limits.http2_settings_timeout",
                problems,
            )
            .unwrap_or(defaults.http2_settings_timeout),
            close_grace: duration(self.close_grace, "limits.close_grace", problems)
                .unwrap_or(defaults.close_grace),
            max_method_bytes: self.max_method_bytes.unwrap_or(defaults.max_method_bytes),
            methods: compile_methods(self.methods.unwrap_or_default(), problems),
        };
        if !(1..=MAX_METHOD_BYTES).contains(&limits.max_method_bytes) {
            problems.add(
                "limits.max_method_bytes",
                format!(
                    "{} is out of range 1..={MAX_METHOD_BYTES}",
                    limits.max_method_bytes
                ),
            );
        }
        if !(1..=MAX_CONNECTIONS).contains(&limits.max_connections) {
            problems.add(
                "limits.max_connections",
                format!(
                    "{} is out of range 1..={MAX_CONNECTIONS}",
                    limits.max_connections
                ),
            );
        }
        if limits.max_http2_streams == 0 {
            problems.add("limits.max_http2_streams", "must be at least 1");
        }
        limits
    }
}

/// `limits.methods`: each must be a valid method token.
fn compile_methods(raw: Vec<String>, problems: &mut Problems) -> Vec<hyper::Method> {
    let mut methods = Vec::new();
    for (index, name) in raw.into_iter().enumerate() {
        match hyper::Method::from_bytes(name.as_bytes()) {
            Ok(method) if !name.is_empty() => methods.push(method),
            _ => problems.add(
                format!("limits.methods[{index}]"),
                format!("{name:?} is not a method token (e.g. \"GET\", \"PURGE\")"),
            ),
        }
    }
    methods
}
