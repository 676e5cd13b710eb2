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
use prometheus_client::registry::Registry;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    cluster::Cluster,
    config::{Config, XdpMode},
    control::{AdminServer, Metrics, MetricsServer, ReloadRequest},
    defend::Defender,
    firewall::Firewall,
    proxy::{Handles, Proxy, ProxyMetrics, Spans},
    wiring::ProxyMetering,
    xdp::{XdpFirewall, interface_index},
};

pub async fn run(config_path: PathBuf, config: Config, detach_on_exit: bool) -> anyhow::Result<()> {
    let signals = Signals::install()?;
    crate::rlimit::raise_open_files(crate::rlimit::wanted(&config));
    AdminServer::ensure_free(&config.admin.socket).await?;

    let xdp = if config.xdp.mode == XdpMode::Off {
        tracing::warn!(
            "xdp.mode is \"off\": no packet is filtered in the kernel; the firewall rules are not enforced, bans are enforced at accept"
        );
        None
    } else {
        Some(load_xdp(&config)?)
    };
    // Rules from the file and the operator's store go into the maps before attaching.
    let state = Arc::new(Firewall::start(
        xdp,
        config.firewall.clone(),
        &config.xdp,
        &config.admin,
    )?);
    let metrics = Arc::new(Metrics::default());
    // From here on, however `run` ends (a stop, or a failed start), the program is either
    // detached or deliberately left pinned.
    let _xdp_exit = XdpExit {
        state: state.clone(),
        detach: detach_on_exit,
    };
    if config.xdp.mode != XdpMode::Off {
        attach_xdp(&config, &state)?;
    }

    // Built once for the process: reloads keep the counters.
    let proxy_metrics = Arc::new(ProxyMetrics::default());
    let metering = Arc::new(ProxyMetering(proxy_metrics.clone()));
    // After the maps hold this node's own state: what the cluster has is added to it.
    let cluster = match &config.cluster {
        Some(cluster) => Some(Cluster::start(cluster, state.clone(), metering.clone())?),
        None => None,
    };

    let spans = config.otlp.as_ref().map(Spans::start).transpose()?;
    // Before the proxy: its first request may already be a signal.
    let guard = state.accept_guard();
    let defender = crate::defend::start(config.defend.clone(), state.clone(), guard.clone());

    // Bound before the admin socket: a ready daemon is a serving proxy. No listeners, no proxy.
    let handles = Handles {
        guard,
        signals: Some(defender.clone()),
        limiter: cluster
            .as_ref()
            .map(|cluster| cluster.limiter.clone() as Arc<dyn crate::proxy::SharedLimiter>),
        metrics: proxy_metrics,
        spans: spans.clone(),
        ticket_keys: cluster
            .as_ref()
            .map(|cluster| cluster.tickets.clone() as Arc<dyn crate::proxy::SharedTicketKeys>),
    };
    let proxy = Proxy::start(&config.proxy, handles).await?;
    proxy.configure_access_log(&config.access_log);

    let (reloads, reload_requests) = tokio::sync::mpsc::channel(4);
    let _metrics = match config.metrics {
        Some(config) => {
            // Each part adds its own metrics; the endpoint only serves them.
            let mut registry = Registry::default();
            metrics.register(&mut registry);
            proxy.register(&mut registry);
            if let Some(cluster) = &cluster {
                cluster.register(&mut registry);
            }
            state.register(&mut registry);
            defender.register(&mut registry);
            Some(MetricsServer::bind(config, registry, metrics.clone()).await?)
        }
        None => None,
    };
    let _admin = AdminServer::bind(
        &config.admin,
        state.clone(),
        defender.clone(),
        cluster.clone(),
        reloads,
        proxy.cache(),
        metering,
    )
    .await?;
    tracing::info!(socket = %config.admin.socket.display(), "admin API listening");
    metrics.set_ready();
    let sweeper = tokio::spawn(sweep_expired(state.clone()));

    signals
        .wait_for_shutdown(
            &config_path,
            &config,
            Reloadable {
                firewall: &state,
                defender: &defender,
                proxy: &proxy,
            },
            &metrics,
            reload_requests,
        )
        .await;
    proxy.shutdown().await;
    // Blocks until the queued spans are sent (bounded by otlp.timeout).
    if let Some(spans) = spans {
        tokio::task::block_in_place(|| spans.stop());
    }
    sweeper.abort();

    tracing::info!("gateway stopped");
    Ok(())
}

/// What happens to the XDP program when the daemon ends.
struct XdpExit {
    state: Arc<Firewall>,
    /// `--detach-on-exit`: detach and remove the pins. Otherwise a pinned program stays.
    detach: bool,
}

impl Drop for XdpExit {
    fn drop(&mut self) {
        let Some(mut xdp) = self.state.take_xdp() else {
            return;
        };
        match xdp.pin_dir().map(Path::to_owned) {
            Some(dir) if !self.detach => {
                xdp.release();
                tracing::info!(
                    pins = %dir.display(),
                    "the XDP program stays attached and keeps filtering; `gateway xdp detach` removes it"
                );
            }
            _ => xdp.detach_all(),
        }
    }
}

fn load_xdp(config: &Config) -> anyhow::Result<XdpFirewall> {
    // Check every interface before loading anything, so a typo fails fast and clearly.
    for (index, interface) in config.xdp.interfaces.iter().enumerate() {
        interface_index(interface).with_context(|| format!("xdp.interfaces[{index}]"))?;
    }
    let xdp = match &config.xdp_pin_dir {
        Some(pin_dir) => match XdpFirewall::load_pinned(&config.xdp, pin_dir) {
            Err(crate::xdp::XdpError::PinUnavailable(reason)) => {
                tracing::warn!(
                    "the XDP program is not pinned, so it detaches when the daemon stops: {reason}"
                );
                XdpFirewall::load(&config.xdp)?
            }
            pinned => pinned?,
        },
        None => XdpFirewall::load(&config.xdp)?,
    };
    if let Some(dir) = xdp.pin_dir() {
        if xdp.adopted() {
            tracing::info!(pins = %dir.display(), "adopted the pinned XDP maps: counters, bans and known-good sources kept");
        } else {
            tracing::info!(pins = %dir.display(), "XDP maps pinned");
        }
    }
    Ok(xdp)
}

/// `gateway xdp detach`: removes the pinned links and maps of the config's interfaces. With
/// no process holding them any more, the kernel detaches the program.
pub fn detach_pinned(config: &Config) -> anyhow::Result<()> {
    let Some(pin_dir) = &config.xdp_pin_dir else {
        anyhow::bail!(
            "this config does not pin the XDP program (xdp.pin = false or xdp.mode = \"off\"): \
             nothing to detach; a running daemon detaches its program when it stops"
        );
    };
    if std::os::unix::net::UnixStream::connect(&config.admin.socket).is_ok() {
        anyhow::bail!(
            "a daemon is running on {}: it holds the program; stop it first (or restart it \
             with `gateway run --detach-on-exit` and stop it)",
            config.admin.socket.display()
        );
    }
    let dir = crate::xdp::pin::instance_dir(pin_dir, &config.xdp.interfaces);
    let removed = crate::xdp::pin::clear(&dir);
    if removed.is_empty() {
        println!(
            "nothing pinned in {} (for interfaces {}): nothing to detach",
            dir.display(),
            config.xdp.interfaces.join(", ")
        );
    } else {
        println!(
            "detached: removed {} pins from {}; the firewall is open until the next `gateway run`",
            removed.len(),
            dir.display()
        );
    }
    Ok(())
}

fn attach_xdp(config: &Config, state: &Firewall) -> anyhow::Result<()> {
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
        services: Reloadable<'_>,
        metrics: &Metrics,
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
                    let result = reload(config_path, running, &services);
                    metrics.reload_finished(result.is_ok());
                }
                Some(reply) = reload_requests.recv() => {
                    let result = reload(config_path, running, &services);
                    metrics.reload_finished(result.is_ok());
                    let _ = reply.send(result);
                }
            }
        }
        tracing::info!("shutting down");
    }
}

/// Re-reads the config file; says what changed, or why the running config stays.
/// The services a reload reconfigures.
struct Reloadable<'a> {
    firewall: &'a Firewall,
    defender: &'a Defender,
    proxy: &'a Proxy,
}

fn reload(
    config_path: &Path,
    running: &Config,
    services: &Reloadable<'_>,
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
    match services.firewall.reload(config.firewall) {
        Ok(rules) => {
            tracing::info!(rules, "firewall rules reloaded");
            services.proxy.reload(&config.proxy);
            services.defender.reconfigure(config.defend.clone());
            services.proxy.configure_access_log(&config.access_log);
            Ok(format!(
                "reloaded {}: {rules} firewall rules, {} routes",
                config_path.display(),
                config.proxy.routes.len()
            ))
        }
        Err(failure) => {
            tracing::error!("reload rejected, keeping the running rules: {failure}");
            Err(format!(
                "reload rejected, the running config stays: {failure}"
            ))
        }
    }
}

/// Expired bans stop matching in the kernel at once; expired operator rules are removed
/// here, and both are dropped from the maps and the state file.
async fn sweep_expired(state: Arc<Firewall>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        every.tick().await;
        // The sweep may write the store: off the async workers.
        let state = state.clone();
        let _ = tokio::task::spawn_blocking(move || state.sweep()).await;
    }
}
