//! The gateway against nginx and haproxy configured as the same reverse proxy (peers.rs), in
//! one run: keep-alive GETs over plain HTTP/1.1 and over TLS, then resident memory while each
//! holds 10,000 idle keep-alive connections.

use std::{net::IpAddr, path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use gateway_tests::{Gateway, upstream::Upstream};
use http_body_util::{BodyExt as _, Empty};
use hyper::{body::Bytes, client::conn::http1::SendRequest};
use rustls_pki_types::{CertificateDer, pem::PemObject as _};
use tokio::{runtime::Runtime, sync::Semaphore, task::JoinSet};

use crate::{
    peers::{self, IDLE_SECONDS, Peer},
    proxy::{CONNECTIONS, Dial, free_port, load_dial},
};

/// Idle keep-alive connections each proxy holds while its memory is read, if the open-file
/// limit lets haproxy take that many (it needs two descriptors per connection).
const IDLE_CONNECTIONS: usize = 10_000;
/// Bounds opening them.
const IDLE_OPEN_TIMEOUT: Duration = Duration::from_secs(90);

/// One proxy under test: its plain and TLS listeners and the process to weigh.
struct Contender {
    name: &'static str,
    plain: Dial,
    tls: Dial,
    pid: u32,
}

pub fn run(runtime: &Runtime, upstream: &Upstream, seconds: u64) -> anyhow::Result<()> {
    let (_cert_dir, cert, key) = peers::certificate()?;
    let tls = connector(&cert)?;
    let (plain_port, tls_port) = (free_port()?, free_port()?);
    let gateway = Gateway::start(
        None,
        &format!(
            "[admin]\nsocket = \"{{admin_socket}}\"\nstate_file = \"{{dir}}/state.json\"\n\
             [xdp]\nmode = \"off\"\n[access_log]\nenabled = false\n\
             [limits]\nmax_connections = 20000\nheader_read_timeout = \"{IDLE_SECONDS}s\"\n\
             idle_timeout = \"{IDLE_SECONDS}s\"\n\
             [[listeners]]\nname = \"plain\"\naddress = \"127.0.0.1:{plain_port}\"\nprotocol = \"http\"\n\
             [[listeners]]\nname = \"tls\"\naddress = \"127.0.0.1:{tls_port}\"\nprotocol = \"https\"\n\
             [[listeners.tls.certificates]]\ncert = {cert:?}\nkey = {key:?}\nnames = [\"localhost\"]\n\
             [[upstreams]]\nname = \"bench\"\ntargets = [{{ address = \"{}\" }}]\n\
             [[routes]]\nname = \"bench\"\nupstream = \"bench\"\n",
            upstream.address()
        ),
    );
    let nginx = Peer::nginx(upstream.address(), &cert, &key)?;
    let haproxy = Peer::haproxy(upstream.address(), &cert, &key)?;
    let contenders = [
        Contender {
            name: "gateway",
            plain: Dial::Plain(format!("127.0.0.1:{plain_port}").parse()?),
            tls: Dial::Tls(format!("127.0.0.1:{tls_port}").parse()?, tls.clone()),
            pid: gateway.pid(),
        },
        contender(&nginx, &tls),
        contender(&haproxy, &tls),
    ];

    println!(
        "\n## The gateway, nginx and haproxy as the same reverse proxy \
         (HTTP/1.1 keep-alive GET, {seconds} s per row, one run)"
    );
    println!(
        "| connections | client side | proxy | requests/s | p50 ms | p99 ms | gateway ÷ this |"
    );
    println!("|---:|---|---|---:|---:|---:|---:|");
    for connections in CONNECTIONS {
        for (side, tls) in [("plain", false), ("TLS", true)] {
            let mut gateway_rate = None;
            for contender in &contenders {
                let dial = if tls {
                    &contender.tls
                } else {
                    &contender.plain
                };
                let result = runtime.block_on(load_dial(
                    dial.clone(),
                    "/bench",
                    None,
                    connections,
                    Duration::from_secs(seconds),
                ))?;
                let rate = result.rate();
                let gateway_rate = *gateway_rate.get_or_insert(rate);
                println!(
                    "| {connections} | {side} | {} | {rate:.0} | {:.2} | {:.2} | {:.2} |",
                    contender.name,
                    result.percentile(0.50),
                    result.percentile(0.99),
                    gateway_rate / rate
                );
            }
        }
    }

    let idle = IDLE_CONNECTIONS.min(peers::haproxy_max_connections() as usize - 100);
    println!("\n## Resident memory holding {idle} idle keep-alive connections");
    if idle < IDLE_CONNECTIONS {
        println!(
            "(not {IDLE_CONNECTIONS}: the open-file limit here, {}, holds no more for haproxy)",
            peers::file_limit()
        );
    }
    println!("| proxy | RSS before, MiB | RSS holding them, MiB | KiB per connection |");
    println!("|---|---:|---:|---:|");
    for (index, contender) in contenders.iter().enumerate() {
        // A source address per proxy: 10,000 ports each, and the closed ones in TIME_WAIT do
        // not starve the next proxy's connections.
        let source: IpAddr = [127, 0, 1, index as u8 + 1].into();
        let before = peers::tree_rss_kib(contender.pid);
        let held = runtime.block_on(hold_idle(&contender.plain, source, idle))?;
        std::thread::sleep(Duration::from_secs(1));
        let holding = peers::tree_rss_kib(contender.pid);
        drop(held);
        println!(
            "| {} | {:.1} | {:.1} | {:.1} |",
            contender.name,
            before as f64 / 1024.0,
            holding as f64 / 1024.0,
            holding.saturating_sub(before) as f64 / idle as f64
        );
        // Let the proxy close them before the next one is measured.
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
        tls: Dial::Tls(peer.tls, tls.clone()),
        pid: peer.pid(),
    }
}

/// A TLS client trusting only the bench's certificate, offering HTTP/1.1.
fn connector(cert: &Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(cert)? {
        roots.add(der?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Opens `count` keep-alive connections from `source`, one request each (so each is a
/// served, idle client connection), and returns them open.
async fn hold_idle(
    dial: &Dial,
    source: IpAddr,
    count: usize,
) -> anyhow::Result<Vec<SendRequest<Empty<Bytes>>>> {
    let opening = Arc::new(Semaphore::new(256));
    let mut tasks = JoinSet::new();
    for _ in 0..count {
        let permit = opening.clone().acquire_owned().await?;
        let dial = dial.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let io = dial.connect(source).await?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(connection);
            let request = hyper::Request::get("/idle")
                .header(hyper::header::HOST, "bench")
                .body(Empty::new())?;
            let response = sender.send_request(request).await?;
            if response.status() != 200 {
                bail!("status {}", response.status());
            }
            response.into_body().collect().await?;
            anyhow::Ok(sender)
        });
    }
    let mut held = Vec::with_capacity(count);
    let collect = async {
        while let Some(joined) = tasks.join_next().await {
            held.push(joined??);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(IDLE_OPEN_TIMEOUT, collect)
        .await
        .context("opening the idle connections took too long")?
        .context("an idle connection failed")?;
    Ok(held)
}
