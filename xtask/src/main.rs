//! `cargo xtask`: set up, build, run, test, lint and benchmark the gateway workspace.
//!
//! Plain Rust on purpose: it depends on no other workspace crate, so `setup` works on a fresh
//! host before anything else can build.

mod cmd;
mod fuzz;
mod layers;
mod setup;
mod tasks;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{cmd::StepFailed, tasks::Bench};

/// Development tasks for the gateway workspace.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install apt packages, nightly with rust-src, and bpf-linker (idempotent; needs root)
    ///
    /// Each step first checks whether it is already done, so a second run takes seconds.
    Setup,
    /// Build the workspace (the userspace build script also builds the XDP program).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build the gateway and run it, e.g. `cargo xtask run -- run --config FILE`.
    Run {
        /// Build and run the release binary.
        #[arg(long)]
        release: bool,
        /// Arguments for the `gateway` binary.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every test: setup checks, a full build, then `cargo test` over the workspace
    ///
    /// Kernel tests need root; without it they skip, or fail when CI=true.
    Test {
        /// Extra arguments for `cargo test`, e.g. `-- -p gateway-tests -- --nocapture`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Check the layer table (DESIGN.md), formatting, then run clippy on the host crates and on the eBPF crate.
    Lint,
    /// Build the fuzz targets in fuzz/ and run each for a while (the XDP one needs root).
    Fuzz {
        /// How long to run each target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// One target (a file name in fuzz/src/bin/); all when left out.
        target: Option<String>,
    },
    /// Run a benchmark with `gateway-bench` in release mode (needs root).
    Bench {
        /// Which benchmark to run.
        which: Bench,
        /// Extra arguments for the benchmark.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::run(),
        Task::Build { release } => tasks::build(release),
        Task::Run { release, args } => tasks::run(release, &args),
        Task::Test { args } => tasks::test(&args),
        Task::Lint => tasks::lint(),
        Task::Bench { which, args } => tasks::bench(which, &args),
        Task::Fuzz { seconds, target } => fuzz::run(seconds, target.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err);
            ExitCode::FAILURE
        }
    }
}

/// Prints the failed step, why it failed, and what to do.
fn report(err: &anyhow::Error) {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  because: {cause}");
    }
    if let Some(step) = err.downcast_ref::<StepFailed>() {
        eprintln!("  what to do: {}", step.hint);
    }
}
