//! `gateway check-config FILE`: validate, explain, start nothing.

use std::{path::Path, process::ExitCode};

use crate::{
    certs::Expiry,
    config::{Config, EscapedSlashes, PathMatch, Policy, ProxyConfig, XdpMode},
    proxy::normalise::{Options, normalise_path},
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
    warnings.extend(uncanonical_routes(&config.proxy));
    let now = crate::certs::unix_now();
    for (index, listener) in config.proxy.listeners.iter().enumerate() {
        let Some(tls) = &listener.tls else { continue };
        for (expiry, message) in tls.expiry(&format!("listeners[{index}].tls"), now) {
            match expiry {
                // Still a valid config (the daemon starts), but clients refuse the certificate.
                Expiry::Expired => eprintln!("error: {message}"),
                Expiry::Soon(_) => warnings.push(message),
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
    if !proxy.routes.is_empty() {
        for line in normalisation(proxy) {
            println!("  {line}");
        }
    }
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

/// How request paths are normalised, and each route that opts out of a default.
fn normalisation(proxy: &ProxyConfig) -> Vec<String> {
    let slashes = match proxy.normalise.merge_slashes {
        true => "repeated slashes merged",
        false => "repeated slashes kept (normalise.merge_slashes = false)",
    };
    let mut lines = vec![format!(
        "paths: normalised before routing (dot segments removed, unreserved escapes decoded), \
         {slashes}; \"..\" above the root, \";\", backslashes and encoded slashes are 400"
    )];
    for route in &proxy.routes {
        if route.escaped_slashes == EscapedSlashes::Keep {
            lines.push(format!(
                "route {:?} ({}): escaped_slashes = \"keep\": %2F and %5C reach its upstream \
                 as data; it must not decode them into separators before it routes or authorizes",
                route.name, route.origin
            ));
        }
    }
    lines
}

/// Route paths that no normalised request path can equal: they never match as written.
fn uncanonical_routes(proxy: &ProxyConfig) -> Vec<String> {
    let mut warnings = Vec::new();
    for route in &proxy.routes {
        let (key, path) = match &route.matcher.path {
            PathMatch::Exact(path) => ("path", path),
            PathMatch::Prefix(prefix) => ("path_prefix", prefix),
            PathMatch::Any | PathMatch::Regex(_) => continue,
        };
        let options = Options {
            escaped_slashes: route.escaped_slashes,
            merge_slashes: proxy.normalise.merge_slashes,
        };
        let problem = match normalise_path(path, &options) {
            Ok(normal) if normal == *path => continue,
            Ok(normal) => format!("requests are normalised to {normal:?} before routing"),
            Err(rejection) => format!("such a request path is refused: {rejection}"),
        };
        warnings.push(format!(
            "{}.match.{key}: {path:?} never matches as written: {problem}",
            route.origin
        ));
    }
    warnings
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
