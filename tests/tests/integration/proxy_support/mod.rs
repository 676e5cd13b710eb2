//! Shared by the `proxy_*` tests: gateway configs with a proxy listener, and real clients
//! (curl, a hyper client, raw TCP for malformed requests). Loopback only; every wait bounded.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use gateway_tests::Gateway;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, body::Bytes};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

pub mod pki;

/// Any single exchange, connection or curl run gives up after this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A free loopback port (bound and released: the gateway binds it right after).
pub fn free_port() -> u16 {
    gateway_tests::redis::free_port()
}

/// Polls `done` every 50 ms until it holds; fails naming `what` after [`IO_TIMEOUT`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {IO_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running gateway with one HTTP listener; `proxy_toml` holds the rest of the config.
pub struct Proxy {
    pub gateway: Gateway,
    pub address: SocketAddr,
}

impl Proxy {
    pub fn start(proxy_toml: &str) -> Proxy {
        let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let gateway = Gateway::start(None, &config(address, proxy_toml));
        Proxy { gateway, address }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Rewrites the config file (same listener and admin socket).
    pub fn write_config(&self, proxy_toml: &str) {
        let text = config(self.address, proxy_toml)
            .replace("{admin_socket}", &self.gateway.socket().to_string_lossy());
        let text = gateway_tests::daemon::isolate_store(&text, self.gateway.dir());
        std::fs::write(self.gateway.dir().join("gateway.toml"), text).unwrap();
    }

    /// Rewrites the config file and sends SIGHUP.
    pub fn reload(&self, proxy_toml: &str) {
        self.write_config(proxy_toml);
        // SAFETY: kill(2) on our own running child.
        unsafe { libc::kill(self.gateway.pid() as libc::pid_t, libc::SIGHUP) };
    }

    /// Waits (bounded) until the daemon's log contains `text`.
    pub fn wait_for_log(&self, text: &str) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let log = self.gateway.log();
            if log.contains(text) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} not logged within {IO_TIMEOUT:?}; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn config(address: SocketAddr, proxy_toml: &str) -> String {
    format!(
        "[admin]\nsocket = \"{{admin_socket}}\"\n[xdp]\nmode = \"off\"\n\
         [[listeners]]\nname = \"test\"\naddress = \"{address}\"\n{proxy_toml}"
    )
}

/// What a client got back.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Lowercase names; repeated fields joined with ", ".
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {self:?}"))
    }

    /// The `upstream` field of an echo from [`gateway_tests::upstream::Upstream`].
    pub fn upstream(&self) -> String {
        assert_eq!(self.status, 200, "{self:?}");
        self.json()["upstream"].as_str().unwrap().to_owned()
    }
}

/// Runs curl with `args` (URL included) and returns the last response it got.
pub fn curl(args: &[&str]) -> Reply {
    let dir = tempfile::tempdir().unwrap();
    let (head, body) = (dir.path().join("head"), dir.path().join("body"));
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-D"])
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(args)
        .output()
        .expect("running curl");
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let head = std::fs::read_to_string(head).unwrap();
    // Several heads with 1xx responses: the last one counts.
    let last = head
        .split("\r\n\r\n")
        .filter(|part| !part.trim().is_empty())
        .last()
        .unwrap_or_default();
    let mut lines = last.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {last:?}"));
    let mut headers: HashMap<String, String> = HashMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers
                .entry(name.trim().to_ascii_lowercase())
                .and_modify(|joined| {
                    joined.push_str(", ");
                    joined.push_str(value.trim());
                })
                .or_insert_with(|| value.trim().to_owned());
        }
    }
    Reply {
        status,
        headers,
        body: std::fs::read_to_string(body).unwrap_or_default(),
    }
}

/// A keep-alive hyper client (HTTP/1.1, or HTTP/2 with prior knowledge) on its own runtime.
pub struct RustClient {
    runtime: tokio::runtime::Runtime,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl RustClient {
    pub fn http1() -> RustClient {
        Self::new(false)
    }

    pub fn http2() -> RustClient {
        Self::new(true)
    }

    fn new(http2: bool) -> RustClient {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .build_http();
        RustClient { runtime, client }
    }

    pub fn get(&self, url: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", url, headers, Bytes::new())
    }

    pub fn send(&self, method: &str, url: &str, headers: &[(&str, &str)], body: Bytes) -> Reply {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body)).unwrap();
        self.runtime.block_on(async {
            let response = tokio::time::timeout(IO_TIMEOUT, self.client.request(request))
                .await
                .expect("no response in time")
                .unwrap_or_else(|e| panic!("{method} {url}: {e:?}"));
            let status = response.status().as_u16();
            let mut map: HashMap<String, String> = HashMap::new();
            for (name, value) in response.headers() {
                let value = value.to_str().unwrap_or("").to_owned();
                map.entry(name.as_str().to_owned())
                    .and_modify(|joined| {
                        joined.push_str(", ");
                        joined.push_str(&value);
                    })
                    .or_insert(value);
            }
            let body = tokio::time::timeout(IO_TIMEOUT, response.into_body().collect())
                .await
                .expect("no body in time")
                .expect("reading the body")
                .to_bytes();
            Reply {
                status,
                headers: map,
                body: String::from_utf8_lossy(&body).into_owned(),
            }
        })
    }
}

/// Writes `request` on a fresh connection and reads until the server closes it or
/// `timeout` passes. Returns what was read (maybe nothing) and whether the server closed.
pub fn raw_exchange(address: SocketAddr, request: &[u8], timeout: Duration) -> (String, bool) {
    let mut stream = TcpStream::connect_timeout(&address, IO_TIMEOUT).expect("connecting");
    stream.write_all(request).expect("writing the request");
    read_until_close(&mut stream, timeout)
}

/// Reads until EOF or a reset (then `true`), or until `timeout` passes (then `false`).
pub fn read_until_close(stream: &mut TcpStream, timeout: Duration) -> (String, bool) {
    let (got, closed) = read_bytes_until_close(stream, timeout);
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// [`read_until_close`], keeping the bytes as they came (HTTP/2 frames).
pub fn read_bytes_until_close(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buffer[..n]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break false;
            }
            Err(_) => break true,
        }
    };
    (got, closed)
}

/// The status code of the first response in raw bytes, if any.
pub fn raw_status(raw: &str) -> Option<u16> {
    raw.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// The `[[upstreams]]` entry for `name` with `targets` as `(address, weight)`.
pub fn upstream_toml(name: &str, targets: &[(SocketAddr, u32)], extra: &str) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|(address, weight)| format!("{{ address = \"{address}\", weight = {weight} }}"))
        .collect();
    format!(
        "[[upstreams]]\nname = \"{name}\"\ntargets = [{}]\n{extra}\n",
        targets.join(", ")
    )
}

/// `gateway check-config` on `config` written to `dir/check.toml` (`{admin_socket}` filled
/// in with an unused path): (success, stdout + stderr).
pub fn check_config(dir: &std::path::Path, config: &str) -> (bool, String) {
    let file = dir.join("check.toml");
    std::fs::write(&file, config.replace("{admin_socket}", "/tmp/unused.sock")).unwrap();
    let output = gateway_tests::daemon::gateway_cmd(&["check-config", &file.to_string_lossy()]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}
