//! Cluster mode (`[cluster]`): several gateways sharing one Redis.
//!
//! - [`link`]: the self-healing connection, its up/down state and health check.
//! - [`events`]: bans and operator rules made on one node reach every node's XDP maps
//!   (pub/sub on `{prefix}:events`, durable hashes `{prefix}:bans` and `{prefix}:rules`),
//!   published and applied in batches.
//! - [`catch_up`]: a joining node reads the hashes a page at a time and applies them in
//!   batches (a million entries in seconds), correct while changes keep coming.
//! - [`limiter`]: [`ClusterLimiter`], cluster-wide GCRA rate limits with a local fast path
//!   and a configured fallback while Redis is down.
//! - [`metering`]: per-(consumer, route) totals summed over the nodes (`{prefix}:metering`).
//! - [`tickets`]: the https listeners' session ticket keys, rotated once for all nodes.

pub mod catch_up;
pub mod events;
pub mod limiter;
pub mod link;
pub mod metering;
mod replica;
pub mod tickets;

use std::sync::Arc;

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};

pub use events::{ChangeSink, apply_in_order, apply_remote};
pub use limiter::{ClusterLimiter, Decision, LimiterOptions, LocalLimiter, Rate, Source};
pub use link::RedisLink;
pub use metering::LocalMetering;
pub use replica::Replica;
pub use tickets::ClusterTickets;

use crate::config::ClusterConfig;

/// Cluster metrics, one set per link, registered on the metrics endpoint when `[cluster]` is
/// configured.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    /// 1 while Redis answers, 0 while it does not.
    pub redis_up: Gauge,
    /// Rate-limit decisions taken by the fallback (`cluster.on_redis_down`) because Redis was
    /// down.
    pub fallbacks: Counter,
}

/// This node's part of the cluster.
pub struct Cluster {
    pub config: ClusterConfig,
    pub link: Arc<RedisLink>,
    /// For the throttle stage (the daemon hands it to the proxy): a route limit marked
    /// cluster-wide calls `limiter.check(&format!("{route}|{consumer}"), rate, burst).await`
    /// and answers from the [`Decision`]: allowed -> continue (with `RateLimit-Remaining`/
    /// `-Reset` from `remaining` and `reset_after`); refused -> 429 with `Retry-After` from
    /// `retry_after`, or 503 when [`Decision::is_unavailable`] (Redis down and
    /// `on_redis_down = "deny"`). Without a cluster (or for limits not marked cluster-wide)
    /// the proxy keeps its local limiter.
    pub limiter: Arc<ClusterLimiter>,
    /// The https listeners' session ticket keys, shared so a client resumes on any node.
    pub tickets: Arc<ClusterTickets>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    /// Joins the cluster: opens the link (without waiting for Redis: a node starts while
    /// Redis is down and catches up when it returns), hooks `state` so local changes are
    /// published, and starts the subscriber and the metering push of `metering`.
    pub fn start(
        config: &ClusterConfig,
        state: Arc<dyn Replica>,
        metering: Arc<dyn LocalMetering>,
    ) -> anyhow::Result<Arc<Cluster>> {
        let link = RedisLink::open(
            &config.redis,
            config.password.as_deref(),
            config.tls_ca.as_deref(),
        )?;
        let keys = events::Keys::new(&config.key_prefix);
        let (sink, changes) = ChangeSink::channel();
        let unpublished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        state.set_change_sink(sink.clone());
        let tasks = vec![
            tokio::spawn(events::publish(
                link.clone(),
                keys.clone(),
                config.node.clone(),
                changes,
                unpublished.clone(),
            )),
            tokio::spawn(events::subscribe(
                link.clone(),
                keys,
                config.node.clone(),
                state,
                unpublished,
                sink,
            )),
            tokio::spawn(metering::push(
                link.clone(),
                metering_key(&config.key_prefix),
                config.metering_interval,
                metering,
            )),
        ];
        let limiter = Arc::new(ClusterLimiter::new(
            link.clone(),
            &config.key_prefix,
            config.on_redis_down,
            LimiterOptions::default(),
        ));
        tracing::info!(node = %config.node, redis = %config.redis, on_redis_down = ?config.on_redis_down, "cluster mode: joining");
        let tickets = Arc::new(ClusterTickets::new(link.clone(), &config.key_prefix));
        Ok(Arc::new(Cluster {
            config: config.clone(),
            link,
            limiter,
            tickets,
            tasks,
        }))
    }

    /// Adds the cluster's metrics to the daemon's registry.
    pub fn register(&self, registry: &mut Registry) {
        let metrics = &self.link.metrics;
        registry.register(
            "gateway_cluster_redis_up",
            "1 while the cluster's Redis answers, 0 while it does not",
            metrics.redis_up.clone(),
        );
        registry.register(
            "gateway_cluster_fallbacks",
            "Rate-limit decisions taken by cluster.on_redis_down because Redis was down",
            metrics.fallbacks.clone(),
        );
    }

    /// Cluster-wide metering totals.
    pub async fn metering(&self) -> redis::RedisResult<crate::api::Metering> {
        metering::read(&self.link, &metering_key(&self.config.key_prefix)).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The Redis hash that holds the cluster-wide metering totals.
pub fn metering_key(prefix: &str) -> String {
    format!("{prefix}:metering")
}
