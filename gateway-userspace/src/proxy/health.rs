//! Target health: what the balancers read and what forward.rs and the health checks write.
//!
//! A target is available when its active health check (if any) says healthy and it is not
//! passively ejected:
//! - active: a task per upstream with a `health_check` sends `GET path` to every target each
//!   `interval`; 2xx/3xx within `timeout` is a success. `unhealthy_threshold` failures in a
//!   row take a target out, `healthy_threshold` successes in a row bring it back. Targets
//!   start healthy.
//! - passive: `consecutive_failures` failures in a row (connect errors, timeouts, 5xx) eject
//!   a target for `ejection_time`; after it, the target gets traffic again, and one more
//!   failure before a success ejects it again.
//!
//! On reload the state of each target that stays (same upstream name, same address) is kept,
//! so an unhealthy or ejected target stays out; the old health tasks stop at once and the
//! new snapshot starts its own (with fresh success/failure streaks).

use std::{
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use http_body_util::BodyExt as _;
use hyper::{Request, header};

use crate::config::{Balance, UpstreamConfig};

use super::{body::empty, forward::UpstreamClient};

/// Until a target has answered, its latency is taken to be this.
const DEFAULT_LATENCY: Duration = Duration::from_millis(5);
/// How fast an idle target's latency estimate decays towards 0 (so it is tried again).
const DECAY: Duration = Duration::from_secs(10);

/// The process's time origin for `ejected_until` and the latency's last sample, which an
/// `AtomicU64` holds as ms (ns) after it
/// (an `Instant` does not fit an atomic). A static by design: it is a clock reading, not a
/// service; one origin per process keeps the values of every snapshot's targets comparable,
/// and nothing about it is configured or replaced.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn now_ns() -> u64 {
    u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The live state of one target, shared by the snapshots that have it.
#[derive(Debug)]
pub struct TargetState {
    outstanding: AtomicU64,
    /// Whether the latency is kept: only for the balancer that reads it (`p2c-ewma`).
    tracks_latency: AtomicBool,
    /// EWMA of response times in ns, as `f64` bits.
    latency: AtomicU64,
    /// When `latency` was last sampled, in ns after `EPOCH`.
    sampled_at: AtomicU64,
    /// The active health check's verdict.
    healthy: AtomicBool,
    /// Passive: failures in a row.
    failures: AtomicU32,
    /// Passive: ejected until this many ms after `EPOCH` (0: not ejected).
    ejected_until: AtomicU64,
}

impl Default for TargetState {
    fn default() -> Self {
        TargetState {
            outstanding: AtomicU64::new(0),
            tracks_latency: AtomicBool::new(false),
            latency: AtomicU64::new((DEFAULT_LATENCY.as_nanos() as f64).to_bits()),
            sampled_at: AtomicU64::new(now_ns()),
            healthy: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }
}

/// Counts a request in flight while alive.
pub struct InFlight(Arc<TargetState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl TargetState {
    /// Healthy and not ejected.
    pub fn available(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self.ejected_until.load(Ordering::Relaxed) <= now_ms()
    }

    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// A request to this target starts; it stops counting when the guard drops (forward.rs
    /// keeps it in the response body, so until the response is streamed or abandoned).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// (EWMA latency in ns, seconds since it was sampled).
    fn latency(&self) -> (f64, f64) {
        let ewma = f64::from_bits(self.latency.load(Ordering::Relaxed));
        let since = now_ns().saturating_sub(self.sampled_at.load(Ordering::Relaxed));
        (ewma, since as f64 / 1e9)
    }

    /// EWMA latency (ns, decayed for the time since the last sample) x (in flight + 1).
    pub fn load_score(&self) -> f64 {
        let (ewma, elapsed) = self.latency();
        let decay = (-elapsed / DECAY.as_secs_f64()).exp();
        (ewma * decay).max(1.0) * (self.outstanding() as f64 + 1.0)
    }

    /// Peak EWMA: a slower sample is taken at once, a faster one blends in with a weight
    /// that grows with the time since the last sample. Only kept for `p2c-ewma`. Two
    /// samples at once may race: one of them wins, which an estimate can afford.
    pub fn observe_latency(&self, sample: Duration) {
        if !self.tracks_latency.load(Ordering::Relaxed) {
            return;
        }
        let sample = sample.as_nanos() as f64;
        let (ewma, elapsed) = self.latency();
        let keep = (-elapsed / DECAY.as_secs_f64()).exp().min(0.7);
        let next = if sample > ewma {
            sample
        } else {
            ewma * keep + sample * (1.0 - keep)
        };
        self.latency.store(next.to_bits(), Ordering::Relaxed);
        self.sampled_at.store(now_ns(), Ordering::Relaxed);
    }

    /// Records the outcome of a request for passive ejection; `true` when this failure
    /// ejected the target.
    pub fn record(&self, success: bool, config: &UpstreamConfig) -> bool {
        let threshold = config.consecutive_failures;
        if threshold == 0 {
            return false;
        }
        if success {
            // Read first: a store per request would bounce the line between cores.
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            return false;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < threshold {
            return false;
        }
        // Back in after the ejection time, one more failure puts it out again.
        self.failures.store(threshold - 1, Ordering::Relaxed);
        let until = now_ms()
            .saturating_add(u64::try_from(config.ejection_time.as_millis()).unwrap_or(u64::MAX));
        self.ejected_until.store(until, Ordering::Relaxed);
        true
    }

    fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }
}

/// The states for `config`'s targets: those of `previous` (the same upstream in the running
/// snapshot) for addresses it had, fresh ones for new addresses.
pub fn states(
    config: &UpstreamConfig,
    previous: Option<(&UpstreamConfig, &[Arc<TargetState>])>,
) -> Vec<Arc<TargetState>> {
    config
        .targets
        .iter()
        .map(|target| {
            let kept = previous.and_then(|(old, states)| {
                let at = old
                    .targets
                    .iter()
                    .position(|t| t.address == target.address)?;
                states.get(at).cloned()
            });
            let state = kept.unwrap_or_default();
            state
                .tracks_latency
                .store(config.balance == Balance::P2cEwma, Ordering::Relaxed);
            if config.health_check.is_none() {
                // No health check any more: nothing would ever bring it back.
                state.set_healthy(true);
            }
            state
        })
        .collect()
}

/// The health-check task of one upstream; stopped when dropped or by [`HealthTask::stop`].
#[derive(Debug)]
pub struct HealthTask(tokio::task::AbortHandle);

impl HealthTask {
    pub fn stop(&self) {
        self.0.abort();
    }
}

impl Drop for HealthTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts probing `config`'s targets if it has a `health_check` (and a runtime to run on).
pub fn spawn(
    config: &UpstreamConfig,
    states: &[Arc<TargetState>],
    client: &UpstreamClient,
) -> Option<HealthTask> {
    config.health_check.as_ref()?;
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::error!(
            upstream = config.name,
            "no runtime: health checks not started"
        );
        return None;
    };
    let task = runtime.spawn(run(config.clone(), states.to_vec(), client.clone()));
    Some(HealthTask(task.abort_handle()))
}

async fn run(config: UpstreamConfig, states: Vec<Arc<TargetState>>, client: UpstreamClient) {
    let check = config
        .health_check
        .clone()
        .expect("spawned with a health check");
    // Successes (> 0) or failures (< 0) in a row, per target.
    let mut streaks = vec![0i64; states.len()];
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut probes = tokio::task::JoinSet::new();
        for (index, target) in config.targets.iter().enumerate() {
            let scheme = super::upstream_tls::scheme(&config);
            let uri = format!("{scheme}://{}{}", target.address, check.path);
            let (client, timeout) = (client.clone(), check.timeout);
            probes.spawn(async move { (index, probe(&client, &uri, timeout).await) });
        }
        while let Some(done) = probes.join_next().await {
            let Ok((index, result)) = done else { continue };
            let streak = &mut streaks[index];
            *streak = match (result.is_ok(), *streak) {
                (true, streak) if streak > 0 => streak + 1,
                (true, _) => 1,
                (false, streak) if streak < 0 => streak - 1,
                (false, _) => -1,
            };
            let state = &states[index];
            let address = &config.targets[index].address;
            let healthy = state.healthy.load(Ordering::Relaxed);
            if healthy && -*streak >= i64::from(check.unhealthy_threshold) {
                state.set_healthy(false);
                tracing::warn!(
                    upstream = config.name,
                    target = address,
                    "target unhealthy, out of rotation: {}",
                    result.unwrap_err()
                );
            } else if !healthy && *streak >= i64::from(check.healthy_threshold) {
                state.set_healthy(true);
                tracing::info!(
                    upstream = config.name,
                    target = address,
                    "target healthy again, back in rotation"
                );
            }
        }
    }
}

/// One probe: `Ok` for a 2xx or 3xx answer (body read) within `timeout`.
async fn probe(client: &UpstreamClient, uri: &str, timeout: Duration) -> Result<(), String> {
    let request = Request::get(uri)
        .header(header::USER_AGENT, "gateway-health-check")
        .body(empty())
        .map_err(|error| format!("bad probe URI {uri}: {error}"))?;
    let exchange = async {
        let response = client.request(request).await.map_err(|error| {
            let reason = super::upstream_tls::failure(&error);
            format!("GET {uri}: {}", reason.unwrap_or_else(|| error.to_string()))
        })?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("GET {uri}: status {status}"))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("GET {uri}: no answer within {timeout:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TargetConfig;

    fn upstream(consecutive_failures: u32) -> UpstreamConfig {
        UpstreamConfig {
            name: "u".into(),
            targets: vec![TargetConfig {
                address: "127.0.0.1:1".into(),
                weight: 1,
            }],
            balance: Balance::RoundRobin,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            hash_header: None,
            health_check: None,
            consecutive_failures,
            ejection_time: Duration::from_secs(60),
            retry: None,
            protocol: Default::default(),
            tls: None,
        }
    }

    #[test]
    fn passive_ejection_after_consecutive_failures() {
        let config = upstream(3);
        let state = TargetState::default();
        assert!(!state.record(false, &config));
        assert!(!state.record(true, &config), "a success resets the streak");
        assert!(!state.record(false, &config));
        assert!(!state.record(false, &config));
        assert!(state.available());
        assert!(state.record(false, &config));
        assert!(!state.available());
        // Back after the ejection time (forced here): one failure ejects again.
        state.ejected_until.store(0, Ordering::Relaxed);
        assert!(state.available());
        assert!(state.record(false, &config));
        assert!(!upstream(0).targets.is_empty() && !state.record(false, &upstream(0)));
    }

    #[test]
    fn states_survive_for_kept_addresses_only() {
        let old = upstream(3);
        let old_states = states(&old, None);
        old_states[0].record(false, &old);
        let mut new = upstream(3);
        new.targets.push(TargetConfig {
            address: "127.0.0.1:2".into(),
            weight: 1,
        });
        let new_states = states(&new, Some((&old, &old_states)));
        assert!(Arc::ptr_eq(&new_states[0], &old_states[0]));
        assert_eq!(new_states[1].failures.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn latency_is_kept_only_for_the_balancer_that_reads_it() {
        for (balance, kept) in [
            (Balance::RoundRobin, false),
            (Balance::LeastOutstanding, false),
            (Balance::ConsistentHash, false),
            (Balance::P2cEwma, true),
        ] {
            let config = UpstreamConfig {
                balance,
                ..upstream(0)
            };
            let state = states(&config, None).remove(0);
            let before = state.load_score();
            state.observe_latency(Duration::from_secs(2));
            assert_eq!(state.load_score() > before * 100.0, kept, "{balance:?}");
            // A reload to another balancer switches it with the state it keeps.
            let other = UpstreamConfig {
                balance: if kept {
                    Balance::RoundRobin
                } else {
                    Balance::P2cEwma
                },
                ..upstream(0)
            };
            let again = states(&other, Some((&config, std::slice::from_ref(&state))));
            assert!(Arc::ptr_eq(&again[0], &state));
            assert_eq!(state.tracks_latency.load(Ordering::Relaxed), !kept);
        }
    }

    #[test]
    fn latency_rises_at_once_and_falls_gradually() {
        let state = Arc::new(TargetState::default());
        state.tracks_latency.store(true, Ordering::Relaxed);
        state.observe_latency(Duration::from_millis(300));
        let slow = state.load_score();
        assert!(slow > 250e6, "{slow}");
        state.observe_latency(Duration::from_millis(1));
        let after = state.load_score();
        assert!(after < slow && after > 1e6, "{after}");
        let in_flight = state.begin();
        assert_eq!(state.outstanding(), 1);
        drop(in_flight);
        assert_eq!(state.outstanding(), 0);
    }
}
