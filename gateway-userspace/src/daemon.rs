//! `gateway run`: start everything in a safe order, serve until a signal, stop cleanly.
//!
//! Order matters: signals are caught from the start (a SIGTERM during start-up still ends in
//! a clean stop), a second daemon is refused before it touches any interface, the maps are
//! filled before the program is attached (the first packet meets the full rule set), the
//! proxy listeners are bound next, the admin socket is bound last (so a connectable socket
//! means "fully up", proxy included), and on the way out the proxy drains before the program
//! is detached.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    config::{Config, XdpMode},
    control::{AdminServer, DaemonState, MetricsServer, ReloadRequest},
    proxy::Proxy,
    xdp::{XdpFirewall, interface_index},
};

pub async fn run(config_path: PathBuf, config: Config) -> anyhow::Result<()> {
    let signals = Signals::install()?;
    AdminServer::ensure_free(&config.admin.socket).await?;

    let xdp = if config.xdp.mode == XdpMode::Off {
        tracing::warn!(
            "xdp.mode is \"off\": no packet is filtered in the kernel; the firewall rules are not enforced"
        );
        None
    } else {
        Some(load_xdp(&config)?)
    };
    // Rules from the file and the operator's state file go into the maps before attaching.
    let state = Arc::new(DaemonState::start(
        xdp,
        config.firewall.clone(),
        &config.xdp,
        config.admin.state_file.clone(),
    )?);
    if config.xdp.mode != XdpMode::Off {
        attach_xdp(&config, &state)?;
    }

    // After the maps hold this node's own state: what the cluster has is added to it.
    if let Some(cluster) = &config.cluster {
        let _ =
            crate::cluster::CLUSTER.set(crate::cluster::Cluster::start(cluster, state.clone())?);
    }

    if let Some(otlp) = &config.otlp {
        crate::proxy::start_otlp(otlp)?;
    }
    // Bound before the admin socket: a ready daemon is a serving proxy. No listeners, no proxy.
    let proxy = Proxy::start(&config.proxy).await?;

    let (reloads, reload_requests) = tokio::sync::mpsc::channel(4);
    let _metrics = match config.metrics {
        Some(address) => {
            Some(MetricsServer::bind(address, state.clone(), proxy.collector()).await?)
        }
        None => None,
    };
    let _admin = AdminServer::bind(&config.admin, state.clone(), reloads).await?;
    tracing::info!(socket = %config.admin.socket.display(), "admin API listening");
    state.metrics.set_ready();
    let sweeper = tokio::spawn(sweep_expired(state.clone()));

    signals
        .wait_for_shutdown(&config_path, &config, &state, &proxy, reload_requests)
        .await;
    proxy.shutdown().await;
    // Blocks until the queued spans are sent (bounded by otlp.timeout).
    tokio::task::block_in_place(crate::proxy::stop_otlp);
    sweeper.abort();

    if let Some(mut xdp) = state.take_xdp() {
        xdp.detach_all();
    }
    tracing::info!("gateway stopped");
    Ok(())
}

fn load_xdp(config: &Config) -> anyhow::Result<XdpFirewall> {
    // Check every interface before loading anything, so a typo fails fast and clearly.
    for (index, interface) in config.xdp.interfaces.iter().enumerate() {
        interface_index(interface).with_context(|| format!("xdp.interfaces[{index}]"))?;
    }
    Ok(XdpFirewall::load(&config.xdp)?)
}

fn attach_xdp(config: &Config, state: &DaemonState) -> anyhow::Result<()> {
    for interface in &config.xdp.interfaces {
        let mode = state.attach(interface, config.xdp.mode)?;
        tracing::info!(interface, ?mode, "XDP program attached");
    }
    tracing::info!(
        policy = ?config.firewall.policy,
        ipv4_rules = config.firewall.rules_v4().count(),
        ipv6_rules = config.firewall.rules_v6().count(),
        "firewall rules loaded into the kernel"
    );
    Ok(())
}

struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("installing the {name} handler"))
        };
        Ok(Signals {
            interrupt: install(SignalKind::interrupt(), "SIGINT")?,
            terminate: install(SignalKind::terminate(), "SIGTERM")?,
            hangup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Serves until SIGINT or SIGTERM. SIGHUP (or `gateway reload`) reloads the config
    /// file; an invalid file is reported and the running config stays.
    async fn wait_for_shutdown(
        mut self,
        config_path: &Path,
        running: &Config,
        state: &DaemonState,
        proxy: &Proxy,
        mut reload_requests: tokio::sync::mpsc::Receiver<ReloadRequest>,
    ) {
        tracing::info!(
            "gateway running; SIGHUP reloads the firewall rules, SIGINT/SIGTERM stop it"
        );
        loop {
            tokio::select! {
                _ = self.interrupt.recv() => break,
                _ = self.terminate.recv() => break,
                _ = self.hangup.recv() => {
                    let result = reload(config_path, running, state, proxy);
                    state.metrics.reload_finished(result.is_ok());
                }
                Some(reply) = reload_requests.recv() => {
                    let result = reload(config_path, running, state, proxy);
                    state.metrics.reload_finished(result.is_ok());
                    let _ = reply.send(result);
                }
            }
        }
        tracing::info!("shutting down");
    }
}

/// Re-reads the config file; says what changed, or why the running config stays.
fn reload(
    config_path: &Path,
    running: &Config,
    state: &DaemonState,
    proxy: &Proxy,
) -> Result<String, String> {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!("reload rejected, keeping the running rules: {error}");
            return Err(format!(
                "reload rejected, the running config stays: {error}"
            ));
        }
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    if config.xdp.mode != running.xdp.mode || config.xdp.interfaces != running.xdp.interfaces {
        tracing::warn!("xdp.mode and xdp.interfaces changes take effect at the next restart");
    }
    if config.cluster != running.cluster {
        tracing::warn!("[cluster] changes take effect at the next restart");
    }
    if config.otlp != running.otlp {
        tracing::warn!("[otlp] changes take effect at the next restart");
    }
    match state.reload(config.firewall) {
        Ok(rules) => {
            tracing::info!(rules, "firewall rules reloaded");
            proxy.reload(&config.proxy);
            crate::proxy::observe::configure(&config.access_log);
            Ok(format!(
                "reloaded {}: {rules} firewall rules, {} routes",
                config_path.display(),
                config.proxy.routes.len()
            ))
        }
        Err(failure) => {
            tracing::error!(
                "reload rejected, keeping the running rules: {}",
                failure.message
            );
            Err(format!(
                "reload rejected, the running config stays: {}",
                failure.message
            ))
        }
    }
}

/// Expired bans stop matching in the kernel at once; expired operator rules are removed
/// here, and both are dropped from the maps and the state file.
async fn sweep_expired(state: Arc<DaemonState>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        every.tick().await;
        state.sweep();
    }
}
