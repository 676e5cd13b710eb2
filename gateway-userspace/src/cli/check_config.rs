//! `gateway check-config FILE`: validate, explain, start nothing.

use std::{path::Path, process::ExitCode};

use crate::{
    config::{Config, Policy, XdpMode},
    xdp::interface_index,
};

pub fn run(file: &Path) -> ExitCode {
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut warnings = config.warnings.clone();
    if config.xdp.mode != XdpMode::Off {
        for (index, interface) in config.xdp.interfaces.iter().enumerate() {
            if interface_index(interface).is_err() {
                warnings.push(format!(
                    "xdp.interfaces[{index}]: no interface {interface:?} on this host (fine if the file is for another host)"
                ));
            }
        }
    }
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    for note in &config.notes {
        eprintln!("note: {note}");
    }
    println!("{}: OK", file.display());
    println!("  {}", summary(&config));
    let proxy = &config.proxy;
    println!(
        "  proxy: {} listeners, {} upstreams, {} routes",
        proxy.listeners.len(),
        proxy.upstreams.len(),
        proxy.routes.len()
    );
    if !proxy.auth.providers.is_empty() || !proxy.auth.consumers.is_empty() {
        println!(
            "  auth: {} JWT providers, {} consumers ({} API keys), {} routes with auth",
            proxy.auth.providers.len(),
            proxy.auth.consumers.len(),
            proxy.auth.api_keys.len(),
            proxy
                .routes
                .iter()
                .filter(|route| route.auth.is_some())
                .count()
        );
    }
    if let Some(cluster) = &config.cluster {
        println!(
            "  cluster: node {:?} via {} (keys {}:*), on_redis_down = {:?}",
            cluster.node, cluster.redis, cluster.key_prefix, cluster.on_redis_down
        );
    }
    ExitCode::SUCCESS
}

fn summary(config: &Config) -> String {
    let xdp = match config.xdp.mode {
        XdpMode::Off => "xdp off".to_owned(),
        mode => format!(
            "xdp {} on {}",
            format!("{mode:?}").to_lowercase(),
            config.xdp.interfaces.join(", ")
        ),
    };
    let firewall = &config.firewall;
    let policy = match firewall.policy {
        Policy::DenyList => "deny-list",
        Policy::AllowList => "allow-list",
    };
    let ports = if firewall.protected_ports.is_all() {
        "all ports".to_owned()
    } else {
        format!(
            "{} protected ports",
            firewall.protected_ports.entries().count()
        )
    };
    format!(
        "{xdp}; firewall {policy}, {} IPv4 + {} IPv6 rules, {ports}",
        firewall.rules_v4().count(),
        firewall.rules_v6().count()
    )
}
