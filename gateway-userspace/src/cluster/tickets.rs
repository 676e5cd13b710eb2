//! Session ticket keys shared by the nodes, so a client resumes its TLS session on any
//! node: the hash `{prefix}:tls_tickets:{listener}` holds `current`, `previous` and
//! `rotated_at` (Redis' clock, Unix seconds). Every node asks about once a second; the first
//! to ask when a rotation is due rotates, atomically, with the fresh key it offered, and
//! all adopt the result. The keys are secrets: never logged, readable by whoever can read
//! Redis (protect it with a password and TLS).

use std::{sync::Arc, time::Duration};

use super::link::{RESPONSE_TIMEOUT, RedisLink};
use crate::api::tickets::{KeyBytes, TicketKeys};

/// Seeds, rotates when due (dropping `previous` after two missed rotations) and returns
/// `{current, previous or "", rotated_at}`. Expires after three rotations without a node.
const SYNC: &str = r#"
local now = tonumber(redis.call('TIME')[1])
local rotation = tonumber(ARGV[1])
local state = redis.call('HMGET', KEYS[1], 'current', 'previous', 'rotated_at')
local current, previous, rotated_at = state[1], state[2] or '', tonumber(state[3])
if not current or not rotated_at then
  current, previous, rotated_at = ARGV[2], '', now
elseif now >= rotated_at + rotation then
  if now >= rotated_at + 2 * rotation then previous = '' else previous = current end
  current, rotated_at = ARGV[2], now
else
  return {current, previous, rotated_at}
end
redis.call('HSET', KEYS[1], 'current', current, 'previous', previous, 'rotated_at', rotated_at)
redis.call('EXPIRE', KEYS[1], 3 * rotation)
return {current, previous, rotated_at}
"#;

pub struct ClusterTickets {
    link: Arc<RedisLink>,
    prefix: String,
    script: redis::Script,
}

impl ClusterTickets {
    pub fn new(link: Arc<RedisLink>, prefix: &str) -> ClusterTickets {
        ClusterTickets {
            link,
            prefix: prefix.to_owned(),
            script: redis::Script::new(SYNC),
        }
    }

    /// The cluster's keys for `listener`, rotated first when due. `None` while Redis is
    /// down or answers with something that is not a key.
    pub async fn sync(
        &self,
        listener: &str,
        rotation: Duration,
        fresh: KeyBytes,
    ) -> Option<TicketKeys> {
        let mut connection = self.link.connection()?;
        let mut invocation = self.script.key(tickets_key(&self.prefix, listener));
        invocation.arg(rotation.as_secs().max(1)).arg(&fresh[..]);
        let call = invocation.invoke_async::<(Vec<u8>, Vec<u8>, u64)>(&mut connection);
        let result = tokio::time::timeout(RESPONSE_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::IoError,
                    "ticket keys: timed out",
                )))
            });
        self.link.record(&result);
        let (current, previous, rotated_at) = match result {
            Ok(state) => state,
            Err(error) => {
                tracing::debug!(listener, %error, "cluster: ticket keys not synced");
                return None;
            }
        };
        let current = KeyBytes::try_from(current.as_slice()).ok();
        let previous = match previous.as_slice() {
            [] => Some(None),
            bytes => KeyBytes::try_from(bytes).ok().map(Some),
        };
        let (Some(current), Some(previous)) = (current, previous) else {
            tracing::warn!(
                listener,
                "cluster: the shared session ticket keys are not 32-byte keys; ignoring them"
            );
            return None;
        };
        Some(TicketKeys {
            current,
            previous,
            rotated_at,
        })
    }
}

/// The Redis hash that holds a listener's ticket keys.
pub fn tickets_key(prefix: &str, listener: &str) -> String {
    format!("{prefix}:tls_tickets:{listener}")
}
