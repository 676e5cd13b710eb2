//! `bench proxy`: the gateway beside nginx and haproxy configured as the same reverse proxy,
//! and the upstream directly, under the same keep-alive load, plain and TLS, 64 and 256
//! connections (versus.rs); what each gateway feature adds to the minimal config's cost
//! (features.rs); cache hits against nginx's `proxy_cache`; memory per idle connection
//! (idle.rs); and, with `--callgrind`, instructions per request (callgrind.rs). Every row
//! reports requests/s, p50, p99 and CPU time per request (measure.rs). This file holds the
//! options and the bench's own load generator.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    configs::{self, Credentials},
    measure::Settings,
    upstream_process::UpstreamProcess,
};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

pub const CONNECTIONS: [usize; 2] = [64, 256];

/// The parts of the bench `--only` picks from (comma-separated); all by default.
const SECTIONS: [&str; 8] = [
    "plain-64",
    "plain-256",
    "tls-64",
    "tls-256",
    "features",
    "cache",
    "handshakes",
    "idle",
];

/// What `bench proxy` runs, from its options.
pub struct Plan {
    pub settings: Settings,
    only: Option<Vec<String>>,
    /// `--idle N`: hold N idle connections to the gateway instead of the default sections.
    idle: Option<usize>,
    /// `--callgrind`: instructions per request instead of everything else.
    callgrind: bool,
    requests: usize,
    /// `--config NAME`: the config `--callgrind` runs (one of [`configs::NAMED`]).
    config: &'static str,
    /// `--keep FILE`: where `--callgrind` copies its 2N dump, for `callgrind_annotate`.
    keep: Option<std::path::PathBuf>,
}

impl Plan {
    /// Whether `section` (one of [`SECTIONS`]) is to run.
    pub fn wants(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|name| name == section))
    }

    fn parse(args: &[String]) -> anyhow::Result<Plan> {
        let mut plan = Plan {
            settings: Settings {
                seconds: 3,
                rounds: 3,
                wrk: false,
            },
            only: None,
            idle: None,
            callgrind: false,
            requests: 5_000,
            config: "minimal",
            keep: None,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--wrk" => plan.settings.wrk = true,
                "--callgrind" => plan.callgrind = true,
                "--seconds" => plan.settings.seconds = number(arg, value()?)?,
                "--rounds" => plan.settings.rounds = number(arg, value()?)?,
                "--requests" => plan.requests = number(arg, value()?)?,
                "--idle" => plan.idle = Some(number(arg, value()?)?),
                "--keep" => plan.keep = Some(value()?.into()),
                "--config" => {
                    let name = value()?;
                    plan.config = configs::NAMED
                        .iter()
                        .map(|(known, _)| *known)
                        .find(|known| known == name)
                        .with_context(|| {
                            let names: Vec<&str> = configs::NAMED.iter().map(|(n, _)| *n).collect();
                            format!(
                                "--config: no config {name:?}; the configs are {}",
                                names.join(", ")
                            )
                        })?;
                }
                "--only" => {
                    let names: Vec<String> = value()?.split(',').map(String::from).collect();
                    if let Some(unknown) =
                        names.iter().find(|name| !SECTIONS.contains(&name.as_str()))
                    {
                        bail!(
                            "--only: no section {unknown:?}; the sections are {}",
                            SECTIONS.join(", ")
                        );
                    }
                    plan.only = Some(names);
                }
                _ => bail!(
                    "unknown option {arg}; options: --seconds N --rounds N --wrk --only {} \
                     --idle N --callgrind --requests N --config NAME --keep FILE",
                    SECTIONS.join(",")
                ),
            }
        }
        if plan.settings.rounds == 0 || plan.settings.seconds == 0 || plan.requests == 0 {
            bail!("--rounds, --seconds and --requests must be at least 1");
        }
        Ok(plan)
    }
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> anyhow::Result<T> {
    value
        .parse()
        .map_err(|_| anyhow::anyhow!("{name}: {value:?} is not a whole number"))
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let plan = Plan::parse(args)?;
    if plan.callgrind {
        return crate::callgrind::run(plan.requests, plan.config, plan.keep.as_deref());
    }
    let upstream = UpstreamProcess::start()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let credentials = Credentials::generate(dir.path());
    if let Some(count) = plan.idle {
        return crate::idle::many(&runtime, &plan.settings, &upstream, &credentials, count);
    }
    println!(
        "Load generator, proxies and upstream share this machine's cores: the ratios and the CPU \
         time per request, not the absolute rates, are the result."
    );
    crate::versus::run(&runtime, &plan, &upstream, &credentials)?;
    if plan.wants("features") {
        crate::features::run(&runtime, &plan.settings, &upstream, &credentials)?;
    }
    Ok(())
}

/// One table: each row's (name, address, path) under the same keep-alive GET load, at each
/// connection count, with its ratio to the first row.
pub fn compare(
    runtime: &tokio::runtime::Runtime,
    title: &str,
    first: &str,
    rows: &[(&str, SocketAddr, &str)],
    seconds: u64,
) -> anyhow::Result<()> {
    println!("{title} (HTTP/1.1 keep-alive, GET, {seconds} s per row, one run)");
    println!("| connections | target | requests/s | p50 ms | p99 ms | ratio to {first} |");
    println!("|---:|---|---:|---:|---:|---:|");
    for connections in CONNECTIONS {
        let mut base = None;
        for (name, address, path) in rows {
            let result = runtime.block_on(load(
                *address,
                path,
                None,
                connections,
                Duration::from_secs(seconds),
            ))?;
            let rate = result.rate();
            let base = *base.get_or_insert(rate);
            println!(
                "| {connections} | {name} | {rate:.0} | {:.2} | {:.2} | {:.2} |",
                result.percentile(0.50),
                result.percentile(0.99),
                rate / base
            );
        }
    }
    Ok(())
}

/// One GET; the response's `X-Cache` value ("" when absent).
pub async fn probe(address: SocketAddr, path: &str) -> anyhow::Result<String> {
    let stream = tokio::net::TcpStream::connect(address).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, "bench")
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    let x_cache = response
        .headers()
        .get("x-cache")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned();
    response.into_body().collect().await?;
    Ok(x_cache)
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub struct LoadResult {
    pub requests: u64,
    pub elapsed: Duration,
    /// Latencies in ms, sorted.
    latencies: Vec<f64>,
    /// (sent at, latency in ms) of every request, to look at a window of the run.
    samples: Vec<(Instant, f64)>,
}

impl LoadResult {
    /// The requests sent between `from` and `to` only.
    pub fn within(&self, from: Instant, to: Instant) -> LoadResult {
        let samples: Vec<(Instant, f64)> = self
            .samples
            .iter()
            .filter(|(sent, _)| (from..to).contains(sent))
            .copied()
            .collect();
        let mut latencies: Vec<f64> = samples.iter().map(|(_, ms)| *ms).collect();
        latencies.sort_by(f64::total_cmp);
        LoadResult {
            requests: latencies.len() as u64,
            elapsed: to.saturating_duration_since(from),
            latencies,
            samples,
        }
    }

    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        self.latencies[((self.latencies.len() - 1) as f64 * p).round() as usize]
    }
}

/// Where the load goes: a plain address, or TLS (HTTP/1.1 by ALPN) to it.
#[derive(Clone)]
pub enum Dial {
    Plain(SocketAddr),
    Tls(SocketAddr, tokio_rustls::TlsConnector),
}

pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

impl Dial {
    fn address(&self) -> SocketAddr {
        match self {
            Dial::Plain(address) | Dial::Tls(address, _) => *address,
        }
    }

    /// A connection from `source` (the kernel's choice of port).
    pub async fn connect(
        &self,
        source: std::net::IpAddr,
    ) -> anyhow::Result<TokioIo<Box<dyn Io + 'static>>> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = socket.connect(self.address()).await?;
        stream.set_nodelay(true)?;
        Ok(TokioIo::new(match self {
            Dial::Plain(_) => Box::new(stream),
            Dial::Tls(_, connector) => {
                let name = rustls_pki_types::ServerName::try_from("localhost")?;
                Box::new(connector.connect(name, stream).await?)
            }
        }))
    }
}

/// `connections` keep-alive HTTP/1.1 connections, each sending GETs back to back until the
/// deadline. Every response must be a 200.
pub async fn load(
    address: SocketAddr,
    path: &str,
    authorization: Option<String>,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let headers = authorization
        .map(|value| vec![("authorization".to_owned(), value)])
        .unwrap_or_default();
    load_dial(Dial::Plain(address), path, headers, connections, duration).await
}

/// [`load`] over any [`Dial`], with `headers` on every request.
pub async fn load_dial(
    dial: Dial,
    path: &str,
    headers: Vec<(String, String)>,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let address = dial.address();
    let started = Instant::now();
    let deadline = started + duration;
    // Every failure, with what went wrong: the first few are reported.
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (errors, dial, path) = (errors.clone(), dial.clone(), path.to_owned());
        let headers = headers.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let fail = |what: String| errors.lock().expect("not poisoned").push(what);
            let stream = match dial.connect([127, 0, 0, 1].into()).await {
                Ok(stream) => stream,
                Err(error) => {
                    fail(format!("connect: {error:#}"));
                    return latencies;
                }
            };
            let (mut sender, connection) =
                match hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(stream).await {
                    Ok(handshake) => handshake,
                    Err(error) => {
                        fail(format!("HTTP/1.1 handshake: {error}"));
                        return latencies;
                    }
                };
            tokio::spawn(connection);
            while Instant::now() < deadline {
                let mut request =
                    hyper::Request::get(path.as_str()).header(hyper::header::HOST, "bench");
                for (name, value) in &headers {
                    request = request.header(name.as_str(), value.as_str());
                }
                let request = request.body(Empty::new()).expect("a static request");
                let sent = Instant::now();
                match sender.send_request(request).await {
                    Ok(response) if response.status() == 200 => {
                        if let Err(error) = response.into_body().collect().await {
                            fail(format!("response body: {error}"));
                            break;
                        }
                        latencies.push((sent, sent.elapsed().as_secs_f64() * 1000.0));
                    }
                    Ok(response) => {
                        fail(format!("status {}", response.status()));
                        break;
                    }
                    Err(error) => {
                        fail(format!("request: {error}"));
                        break;
                    }
                }
            }
            latencies
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await?);
    }
    let elapsed = started.elapsed();
    let errors = errors.lock().expect("not poisoned");
    if !errors.is_empty() {
        bail!(
            "{} connections to {address} failed, e.g.: {}",
            errors.len(),
            errors[..errors.len().min(3)].join("; ")
        );
    }
    let mut latencies: Vec<f64> = samples.iter().map(|(_, ms)| *ms).collect();
    latencies.sort_by(f64::total_cmp);
    Ok(LoadResult {
        requests: latencies.len() as u64,
        elapsed,
        latencies,
        samples,
    })
}
