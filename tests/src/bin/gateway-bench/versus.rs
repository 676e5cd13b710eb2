//! The gateway (minimal config) against nginx and haproxy configured as the same reverse proxy
//! (peers.rs), and the upstream directly, in one run: keep-alive GETs over plain HTTP/1.1 and
//! over TLS with ratios to nginx and to haproxy; cache hits against nginx's `proxy_cache`;
//! then resident memory while each (and the bare hyper upstream) holds 10,000 idle keep-alive
//! connections; and new TLS connections per second, full and resumed (handshakes.rs).

use std::{net::IpAddr, path::Path, sync::Arc, time::Duration};

use anyhow::bail;
use gateway_tests::Gateway;
use rustls_pki_types::{CertificateDer, pem::PemObject as _};
use tokio::runtime::Runtime;

use crate::{
    configs::{self, Credentials, Features, Listeners},
    idle,
    measure::{self, Target},
    peers::{self, Peer},
    proxy::{CONNECTIONS, Dial, Plan, free_port, probe},
    upstream_process::UpstreamProcess,
};

/// Idle keep-alive connections each server holds while its memory is read, if the open-file
/// limit lets haproxy take that many (it needs two descriptors per connection).
const IDLE_CONNECTIONS: usize = 10_000;

/// One server under test: its plain and TLS listeners and the process to weigh.
struct Contender {
    name: &'static str,
    plain: Dial,
    tls: Option<Dial>,
    pid: u32,
}

pub fn run(
    runtime: &Runtime,
    plan: &Plan,
    upstream: &UpstreamProcess,
    credentials: &Credentials,
) -> anyhow::Result<()> {
    let (_cert_dir, cert, key) = peers::certificate()?;
    let tls = connector(&cert)?;
    let (plain_port, tls_port) = (free_port()?, free_port()?);
    let listeners = Listeners {
        plain: plain_port,
        tls: Some((tls_port, &cert, &key)),
        max_connections: 20_000,
        idle_seconds: peers::IDLE_SECONDS,
    };
    let config = configs::gateway(
        upstream.address(),
        &listeners,
        Features::default(),
        credentials,
    )?;
    let gateway = Gateway::start(None, &config);
    let nginx = Peer::nginx(upstream.address(), &cert, &key)?;
    let haproxy = Peer::haproxy(upstream.address(), &cert, &key)?;
    let contenders = [
        Contender {
            name: "upstream directly",
            plain: Dial::Plain(upstream.address()),
            tls: None,
            pid: upstream.pid(),
        },
        Contender {
            name: "gateway",
            plain: Dial::Plain(format!("127.0.0.1:{plain_port}").parse()?),
            tls: Some(Dial::Tls(
                format!("127.0.0.1:{tls_port}").parse()?,
                tls.clone(),
            )),
            pid: gateway.pid(),
        },
        contender(&nginx, &tls),
        contender(&haproxy, &tls),
    ];

    for side in ["plain", "tls"] {
        for connections in CONNECTIONS {
            if !plan.wants(&format!("{side}-{connections}")) {
                continue;
            }
            let targets: Vec<Target> = contenders
                .iter()
                .filter_map(|contender| {
                    let dial = match side {
                        "plain" => contender.plain.clone(),
                        _ => contender.tls.clone()?,
                    };
                    Some(Target {
                        name: contender.name.to_owned(),
                        dial,
                        path: "/bench".into(),
                        headers: Vec::new(),
                        pid: contender.pid,
                    })
                })
                .collect();
            let title = format!(
                "The gateway (minimal config), nginx and haproxy, {}, {connections} connections",
                if side == "plain" { "plain HTTP" } else { "TLS" }
            );
            table(runtime, plan, &title, &targets, connections)?;
        }
    }
    if plan.wants("cache") {
        let minimal = Dial::Plain(format!("127.0.0.1:{plain_port}").parse()?);
        let uncached = (minimal, gateway.pid());
        cache_hits(runtime, plan, upstream, &nginx, uncached, credentials)?;
    }
    if plan.wants("handshakes") {
        let servers = [
            crate::handshakes::Server {
                name: "gateway",
                tls: format!("127.0.0.1:{tls_port}").parse()?,
                pid: gateway.pid(),
            },
            crate::handshakes::Server {
                name: "nginx",
                tls: nginx.tls,
                pid: nginx.pid(),
            },
        ];
        let seconds = plan.settings.seconds;
        crate::handshakes::run(runtime, seconds, &roots(&cert)?, &servers)?;
    }
    if plan.wants("idle") {
        idle_memory(runtime, &contenders)?;
    }
    Ok(())
}

/// Measures `targets` and prints them with ratios to the rows named nginx and haproxy.
fn table(
    runtime: &Runtime,
    plan: &Plan,
    title: &str,
    targets: &[Target],
    connections: usize,
) -> anyhow::Result<()> {
    let rows = measure::measure(runtime, &plan.settings, targets, connections)?;
    let reference = |name: &str| {
        let index = targets
            .iter()
            .position(|target| target.name.starts_with(name));
        index.map(|index| &rows[index])
    };
    let references: Vec<_> = ["nginx", "haproxy"]
        .into_iter()
        .filter_map(|name| Some((name, reference(name)?)))
        .collect();
    let names: Vec<&str> = references.iter().map(|(name, _)| *name).collect();
    let rows_of: Vec<&measure::Row> = references.iter().map(|(_, row)| *row).collect();
    measure::print_header(&plan.settings, title, &names);
    for (target, row) in targets.iter().zip(&rows) {
        measure::print_row(connections, &target.name, row, &rows_of);
    }
    Ok(())
}

/// The gateway's cache hit (a route of its own, `cache = { ttl = "1h" }`) against nginx's
/// `proxy_cache` hit and the gateway's uncached path.
fn cache_hits(
    runtime: &Runtime,
    plan: &Plan,
    upstream: &UpstreamProcess,
    nginx: &Peer,
    uncached: (Dial, u32),
    credentials: &Credentials,
) -> anyhow::Result<()> {
    let port = free_port()?;
    let listeners = Listeners {
        plain: port,
        tls: None,
        max_connections: 20_000,
        idle_seconds: peers::IDLE_SECONDS,
    };
    let features = Features {
        cache: true,
        ..Features::default()
    };
    let config = configs::gateway(upstream.address(), &listeners, features, credentials)?;
    let caching = Gateway::start(None, &config);
    let caching_address = format!("127.0.0.1:{port}").parse()?;
    // Warm both caches, and check that the rows measure what they say.
    for (name, address, path) in [
        ("gateway", caching_address, "/bench"),
        ("nginx", nginx.plain, "/cached/bench"),
    ] {
        for _ in 0..3 {
            runtime.block_on(probe(address, path))?;
        }
        let status = runtime.block_on(probe(address, path))?;
        if status != "HIT" {
            bail!("{name}: a warm request was not a cache hit ({status:?})");
        }
    }
    let target = |name: &str, dial: Dial, path: &str, pid: u32| Target {
        name: name.to_owned(),
        dial,
        path: path.to_owned(),
        headers: Vec::new(),
        pid,
    };
    let targets = [
        target(
            "nginx proxy_cache, cache hit",
            Dial::Plain(nginx.plain),
            "/cached/bench",
            nginx.pid(),
        ),
        target(
            "gateway, cache hit",
            Dial::Plain(caching_address),
            "/bench",
            caching.pid(),
        ),
        target(
            "gateway, uncached (minimal)",
            uncached.0,
            "/bench",
            uncached.1,
        ),
    ];
    for connections in CONNECTIONS {
        table(
            runtime,
            plan,
            &format!("Cache hits, {connections} connections"),
            &targets,
            connections,
        )?;
    }
    Ok(())
}

/// Resident memory of each server while it holds [`IDLE_CONNECTIONS`] idle keep-alive
/// connections (one request each).
fn idle_memory(runtime: &Runtime, contenders: &[Contender]) -> anyhow::Result<()> {
    let count = IDLE_CONNECTIONS.min(peers::haproxy_max_connections() as usize - 100);
    println!("\n## Resident memory holding {count} idle keep-alive connections");
    if count < IDLE_CONNECTIONS {
        println!(
            "(not {IDLE_CONNECTIONS}: the open-file limit here, {}, holds no more for haproxy)",
            peers::file_limit()
        );
    }
    println!("| server | RSS before, MiB | RSS holding them, MiB | KiB per connection |");
    println!("|---|---:|---:|---:|");
    for (index, contender) in contenders.iter().enumerate() {
        let Dial::Plain(address) = contender.plain else {
            continue;
        };
        // A source address per server: the closed connections' ports in TIME_WAIT do not
        // starve the next one's.
        let source: IpAddr = [127, 0, 1, index as u8 + 1].into();
        let before = peers::tree_rss_kib(contender.pid);
        let held = runtime.block_on(idle::hold(address, vec![source; count]))?;
        std::thread::sleep(Duration::from_secs(1));
        let holding = peers::tree_rss_kib(contender.pid);
        drop(held);
        let name = match contender.name {
            "upstream directly" => "bare hyper server (the upstream)",
            name => name,
        };
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            before as f64 / 1024.0,
            holding as f64 / 1024.0,
            holding.saturating_sub(before) as f64 / count as f64
        );
        // Let the server close them before the next one is measured.
        std::thread::sleep(Duration::from_secs(1));
    }
    println!(
        "\nnginx and haproxy run one worker per core, like the gateway's runtime; nginx's RSS \
         adds up its master and workers."
    );
    Ok(())
}

fn contender(peer: &Peer, tls: &tokio_rustls::TlsConnector) -> Contender {
    Contender {
        name: peer.name,
        plain: Dial::Plain(peer.plain),
        tls: Some(Dial::Tls(peer.tls, tls.clone())),
        pid: peer.pid(),
    }
}

/// A TLS client trusting only the bench's certificate, offering HTTP/1.1.
fn connector(cert: &Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let roots = roots(cert)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The bench's certificate as the only root.
fn roots(cert: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(cert)? {
        roots.add(der?)?;
    }
    Ok(roots)
}
