//! `bench proxy`: the same keep-alive load (64 and 256 connections) against the upstream
//! directly, through the gateway with the access log off, and with it on (to a file), in one
//! run: requests/s, p50 and p99 latency, and each ratio to the direct path. Then cache hits:
//! the gateway serving a cached response, the same gateway's uncached path, and nginx with
//! `proxy_cache` serving the same hit (started here with a generated config on loopback,
//! killed at the end; skipped with a note when nginx is not installed).
//!
//! Not yet in it: nginx and haproxy as equivalent uncached proxies, TLS, and resident memory with
//! 10,000 idle connections (issue 3).

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gateway_tests::{Gateway, upstream::Upstream};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

const CONNECTIONS: [usize; 2] = [64, 256];

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
    println!("## Proxy throughput (HTTP/1.1 keep-alive, GET, {seconds} s per row, one run)");
    println!("| connections | target | requests/s | p50 ms | p99 ms | ratio to direct |");
    println!("|---:|---|---:|---:|---:|---:|");
    for connections in CONNECTIONS {
        let mut direct = None;
        for (name, address) in targets {
            let result = runtime.block_on(load(
                address,
                "/bench",
                connections,
                Duration::from_secs(seconds),
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
    let gateway: SocketAddr = format!("127.0.0.1:{quiet_port}").parse()?;
    let nginx = match Nginx::start(upstream.address()) {
        Ok(nginx) => Some(nginx),
        Err(error) => {
            println!("\n(nginx rows skipped: {error:#})");
            None
        }
    };
    let mut rows: Vec<(&str, SocketAddr, &str)> = vec![
        ("gateway, uncached", gateway, "/bench"),
        ("gateway, cache hit", gateway, "/cached/bench"),
    ];
    if let Some(nginx) = &nginx {
        rows.push((
            "nginx proxy_cache, cache hit",
            nginx.address,
            "/cached/bench",
        ));
    }
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
    println!("\n## Cache hits (HTTP/1.1 keep-alive, GET, {seconds} s per row, one run)");
    println!("| connections | target | requests/s | p50 ms | p99 ms | ratio to gateway uncached |");
    println!("|---:|---|---:|---:|---:|---:|");
    for connections in CONNECTIONS {
        let mut uncached = None;
        for (name, address, path) in &rows {
            let result = runtime.block_on(load(
                *address,
                path,
                connections,
                Duration::from_secs(seconds),
            ))?;
            let rate = result.requests as f64 / result.elapsed.as_secs_f64();
            let base = *uncached.get_or_insert(rate);
            println!(
                "| {connections} | {name} | {rate:.0} | {:.2} | {:.2} | {:.2} |",
                result.percentile(0.50),
                result.percentile(0.99),
                rate / base
            );
        }
    }
    drop(nginx);
    println!(
        "\nLoad generator, gateway and upstream share this machine's cores, so the ratios, not the \
         absolute numbers, are the result."
    );
    Ok(())
}

/// nginx in the foreground with a generated `proxy_cache` config on a loopback port, as
/// many workers as the gateway has runtime threads (one per core); killed when dropped.
struct Nginx {
    address: SocketAddr,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstream: SocketAddr) -> anyhow::Result<Nginx> {
        let binary = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .context("nginx is not installed (cargo xtask setup installs nginx-light)")?;
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let root = dir.path().display();
        let config = format!(
            "daemon off;\nmaster_process on;\nworker_processes auto;\nuser root;\n\
             pid {root}/nginx.pid;\nerror_log {root}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n\
               client_body_temp_path {root}/body;\n  proxy_temp_path {root}/proxy;\n\
               fastcgi_temp_path {root}/fastcgi;\n  uwsgi_temp_path {root}/uwsgi;\n\
               scgi_temp_path {root}/scgi;\n\
               proxy_cache_path {root}/cache keys_zone=bench:10m max_size=64m;\n\
               upstream bench {{ server {upstream}; keepalive 64; }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    keepalive_requests 1000000;\n\
                 location / {{\n      proxy_pass http://bench;\n      proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n      proxy_cache bench;\n\
                   proxy_cache_valid 200 1h;\n      add_header X-Cache $upstream_cache_status;\n    }}\n  }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, config)?;
        let child = std::process::Command::new(binary)
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let address: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut nginx = Nginx {
            address,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(address).is_err() {
            if let Some(status) = nginx.child.try_wait()? {
                bail!("nginx exited at start ({status})");
            }
            if Instant::now() > deadline {
                bail!("nginx did not listen on {address} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master (our child, by its pid): it stops its workers.
        // SAFETY: kill(2) on our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    path: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let started = Instant::now();
    let deadline = started + duration;
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let errors = errors.clone();
        let path = path.to_owned();
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
                let request = hyper::Request::get(path.as_str())
                    .header(hyper::header::HOST, "bench")
                    .body(Empty::new())
                    .expect("a static request");
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
