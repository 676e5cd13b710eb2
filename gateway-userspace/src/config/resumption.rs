//! A listener's TLS session resumption: `tls.session_tickets` (TLS 1.3 and 1.2 tickets,
//! with keys rotated on a schedule) and `tls.session_cache` (TLS 1.2 session ids, and TLS
//! 1.3 resumption when tickets are off). Both are on by default.

use std::time::Duration;

use serde::Deserialize;

use super::{Problems, units};

/// The default rotation of ticket keys: a ticket is accepted for one to two of these.
pub const DEFAULT_TICKET_ROTATION: Duration = Duration::from_secs(12 * 3600);
/// The default number of sessions the TLS 1.2 session cache holds.
pub const DEFAULT_SESSION_CACHE_SIZE: usize = 4096;
/// A ticket lives up to two rotations, and RFC 8446 4.6.1 caps a ticket's life at 7 days.
const MAX_TICKET_ROTATION: Duration = Duration::from_secs(7 * 24 * 3600 / 2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumptionConfig {
    /// How often the ticket key changes (the previous key still decrypts for one more
    /// period); `None`: no tickets.
    pub ticket_rotation: Option<Duration>,
    /// Sessions kept by the session cache; 0: no cache.
    pub session_cache_size: usize,
}

impl Default for ResumptionConfig {
    fn default() -> Self {
        ResumptionConfig {
            ticket_rotation: Some(DEFAULT_TICKET_ROTATION),
            session_cache_size: DEFAULT_SESSION_CACHE_SIZE,
        }
    }
}

/// `session_tickets = { enabled = true, rotate = "12h" }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTickets {
    enabled: Option<bool>,
    rotate: Option<String>,
}

/// `session_cache = { size = 4096 }` (`size = 0` turns it off)
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSessionCache {
    size: Option<usize>,
}

/// Reads both tables under `key` (the listener's `tls`); each problem names its key.
pub(super) fn compile_resumption(
    tickets: Option<RawTickets>,
    cache: Option<RawSessionCache>,
    key: &str,
    problems: &mut Problems,
) -> ResumptionConfig {
    let mut config = ResumptionConfig::default();
    if let Some(tickets) = tickets {
        let rotate_key = format!("{key}.session_tickets.rotate");
        let rotation = units::duration(tickets.rotate, &rotate_key, problems)
            .unwrap_or(DEFAULT_TICKET_ROTATION);
        if !(Duration::from_secs(1)..=MAX_TICKET_ROTATION).contains(&rotation) {
            problems.add(
                rotate_key,
                "must be from 1s to 84h: a ticket is accepted for up to two rotations, and \
                 TLS 1.3 allows at most 7 days",
            );
        }
        config.ticket_rotation = tickets.enabled.unwrap_or(true).then_some(rotation);
    }
    if let Some(size) = cache.and_then(|cache| cache.size) {
        config.session_cache_size = size;
    }
    config
}
