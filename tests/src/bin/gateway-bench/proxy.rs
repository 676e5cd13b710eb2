//! `bench proxy`: the same keep-alive load (64 and 256 connections) against the upstream
//! directly, through the gateway with the access log off, and with it on (to a file), in one
//! run: requests/s, p50 and p99 latency, and each ratio to the direct path. Then the same
//! route behind JWT authentication (RS256, the same token on every request, as a client
//! sends it), and the same request to the route without auth: their ratio is what
//! authentication costs (the token travels, and is forwarded, in both).
//!
//! Not yet in it: nginx and haproxy as equivalent proxies, TLS, and resident memory with
//! 10,000 idle connections (issue 3).

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
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

const CONNECTIONS: [usize; 2] = [64, 256];
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
             [[routes]]\nname = \"bench\"\nupstream = \"bench\"\nmatch = {{ path_prefix = \"/\" }}\n",
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

    let targets: [(&str, SocketAddr, Option<String>); 5] = [
        ("upstream directly", upstream.address(), None),
        (
            "gateway, access log off",
            format!("127.0.0.1:{quiet_port}").parse()?,
            None,
        ),
        (
            "gateway, access log on (file)",
            format!("127.0.0.1:{logging_port}").parse()?,
            None,
        ),
        (
            "gateway, no auth, same request (token not checked)",
            format!("127.0.0.1:{quiet_port}").parse()?,
            bearer.clone(),
        ),
        (
            "gateway, JWT route (RS256), access log off",
            format!("127.0.0.1:{jwt_port}").parse()?,
            bearer,
        ),
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!("## Proxy throughput (HTTP/1.1 keep-alive, GET, {seconds} s per row, one run)");
    println!("| connections | target | requests/s | p50 ms | p99 ms | ratio to direct |");
    println!("|---:|---|---:|---:|---:|---:|");
    for connections in CONNECTIONS {
        let mut direct = None;
        for (name, address, authorization) in &targets {
            let result = runtime.block_on(load(
                *address,
                connections,
                Duration::from_secs(seconds),
                authorization.clone(),
            ))?;
            let rate = result.requests as f64 / result.elapsed.as_secs_f64();
            let direct_rate = *direct.get_or_insert(rate);
            println!(
                "| {connections} | {name} | {rate:.0} | {:.2} | {:.2} | {:.2} |",
                result.percentile(0.50),
                result.percentile(0.99),
                rate / direct_rate
            );
        }
    }
    // The auth cost is small next to this machine's noise: alternate the two routes in
    // rounds and take the median ratio, so a burst of other work cannot decide it.
    let (no_auth, jwt) = (&targets[3], &targets[4]);
    println!(
        "\n## JWT-protected route vs the same route without auth ({AUTH_ROUNDS} alternating rounds of {seconds} s)"
    );
    println!("| connections | no auth requests/s | JWT requests/s | ratio |");
    println!("|---:|---:|---:|---:|");
    for connections in CONNECTIONS {
        let mut ratios = Vec::new();
        for _ in 0..AUTH_ROUNDS {
            let mut rates = [0.0; 2];
            for (rate, (_, address, authorization)) in rates.iter_mut().zip([no_auth, jwt]) {
                let result = runtime.block_on(load(
                    *address,
                    connections,
                    Duration::from_secs(seconds),
                    authorization.clone(),
                ))?;
                *rate = result.requests as f64 / result.elapsed.as_secs_f64();
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
    println!(
        "\nLoad generator, gateway and upstream share this machine's cores, so the ratios, not the \
         absolute numbers, are the result."
    );
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct LoadResult {
    requests: u64,
    elapsed: Duration,
    /// Latencies in ms, sorted.
    latencies: Vec<f64>,
}

impl LoadResult {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        self.latencies[((self.latencies.len() - 1) as f64 * p).round() as usize]
    }
}

/// `connections` keep-alive HTTP/1.1 connections, each sending GETs back to back until the
/// deadline. Every response must be a 200.
async fn load(
    address: SocketAddr,
    connections: usize,
    duration: Duration,
    authorization: Option<String>,
) -> anyhow::Result<LoadResult> {
    let started = Instant::now();
    let deadline = started + duration;
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let errors = errors.clone();
        let authorization = authorization.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let Ok(stream) = tokio::net::TcpStream::connect(address).await else {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return latencies;
            };
            let _ = stream.set_nodelay(true);
            let Ok((mut sender, connection)) =
                hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                    .await
            else {
                return latencies;
            };
            tokio::spawn(connection);
            while Instant::now() < deadline {
                let mut request =
                    hyper::Request::get("/bench").header(hyper::header::HOST, "bench");
                if let Some(authorization) = &authorization {
                    request = request.header(hyper::header::AUTHORIZATION, authorization);
                }
                let request = request.body(Empty::new()).expect("a static request");
                let sent = Instant::now();
                match sender.send_request(request).await {
                    Ok(response) if response.status() == 200 => {
                        if response.into_body().collect().await.is_err() {
                            break;
                        }
                        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                    }
                    _ => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let elapsed = started.elapsed();
    let failed = errors.load(std::sync::atomic::Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} connections to {address} failed");
    }
    latencies.sort_by(f64::total_cmp);
    Ok(LoadResult {
        requests: latencies.len() as u64,
        elapsed,
        latencies,
    })
}
