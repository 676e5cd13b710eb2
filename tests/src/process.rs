//! Running external commands with a deadline.

use std::fs::File;
use std::io::{Read, Seek};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long any helper command (`ip`, `ethtool`, `gateway stats`, ...) may take.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `cmd` to completion like [`Command::output`], but kills it after `timeout`.
///
/// Output goes to anonymous temporary files rather than pipes: a grandchild that keeps a pipe
/// open (a daemon started by the command) cannot make us wait forever, and nothing deadlocks
/// on a full pipe.
pub(crate) fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut stdout = tempfile::tempfile().expect("creating a temporary file for stdout");
    let mut stderr = tempfile::tempfile().expect("creating a temporary file for stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().expect("cloning a file handle"))
        .stderr(stderr.try_clone().expect("cloning a file handle"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let status = match wait_timeout(&mut child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}; stderr so far:\n{}",
                String::from_utf8_lossy(&read_all(&mut stderr))
            );
        }
    };
    Output {
        status,
        stdout: read_all(&mut stdout),
        stderr: read_all(&mut stderr),
    }
}

/// Waits for `child` to exit, polling, for at most `timeout`. `None` if it is still running.
pub(crate) fn wait_timeout(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn read_all(file: &mut File) -> Vec<u8> {
    let mut bytes = Vec::new();
    file.rewind().expect("rewinding a temporary file");
    file.read_to_end(&mut bytes)
        .expect("reading a temporary file");
    bytes
}

/// Runs `cmd` (bounded) and returns its stdout; panics with its stderr if it fails.
pub(crate) fn run_ok(cmd: &mut Command) -> String {
    let out = output_with_timeout(cmd, COMMAND_TIMEOUT);
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The full path of `program` from `PATH`, or from the sbin directories that a non-login
/// shell's `PATH` may leave out (`ip`, `ethtool` live there). `None` if it is not installed.
pub(crate) fn find_program(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(Into::into))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A `Command` for the `ip` tool of iproute2.
pub(crate) fn ip() -> Command {
    Command::new(find_program("ip").expect("`ip` (iproute2) is not installed"))
}
