//! New TLS connections per second, full handshakes and resumed ones, the gateway beside
//! nginx (same certificate; nginx with a shared session cache and its default tickets): each
//! connection is a handshake and one `Connection: close` request (TLS 1.3 tickets arrive
//! after the handshake, so the client reads them before the next connection). A row gives
//! connections/s, the server's CPU per connection (user+sys of its process tree, the steady
//! figure on a shared machine) and how many handshakes the client saw resumed.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rustls::{ClientConfig, HandshakeKind, RootCertStore, SupportedProtocolVersion};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    runtime::Runtime,
};

/// Connections made at once: enough to keep a 2-core server busy, bounded.
const CONCURRENCY: usize = 16;

/// One server under test: its TLS address and the process to weigh.
pub struct Server {
    pub name: &'static str,
    pub tls: SocketAddr,
    pub pid: u32,
}

pub fn run(
    runtime: &Runtime,
    seconds: u64,
    roots: &RootCertStore,
    servers: &[Server],
) -> anyhow::Result<()> {
    println!(
        "\nNew TLS connections (handshake + one request, Connection: close), {CONCURRENCY} at \
         once, {seconds} s per row"
    );
    println!("| version | handshake | server | connections/s | CPU µs per connection | resumed |");
    println!("|---|---|---|---:|---:|---:|");
    let versions: [(&str, &'static SupportedProtocolVersion); 2] = [
        ("TLS 1.3", &rustls::version::TLS13),
        ("TLS 1.2", &rustls::version::TLS12),
    ];
    for (version_name, version) in versions {
        for resume in [false, true] {
            for server in servers {
                let config = Arc::new(client_config(roots, version, resume)?);
                // Warm the client's session store (and the server) before measuring.
                runtime.block_on(connections(
                    server.tls,
                    config.clone(),
                    Duration::from_millis(300),
                ))?;
                let (counts, cpu) = crate::cpu::while_running(server.pid, || {
                    runtime.block_on(connections(
                        server.tls,
                        config.clone(),
                        Duration::from_secs(seconds),
                    ))
                });
                let counts = counts?;
                let made = counts.made.max(1) as f64;
                println!(
                    "| {version_name} | {} | {} | {:.0} | {:.0} | {:.0}% |",
                    if resume { "resumed" } else { "full" },
                    server.name,
                    made / counts.elapsed.as_secs_f64(),
                    cpu * 1e6 / made,
                    counts.resumed as f64 * 100.0 / made
                );
            }
        }
    }
    Ok(())
}

/// A client trusting `roots` on one TLS version; with `resume`, it keeps sessions (its
/// default store) and offers them, else every handshake is a full one.
fn client_config(
    roots: &RootCertStore,
    version: &'static SupportedProtocolVersion,
    resume: bool,
) -> anyhow::Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(config)
}

struct Counts {
    made: u64,
    resumed: u64,
    elapsed: Duration,
}

/// New connections to `address` for `duration`, [`CONCURRENCY`] at a time.
async fn connections(
    address: SocketAddr,
    config: Arc<ClientConfig>,
    duration: Duration,
) -> anyhow::Result<Counts> {
    let made = Arc::new(AtomicU64::new(0));
    let resumed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let (made, resumed) = (made.clone(), resumed.clone());
        tasks.spawn(async move {
            while Instant::now() < until {
                let was_resumed = tokio::time::timeout(
                    Duration::from_secs(10),
                    one_connection(address, &connector),
                )
                .await??;
                made.fetch_add(1, Ordering::Relaxed);
                if was_resumed {
                    resumed.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(task) = tasks.join_next().await {
        task??;
    }
    Ok(Counts {
        made: made.load(Ordering::Relaxed),
        resumed: resumed.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

/// One connection: handshake, a GET, the response read to the end. Whether it resumed.
async fn one_connection(
    address: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> anyhow::Result<bool> {
    let tcp = tokio::net::TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let mut tls = connector.connect(name, tcp).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    tls.write_all(b"GET /bench HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    // A server may close without close_notify after `Connection: close`: what was read counts.
    let _ = tls.read_to_end(&mut response).await;
    if !response.starts_with(b"HTTP/1.1 200") {
        anyhow::bail!(
            "{address}: not a 200: {:?}",
            String::from_utf8_lossy(&response[..response.len().min(200)])
        );
    }
    Ok(resumed)
}
