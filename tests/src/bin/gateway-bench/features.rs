//! What each gateway feature costs: the minimal config (one route, access log off, metrics on,
//! XDP off), each feature added alone, and all of them together (the example config's
//! features), each a gateway of its own under the same load, with CPU time per request and
//! its ratio to the minimal row (the target: the full config at most 1.10x).

use anyhow::bail;
use gateway_tests::Gateway;
use tokio::runtime::Runtime;

use crate::{
    configs::{self, Credentials, Features, Listeners},
    measure::{self, Settings, Target},
    peers::IDLE_SECONDS,
    proxy::{Dial, free_port, probe},
    upstream_process::UpstreamProcess,
};

/// Load of the feature rows.
const CONNECTIONS: usize = 64;

pub fn run(
    runtime: &Runtime,
    settings: &Settings,
    upstream: &UpstreamProcess,
    credentials: &Credentials,
) -> anyhow::Result<()> {
    let none = Features::default();
    // The bench's upstream again, over TLS, for the upstream TLS row.
    let (_cert_dir, cert, key) = crate::peers::certificate()?;
    let tls_upstream = UpstreamProcess::start_tls(&cert, &key)?;
    let rows: [(&str, Features, &str); 9] = [
        ("minimal", none, "/bench"),
        (
            "+ TLS to the upstream (pooled)",
            Features {
                upstream_tls: true,
                ..none
            },
            "/bench",
        ),
        (
            "+ access log to a file",
            Features {
                access_log: true,
                ..none
            },
            "/bench",
        ),
        (
            "+ [defend] with a trap trigger",
            Features {
                defend: true,
                ..none
            },
            "/bench",
        ),
        (
            "+ JWT (RS256) route",
            Features { jwt: true, ..none },
            "/bench",
        ),
        (
            "+ cache hit",
            Features {
                cache: true,
                ..none
            },
            "/bench",
        ),
        (
            "+ API-key consumer (metered per consumer)",
            Features {
                api_key: true,
                ..none
            },
            "/bench",
        ),
        ("full: all of them, JWT request", Features::ALL, "/bench"),
        (
            "full: all of them, cache hit",
            Features::ALL,
            "/cached/bench",
        ),
    ];
    let mut gateways = Vec::new();
    let mut targets = Vec::new();
    for (name, features, path) in rows {
        let port = free_port()?;
        let listeners = Listeners {
            plain: port,
            tls: None,
            max_connections: 20_000,
            idle_seconds: IDLE_SECONDS,
        };
        let config = match features.upstream_tls {
            true => configs::upstream_tls(
                &configs::gateway(tls_upstream.address(), &listeners, features, credentials)?,
                &cert,
            ),
            false => configs::gateway(upstream.address(), &listeners, features, credentials)?,
        };
        let gateway = Gateway::start(None, &config);
        let address = format!("127.0.0.1:{port}").parse()?;
        if features.cache || path.starts_with("/cached") {
            for _ in 0..3 {
                runtime.block_on(probe(address, path))?;
            }
            let status = runtime.block_on(probe(address, path))?;
            if status != "HIT" {
                bail!("{name}: a warm request was not a cache hit ({status:?})");
            }
        }
        // The full config's cache hit carries no credential: its route has no auth.
        let headers = match path {
            "/bench" => credentials.headers(features),
            _ => Vec::new(),
        };
        targets.push(Target {
            name: name.to_owned(),
            dial: Dial::Plain(address),
            path: path.to_owned(),
            headers,
            pid: gateway.pid(),
        });
        gateways.push(gateway);
    }
    let measured = measure::measure(runtime, settings, &targets, CONNECTIONS)?;
    measure::print_header(
        settings,
        "What each feature costs: the gateway's minimal config, each feature alone, all of them",
        &["minimal"],
    );
    for (target, row) in targets.iter().zip(&measured) {
        measure::print_row(CONNECTIONS, &target.name, row, &[&measured[0]]);
    }
    Ok(())
}
