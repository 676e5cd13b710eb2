//! Ban and operator-rule propagation. A change made on this node (CLI, admin API, auto-bans)
//! goes through [`ChangeSink`] to the publisher, which records it in a durable hash
//! (`{prefix}:bans`, `{prefix}:rules`, field: the network, value: the event) and publishes it
//! on `{prefix}:events`. Every node subscribes and applies the changes of other nodes to its
//! own [`Replica`] (the firewall: store and XDP maps), without publishing them again: events
//! carry their origin node, and a node ignores its own. After (re)subscribing, a node catches
//! up from the hashes ([`super::catch_up`]).
//!
//! Bulk: writes stay one `HSET` + `PUBLISH` per change, but the publisher sends whatever is
//! waiting (up to [`PUBLISH_BATCH`] changes, an import or a burst of auto-bans) in one
//! MULTI, one round trip; the subscriber takes every message already received (up to
//! [`EVENT_BATCH`]) and applies runs of additions in one [`Replica::replicate`] call.
//!
//! Expiry: a ban or rule with a TTL is stored with its wall-clock expiry (Unix seconds; the
//! nodes' clocks are assumed NTP-synchronised). Readers skip and delete expired entries.
//! Removals made while a node was down are not replayed to it (the hashes hold what exists,
//! not what was removed).

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::{FutureExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::Replica;
use super::link::RedisLink;
use crate::api::{
    BanRequest, RuleRequest,
    failure::ServiceError,
    records::{OperatorBan, OperatorRule},
    replication::{Change, Replicated},
    valid::{self, Invalid},
};

/// A change and the node it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub origin: String,
    #[serde(flatten)]
    pub change: Change,
}

/// Where [`Replica`] (the firewall) reports the operator changes made on this node.
#[derive(Debug, Clone)]
pub struct ChangeSink {
    sender: mpsc::UnboundedSender<Change>,
    /// While a catch-up runs: this node's changes made meanwhile, applied again after it
    /// (an entry read from Redis before such a change must not undo it here).
    recording: Arc<Mutex<Option<Vec<Change>>>>,
}

impl ChangeSink {
    pub fn channel() -> (ChangeSink, mpsc::UnboundedReceiver<Change>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let sink = ChangeSink {
            sender,
            recording: Arc::default(),
        };
        (sink, receiver)
    }

    /// Queues `change`, made on this node, for the cluster.
    pub fn send(&self, change: Change) {
        if let Some(recorded) = self.recording().as_mut() {
            recorded.push(change.clone());
        }
        let _ = self.sender.send(change);
    }

    fn recording(&self) -> std::sync::MutexGuard<'_, Option<Vec<Change>>> {
        self.recording.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn start_recording(&self) {
        *self.recording() = Some(Vec::new());
    }

    /// This node's changes since [`start_recording`](Self::start_recording), in order.
    pub(super) fn stop_recording(&self) -> Vec<Change> {
        self.recording().take().unwrap_or_default()
    }
}

pub(super) fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

fn expired(expires_at: Option<f64>, now: f64) -> bool {
    expires_at.is_some_and(|at| at <= now)
}

/// An addition from another node, checked as the admin API checks a request (another node's
/// data is untrusted input too); its expiry held to the API's range (a little more is
/// allowed for clock skew, and capped). `Ok(None)`: expired, or a removal.
pub(super) fn replicated(change: &Change, now: f64) -> Result<Option<Replicated>, Invalid> {
    let left = |expires_at: Option<f64>| {
        expires_at
            .map(|at| valid::expiry("expires_at", at, now))
            .transpose()
    };
    let capped = |expires_at: Option<f64>| {
        expires_at.map(|at| at.min(now + valid::MAX_DURATION.as_secs_f64()))
    };
    Ok(Some(match change {
        Change::Ban { expires_at, .. } | Change::AddRule { expires_at, .. }
            if expired(*expires_at, now) =>
        {
            return Ok(None);
        }
        Change::Ban {
            cidr,
            expires_at,
            comment,
        } => {
            let valid = BanRequest {
                cidr: cidr.clone(),
                duration_secs: left(*expires_at)?,
                comment: comment.clone(),
            }
            .validate()?;
            Replicated::Ban(OperatorBan {
                cidr: valid.net,
                expires_at: capped(*expires_at),
                comment: valid.comment,
            })
        }
        Change::AddRule {
            cidr,
            action,
            comment,
            expires_at,
            shadow,
        } => {
            let valid = RuleRequest {
                cidr: cidr.clone(),
                action: *action,
                comment: comment.clone(),
                ttl_secs: left(*expires_at)?,
                shadow: *shadow,
            }
            .validate()?;
            Replicated::Rule(OperatorRule {
                cidr: valid.net,
                action: valid.action,
                comment: valid.comment,
                expires_at: capped(*expires_at),
                shadow: valid.shadow,
                seq: 0,
            })
        }
        Change::Promote { cidr } => Replicated::Promote(valid::cidr("cidr", cidr)?),
        Change::Unban { .. } | Change::RemoveRule { .. } => return Ok(None),
    }))
}

/// Applies another node's change to this node's state (store and XDP maps) without
/// publishing it again. Changes this node already has are skipped; returns whether
/// anything changed.
pub fn apply_remote(state: &dyn Replica, change: &Change) -> bool {
    apply_in_order(state, std::slice::from_ref(change)) > 0
}

/// Applies other nodes' changes in order: each run of additions in one
/// [`Replica::replicate`] call, removals one at a time. Returns how many changed anything.
pub fn apply_in_order(state: &dyn Replica, changes: &[Change]) -> usize {
    let now = now();
    let mut applied = 0;
    let mut run: Vec<Replicated> = Vec::new();
    let flush = |run: &mut Vec<Replicated>| {
        let changed = replicate(state, run);
        run.clear();
        changed
    };
    for change in changes {
        if change.is_removal() {
            applied += flush(&mut run);
            applied += usize::from(remove(state, change));
            continue;
        }
        match replicated(change, now) {
            Ok(Some(item)) => run.push(item),
            Ok(None) => {}
            Err(invalid) => {
                tracing::warn!(?change, reason = %invalid, "cluster: refusing another node's change");
            }
        }
    }
    applied + flush(&mut run)
}

/// One batch into the firewall; a failure is logged (the periodic resync tries again).
pub(super) fn replicate(state: &dyn Replica, batch: &[Replicated]) -> usize {
    if batch.is_empty() {
        return 0;
    }
    match state.replicate(batch) {
        Ok(changed) => changed,
        Err(failure) => {
            tracing::warn!(entries = batch.len(), reason = %failure, "cluster: applying other nodes' changes failed");
            0
        }
    }
}

fn remove(state: &dyn Replica, change: &Change) -> bool {
    let result = match change {
        Change::Unban { cidr } => state.unban(cidr),
        Change::RemoveRule { cidr } => state.remove_rule(cidr),
        _ => return false,
    };
    match result {
        Ok(()) => true,
        // Already gone: nothing to do here.
        Err(failure @ (ServiceError::NotFound(_) | ServiceError::Conflict(_))) => {
            tracing::debug!(?change, reason = %failure, "cluster: remote change not applied");
            false
        }
        Err(failure) => {
            tracing::warn!(?change, reason = %failure, "cluster: applying a remote change failed");
            false
        }
    }
}

/// Redis keys and channel of one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    pub events: String,
    pub bans: String,
    pub rules: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            events: format!("{prefix}:events"),
            bans: format!("{prefix}:bans"),
            rules: format!("{prefix}:rules"),
        }
    }
}

/// How often a subscribed node reads the durable hashes again (and prunes expired entries).
const RESYNC_INTERVAL: Duration = Duration::from_secs(30);

/// Most changes kept while Redis is down; older ones are dropped (and logged) beyond it. An
/// import of a million rules made while Redis is away is still published when it returns
/// (about 150 MB at worst).
const MAX_PENDING: usize = 1_000_000;

/// Most changes sent in one MULTI (one round trip).
pub const PUBLISH_BATCH: usize = 2_000;

/// Most events taken from the subscription at once.
pub const EVENT_BATCH: usize = 10_000;

/// Publishes this node's changes, a batch per round trip, keeping them while Redis is down
/// and sending them when it returns.
pub async fn publish(
    link: Arc<RedisLink>,
    keys: Keys,
    node: String,
    mut changes: mpsc::UnboundedReceiver<Change>,
    unpublished: Arc<AtomicUsize>,
) {
    let mut pending: VecDeque<Change> = VecDeque::new();
    let mut up = link.watch();
    let mut dropped = 0usize;
    loop {
        while !pending.is_empty() {
            let Some(mut connection) = link.connection() else {
                break;
            };
            let count = pending.len().min(PUBLISH_BATCH);
            let batch = pending.range(..count);
            let result = record(&mut connection, &keys, &node, batch).await;
            link.record(&result);
            match result {
                Ok(()) => {
                    pending.drain(..count);
                    unpublished.store(pending.len(), Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::debug!(%error, "cluster: publishing changes failed; kept for later");
                    break;
                }
            }
        }
        unpublished.store(pending.len(), Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "cluster: too many changes waiting for Redis; the oldest were dropped"
            );
            dropped = 0;
        }
        tokio::select! {
            change = changes.recv() => match change {
                Some(change) => {
                    // What else is waiting joins it (a batch at a time, so that what
                    // waits in `pending` is only what Redis has not taken).
                    let more = std::iter::from_fn(|| changes.try_recv().ok());
                    for change in std::iter::once(change).chain(more).take(PUBLISH_BATCH) {
                        if pending.len() == MAX_PENDING {
                            pending.pop_front();
                            dropped += 1;
                        }
                        pending.push_back(change);
                    }
                    unpublished.store(pending.len(), Ordering::Relaxed);
                }
                None => return,
            },
            _ = up.changed() => {}
            // While changes wait, look again now and then.
            _ = tokio::time::sleep(Duration::from_millis(500)), if !pending.is_empty() => {}
        }
    }
}

/// The durable records and the events of `changes`, in one MULTI: one round trip.
async fn record(
    connection: &mut redis::aio::ConnectionManager,
    keys: &Keys,
    node: &str,
    changes: impl Iterator<Item = &Change> + Clone,
) -> redis::RedisResult<()> {
    // A promotion rewrites the stored rule: those are read first, in one round trip.
    let promoted: Vec<&str> = changes
        .clone()
        .filter_map(|change| match change {
            Change::Promote { cidr } => Some(cidr.as_str()),
            _ => None,
        })
        .collect();
    let mut rules: HashMap<String, Event> = HashMap::new();
    if !promoted.is_empty() {
        let stored: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&keys.rules)
            .arg(&promoted)
            .query_async(connection)
            .await?;
        for (cidr, text) in promoted.iter().zip(stored) {
            if let Some(event) = text.and_then(|text| serde_json::from_str::<Event>(&text).ok()) {
                rules.insert((*cidr).to_owned(), event);
            }
        }
    }
    let mut pipe = redis::pipe();
    pipe.atomic();
    for change in changes {
        let event = Event {
            origin: node.to_owned(),
            change: change.clone(),
        };
        let text = serde_json::to_string(&event).expect("events serialize");
        match change {
            Change::Ban { cidr, .. } => pipe.hset(&keys.bans, cidr, &text).ignore(),
            Change::Unban { cidr } => pipe.hdel(&keys.bans, cidr).ignore(),
            Change::AddRule { cidr, .. } => {
                rules.insert(cidr.clone(), event);
                pipe.hset(&keys.rules, cidr, &text).ignore()
            }
            Change::RemoveRule { cidr } => {
                rules.remove(cidr);
                pipe.hdel(&keys.rules, cidr).ignore()
            }
            Change::Promote { cidr } => match rules.get_mut(cidr) {
                Some(stored) => {
                    if let Change::AddRule { shadow, .. } = &mut stored.change {
                        *shadow = false;
                    }
                    let promoted = serde_json::to_string(stored).expect("events serialize");
                    pipe.hset(&keys.rules, cidr, promoted).ignore()
                }
                None => &mut pipe,
            },
        };
        pipe.publish(&keys.events, &text).ignore();
    }
    pipe.query_async(connection).await
}

/// Subscribes to the other nodes' changes and applies them; after every (re)subscription,
/// catches up from the durable hashes.
///
/// `unpublished` counts this node's changes not yet in Redis: catching up waits (a little)
/// for them, so that a ban lifted here while Redis was down is not restored from the hash
/// before the lifting is published.
pub async fn subscribe(
    link: Arc<RedisLink>,
    keys: Keys,
    node: String,
    state: Arc<dyn Replica>,
    unpublished: Arc<AtomicUsize>,
    local: ChangeSink,
) {
    let mut up = link.watch();
    loop {
        if up.wait_for(|up| *up).await.is_err() {
            return;
        }
        let pubsub = tokio::time::timeout(
            super::link::CONNECT_TIMEOUT,
            link.client().get_async_pubsub(),
        )
        .await;
        let mut pubsub = match pubsub {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(error)) => {
                tracing::debug!(%error, "cluster: subscribing failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(_) => continue,
        };
        if let Err(error) = pubsub.subscribe(&keys.events).await {
            tracing::debug!(%error, "cluster: subscribing failed; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        // Subscribed first, then read: what is published meanwhile waits in the
        // subscription and is applied after, in order, so the last change of each entry wins.
        // A failed read is retried on the same subscription: a scan cut short may have
        // applied entries that were removed meanwhile, and only the removals waiting in this
        // subscription undo them.
        let caught_up = loop {
            wait_published(&unpublished).await;
            let started = std::time::Instant::now();
            match super::catch_up::catch_up(&link, &keys, &state, &local).await {
                Ok(applied) => {
                    tracing::info!(
                        applied,
                        took_ms = started.elapsed().as_millis() as u64,
                        channel = %keys.events,
                        "cluster: subscribed to ban and rule changes; caught up from Redis"
                    );
                    break true;
                }
                Err(error) => {
                    tracing::warn!(%error, "cluster: reading the cluster's bans and rules failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if !*up.borrow() {
                        break false;
                    }
                }
            }
        };
        if !caught_up {
            continue;
        }
        let mut messages = pubsub.into_on_message();
        let mut resync = tokio::time::interval_at(
            tokio::time::Instant::now() + RESYNC_INTERVAL,
            RESYNC_INTERVAL,
        );
        loop {
            let first = tokio::select! {
                message = messages.next() => match message {
                    Some(message) => Some(message.get_payload_bytes().to_vec()),
                    None => break,
                },
                _ = resync.tick() => None,
                result = up.wait_for(|up| !*up) => {
                    if result.is_err() { return; }
                    break;
                }
            };
            let Some(first) = first else {
                // Anti-entropy: heals a lost message, and deletes expired entries.
                if unpublished.load(Ordering::Relaxed) == 0 {
                    match super::catch_up::catch_up(&link, &keys, &state, &local).await {
                        Ok(0) => {}
                        Ok(applied) => tracing::info!(
                            applied,
                            "cluster: periodic resync applied missed changes"
                        ),
                        Err(error) => tracing::debug!(%error, "cluster: periodic resync failed"),
                    }
                }
                continue;
            };
            // Whatever else has arrived is applied with it.
            let mut payloads = vec![first];
            while payloads.len() < EVENT_BATCH {
                match messages.next().now_or_never() {
                    Some(Some(message)) => payloads.push(message.get_payload_bytes().to_vec()),
                    _ => break,
                }
            }
            apply_events(&state, &node, &payloads).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (a little: at most two seconds) until this node's changes are in Redis.
async fn wait_published(unpublished: &AtomicUsize) {
    for _ in 0..40 {
        if unpublished.load(Ordering::Relaxed) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The other nodes' events among `payloads`, applied in order off the async workers.
async fn apply_events(state: &Arc<dyn Replica>, node: &str, payloads: &[Vec<u8>]) {
    let mut changes = Vec::with_capacity(payloads.len());
    for payload in payloads {
        match serde_json::from_slice::<Event>(payload) {
            Ok(event) if event.origin == node => {}
            Ok(event) => changes.push(event),
            Err(error) => tracing::warn!(%error, "cluster: ignoring a malformed event"),
        }
    }
    if changes.is_empty() {
        return;
    }
    let state = state.clone();
    let result = tokio::task::spawn_blocking(move || {
        let only: Vec<Change> = changes.iter().map(|event| event.change.clone()).collect();
        (apply_in_order(state.as_ref(), &only), changes)
    })
    .await;
    match result {
        Ok((1, changes)) if changes.len() == 1 => {
            tracing::info!(origin = %changes[0].origin, change = ?changes[0].change, "cluster: applied a change from another node");
        }
        Ok((0, _)) => {}
        Ok((applied, changes)) => {
            tracing::info!(
                applied,
                events = changes.len(),
                "cluster: applied a batch of changes from other nodes"
            );
        }
        Err(error) => tracing::warn!(%error, "cluster: applying remote changes panicked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RuleAction;

    fn state(dir: &std::path::Path) -> crate::firewall::Firewall {
        let config = crate::config::Config::parse(&format!(
            "[admin]\nstate_file = \"{}/state.json\"\n[xdp]\nmode = \"off\"",
            dir.display()
        ))
        .unwrap();
        crate::firewall::Firewall::start(None, config.firewall, &config.xdp, &config.admin).unwrap()
    }

    #[test]
    fn a_remote_expiry_out_of_range_is_refused_and_not_saved() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let now = now();
        let max = crate::api::valid::MAX_DURATION.as_secs_f64();
        let ban = |cidr: &str, expires_at: Option<f64>| Change::Ban {
            cidr: cidr.to_owned(),
            expires_at,
            comment: None,
        };
        let rule = |cidr: &str, expires_at: Option<f64>| Change::AddRule {
            cidr: cidr.to_owned(),
            action: RuleAction::Deny,
            comment: None,
            expires_at,
            shadow: false,
        };
        for refused in [
            ban("192.0.2.1", Some(1e20)),
            ban("192.0.2.2", Some(f64::MAX)),
            ban("192.0.2.3", Some(now + max + 2.0 * 86400.0)),
            ban("192.0.2.4/8", None),
            rule("198.51.100.0/24", Some(1e20)),
        ] {
            assert!(!apply_remote(&state, &refused), "{refused:?}");
        }
        // Another node's clock a little ahead: capped at the longest, not refused.
        for taken in [
            ban("192.0.2.5", Some(now + 60.0)),
            ban("192.0.2.6", Some(now + max + 3600.0)),
            ban("192.0.2.7", None),
            rule("198.51.100.0/24", Some(now + 60.0)),
        ] {
            assert!(apply_remote(&state, &taken), "{taken:?}");
        }
        let bans: Vec<String> = state
            .bans(Default::default())
            .unwrap()
            .bans
            .into_iter()
            .map(|b| b.cidr)
            .collect();
        assert_eq!(bans, ["192.0.2.5/32", "192.0.2.6/32", "192.0.2.7/32"]);
        // What the store keeps is what was taken: nothing refused was saved.
        drop(state);
        let store = crate::firewall::store::Store::open(&dir.path().join("firewall.redb")).unwrap();
        let saved: Vec<String> = store
            .load(now, 100)
            .unwrap()
            .bans
            .iter()
            .map(|ban| ban.cidr.to_string())
            .collect();
        assert_eq!(saved, ["192.0.2.5/32", "192.0.2.6/32", "192.0.2.7/32"]);
    }

    #[test]
    fn a_local_unban_during_catch_up_is_not_undone_by_a_stale_entry() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let (sink, mut published) = ChangeSink::channel();
        state.set_change_listener(Box::new(sink.clone()));
        let request = |cidr: &str| BanRequest {
            cidr: cidr.to_owned(),
            duration_secs: None,
            comment: Some("here".into()),
        };
        state.ban(&request("192.0.2.1")).unwrap();
        state.ban(&request("192.0.2.2")).unwrap();
        sink.start_recording();
        // Lifted here while a catch-up reads Redis, which still holds both bans...
        state.unban("192.0.2.1").unwrap();
        // ...so the catch-up's batch (read before the lifting) restores it.
        let stale: Vec<Change> = ["192.0.2.1/32", "192.0.2.2/32", "192.0.2.3/32"]
            .map(|cidr| Change::Ban {
                cidr: cidr.to_owned(),
                expires_at: None,
                comment: Some("here".into()),
            })
            .to_vec();
        assert_eq!(apply_in_order(&state, &stale), 2);
        // Applied again after the catch-up, this node's own changes win.
        let mine = sink.stop_recording();
        assert_eq!(
            mine,
            [Change::Unban {
                cidr: "192.0.2.1/32".into()
            }]
        );
        assert_eq!(apply_in_order(&state, &mine), 1);
        let bans: Vec<String> = state
            .bans(Default::default())
            .unwrap()
            .bans
            .into_iter()
            .map(|ban| ban.cidr)
            .collect();
        assert_eq!(bans, ["192.0.2.2/32", "192.0.2.3/32"]);
        // Published: the two bans and the unban made here, nothing applied from elsewhere.
        let mut sent = Vec::new();
        while let Ok(change) = published.try_recv() {
            sent.push(change);
        }
        assert_eq!(sent.len(), 3, "{sent:?}");
        assert!(sink.stop_recording().is_empty(), "recording stopped");
    }

    /// Rules as (cidr, action, shadow) in listing order, and bans as (cidr, comment, timed).
    fn listing(state: &crate::firewall::Firewall) -> (Vec<String>, Vec<String>) {
        let rules = state.rules(Default::default()).unwrap().rules;
        let bans = state.bans(Default::default()).unwrap().bans;
        (
            rules
                .iter()
                .map(|rule| format!("{} {} {}", rule.cidr, rule.action, rule.shadow))
                .collect(),
            bans.iter()
                .map(|ban| {
                    let timed = ban.expires_in_secs.is_some();
                    format!("{} {:?} {timed}", ban.cidr, ban.comment)
                })
                .collect(),
        )
    }

    fn any_change() -> impl proptest::strategy::Strategy<Value = Change> {
        use proptest::prelude::*;
        let cidr = prop::sample::select(vec![
            "192.0.2.0/24",
            "192.0.2.7/32",
            "2001:db8::/64",
            "198.51.100.0/25",
        ])
        .prop_map(str::to_owned);
        let expires_at = prop::option::of(Just(now() + 3600.0));
        let comment =
            prop::option::of(prop::sample::select(vec!["a", "b"]).prop_map(str::to_owned));
        prop_oneof![
            (cidr.clone(), expires_at.clone(), comment.clone()).prop_map(
                |(cidr, expires_at, comment)| Change::Ban {
                    cidr,
                    expires_at,
                    comment
                }
            ),
            cidr.clone().prop_map(|cidr| Change::Unban { cidr }),
            (
                cidr.clone(),
                any::<bool>(),
                any::<bool>(),
                comment,
                expires_at
            )
                .prop_map(|(cidr, deny, shadow, comment, expires_at)| {
                    Change::AddRule {
                        cidr,
                        action: if deny || shadow {
                            RuleAction::Deny
                        } else {
                            RuleAction::Allow
                        },
                        comment,
                        expires_at,
                        shadow,
                    }
                }),
            cidr.clone().prop_map(|cidr| Change::RemoveRule { cidr }),
            cidr.prop_map(|cidr| Change::Promote { cidr }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Batching changes nothing: any sequence applied as one batch leaves the firewall as
        /// the same changes applied one at a time.
        #[test]
        fn a_batch_ends_where_one_change_at_a_time_ends(
            changes in proptest::collection::vec(any_change(), 1..30)
        ) {
            let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (batched, single) = (state(one.path()), state(two.path()));
            apply_in_order(&batched, &changes);
            for change in &changes {
                apply_remote(&single, change);
            }
            proptest::prop_assert_eq!(listing(&batched), listing(&single));
        }
    }
}
