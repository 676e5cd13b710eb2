//! `bench proxy`: the same keep-alive load (64 and 256 connections) against the upstream
//! directly, through the gateway with the access log off, and with it on (to a file), in one
//! run: requests/s, p50 and p99 latency, and each ratio to the direct path. Then cache hits:
//! the gateway serving a cached response, its uncached path, and nginx with `proxy_cache`
//! serving the same hit. Then the same route behind JWT authentication (RS256, the same
//! token on every request, as a client sends it) against the same request to the route
//! without auth, in alternating rounds. Then the gateway against nginx and haproxy, plain and
//! TLS, and their memory with 10,000 idle connections (versus.rs).

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gateway_tests::{
    Gateway,
    jwks::{KeyKind, TestKey},
    upstream::Upstream,
};

use crate::peers::{self, Peer};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

pub const CONNECTIONS: [usize; 2] = [64, 256];
/// Alternating rounds of the auth comparison.
const AUTH_ROUNDS: usize = 3;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut seconds = 5u64;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = args.next().context("--seconds needs a value")?.parse()?,
            _ => bail!("unknown option {arg}"),
        }
    }
    let upstream = Upstream::start("bench");
    let log_dir = tempfile::tempdir()?;
    let gateway_config = |access_log: &str, port: u16| {
        format!(
            "[admin]\nsocket = \"{{admin_socket}}\"\nstate_file = \"{{dir}}/state.json\"\n[xdp]\nmode = \"off\"\n\
             {access_log}\n\
             [[listeners]]\nname = \"bench\"\naddress = \"127.0.0.1:{port}\"\nprotocol = \"http\"\n\
             [[upstreams]]\nname = \"bench\"\ntargets = [{{ address = \"{}\" }}]\n\
             [[routes]]\nname = \"bench\"\nupstream = \"bench\"\nmatch = {{ path_prefix = \"/\" }}\n\
             [[routes]]\nname = \"cached\"\nupstream = \"bench\"\nmatch = {{ path_prefix = \"/cached\" }}\n\
             cache = {{ ttl = \"1h\" }}\n",
            upstream.address()
        )
    };
    let (quiet_port, logging_port) = (free_port()?, free_port()?);
    let _quiet = Gateway::start(
        None,
        &gateway_config("[access_log]\nenabled = false", quiet_port),
    );
    let access_log = format!(
        "[access_log]\npath = \"{}\"",
        log_dir.path().join("access.log").display()
    );
    let _logging = Gateway::start(None, &gateway_config(&access_log, logging_port));
    // The same route, JWT-protected: the key is made by openssl, the token signed by
    // jsonwebtoken, verified by the gateway (then served from its verified-token cache).
    let key = TestKey::generate(
        log_dir.path(),
        KeyKind::Rsa,
        jsonwebtoken::Algorithm::RS256,
        "bench",
    );
    let jwt_port = free_port()?;
    let jwt_config = gateway_config("[access_log]\nenabled = false", jwt_port).replace(
        "match = { path_prefix = \"/\" }\n",
        &format!(
            "match = {{ path_prefix = \"/\" }}\nauth = {{ jwt = \"bench\" }}\n\
             [[auth.jwt]]\nname = \"bench\"\npublic_key = \"{}\"\n",
            key.public_pem.display()
        ),
    );
    let _jwt = Gateway::start(None, &jwt_config);
    let token = key.sign(&serde_json::json!({
        "sub": "bench", "exp": jsonwebtoken::get_current_timestamp() + 3600
    }));
    let bearer = Some(format!("Bearer {token}"));

    let targets: [(&str, SocketAddr); 3] = [
        ("upstream directly", upstream.address()),
        (
            "gateway, access log off",
            format!("127.0.0.1:{quiet_port}").parse()?,
        ),
        (
            "gateway, access log on (file)",
            format!("127.0.0.1:{logging_port}").parse()?,
        ),
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rows = targets.map(|(name, address)| (name, address, "/bench"));
    compare(&runtime, "## Proxy throughput", "direct", &rows, seconds)?;
    println!(
        "\nLoad generator, gateway and upstream share this machine's cores, so the ratios, not the \
         absolute numbers, are the result."
    );
    cache_hits(&runtime, &upstream, quiet_port, seconds)?;
    let no_auth: SocketAddr = format!("127.0.0.1:{quiet_port}").parse()?;
    let jwt: SocketAddr = format!("127.0.0.1:{jwt_port}").parse()?;
    auth_cost(&runtime, no_auth, jwt, &bearer, seconds)?;
    crate::versus::run(&runtime, &upstream, seconds)
}

/// The JWT route against the same request (token included) on the route without auth. The
/// cost is small next to this machine's noise: the two alternate in rounds and the median
/// ratio is the result, so a burst of other work cannot decide it.
fn auth_cost(
    runtime: &tokio::runtime::Runtime,
    no_auth: SocketAddr,
    jwt: SocketAddr,
    bearer: &Option<String>,
    seconds: u64,
) -> anyhow::Result<()> {
    println!(
        "\n## JWT-protected route (RS256) vs the same request without auth \
         ({AUTH_ROUNDS} alternating rounds of {seconds} s)"
    );
    println!("| connections | no auth requests/s | JWT requests/s | ratio |");
    println!("|---:|---:|---:|---:|");
    for connections in CONNECTIONS {
        let mut ratios = Vec::new();
        for _ in 0..AUTH_ROUNDS {
            let mut rates = [0.0; 2];
            for (rate, address) in rates.iter_mut().zip([no_auth, jwt]) {
                let result = runtime.block_on(load(
                    address,
                    "/bench",
                    bearer.clone(),
                    connections,
                    Duration::from_secs(seconds),
                ))?;
                *rate = result.rate();
            }
            println!(
                "| {connections} | {:.0} | {:.0} | {:.2} |",
                rates[0],
                rates[1],
                rates[1] / rates[0]
            );
            ratios.push(rates[1] / rates[0]);
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "| {connections} | | median | **{:.2}x** |",
            ratios[ratios.len() / 2]
        );
    }
    Ok(())
}

/// Cache hits through the gateway, its uncached path, and nginx's `proxy_cache` hit.
fn cache_hits(
    runtime: &tokio::runtime::Runtime,
    upstream: &Upstream,
    gateway_port: u16,
    seconds: u64,
) -> anyhow::Result<()> {
    let gateway: SocketAddr = format!("127.0.0.1:{gateway_port}").parse()?;
    let (_cert_dir, cert, key) = peers::certificate()?;
    let nginx = Peer::nginx(upstream.address(), &cert, &key)?;
    let rows: [(&str, SocketAddr, &str); 3] = [
        ("gateway, uncached", gateway, "/bench"),
        ("gateway, cache hit", gateway, "/cached/bench"),
        ("nginx proxy_cache, cache hit", nginx.plain, "/cached/bench"),
    ];
    // Warm both caches, and check that the rows measure what they say.
    for (name, address, path) in &rows[1..] {
        for _ in 0..3 {
            runtime.block_on(probe(*address, path))?;
        }
        let status = runtime.block_on(probe(*address, path))?;
        if status != "HIT" {
            bail!("{name}: a warm request was not a cache hit ({status:?})");
        }
    }
    compare(
        runtime,
        "\n## Cache hits",
        "gateway uncached",
        &rows,
        seconds,
    )
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
async fn probe(address: SocketAddr, path: &str) -> anyhow::Result<String> {
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
    load_dial(
        Dial::Plain(address),
        path,
        authorization,
        connections,
        duration,
    )
    .await
}

/// [`load`] over any [`Dial`], with `authorization` on every request if given.
pub async fn load_dial(
    dial: Dial,
    path: &str,
    authorization: Option<String>,
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
        let authorization = authorization.clone();
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
                if let Some(authorization) = &authorization {
                    request = request.header(hyper::header::AUTHORIZATION, authorization);
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
