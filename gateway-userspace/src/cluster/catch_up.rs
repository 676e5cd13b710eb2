//! Catching up from the durable hashes (`{prefix}:bans`, `{prefix}:rules`): at every
//! (re)subscription, and every [`RESYNC_INTERVAL`](super::events) as anti-entropy.
//!
//! Design, for a million entries:
//! - Read with `HSCAN ... COUNT` [`SCAN_COUNT`]: pages of thousands of entries a round trip,
//!   never one reply of the whole hash (which would stall Redis for every node and hold it
//!   all in memory at once). Reading runs ahead of applying by a few pages (a bounded
//!   channel), so Redis round trips and the firewall's work overlap.
//! - Apply [`APPLY_BATCH`] entries at a time through [`Replica::replicate`]: one store
//!   transaction and the map writes of what changed, per batch; what this node has already
//!   is skipped, so a resync of a node in step writes nothing.
//! - Writes stay cheap: one `HSET` + `PUBLISH` per change, no snapshot to rebuild.
//!
//! Correct while changes keep coming: the node subscribes before it scans, and applies
//! what was published meanwhile after the scan, in order. An entry the scan read stale is
//! therefore followed by the event that changed it, so the last change of each entry wins
//! (an entry removed during the scan stays removed, one added is added). `HSCAN` returns
//! every entry present for the whole scan, some perhaps twice (harmless: applying is
//! idempotent). This node's own changes made during the scan are not echoed back to it, so
//! they are recorded and applied again after the scan: a stale entry read before an unban
//! made here cannot restore the ban.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::api::replication::Replicated;

use super::{
    ChangeSink, Replica,
    events::{Event, Keys, apply_in_order, now, replicate, replicated},
    link::RedisLink,
};

/// Entries asked for per `HSCAN` (Redis treats it as a hint).
pub const SCAN_COUNT: usize = 5_000;

/// Entries applied per batch: the firewall's lock is held for one batch at a time.
pub const APPLY_BATCH: usize = 50_000;

/// Pages read ahead of the applier.
const PAGES_AHEAD: usize = 4;

/// Deletes an expired entry only if no node wrote it again since it was read.
const DELETE_IF_UNCHANGED: &str = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0";

/// One page of a hash: (field, value) pairs.
struct Page {
    key: String,
    entries: Vec<(String, String)>,
}

/// What the applier made of the pages.
#[derive(Default)]
struct Outcome {
    applied: usize,
    /// (key, field, value) of entries that expired.
    expired: Vec<(String, String, String)>,
    /// Entries that are not events, or that fail the checks: kept, reported once.
    refused: usize,
    example: Option<String>,
}

/// Applies the durable bans and rules this node lacks and deletes expired ones. Returns how
/// many entries changed here.
pub async fn catch_up(
    link: &RedisLink,
    keys: &Keys,
    state: &Arc<dyn Replica>,
    local: &ChangeSink,
) -> redis::RedisResult<usize> {
    let Some(mut connection) = link.connection() else {
        return Err(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "Redis is down",
        )));
    };
    local.start_recording();
    let read = read_and_apply(link, &mut connection, keys, state).await;
    let mine = local.stop_recording();
    if !mine.is_empty() {
        let state = state.clone();
        let _ = tokio::task::spawn_blocking(move || apply_in_order(state.as_ref(), &mine)).await;
    }
    let outcome = read?;
    if outcome.refused > 0 {
        tracing::warn!(
            entries = outcome.refused,
            example = outcome.example.as_deref().unwrap_or(""),
            "cluster: ignoring entries in Redis that are malformed or fail the checks"
        );
    }
    delete_expired(link, &mut connection, &outcome.expired).await;
    Ok(outcome.applied)
}

/// Scans both hashes a page at a time and applies them in batches, off the async workers.
async fn read_and_apply(
    link: &RedisLink,
    connection: &mut redis::aio::ConnectionManager,
    keys: &Keys,
    state: &Arc<dyn Replica>,
) -> redis::RedisResult<Outcome> {
    let (pages, received) = mpsc::channel::<Page>(PAGES_AHEAD);
    let applier = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || apply_pages(state.as_ref(), received))
    };
    let mut failure = None;
    'hashes: for key in [&keys.bans, &keys.rules] {
        let mut cursor = 0u64;
        loop {
            let result: redis::RedisResult<(u64, Vec<(String, String)>)> = redis::cmd("HSCAN")
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query_async(connection)
                .await;
            link.record(&result);
            let (next, entries) = match result {
                Ok(page) => page,
                Err(error) => {
                    failure = Some(error);
                    break 'hashes;
                }
            };
            let page = Page {
                key: key.clone(),
                entries,
            };
            if pages.send(page).await.is_err() {
                break 'hashes;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    drop(pages);
    let outcome = applier.await.unwrap_or_default();
    match failure {
        Some(error) => Err(error),
        None => Ok(outcome),
    }
}

/// The applier: parses and checks each page, and applies a batch whenever
/// [`APPLY_BATCH`] entries are ready or the hash changes (a batch is bans or rules).
fn apply_pages(state: &dyn Replica, mut pages: mpsc::Receiver<Page>) -> Outcome {
    let mut outcome = Outcome::default();
    let mut batch: Vec<Replicated> = Vec::with_capacity(APPLY_BATCH);
    let mut hash: Option<String> = None;
    while let Some(page) = pages.blocking_recv() {
        if hash.as_ref() != Some(&page.key) {
            outcome.applied += replicate(state, &batch);
            batch.clear();
            hash = Some(page.key.clone());
        }
        let now = now();
        for (field, text) in page.entries {
            let checked = serde_json::from_str::<Event>(&text)
                .map_err(|error| error.to_string())
                .and_then(|event| {
                    replicated(&event.change, now).map_err(|invalid| invalid.to_string())
                });
            match checked {
                Ok(Some(item)) => batch.push(item),
                Ok(None) => outcome.expired.push((page.key.clone(), field, text)),
                Err(reason) => {
                    outcome.refused += 1;
                    outcome
                        .example
                        .get_or_insert_with(|| format!("{} {field}: {reason}", page.key));
                }
            }
            if batch.len() >= APPLY_BATCH {
                outcome.applied += replicate(state, &batch);
                batch.clear();
            }
        }
    }
    outcome.applied += replicate(state, &batch);
    outcome
}

/// Deletes the expired entries that nobody wrote again, a pipeline of a thousand at a time.
async fn delete_expired(
    link: &RedisLink,
    connection: &mut redis::aio::ConnectionManager,
    expired: &[(String, String, String)],
) {
    for chunk in expired.chunks(1_000) {
        let mut pipe = redis::pipe();
        for (key, field, value) in chunk {
            pipe.cmd("EVAL")
                .arg(DELETE_IF_UNCHANGED)
                .arg(1)
                .arg(key)
                .arg(field)
                .arg(value)
                .ignore();
        }
        let result: redis::RedisResult<()> = pipe.query_async(connection).await;
        link.record(&result);
        if let Err(error) = result {
            tracing::debug!(%error, "cluster: deleting expired entries failed; the next resync retries");
            return;
        }
    }
}
