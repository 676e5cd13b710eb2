//! nginx and haproxy as the gateway's peers in `bench proxy`: each configured as the same
//! reverse proxy (one upstream with keep-alive to it, a plain and a TLS listener on loopback,
//! no access log, one worker per core; nginx also caches under `/cached/` with `proxy_cache`), from a generated config in a temporary directory, in
//! the foreground. Stopped when dropped.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tempfile::TempDir;

/// How long a peer may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The idle keep-alive timeout every proxy in the bench gets: long enough to hold 10,000
/// idle connections while they are counted.
pub const IDLE_SECONDS: u32 = 120;

pub struct Peer {
    pub name: &'static str,
    pub plain: SocketAddr,
    pub tls: SocketAddr,
    child: Child,
    dir: TempDir,
}

impl Peer {
    /// nginx with `proxy_pass` to an upstream block holding keep-alive connections.
    pub fn nginx(upstream: SocketAddr, cert: &Path, key: &Path) -> anyhow::Result<Peer> {
        let dir = tempfile::tempdir()?;
        let (plain, tls) = (free_address()?, free_address()?);
        let d = dir.path().display();
        let config = format!(
            "daemon off;\nmaster_process on;\nworker_processes auto;\nworker_rlimit_nofile 65536;\n\
             pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 16384; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               keepalive_timeout {IDLE_SECONDS}s;\n  keepalive_requests 1000000;\n\
               proxy_cache_path {d}/cache keys_zone=bench:10m max_size=64m;\n\
               upstream bench {{ server {upstream}; keepalive 256; }}\n\
               server {{\n    listen {plain};\n    listen {tls} ssl;\n\
                 ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
                 ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache shared:SSL:10m;\n\
                 location / {{ proxy_pass http://bench; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n\
                 location /cached/ {{ proxy_pass http://bench; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
                   proxy_cache bench; proxy_cache_valid 200 1h; add_header X-Cache $upstream_cache_status; }}\n\
               }}\n}}\n",
            cert = cert.display(),
            key = key.display(),
        );
        let file = dir.path().join("nginx.conf");
        std::fs::write(&file, config)?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&file)
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log"))?)
            .spawn()
            .context("starting nginx (`cargo xtask setup` installs it)")?;
        Peer::started("nginx", child, dir, plain, tls)
    }

    /// haproxy in HTTP mode with keep-alive on both sides.
    pub fn haproxy(upstream: SocketAddr, cert: &Path, key: &Path) -> anyhow::Result<Peer> {
        let dir = tempfile::tempdir()?;
        let (plain, tls) = (free_address()?, free_address()?);
        // haproxy wants the certificate and its key in one file.
        let pem = dir.path().join("bench.pem");
        std::fs::write(
            &pem,
            std::fs::read_to_string(cert)? + &std::fs::read_to_string(key)?,
        )?;
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        // haproxy reserves two file descriptors per connection and refuses to start without.
        let maxconn = haproxy_max_connections();
        let config = format!(
            "global\n  nbthread {threads}\n  maxconn {maxconn}\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client {IDLE_SECONDS}s\n\
               timeout server 30s\n  timeout http-keep-alive {IDLE_SECONDS}s\n  option http-keep-alive\n\
             frontend bench\n  bind {plain}\n  bind {tls} ssl crt {pem} alpn http/1.1\n\
               maxconn {maxconn}\n  default_backend bench\n\
             backend bench\n  http-reuse always\n  server upstream {upstream}\n",
            pem = pem.display(),
        );
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, config)?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log"))?)
            .spawn()
            .context("starting haproxy (`cargo xtask setup` installs it)")?;
        Peer::started("haproxy", child, dir, plain, tls)
    }

    /// Waits (bounded) until both listeners accept; an early exit reports the peer's log.
    fn started(
        name: &'static str,
        child: Child,
        dir: TempDir,
        plain: SocketAddr,
        tls: SocketAddr,
    ) -> anyhow::Result<Peer> {
        let mut peer = Peer {
            name,
            plain,
            tls,
            child,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let listening = [plain, tls].iter().all(|address| {
                std::net::TcpStream::connect_timeout(address, Duration::from_millis(200)).is_ok()
            });
            if listening {
                return Ok(peer);
            }
            if peer.child.try_wait()?.is_some() || Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(peer.dir.path().join("stderr.log")).unwrap_or_default();
                bail!("{name} did not start listening on {plain} and {tls}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SIGTERM, so nginx's master stops its workers too.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        reap(&mut self.child);
    }
}

/// Waits up to 5 s for a child asked to stop, then kills it.
pub fn reap(child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The open-file limit this process and its children have.
pub fn file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to an rlimit.
    match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => limit.rlim_cur,
        _ => 1024,
    }
}

/// The most connections haproxy can take under [`file_limit`].
pub fn haproxy_max_connections() -> u64 {
    (file_limit().saturating_sub(100) / 2).min(20_000)
}

pub fn free_address() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A self-signed P-256 certificate for `localhost` from the openssl CLI: (dir, cert, key).
pub fn certificate() -> anyhow::Result<(TempDir, std::path::PathBuf, std::path::PathBuf)> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let output = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        // A leaf, not a CA: rustls refuses a CA certificate as the server's own.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl")?;
    if !output.status.success() {
        bail!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok((dir, cert, key))
}

/// Resident memory of `pid` and all its descendants (nginx: master and workers), in KiB.
pub fn tree_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let own: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    own + children(pid).into_iter().map(tree_rss_kib).sum::<u64>()
}

pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            // /proc/PID/stat: "pid (comm) state ppid ...", comm may hold spaces.
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let after = stat.rsplit_once(')')?.1;
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}
