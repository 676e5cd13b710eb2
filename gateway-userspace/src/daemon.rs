//! `gateway run`: start everything in a safe order, serve until a signal, stop cleanly.
//!
//! Order matters: signals are caught from the start (a SIGTERM during start-up still ends in
//! a clean stop), a second daemon is refused before it touches any interface, the maps are
//! filled before the program is attached (the first packet meets the full rule set), the
//! admin socket is bound last (so a connectable socket means "fully up"), and the program is
//! detached on the way out.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    config::{Config, XdpMode},
    control::{AdminServer, DaemonState},
    xdp::{XdpFirewall, interface_index},
};

pub async fn run(config_path: PathBuf, config: Config) -> anyhow::Result<()> {
    let state = Arc::new(DaemonState {
        xdp: std::sync::Mutex::new(None),
    });
    let signals = Signals::install()?;
    AdminServer::ensure_free(&config.admin.socket).await?;

    if config.xdp.mode == XdpMode::Off {
        tracing::warn!(
            "xdp.mode is \"off\": no packet is filtered in the kernel; the firewall rules are not enforced"
        );
    } else {
        let xdp = start_xdp(&config)?;
        *state
            .xdp
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(xdp);
    }

    let _admin = AdminServer::bind(&config.admin.socket, state.clone()).await?;
    let sweeper = tokio::spawn(sweep_expired_bans(state.clone()));
    tracing::info!(socket = %config.admin.socket.display(), "admin API listening");

    signals
        .wait_for_shutdown(&config_path, &config, &state)
        .await;
    sweeper.abort();

    if let Some(mut xdp) = state
        .xdp
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take()
    {
        xdp.detach_all();
    }
    tracing::info!("gateway stopped");
    Ok(())
}

fn start_xdp(config: &Config) -> anyhow::Result<XdpFirewall> {
    // Check every interface before loading anything, so a typo fails fast and clearly.
    for (index, interface) in config.xdp.interfaces.iter().enumerate() {
        interface_index(interface).with_context(|| format!("xdp.interfaces[{index}]"))?;
    }
    let mut xdp = XdpFirewall::load(&config.xdp)?;
    xdp.apply(&config.firewall)?;
    for interface in &config.xdp.interfaces {
        let mode = xdp.attach(interface, config.xdp.mode)?;
        tracing::info!(interface, ?mode, "XDP program attached");
    }
    tracing::info!(
        policy = ?config.firewall.policy,
        ipv4_rules = config.firewall.rules_v4().count(),
        ipv6_rules = config.firewall.rules_v6().count(),
        "firewall rules loaded into the kernel"
    );
    Ok(xdp)
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

    /// Serves until SIGINT or SIGTERM. SIGHUP reloads the firewall rules from the config
    /// file; an invalid file is reported and the running rules stay.
    async fn wait_for_shutdown(
        mut self,
        config_path: &Path,
        running: &Config,
        state: &DaemonState,
    ) {
        tracing::info!(
            "gateway running; SIGHUP reloads the firewall rules, SIGINT/SIGTERM stop it"
        );
        loop {
            tokio::select! {
                _ = self.interrupt.recv() => break,
                _ = self.terminate.recv() => break,
                _ = self.hangup.recv() => reload(config_path, running, state),
            }
        }
        tracing::info!("shutting down");
    }
}

fn reload(config_path: &Path, running: &Config, state: &DaemonState) {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!("reload rejected, keeping the running rules: {error}");
            return;
        }
    };
    if config.xdp.mode != running.xdp.mode || config.xdp.interfaces != running.xdp.interfaces {
        tracing::warn!("xdp.mode and xdp.interfaces changes take effect at the next restart");
    }
    // The tries were sized at load; more rules than that need a restart.
    let (v4, v6) = (
        config.firewall.rules_v4().count(),
        config.firewall.rules_v6().count(),
    );
    if v4 > running.xdp.max_rules_v4 as usize || v6 > running.xdp.max_rules_v6 as usize {
        tracing::error!(
            v4,
            v6,
            max_v4 = running.xdp.max_rules_v4,
            max_v6 = running.xdp.max_rules_v6,
            "reload rejected, keeping the running rules: more rules than the maps were sized for; restart to resize"
        );
        return;
    }
    let mut xdp = state
        .xdp
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(xdp) = xdp.as_mut() {
        match xdp.apply(&config.firewall) {
            Ok(()) => tracing::info!(
                rules = config.firewall.rules.len(),
                "firewall rules reloaded"
            ),
            Err(error) => tracing::error!("reload failed while writing the maps: {error}"),
        }
    }
}

/// Expired bans stop matching in the kernel at once; this removes them from the maps.
async fn sweep_expired_bans(state: Arc<DaemonState>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        every.tick().await;
        state.sweep_expired_bans();
    }
}
