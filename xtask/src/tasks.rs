//! The build, run, test, lint and bench commands: thin wrappers around cargo.

use anyhow::Result;
use clap::ValueEnum;

use crate::{
    cmd::{self, StepContext as _},
    setup,
};

/// Host builds leave out the eBPF crate: it only builds for the BPF target, and
/// gateway-userspace's build.rs builds it from there.
const HOST_CRATES: [&str; 3] = ["--workspace", "--exclude", "gateway-ebpf"];

/// Benchmarks that `gateway-bench` runs.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Bench {
    /// The XDP packet path (`gateway-bench xdp`).
    Xdp,
    /// The L7 proxy against the upstream directly (`gateway-bench proxy`).
    Proxy,
    /// A known-good client's connections/s under a flood, under-attack mode off and on
    /// (`gateway-bench defend`).
    Defend,
    /// Cluster-wide rate limits (Redis) against local ones (`gateway-bench cluster`).
    Cluster,
    /// The control plane at 10k, 100k and 1M rules: single changes to the kernel map,
    /// import, start, memory, the proxy under imports and auto-bans (`gateway-bench control`).
    Control,
}

impl Bench {
    fn name(self) -> &'static str {
        match self {
            Bench::Xdp => "xdp",
            Bench::Proxy => "proxy",
            Bench::Defend => "defend",
            Bench::Cluster => "cluster",
            Bench::Control => "control",
        }
    }
}

pub fn build(release: bool) -> Result<()> {
    let mut build = cmd::cargo(["build"]);
    build.args(HOST_CRATES).args(release_flag(release));
    cmd::run(&mut build).step(
        "build",
        "fix the compile error above; if the eBPF build failed, run `cargo xtask setup`",
    )
}

/// Builds the gateway binary and replaces this process with it.
pub fn run(release: bool, args: &[String]) -> Result<()> {
    // Only the binary is needed here; `build` would also compile every test.
    let mut build = cmd::cargo([
        "build",
        "--package",
        "gateway-userspace",
        "--bin",
        "gateway",
    ]);
    build.args(release_flag(release));
    cmd::run(&mut build).step(
        "run: build",
        "fix the compile error above; if the eBPF build failed, run `cargo xtask setup`",
    )?;
    if !cmd::is_root() {
        eprintln!(
            "note: not root: attaching XDP needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON); \
             with xdp.mode = \"off\" the gateway runs unprivileged"
        );
    }
    let profile = if release { "release" } else { "debug" };
    let binary = cmd::target_dir().join(profile).join("gateway");
    // `gateway run` gets the demo upstream the example config routes to, so a newcomer's
    // curl through the gateway gets an answer. It stops with the gateway (Ctrl-C reaches both).
    let _demo = (args.first().map(String::as_str) == Some("run")).then(|| {
        let mut demo = std::process::Command::new(&binary);
        demo.args([
            "demo-upstream",
            "127.0.0.1:9001",
            "127.0.0.1:9002",
            "127.0.0.1:9003",
        ]);
        eprintln!(
            "$ {} demo-upstream 127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003 &",
            binary.display()
        );
        demo.spawn().map(KillOnDrop).ok()
    });
    let mut gateway = std::process::Command::new(&binary);
    gateway.args(args);
    eprintln!("$ {} {}", binary.display(), args.join(" "));
    let status = gateway
        .status()
        .map_err(anyhow::Error::from)
        .step("run", "check that the build above produced the binary")?;
    if status.success() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("the gateway exited with {status}"))
    }
}

/// A child process stopped when this goes out of scope.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Setup checks, a full build (integration tests spawn the `gateway` binary), then every test.
pub fn test(extra: &[String]) -> Result<()> {
    setup::run()?;
    if !cmd::is_root() {
        let ci = if std::env::var("CI").as_deref() == Ok("true") {
            "CI=true is set, so they will fail instead"
        } else {
            "with CI=true they fail instead"
        };
        eprintln!(
            "note: not root: tests that need the kernel (XDP, network namespaces) will skip; {ci}"
        );
    }
    build(false)?;
    let mut test = cmd::cargo(["test"]);
    if !names_packages(extra) {
        test.args(HOST_CRATES);
    }
    test.args(extra);
    cmd::run(&mut test).step(
        "test",
        "see the failing tests above; rerun one with `cargo xtask test -- -p <crate> <test name>`",
    )
}

/// Formatting, then clippy in two passes as aya-template does: host crates, then the eBPF
/// crate for its own target (one pass over both fails because features unify across them).
pub fn lint() -> Result<()> {
    crate::layers::check(&cmd::workspace_root().join("gateway-userspace").join("src")).step(
        "lint: layers",
        "an import points to a layer above (or beside) its module: use a trait the lower \
         module defines and wire it in daemon.rs (see DESIGN.md)",
    )?;
    cmd::run(&mut cmd::cargo(["fmt", "--all", "--", "--check"]))
        .step("lint: fmt", "run `cargo fmt --all` and review the diff")?;
    // fuzz/ is a workspace of its own (built only by `cargo xtask fuzz`).
    let mut fuzz = cmd::cargo(["fmt", "--manifest-path"]);
    fuzz.arg(cmd::workspace_root().join("fuzz").join("Cargo.toml"))
        .args(["--", "--check"]);
    cmd::run(&mut fuzz).step(
        "lint: fmt (fuzz)",
        "run `cargo fmt --manifest-path fuzz/Cargo.toml` and review the diff",
    )?;
    let mut host = cmd::cargo(["clippy"]);
    host.args(HOST_CRATES)
        .args(["--all-targets", "--", "-D", "warnings"]);
    cmd::run(&mut host).step("lint: clippy (host crates)", "fix the warnings above")?;
    let nightly = format!("+{}", crate::setup::ebpf_toolchain()?);
    let mut ebpf = cmd::cargo([nightly.as_str(), "clippy", "--package", "gateway-ebpf"]);
    ebpf.args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"]);
    cmd::run(&mut ebpf).step(
        "lint: clippy (gateway-ebpf)",
        "fix the warnings above; if rust-src is missing, run `cargo xtask setup`",
    )
}

/// Runs a benchmark through `gateway-bench` (release build); this process becomes cargo.
pub fn bench(which: Bench, args: &[String]) -> Result<()> {
    if !cmd::is_root() {
        return Err(anyhow::anyhow!(
            "benchmarks attach XDP programs and make network namespaces"
        ))
        .step("bench", "rerun as root: `sudo -E cargo xtask bench ...`");
    }
    // The proxy bench runs the real `gateway` binary, built in the same profile.
    let mut build = cmd::cargo(["build", "--release", "--package", "gateway-userspace"]);
    build.args(["--bin", "gateway"]);
    cmd::run(&mut build).step("bench", "fix the build error above")?;
    let mut bench = cmd::cargo(["run", "--release", "--package", "gateway-tests"]);
    bench
        .args(["--bin", "gateway-bench", "--", which.name()])
        .args(args);
    Err(cmd::exec(&mut bench)).step("bench", "check that cargo is on PATH")
}

fn release_flag(release: bool) -> Option<&'static str> {
    release.then_some("--release")
}

/// Whether cargo-side args (before a `--`) already pick packages, which `--workspace` would
/// override.
fn names_packages(args: &[String]) -> bool {
    args.iter()
        .take_while(|arg| *arg != "--")
        .any(|arg| arg.starts_with("-p") || arg.starts_with("--package"))
}
