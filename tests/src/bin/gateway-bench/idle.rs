//! Idle keep-alive connections: opening and holding them cheaply on the client side (a socket
//! each, no task or buffer, so only the server's memory grows), and `--idle N`: the gateway
//! holding N of them, its resident memory per connection at each quarter of N (flat or not),
//! and the load of 64 new connections served while they are held.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use gateway_tests::Gateway;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
    runtime::Runtime,
    sync::Semaphore,
    task::JoinSet,
};

use crate::{
    configs::{self, Credentials, Features, Listeners},
    measure::{self, Settings, Target},
    peers,
    proxy::{Dial, free_port},
    upstream_process::UpstreamProcess,
};

/// Connections from one source address: the kernel has ~28,000 ephemeral ports per address.
const PER_SOURCE: usize = 20_000;
/// Bounds opening each batch.
const OPEN_TIMEOUT: Duration = Duration::from_secs(180);
/// Connections being opened at once.
const OPENING: usize = 256;

/// Opens a connection to `address` from each of `sources` (an address may repeat), one GET
/// each, and returns them open and idle.
pub async fn hold(address: SocketAddr, sources: Vec<IpAddr>) -> anyhow::Result<Vec<TcpStream>> {
    let count = sources.len();
    let opening = Arc::new(Semaphore::new(OPENING));
    let mut tasks = JoinSet::new();
    for source in sources {
        let permit = opening.clone().acquire_owned().await?;
        tasks.spawn(async move {
            let _permit = permit;
            one_request(address, source).await
        });
    }
    let mut held = Vec::with_capacity(count);
    let collect = async {
        while let Some(joined) = tasks.join_next().await {
            held.push(joined??);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(OPEN_TIMEOUT, collect)
        .await
        .context("opening the idle connections took too long")?
        .context("an idle connection failed")?;
    Ok(held)
}

/// A connection from `source` that has had one `GET /idle` answered 200 (keep-alive).
async fn one_request(address: SocketAddr, source: IpAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(address).await?;
    stream
        .write_all(b"GET /idle HTTP/1.1\r\nhost: bench\r\n\r\n")
        .await?;
    let mut response = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    // Read the head, then as much body as its content-length says.
    let head_end = loop {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if response.len() > 16 * 1024 {
            bail!("a response head over 16 KiB");
        }
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            bail!("closed before a response");
        }
        response.extend_from_slice(&buffer[..read]);
    };
    let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or_default());
    }
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .context("a response without content-length")?;
    while response.len() < head_end + length {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            bail!("closed within a response body");
        }
        response.extend_from_slice(&buffer[..read]);
    }
    Ok(stream)
}

/// `--idle N`: the gateway (minimal config) holding N idle keep-alive connections.
pub fn many(
    runtime: &Runtime,
    settings: &Settings,
    upstream: &UpstreamProcess,
    credentials: &Credentials,
    count: usize,
) -> anyhow::Result<()> {
    if count / PER_SOURCE >= 250 {
        bail!("--idle {count}: more connections than 127.0.2.x has source addresses for");
    }
    raise_file_limit(count as u64 + 10_000)?;
    let port = free_port()?;
    let listeners = Listeners {
        plain: port,
        tls: None,
        max_connections: count + 1_000,
        // Held for the whole run, however long opening them takes.
        idle_seconds: 3_600,
    };
    let config = configs::gateway(
        upstream.address(),
        &listeners,
        Features::default(),
        credentials,
    )?;
    let gateway = Gateway::start(None, &config);
    let address: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let target = [Target {
        name: "gateway".into(),
        dial: Dial::Plain(address),
        path: "/bench".into(),
        headers: Vec::new(),
        pid: gateway.pid(),
    }];
    let without = measure::measure(runtime, settings, &target, 64)?;

    println!("\n## The gateway (minimal config) holding {count} idle keep-alive connections");
    println!("| held | RSS MiB | KiB per held connection |");
    println!("|---:|---:|---:|");
    let before = peers::tree_rss_kib(gateway.pid());
    println!("| 0 | {:.1} | |", before as f64 / 1024.0);
    let mut held = Vec::with_capacity(count);
    for quarter in 1..=4 {
        let (from, to) = (count * (quarter - 1) / 4, count * quarter / 4);
        // 127.0.2.1, .2, ...: PER_SOURCE connections from each.
        let sources = (from..to)
            .map(|index| IpAddr::from([127, 0, 2, 1 + (index / PER_SOURCE) as u8]))
            .collect();
        held.extend(runtime.block_on(hold(address, sources))?);
        std::thread::sleep(Duration::from_secs(1));
        let rss = peers::tree_rss_kib(gateway.pid());
        println!(
            "| {} | {:.1} | {:.2} |",
            held.len(),
            rss as f64 / 1024.0,
            rss.saturating_sub(before) as f64 / held.len() as f64
        );
    }
    let with = measure::measure(runtime, settings, &target, 64)?;
    measure::print_header(
        settings,
        &format!("64 new keep-alive connections, without and with the {count} idle ones held"),
        &["without"],
    );
    measure::print_row(64, "gateway, none held", &without[0], &[&without[0]]);
    measure::print_row(
        64,
        &format!("gateway, {count} held"),
        &with[0],
        &[&without[0]],
    );
    drop(held);
    Ok(())
}

/// Open files for `wanted` descriptors here and in the processes started from here.
fn raise_file_limit(wanted: u64) -> anyhow::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= wanted {
            return Ok(());
        }
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: wanted.max(limit.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            bail!(
                "raising the open-file limit to {wanted} for --idle: {} (the hard limit is {} \
                 here; raising it needs CAP_SYS_RESOURCE, and fs.nr_open must allow it)",
                std::io::Error::last_os_error(),
                limit.rlim_max
            );
        }
    }
    Ok(())
}
