//! Running commands, reporting failed steps, and finding the workspace.

use std::{
    ffi::OsStr,
    fmt,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use anyhow::{Context as _, Result, bail, ensure};

/// Marks an error with the step that failed and what the user can do about it.
/// `main` prints the hint after the error chain.
#[derive(Debug)]
pub struct StepFailed {
    pub step: String,
    pub hint: String,
}

impl fmt::Display for StepFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step `{}` failed", self.step)
    }
}

/// Attaches a [`StepFailed`] to an error.
pub trait StepContext<T> {
    fn step(self, step: impl Into<String>, hint: impl Into<String>) -> Result<T>;
}

impl<T> StepContext<T> for Result<T> {
    fn step(self, step: impl Into<String>, hint: impl Into<String>) -> Result<T> {
        self.map_err(|err| {
            // Keep the innermost (most specific) step and hint if there already is one.
            if err.downcast_ref::<StepFailed>().is_some() {
                return err;
            }
            err.context(StepFailed {
                step: step.into(),
                hint: hint.into(),
            })
        })
    }
}

/// The workspace root: xtask lives one level below it.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
}

/// Cargo's target directory, as cargo itself would pick it for commands run in the root.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// A `cargo` command run in the workspace root. It goes through the rustup proxy on PATH
/// (not `$CARGO`), so `+nightly` works.
pub fn cargo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new("cargo");
    cmd.args(args).current_dir(workspace_root());
    cmd
}

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

/// Echoes `cmd`, runs it with inherited stdio, and fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", show(cmd)))?;
    ensure!(status.success(), "`{}` {}", show(cmd), describe(status));
    Ok(())
}

/// Runs `cmd` quietly (for checks) and returns its stdout; fails unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{}`", show(cmd)))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`{}` {}: {}",
            show(cmd),
            describe(out.status),
            stderr.trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Replaces this process with `cmd`, so its exit code and signals pass straight through.
/// Returns only if the exec itself failed.
pub fn exec(cmd: &mut Command) -> anyhow::Error {
    eprintln!("$ {}", show(cmd));
    let err = cmd.exec();
    anyhow::Error::new(err).context(format!("could not start `{}`", show(cmd)))
}

/// `cmd` as a shell-like line, including the environment it sets.
fn show(cmd: &Command) -> String {
    let envs = cmd.get_envs().filter_map(|(key, value)| {
        value.map(|value| format!("{}={}", key.to_string_lossy(), value.to_string_lossy()))
    });
    let program = std::iter::once(cmd.get_program().to_string_lossy().into_owned());
    let args = cmd.get_args().map(|arg| arg.to_string_lossy().into_owned());
    envs.chain(program)
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => format!("failed ({status})"),
    }
}
