//! Ban and operator-rule propagation. A change made on this node (CLI, admin API, later L7
//! feedback) goes through [`ChangeSink`] to the publisher, which records it in a durable hash
//! (`{prefix}:bans`, `{prefix}:rules`) and publishes it on `{prefix}:events` in one MULTI.
//! Every node subscribes and applies the changes of other nodes to its own [`Replica`] (the firewall)
//! (state file and XDP maps) through [`apply_remote`], which does not publish again: events
//! carry their origin node, and a node ignores its own. After (re)subscribing, a node reads
//! the durable hashes and applies what it lacks, so a restarted node catches up.
//!
//! Expiry: a ban or rule with a TTL is stored with its wall-clock expiry (Unix seconds; the
//! nodes' clocks are assumed NTP-synchronised). Readers skip and delete expired entries.
//! Removals made while a node was down are not replayed to it (the hashes hold what exists,
//! not what was removed).

use std::{
    cell::Cell,
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::Replica;
use super::link::RedisLink;
use crate::{
    api::{BanRequest, RuleAction, RuleRequest},
    firewall::FirewallError,
};

/// One change to the operator's firewall, as it travels between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    Ban {
        cidr: String,
        /// Unix seconds; absent: until unbanned.
        expires_at: Option<f64>,
        /// Why (an operator's note, or the auto-ban's trigger).
        #[serde(default)]
        comment: Option<String>,
    },
    Unban {
        cidr: String,
    },
    AddRule {
        cidr: String,
        action: RuleAction,
        comment: Option<String>,
        expires_at: Option<f64>,
        shadow: bool,
    },
    RemoveRule {
        cidr: String,
    },
    Promote {
        cidr: String,
    },
}

/// A change and the node it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub origin: String,
    #[serde(flatten)]
    pub change: Change,
}

thread_local! {
    /// Set while a remote change is applied: what it changes is not published again.
    static APPLYING_REMOTE: Cell<bool> = const { Cell::new(false) };
}

/// Where [`Replica`] (the firewall) reports the operator changes made on this node.
#[derive(Debug, Clone)]
pub struct ChangeSink(mpsc::UnboundedSender<Change>);

impl ChangeSink {
    pub fn channel() -> (ChangeSink, mpsc::UnboundedReceiver<Change>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (ChangeSink(sender), receiver)
    }

    /// Queues `change` for the cluster, unless it is a remote change being applied here.
    pub fn send(&self, change: Change) {
        if !APPLYING_REMOTE.with(Cell::get) {
            let _ = self.0.send(change);
        }
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

fn expired(expires_at: Option<f64>, now: f64) -> bool {
    expires_at.is_some_and(|at| at <= now)
}

/// Applies another node's change to this node's state (state file and XDP maps) without
/// publishing it again. Changes this node already has are skipped; returns whether
/// anything changed.
pub fn apply_remote(state: &dyn Replica, change: &Change) -> bool {
    struct Remote;
    impl Drop for Remote {
        fn drop(&mut self) {
            APPLYING_REMOTE.with(|flag| flag.set(false));
        }
    }
    APPLYING_REMOTE.with(|flag| flag.set(true));
    let _remote = Remote;
    let now = now();
    // Another node's expiry is untrusted input too: held to the API's range (a little more
    // for clock skew), then checked again as a request by the firewall.
    let left = |expires_at: Option<f64>| {
        expires_at
            .map(|at| crate::api::valid::expiry("expires_at", at, now))
            .transpose()
    };
    let result = match change {
        Change::Ban {
            cidr,
            expires_at,
            comment,
        } => {
            if expired(*expires_at, now) {
                return false;
            }
            left(*expires_at)
                .map_err(FirewallError::from)
                .and_then(|duration_secs| {
                    state.ban(&BanRequest {
                        cidr: cidr.clone(),
                        duration_secs,
                        comment: comment.clone(),
                    })
                })
        }
        Change::Unban { cidr } => state.unban(cidr),
        Change::AddRule {
            cidr,
            action,
            comment,
            expires_at,
            shadow,
        } => {
            if expired(*expires_at, now) {
                return false;
            }
            match existing_rule(state, cidr) {
                // Promoted elsewhere (a missed Promote event, seen again at catch-up).
                Some(true) if !*shadow => return state.promote(cidr).is_ok(),
                Some(_) => return false,
                None => {}
            }
            left(*expires_at)
                .map_err(FirewallError::from)
                .and_then(|ttl_secs| {
                    state.add_rule(&RuleRequest {
                        cidr: cidr.clone(),
                        action: *action,
                        comment: comment.clone(),
                        ttl_secs,
                        shadow: *shadow,
                    })
                })
        }
        Change::RemoveRule { cidr } => state.remove_rule(cidr),
        Change::Promote { cidr } => state.promote(cidr),
    };
    match result {
        Ok(()) => true,
        // Already gone, already there, or bans without XDP: nothing to do here.
        Err(failure @ (FirewallError::NotFound(_) | FirewallError::Conflict(_))) => {
            tracing::debug!(?change, reason = %failure, "cluster: remote change not applied");
            false
        }
        Err(failure) => {
            tracing::warn!(?change, reason = %failure, "cluster: applying a remote change failed");
            false
        }
    }
}

/// `192.0.2.7` -> `192.0.2.7/32`.
fn canonical(cidr: &str) -> Option<ipnet::IpNet> {
    cidr.parse::<ipnet::IpNet>()
        .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .ok()
}

/// Whether a rule for `cidr` exists here, and if so whether it is a shadow rule.
fn existing_rule(state: &dyn Replica, cidr: &str) -> Option<bool> {
    state.rule_is_shadow(canonical(cidr)?)
}

fn is_banned(state: &dyn Replica, cidr: &str) -> bool {
    canonical(cidr).is_some_and(|net| state.is_banned(net))
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

/// Most changes kept while Redis is down; older ones are dropped (and logged) beyond it.
const MAX_PENDING: usize = 10_000;

/// Publishes this node's changes, keeping them while Redis is down and sending them when it
/// returns.
pub async fn publish(
    link: Arc<RedisLink>,
    keys: Keys,
    node: String,
    mut changes: mpsc::UnboundedReceiver<Change>,
    unpublished: Arc<AtomicUsize>,
) {
    let mut pending: VecDeque<Change> = VecDeque::new();
    let mut up = link.watch();
    loop {
        while let Some(change) = pending.front() {
            let Some(mut connection) = link.connection() else {
                break;
            };
            let result = record(&mut connection, &keys, &node, change).await;
            link.record(&result);
            match result {
                Ok(()) => {
                    pending.pop_front();
                }
                Err(error) => {
                    tracing::debug!(%error, "cluster: publishing a change failed; kept for later");
                    break;
                }
            }
        }
        unpublished.store(pending.len(), Ordering::Relaxed);
        tokio::select! {
            change = changes.recv() => match change {
                Some(change) => {
                    if pending.len() == MAX_PENDING {
                        tracing::warn!(dropped = ?pending.pop_front(), "cluster: too many changes waiting for Redis; the oldest is dropped");
                    }
                    pending.push_back(change);
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

/// The durable record and the event, in one MULTI.
async fn record(
    connection: &mut redis::aio::ConnectionManager,
    keys: &Keys,
    node: &str,
    change: &Change,
) -> redis::RedisResult<()> {
    let event = serde_json::to_string(&Event {
        origin: node.to_owned(),
        change: change.clone(),
    })
    .expect("events serialize");
    let mut pipe = redis::pipe();
    pipe.atomic();
    match change {
        Change::Ban { cidr, .. } => pipe.hset(&keys.bans, cidr, &event).ignore(),
        Change::Unban { cidr } => pipe.hdel(&keys.bans, cidr).ignore(),
        Change::AddRule { cidr, .. } => pipe.hset(&keys.rules, cidr, &event).ignore(),
        Change::RemoveRule { cidr } => pipe.hdel(&keys.rules, cidr).ignore(),
        Change::Promote { cidr } => {
            let stored: Option<String> = redis::cmd("HGET")
                .arg(&keys.rules)
                .arg(cidr)
                .query_async(connection)
                .await?;
            if let Some(mut stored) =
                stored.and_then(|text| serde_json::from_str::<Event>(&text).ok())
            {
                if let Change::AddRule { shadow, .. } = &mut stored.change {
                    *shadow = false;
                }
                let text = serde_json::to_string(&stored).expect("events serialize");
                pipe.hset(&keys.rules, cidr, text).ignore();
            }
            &mut pipe
        }
    };
    pipe.publish(&keys.events, &event).ignore();
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
        // Subscribed first, then read: nothing published in between is missed.
        for _ in 0..40 {
            if unpublished.load(Ordering::Relaxed) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match catch_up(&link, &keys, &state).await {
            Ok(applied) => tracing::info!(
                applied,
                channel = %keys.events,
                "cluster: subscribed to ban and rule changes; caught up from Redis"
            ),
            Err(error) => {
                tracing::warn!(%error, "cluster: reading the cluster's bans and rules failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        }
        let mut messages = pubsub.into_on_message();
        let mut resync = tokio::time::interval_at(
            tokio::time::Instant::now() + RESYNC_INTERVAL,
            RESYNC_INTERVAL,
        );
        loop {
            let payload = tokio::select! {
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
            let Some(payload) = payload else {
                // Anti-entropy: heals a lost message, and deletes expired entries.
                if unpublished.load(Ordering::Relaxed) == 0 {
                    match catch_up(&link, &keys, &state).await {
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
            match serde_json::from_slice::<Event>(&payload) {
                Ok(event) if event.origin == node => {}
                Ok(event) => {
                    let state = state.clone();
                    let change = event.change.clone();
                    let applied =
                        tokio::task::spawn_blocking(move || apply_remote(state.as_ref(), &change))
                            .await
                            .unwrap_or(false);
                    if applied {
                        tracing::info!(origin = %event.origin, change = ?event.change, "cluster: applied a change from another node");
                    }
                }
                Err(error) => tracing::warn!(%error, "cluster: ignoring a malformed event"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Applies the durable bans and rules this node lacks; deletes expired ones. Returns how
/// many were applied.
pub async fn catch_up(
    link: &RedisLink,
    keys: &Keys,
    state: &Arc<dyn Replica>,
) -> redis::RedisResult<usize> {
    let Some(mut connection) = link.connection() else {
        return Err(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "Redis is down",
        )));
    };
    let mut read = async |key: &str| -> redis::RedisResult<Vec<(String, String)>> {
        let result = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut connection)
            .await;
        link.record(&result);
        result
    };
    let bans = read(&keys.bans).await?;
    let rules = read(&keys.rules).await?;
    let now = now();
    let mut expired_fields: Vec<(&str, String)> = Vec::new();
    let mut todo = Vec::new();
    for (key, (field, text)) in bans
        .into_iter()
        .map(|entry| (keys.bans.as_str(), entry))
        .chain(rules.into_iter().map(|entry| (keys.rules.as_str(), entry)))
    {
        let Ok(event) = serde_json::from_str::<Event>(&text) else {
            tracing::warn!(key, field, "cluster: ignoring a malformed entry");
            continue;
        };
        match &event.change {
            Change::Ban { expires_at, .. } | Change::AddRule { expires_at, .. }
                if expired(*expires_at, now) =>
            {
                expired_fields.push((key, field));
            }
            _ => todo.push(event.change),
        }
    }
    let state = state.clone();
    let applied = tokio::task::spawn_blocking(move || {
        todo.iter()
            .filter(|change| match change {
                Change::Ban { cidr, .. } => !is_banned(state.as_ref(), cidr),
                _ => true,
            })
            .filter(|change| apply_remote(state.as_ref(), change))
            .count()
    })
    .await
    .unwrap_or(0);
    if let Some(mut connection) = link.connection() {
        for (key, field) in expired_fields {
            let result: redis::RedisResult<()> = redis::cmd("HDEL")
                .arg(key)
                .arg(field)
                .query_async(&mut connection)
                .await;
            link.record(&result);
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
