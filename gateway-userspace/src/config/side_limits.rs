//! Connection caps and timers of the side listeners (the admin API and the metrics
//! endpoint). Each has its own small cap, so a flood of connections to one of them is
//! refused there and never uses the descriptors the public listeners need.

use std::time::Duration;

use super::{Problems, units::duration};

/// Limits of one side listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SideLimits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: u32,
    /// A request head must arrive in time (also bounds an idle keep-alive connection).
    pub header_read_timeout: Duration,
    /// Reading a request's body and answering it must finish in time.
    pub request_timeout: Duration,
}

impl SideLimits {
    pub const ADMIN: SideLimits = SideLimits {
        max_connections: 32,
        header_read_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(60),
    };
    pub const METRICS: SideLimits = SideLimits {
        max_connections: 16,
        header_read_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
    };
}

/// Side listeners are for a handful of tools on this host, never thousands of clients.
const MAX_SIDE_CONNECTIONS: u32 = 4096;

/// The raw keys, as they appear in `[admin]` and `[metrics]`.
pub(super) struct RawSideLimits {
    pub max_connections: Option<u32>,
    pub header_read_timeout: Option<String>,
    pub request_timeout: Option<String>,
}

impl RawSideLimits {
    /// Missing keys take `defaults`; `section` names the keys in errors.
    pub fn compile(
        self,
        section: &str,
        defaults: SideLimits,
        problems: &mut Problems,
    ) -> SideLimits {
        let max_connections = self.max_connections.unwrap_or(defaults.max_connections);
        if !(1..=MAX_SIDE_CONNECTIONS).contains(&max_connections) {
            problems.add(
                format!("{section}.max_connections"),
                format!("{max_connections} is out of range 1..={MAX_SIDE_CONNECTIONS}"),
            );
        }
        let timer = |value: Option<String>, key: &str, problems: &mut Problems| {
            duration(value, &format!("{section}.{key}"), problems)
        };
        SideLimits {
            max_connections,
            header_read_timeout: timer(self.header_read_timeout, "header_read_timeout", problems)
                .unwrap_or(defaults.header_read_timeout),
            request_timeout: timer(self.request_timeout, "request_timeout", problems)
                .unwrap_or(defaults.request_timeout),
        }
    }
}
