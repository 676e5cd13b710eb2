//! A real `redis-server` started by the test (never the system service): on loopback at a
//! free port, or inside a namespace the test made. No persistence (`--save ''
//! --appendonly no`), stopped (SIGKILL) on drop, every wait bounded.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::netns::NetNs;

/// How long redis-server may take to answer PING after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether tests that need redis-server can run here. In CI (`CI=true`) a missing
/// redis-server is a setup error and panics; elsewhere such tests skip, saying why.
pub fn redis_available(test: &str) -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if found {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs redis-server, and CI=true: `cargo xtask setup` installs it");
    }
    eprintln!("skipping {test}: redis-server is not installed (apt-get install redis-server)");
    false
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
/// A loopback port that is free now and was not handed out before in this process: the
/// kernel may give a port it just freed to the next `bind(0)`, and a test that asks for two
/// (a listener and the metrics address, say) must not get the same one twice.
pub fn free_port() -> u16 {
    static ISSUED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut issued = ISSUED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for _ in 0..1000 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("a free loopback port");
        if !issued.contains(&port) {
            issued.push(port);
            return port;
        }
    }
    panic!("no loopback port that was not handed out already");
}

/// A running redis-server.
pub struct RedisServer {
    child: Option<Child>,
    ns: Option<String>,
    bind: String,
    port: u16,
    /// Where redis-server logs to.
    log: tempfile::NamedTempFile,
    /// More redis-server arguments (TLS, a password).
    extra: Vec<String>,
    /// redis-cli arguments that reach it (`--tls --cacert F`, `-a PASSWORD`); set: PING goes
    /// through redis-cli.
    cli: Vec<String>,
}

impl RedisServer {
    /// Starts redis-server on 127.0.0.1 at a free port and waits until it answers PING.
    pub fn on_loopback() -> RedisServer {
        RedisServer::start(None, "127.0.0.1", free_port())
    }

    /// Starts redis-server in `ns` (or here) bound to `bind` (addresses separated by spaces)
    /// at `port`, and waits until it answers PING on the first address.
    pub fn start(ns: Option<&NetNs>, bind: &str, port: u16) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            ns: ns.map(|ns| ns.name().to_owned()),
            bind: bind.to_owned(),
            port,
            log: tempfile::NamedTempFile::new().expect("a log file"),
            extra: Vec::new(),
            cli: Vec::new(),
        };
        server.restart();
        server
    }

    /// Starts redis-server on 127.0.0.1 with `extra` arguments (which may replace `--port`,
    /// e.g. `--port 0 --tls-port N`); `port` is where clients connect and `cli` what
    /// redis-cli needs to PING it.
    pub fn on_loopback_with(port: u16, extra: &[String], cli: &[String]) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            ns: None,
            bind: "127.0.0.1".to_owned(),
            port,
            log: tempfile::NamedTempFile::new().expect("a log file"),
            extra: extra.to_vec(),
            cli: cli.to_vec(),
        };
        server.restart();
        server
    }

    /// `redis://ADDRESS:PORT/0` for the first bound address.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.address())
    }

    pub fn address(&self) -> SocketAddr {
        let ip = self.bind.split_whitespace().next().unwrap_or("127.0.0.1");
        SocketAddr::new(ip.parse().expect("an IP address"), self.port)
    }

    /// Kills redis-server (as a crash would: no goodbye to clients) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (same address and port, empty data) and waits for PING.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port.to_string();
        let args = [
            "redis-server",
            "--port",
            &port,
            "--bind",
            &self.bind,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ];
        let args: Vec<&str> = args
            .into_iter()
            .chain(self.extra.iter().map(String::as_str))
            .collect();
        let mut command = match &self.ns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).args(&args);
                command
            }
            None => {
                let mut command = Command::new(args[0]);
                command.args(&args[1..]);
                command
            }
        };
        let log = self.log.reopen().expect("reopening the log");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting redis-server: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("redis-server exited ({status}):\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "redis-server did not answer PING within {READY_TIMEOUT:?}:\n{}",
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Whether it answers PING (from its namespace).
    pub fn ping(&self) -> bool {
        let address = self.address();
        let ping = move || {
            let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(500))
            else {
                return false;
            };
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let mut answer = [0u8; 7];
            stream.write_all(b"PING\r\n").is_ok()
                && stream.read_exact(&mut answer).is_ok()
                && &answer == b"+PONG\r\n"
        };
        if self.ns.is_none() && self.cli.is_empty() {
            return ping();
        }
        let port = self.port.to_string();
        let host = address.ip().to_string();
        let mut command = match &self.ns {
            Some(name) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", name, "redis-cli"]);
                command
            }
            None => Command::new("redis-cli"),
        };
        command
            .args(["-h", &host, "-p", &port, "--no-auth-warning"])
            .args(&self.cli)
            .arg("PING");
        let output = crate::process::output_with_timeout(&mut command, Duration::from_secs(5));
        output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "PONG"
    }
}

impl RedisServer {
    /// `program` (a wrapper: `env`, `timeout 300`) running a `redis-cli` that reaches it
    /// (in its namespace, if it has one).
    fn redis_cli(&self, program: &[&str]) -> Command {
        let port = self.port.to_string();
        let host = self.address().ip().to_string();
        let mut command = Command::new(program[0]);
        command.args(&program[1..]);
        if let Some(ns) = &self.ns {
            command.args(["ip", "netns", "exec", ns]);
        }
        command
            .args(["redis-cli", "-h", &host, "-p", &port, "--no-auth-warning"])
            .args(&self.cli);
        command
    }

    /// Runs `redis-cli ARGS...` against it, bounded; returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = self.redis_cli(&["env"]);
        command.args(args);
        let output = crate::process::output_with_timeout(&mut command, Duration::from_secs(30));
        assert!(
            output.status.success(),
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Sends `commands` (each a list of arguments) through `redis-cli --pipe`: a million
    /// commands in seconds. Panics if any of them fails.
    pub fn pipe(&self, commands: impl IntoIterator<Item = Vec<String>>) {
        let mut protocol = Vec::new();
        for command in commands {
            protocol.extend_from_slice(format!("*{}\r\n", command.len()).as_bytes());
            for argument in command {
                protocol.extend_from_slice(format!("${}\r\n", argument.len()).as_bytes());
                protocol.extend_from_slice(argument.as_bytes());
                protocol.extend_from_slice(b"\r\n");
            }
        }
        let input = tempfile::NamedTempFile::new().expect("a temporary file");
        std::fs::write(input.path(), &protocol).expect("writing the commands");
        // `timeout` bounds it (the helper that bounds other commands gives them no input).
        let output = self
            .redis_cli(&["timeout", "300"])
            .arg("--pipe")
            .stdin(std::fs::File::open(input.path()).expect("the commands"))
            .output()
            .expect("running redis-cli --pipe");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && text.contains("errors: 0"),
            "redis-cli --pipe: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
