//! Running the real `gateway` binary: the daemon, and its CLI against the daemon.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::netns::NetNs;
use crate::process::{COMMAND_TIMEOUT, output_with_timeout, wait_timeout};

/// How long the daemon may take to open its admin socket, or to fail.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the daemon may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The `gateway` executable built in the same profile as the running test:
/// the test is `target/<profile>/deps/<name>-<hash>`, the binary `target/<profile>/gateway`.
/// `GATEWAY_BIN` overrides it.
pub fn gateway_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("GATEWAY_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the path of the running test executable");
    let mut dir = exe.parent().expect("the test executable's directory");
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir = dir.parent().expect("the profile directory above deps/");
    }
    let bin = dir.join("gateway");
    if !bin.is_file() {
        let profile = dir
            .file_name()
            .map_or("<profile>".into(), |n| n.to_string_lossy());
        panic!(
            "target/{profile}/gateway not found ({}): build it first \
             (`cargo build -p gateway-userspace`; `cargo xtask test` does this)",
            bin.display()
        );
    }
    bin
}

/// Runs `gateway args...` to completion (bounded to 30 s), e.g. `check-config FILE`.
pub fn gateway_cmd(args: &[&str]) -> Output {
    output_with_timeout(Command::new(gateway_bin()).args(args), COMMAND_TIMEOUT)
}

/// `config` with its firewall store in `dir` when its `[admin]` table names no state file:
/// the default (`/var/lib/gateway/`) is one store per host, which a daemon locks, so tests
/// running side by side would refuse each other.
pub fn isolate_store(config: &str, dir: &Path) -> String {
    if config.contains("state_file") || config.contains("store =") {
        return config.to_owned();
    }
    let state = dir.join("state.json");
    config.replacen(
        "[admin]\n",
        &format!("[admin]\nstate_file = {:?}\n", state.to_string_lossy()),
        1,
    )
}

/// A temporary directory holding `gateway.toml`, with `{admin_socket}` and `{dir}` in the
/// config text replaced by `<dir>/admin.sock` and `<dir>`.
struct ConfigDir {
    dir: TempDir,
    config: PathBuf,
    socket: PathBuf,
}

impl ConfigDir {
    fn new(config_toml: &str) -> ConfigDir {
        // Short and under /tmp: unix socket paths must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("gwt-")
            .tempdir_in("/tmp")
            .expect("creating a temporary directory");
        let socket = dir.path().join("admin.sock");
        let config = dir.path().join("gateway.toml");
        let text = isolate_store(
            &config_toml
                .replace("{admin_socket}", &socket.to_string_lossy())
                .replace("{dir}", &dir.path().to_string_lossy()),
            dir.path(),
        );
        std::fs::write(&config, text).expect("writing gateway.toml");
        ConfigDir {
            dir,
            config,
            socket,
        }
    }

    /// `[ip netns exec NS] gateway run --config FILE [--detach-on-exit]`, output appended to
    /// `log`.
    fn run_command(&self, ns: Option<&NetNs>, log: &Path, detach_on_exit: bool) -> Command {
        let bin = gateway_bin();
        let bin = bin.to_string_lossy();
        let config = self.config.to_string_lossy();
        let mut args = vec![&*bin, "run", "--config", &*config];
        if detach_on_exit {
            args.push("--detach-on-exit");
        }
        let mut cmd = match ns {
            // `ip netns exec` execs the program in place: the child *is* the gateway, so
            // signals reach it directly.
            Some(ns) => ns.exec_command(&args),
            None => {
                let mut cmd = Command::new(args[0]);
                cmd.args(&args[1..]);
                cmd
            }
        };
        let out = File::create(log).expect("creating gateway.log");
        let err = out.try_clone().expect("cloning a file handle");
        // NO_COLOR: plain log text that tests can search.
        cmd.env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        cmd
    }
}

/// A running `gateway run` daemon, stopped (SIGTERM, then SIGKILL after 5 s) when dropped.
pub struct Gateway {
    child: Option<Child>,
    dir: TempDir,
    socket: PathBuf,
    log: PathBuf,
}

impl Gateway {
    /// Writes `config_toml` (see [`ConfigDir`] placeholders: `{admin_socket}`, `{dir}`), starts
    /// the daemon, in `ns` if given, and waits until its admin socket accepts connections.
    /// Panics with the daemon's log if it exits first or takes more than 20 s.
    pub fn start(ns: Option<&NetNs>, config_toml: &str) -> Gateway {
        Gateway::start_with_env(ns, config_toml, &[])
    }

    /// Like [`Gateway::start`], with extra environment variables for the daemon (secrets the
    /// config names by variable, say).
    pub fn start_with_env(ns: Option<&NetNs>, config_toml: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::spawn(ns, config_toml, env, true)
    }

    /// Like [`Gateway::start`], without `--detach-on-exit`: when this daemon stops (or is
    /// killed) its pinned XDP program keeps filtering. Tests start every other daemon with
    /// `--detach-on-exit`, so nothing they attach outlives them.
    pub fn start_pinned(ns: Option<&NetNs>, config_toml: &str) -> Gateway {
        Gateway::spawn(ns, config_toml, &[], false)
    }

    fn spawn(
        ns: Option<&NetNs>,
        config_toml: &str,
        env: &[(&str, &str)],
        detach_on_exit: bool,
    ) -> Gateway {
        let config = ConfigDir::new(config_toml);
        let log = config.dir.path().join("gateway.log");
        let child = config
            .run_command(ns, &log, detach_on_exit)
            .envs(env.iter().copied())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning the gateway: {e}"));
        let mut gateway = Gateway {
            child: Some(child),
            dir: config.dir,
            socket: config.socket,
            log,
        };
        gateway.wait_ready();
        gateway
    }

    /// Polls every 50 ms until the admin socket accepts a connection.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.socket.exists() && UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            let child = self.child.as_mut().expect("a running child");
            if let Some(status) = child.try_wait().expect("waiting for the gateway") {
                self.child = None;
                panic!(
                    "the gateway exited ({status}) before its admin socket was ready; log:\n{}",
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "the gateway's admin socket {} was not ready within {START_TIMEOUT:?}; log:\n{}",
                    self.socket.display(),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The admin socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The temporary directory holding the config, the log and the socket (`{dir}`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's process id (for signals: SIGHUP, say).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a running gateway").id()
    }

    /// Everything the daemon has logged so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("<no log: {e}>"))
    }

    /// Runs `gateway args...` against this daemon (`GATEWAY_SOCKET` set to its socket),
    /// bounded to 30 s.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(gateway_bin());
        cmd.args(args).env("GATEWAY_SOCKET", &self.socket);
        output_with_timeout(&mut cmd, COMMAND_TIMEOUT)
    }

    /// `gateway stats --json --socket S`, parsed. Panics with stderr if it fails.
    pub fn stats(&self) -> serde_json::Value {
        let socket = self.socket.to_string_lossy();
        let out = gateway_cmd(&["stats", "--json", "--socket", &socket]);
        if !out.status.success() {
            panic!(
                "gateway stats failed ({}):\n{}\ndaemon log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "gateway stats --json printed invalid JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `(packets, bytes)` counted for verdict reason `name` ("passed", "dropped-deny", ...).
    pub fn reason(&self, name: &str) -> (u64, u64) {
        reason_counts(&self.stats(), name)
    }

    /// SIGKILL, as a crash: nothing of the daemon's own shutdown runs.
    pub fn kill(mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.log()
    }

    /// The config file the daemon was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    /// Stops the daemon (SIGTERM, SIGKILL after 5 s) and returns its exit status and log.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let status = self.terminate().expect("the gateway was already reaped");
        (status, self.log())
    }

    /// SIGTERM, a bounded wait, then SIGKILL; always reaps. `None` if already reaped.
    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet (so not reused).
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        if let Some(status) = wait_timeout(&mut child, STOP_TIMEOUT) {
            return Some(status);
        }
        eprintln!("the gateway ignored SIGTERM for {STOP_TIMEOUT:?}: killing it");
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// JSON lines (`gateway bans --json`, `gateway firewall list --json`: one entry per line)
/// as one JSON array. Panics on a line that is not JSON.
pub fn json_lines(text: &str) -> serde_json::Value {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\nin:\n{text}"))
        })
        .collect()
}

/// `(packets, bytes)` of reason `name` in `gateway stats --json` output:
/// `{"xdp": {"reasons": [{"reason": "passed", "packets": 0, "bytes": 0, ...}, ...]}}`.
pub fn reason_counts(stats: &serde_json::Value, name: &str) -> (u64, u64) {
    let reasons = stats["xdp"]["reasons"]
        .as_array()
        .unwrap_or_else(|| panic!("no xdp.reasons array in stats: {stats}"));
    let entry = reasons
        .iter()
        .find(|r| r["reason"] == name)
        .unwrap_or_else(|| panic!("no reason {name:?} in stats: {stats}"));
    let count = |field: &str| {
        entry[field]
            .as_u64()
            .unwrap_or_else(|| panic!("reason {name:?} has no numeric {field:?}: {entry}"))
    };
    (count("packets"), count("bytes"))
}

/// Runs `[ip netns exec NS] gateway run --config F` expecting it to fail within 20 s;
/// returns its stderr and stdout. Panics if it keeps running or exits successfully.
pub fn run_expect_failure(ns: Option<&NetNs>, config_toml: &str) -> String {
    let config = ConfigDir::new(config_toml);
    let log = config.dir.path().join("gateway.log");
    let mut child = config
        .run_command(ns, &log, true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning the gateway: {e}"));
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let Some(status) = wait_timeout(&mut child, START_TIMEOUT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the gateway was expected to fail but was still running after {START_TIMEOUT:?}; log:\n{}",
            read_log()
        );
    };
    let output = read_log();
    assert!(
        !status.success(),
        "the gateway was expected to fail but exited successfully; log:\n{output}"
    );
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_reason_counts() {
        let stats = serde_json::json!({"xdp": {
            "interfaces": [{"name": "va1", "mode": "native"}],
            "reasons": [
                {"reason": "passed", "verdict": "pass", "packets": 3, "bytes": 180},
                {"reason": "dropped-deny", "verdict": "drop", "packets": 2, "bytes": 120},
            ]
        }});
        assert_eq!(reason_counts(&stats, "passed"), (3, 180));
        assert_eq!(reason_counts(&stats, "dropped-deny"), (2, 120));
    }

    #[test]
    #[should_panic(expected = "no reason \"dropped-ban\"")]
    fn missing_reason_panics_with_the_stats() {
        let stats = serde_json::json!({"xdp": {"reasons": []}});
        reason_counts(&stats, "dropped-ban");
    }

    #[test]
    fn config_placeholders_are_replaced() {
        let dir =
            ConfigDir::new("[admin]\nsocket = \"{admin_socket}\"\nstate_file = \"{dir}/s.json\"\n");
        let text = std::fs::read_to_string(&dir.config).unwrap();
        let root = dir.dir.path().to_string_lossy().into_owned();
        assert_eq!(
            text,
            format!("[admin]\nsocket = \"{root}/admin.sock\"\nstate_file = \"{root}/s.json\"\n")
        );
        assert!(dir.socket.as_os_str().len() < 108);
        // Without a state file, the store goes in the test's own directory.
        let dir = ConfigDir::new("[admin]\nsocket = \"{admin_socket}\"\n");
        let text = std::fs::read_to_string(&dir.config).unwrap();
        let root = dir.dir.path().to_string_lossy().into_owned();
        assert_eq!(
            text,
            format!(
                "[admin]\nstate_file = \"{root}/state.json\"\nsocket = \"{root}/admin.sock\"\n"
            )
        );
    }
}
