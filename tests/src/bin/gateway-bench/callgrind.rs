//! `bench proxy --callgrind [--requests N] [--config NAME]`: instructions per request, the
//! steady guide on a shared machine. The release gateway (the minimal config, or one of
//! `configs::NAMED`: a feature alone, or `full`, the request carrying its credential) runs under `valgrind --tool=callgrind`;
//! after a warm-up, the counters are zeroed (`callgrind_control --zero`), N keep-alive GETs are
//! sent, the counters dumped (`--dump`), then the same with 2N. Instructions per request are
//! the 2N batch minus the N batch, over N: what is fixed per batch (timers, the dump) cancels.
//! `--keep FILE` copies the 2N dump there, for `callgrind_annotate --inclusive=yes FILE`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use gateway_tests::Gateway;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;

use crate::{
    configs::{self, Credentials, Listeners},
    peers::IDLE_SECONDS,
    proxy::{Dial, free_port},
    upstream_process::UpstreamProcess,
};

/// Keep-alive connections the requests are spread over.
const CONNECTIONS: usize = 4;
/// Requests before counting: connections, pools and caches warm.
const WARM_UP: usize = 200;
/// Bounds each batch (callgrind runs the gateway some 50x slower).
const BATCH_TIMEOUT: Duration = Duration::from_secs(600);

pub fn run(requests: usize, config_name: &str, keep: Option<&Path>) -> anyhow::Result<()> {
    let upstream = UpstreamProcess::start()?;
    let dir = tempfile::tempdir()?;
    let credentials = Credentials::generate(dir.path());
    let port = free_port()?;
    let listeners = Listeners {
        plain: port,
        tls: None,
        max_connections: 1_000,
        idle_seconds: IDLE_SECONDS,
    };
    let features = configs::NAMED
        .iter()
        .find_map(|(name, features)| (*name == config_name).then_some(*features))
        .with_context(|| format!("no config {config_name:?}"))?;
    let config = configs::gateway(upstream.address(), &listeners, features, &credentials)?;
    let headers = credentials.headers(features);
    let out = dir.path().join("callgrind.out");
    let wrapper = wrapper(dir.path(), &out)?;
    // Gateway::start runs GATEWAY_BIN: the wrapper execs valgrind on the real binary, so the
    // daemon's pid is valgrind's.
    // SAFETY: set before any thread of this process reads the environment.
    unsafe { std::env::set_var("GATEWAY_BIN", &wrapper) };
    let gateway = Gateway::start(None, &config);
    let address: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(send(address, &headers, WARM_UP))?;
    let mut counts = Vec::new();
    for batch in [requests, 2 * requests] {
        control(gateway.pid(), "--zero")?;
        runtime.block_on(send(address, &headers, batch))?;
        control(gateway.pid(), "--dump")?;
        let (total, dump) = newest_total(dir.path())?;
        counts.push(total);
        if let Some(keep) = keep {
            std::fs::copy(&dump, keep).with_context(|| format!("--keep {}", keep.display()))?;
        }
    }
    println!(
        "\n## Instructions per request (callgrind, release gateway, config {}, \
         {CONNECTIONS} keep-alive connections, GET through to the upstream)",
        config_name
    );
    println!("| requests | instructions | per request |");
    println!("|---:|---:|---:|");
    for (batch, count) in [requests, 2 * requests].iter().zip(&counts) {
        println!(
            "| {batch} | {count} | {:.0} |",
            *count as f64 / *batch as f64
        );
    }
    let per_request = counts[1].saturating_sub(counts[0]) as f64 / requests as f64;
    println!(
        "| 2N - N | {} | **{per_request:.0}** |",
        counts[1].saturating_sub(counts[0])
    );
    Ok(())
}

/// A script that execs the release gateway under callgrind, counting nothing until zeroed.
fn wrapper(dir: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let gateway = std::env::current_exe()?
        .parent()
        .context("the bench's directory")?
        .join("gateway");
    if !gateway.is_file() {
        bail!(
            "{} not found: `cargo xtask bench proxy` builds it",
            gateway.display()
        );
    }
    let script = dir.join("gateway-under-callgrind");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file={} {} \"$@\"\n",
            out.display(),
            gateway.display()
        ),
    )?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(script)
}

/// `callgrind_control ACTION PID`.
fn control(pid: u32, action: &str) -> anyhow::Result<()> {
    let output = Command::new("callgrind_control")
        .arg(action)
        .arg(pid.to_string())
        .output()
        .context("running callgrind_control (`cargo xtask setup` installs valgrind)")?;
    if !output.status.success() {
        bail!(
            "callgrind_control {action} {pid} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The instruction total of the newest dump in `dir` (its `summary:` or `totals:` line), and
/// that dump's path.
fn newest_total(dir: &Path) -> anyhow::Result<(u64, PathBuf)> {
    let newest = std::fs::read_dir(dir)?
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("callgrind.out")
        })
        .max_by_key(|entry| entry.metadata().and_then(|m| m.modified()).ok())
        .context("callgrind wrote no dump")?;
    let text = std::fs::read_to_string(newest.path())?;
    text.lines()
        .find_map(|line| {
            let value = line
                .strip_prefix("summary:")
                .or(line.strip_prefix("totals:"))?;
            value.split_whitespace().next()?.parse().ok()
        })
        .map(|total| (total, newest.path()))
        .with_context(|| format!("no instruction total in {}", newest.path().display()))
}

/// `count` keep-alive GETs with `headers` over [`CONNECTIONS`] connections; every answer must be a 200.
async fn send(
    address: SocketAddr,
    headers: &[(String, String)],
    count: usize,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for connection in 0..CONNECTIONS {
        let share = count / CONNECTIONS + usize::from(connection < count % CONNECTIONS);
        let headers = headers.to_vec();
        tasks.spawn(async move {
            let io = Dial::Plain(address).connect([127, 0, 0, 1].into()).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io).await?;
            tokio::spawn(connection);
            for _ in 0..share {
                let mut request =
                    hyper::Request::get("/bench").header(hyper::header::HOST, "bench");
                for (name, value) in &headers {
                    request = request.header(name.as_str(), value.as_str());
                }
                let request = request.body(Empty::new())?;
                let response = sender.send_request(request).await?;
                if response.status() != 200 {
                    bail!("status {}", response.status());
                }
                response.into_body().collect().await?;
            }
            anyhow::Ok(())
        });
    }
    let all = async {
        while let Some(joined) = tasks.join_next().await {
            joined??;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(BATCH_TIMEOUT, all)
        .await
        .context("a batch under callgrind took too long")?
}
