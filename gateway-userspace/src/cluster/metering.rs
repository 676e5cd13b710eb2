//! Cluster-wide metering: every `cluster.metering_interval` each node adds what it metered
//! since its last successful push to the hash `{prefix}:metering` (HINCRBY, fields
//! `consumer|route|requests`, `...|bytes_in`, `...|bytes_out`, in one MULTI). A push that
//! fails is retried with the larger delta next time, so nothing is lost or counted twice.

use std::{collections::HashMap, sync::Arc, time::Duration};

use super::link::RedisLink;
use crate::api::{Metering, MeteringRow};

const FIELDS: [&str; 3] = ["requests", "bytes_in", "bytes_out"];

type Totals = HashMap<(String, String), [u64; 3]>;

/// This node's own metering totals since start: the daemon hands the cluster one.
pub trait LocalMetering: Send + Sync + 'static {
    fn totals(&self) -> Metering;
}

fn local_totals(local: &dyn LocalMetering) -> Totals {
    local
        .totals()
        .rows
        .into_iter()
        .map(|row| {
            (
                (row.consumer, row.route),
                [row.requests, row.bytes_in, row.bytes_out],
            )
        })
        .collect()
}

/// Pushes this node's metering deltas until the link is dropped.
pub async fn push(
    link: Arc<RedisLink>,
    key: String,
    every: Duration,
    local: Arc<dyn LocalMetering>,
) {
    let mut pushed: Totals = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(error) = push_once(&link, &key, local.as_ref(), &mut pushed).await {
            tracing::debug!(%error, "cluster: metering push failed; retried next time");
        }
    }
}

/// Adds the deltas since `pushed` to Redis; on success `pushed` becomes the new totals.
pub async fn push_once(
    link: &RedisLink,
    key: &str,
    local: &dyn LocalMetering,
    pushed: &mut Totals,
) -> redis::RedisResult<()> {
    let totals = local_totals(local);
    let mut pipe = redis::pipe();
    pipe.atomic();
    let mut any = false;
    for ((consumer, route), counts) in &totals {
        let before = pushed
            .get(&(consumer.clone(), route.clone()))
            .copied()
            .unwrap_or([0; 3]);
        for (index, field) in FIELDS.iter().enumerate() {
            let delta = counts[index].saturating_sub(before[index]);
            if delta > 0 {
                any = true;
                pipe.hincr(key, format!("{consumer}|{route}|{field}"), delta)
                    .ignore();
            }
        }
    }
    if !any {
        return Ok(());
    }
    let Some(mut connection) = link.connection() else {
        return Err(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "Redis is down",
        )));
    };
    let result: redis::RedisResult<()> = pipe.query_async(&mut connection).await;
    link.record(&result);
    result?;
    *pushed = totals;
    Ok(())
}

/// The cluster's totals, as the admin API shows metering.
pub async fn read(link: &RedisLink, key: &str) -> redis::RedisResult<Metering> {
    let Some(mut connection) = link.connection() else {
        return Err(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "Redis is down",
        )));
    };
    let result: redis::RedisResult<Vec<(String, u64)>> = redis::cmd("HGETALL")
        .arg(key)
        .query_async(&mut connection)
        .await;
    link.record(&result);
    let mut rows: HashMap<(String, String), [u64; 3]> = HashMap::new();
    for (field, value) in result? {
        // consumer|route|metric; routes hold no '|', consumers might.
        let mut parts = field.rsplitn(3, '|');
        let (Some(metric), Some(route), Some(consumer)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Some(index) = FIELDS.iter().position(|name| *name == metric) else {
            continue;
        };
        rows.entry((consumer.to_owned(), route.to_owned()))
            .or_default()[index] = value;
    }
    let mut rows: Vec<MeteringRow> = rows
        .into_iter()
        .map(
            |((consumer, route), [requests, bytes_in, bytes_out])| MeteringRow {
                consumer,
                route,
                requests,
                bytes_in,
                bytes_out,
            },
        )
        .collect();
    rows.sort_by(|a, b| (&a.consumer, &a.route).cmp(&(&b.consumer, &b.route)));
    Ok(Metering { rows })
}
