//! The connection to Redis: made in the background (a node starts while Redis is down),
//! re-made by the connection manager after a failure, and watched by a PING every half
//! second so that "down" and "up again" are each logged once and known to every user.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;

/// Commands that take longer count as failures: a request never waits on Redis for more.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the link checks Redis (and so how fast it notices recovery).
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

/// A shared, self-healing Redis connection with an up/down state.
pub struct RedisLink {
    client: redis::Client,
    manager: Mutex<Option<ConnectionManager>>,
    up: AtomicBool,
    /// Tells watchers about transitions (true: up).
    state: watch::Sender<bool>,
    /// Set when the health task is stopped.
    health: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// This link's metrics: Redis up, and the limiter's fallbacks while it is down.
    pub metrics: super::ClusterMetrics,
}

impl RedisLink {
    /// Opens the link (without waiting for Redis) and starts its health task.
    /// `password` overrides any in the URL. `tls_ca`: PEM CA certificates for `rediss://`
    /// (else the Mozilla roots).
    pub fn open(
        url: &str,
        password: Option<&str>,
        tls_ca: Option<&[u8]>,
    ) -> anyhow::Result<Arc<RedisLink>> {
        use redis::IntoConnectionInfo as _;
        let mut info = url
            .into_connection_info()
            .map_err(|error| anyhow::anyhow!("cluster.redis: {error}"))?;
        if let Some(password) = password {
            info.redis.password = Some(password.to_owned());
        }
        let client = match tls_ca {
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(|error| anyhow::anyhow!("cluster.redis: {error}"))?;
        let (state, _) = watch::channel(false);
        let link = Arc::new(RedisLink {
            client,
            manager: Mutex::new(None),
            up: AtomicBool::new(false),
            state,
            health: Mutex::new(None),
            metrics: Default::default(),
        });
        let task = tokio::spawn(health(Arc::downgrade(&link)));
        *link.health.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(link)
    }

    /// The client, for connections of their own (pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Watches up/down transitions.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }

    /// Waits (bounded) until Redis is reachable; true if it is.
    pub async fn wait_up(&self, timeout: Duration) -> bool {
        let mut watch = self.watch();
        tokio::time::timeout(timeout, watch.wait_for(|up| *up))
            .await
            .is_ok_and(|result| result.is_ok())
    }

    /// The connection, while Redis is believed up; `None` while it is down (callers then
    /// take their fallback at once instead of waiting for a timeout).
    pub fn connection(&self) -> Option<ConnectionManager> {
        if !self.is_up() {
            return None;
        }
        self.manager
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the outcome of a command: a failure marks the link down (until the health
    /// task sees Redis answer again).
    pub fn record<T>(&self, result: &redis::RedisResult<T>) {
        if let Err(error) = result
            && (error.is_io_error()
                || error.is_timeout()
                || error.is_connection_dropped()
                || error.is_connection_refusal())
        {
            self.set(false, Some(error));
        }
    }

    fn set(&self, up: bool, error: Option<&redis::RedisError>) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            self.metrics.redis_up.set(i64::from(up));
            if up {
                tracing::info!(
                    "cluster: Redis is reachable; cluster-wide limits, bans and metering are on"
                );
            } else {
                let error = error.map(ToString::to_string).unwrap_or_default();
                tracing::warn!(
                    %error,
                    "cluster: Redis is unreachable; using the configured fallback (cluster.on_redis_down) \
                     until it returns"
                );
            }
            self.state.send_replace(up);
        }
    }
}

impl Drop for RedisLink {
    fn drop(&mut self) {
        if let Some(task) = self.health.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// Connects (retrying until it works), then PINGs every [`HEALTH_INTERVAL`].
async fn health(link: std::sync::Weak<RedisLink>) {
    let mut every = tokio::time::interval(HEALTH_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut logged_first_failure = false;
    loop {
        every.tick().await;
        let Some(link) = link.upgrade() else { return };
        let existing = link
            .manager
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut manager = match existing {
            Some(manager) => manager,
            None => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(RESPONSE_TIMEOUT)
                    .set_number_of_retries(2)
                    .set_max_delay(200);
                match tokio::time::timeout(
                    CONNECT_TIMEOUT * 3,
                    ConnectionManager::new_with_config(link.client.clone(), config),
                )
                .await
                {
                    Ok(Ok(manager)) => {
                        *link.manager.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(manager.clone());
                        manager
                    }
                    Ok(Err(error)) => {
                        if !logged_first_failure {
                            logged_first_failure = true;
                            tracing::warn!(%error, "cluster: cannot reach Redis yet; retrying in the background");
                        }
                        continue;
                    }
                    Err(_) => continue,
                }
            }
        };
        let ping: redis::RedisResult<String> = tokio::time::timeout(
            RESPONSE_TIMEOUT,
            redis::cmd("PING").query_async(&mut manager),
        )
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "PING timed out",
            )))
        });
        match ping {
            Ok(_) => link.set(true, None),
            Err(error) => link.set(false, Some(&error)),
        }
    }
}
