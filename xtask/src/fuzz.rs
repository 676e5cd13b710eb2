//! `cargo xtask fuzz`: builds the coverage-guided fuzz targets in `fuzz/` (libFuzzer, with the
//! sanitizer-coverage flags cargo-fuzz passes, on the stable toolchain) and runs each for a
//! while, seeded from the committed corpus.
//!
//! A target is a file `fuzz/src/bin/<name>.rs` plus seeds in `fuzz/corpus/<name>/`; nothing
//! here names targets.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, StepContext as _};

/// Coverage instrumentation as cargo-fuzz sets it (without a sanitizer, so stable rustc
/// works), and `cfg(fuzzing)`.
const RUSTFLAGS: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing";

pub fn run(seconds: u64, target: Option<&str>) -> Result<()> {
    let root = cmd::workspace_root().join("fuzz");
    let all = targets(&root)?;
    let chosen: Vec<&String> = match target {
        Some(name) => match all.iter().find(|t| *t == name) {
            Some(found) => vec![found],
            None => bail!("no fuzz target `{name}`; there are: {}", all.join(", ")),
        },
        None => all.iter().collect(),
    };
    // An explicit --target keeps RUSTFLAGS off build scripts and proc macros.
    let host = host_triple()?;
    let target_dir = cmd::target_dir().join("fuzz");
    let mut build = cmd::cargo(["build", "--release", "--manifest-path"]);
    build
        .arg(root.join("Cargo.toml"))
        .args(["--target", &host, "--target-dir"])
        .arg(&target_dir)
        .env("RUSTFLAGS", RUSTFLAGS);
    for name in &chosen {
        build.args(["--bin", name]);
    }
    cmd::run(&mut build).step(
        "fuzz: build",
        "fix the build error above; if the eBPF build failed, run `cargo xtask setup`",
    )?;
    for name in chosen {
        let corpus = target_dir.join("corpus").join(name);
        let artifacts = target_dir.join("artifacts").join(name);
        for dir in [&corpus, &artifacts] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // New inputs go to the working corpus; the committed seeds are only read.
        let mut fuzz = Command::new(target_dir.join(&host).join("release").join(name));
        fuzz.arg(&corpus);
        let seeds = root.join("corpus").join(name);
        if seeds.is_dir() {
            fuzz.arg(&seeds);
        }
        fuzz.arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .args(["-max_len=4096", "-timeout=10", "-print_final_stats=1"]);
        cmd::run(&mut fuzz).step(
            format!("fuzz: {name}"),
            format!(
                "a crashing input is in {}; replay it with `{} <file>`",
                artifacts.display(),
                target_dir.join(&host).join("release").join(name).display()
            ),
        )?;
    }
    Ok(())
}

/// Every `fuzz/src/bin/<name>.rs`, sorted.
fn targets(root: &std::path::Path) -> Result<Vec<String>> {
    let dir = root.join("src").join("bin");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| PathBuf::from(entry.file_name())))
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .filter_map(|path| Some(path.file_stem()?.to_str()?.to_owned()))
        .collect();
    names.sort();
    Ok(names)
}

/// The host's target triple, from `rustc -vV`.
fn host_triple() -> Result<String> {
    let info = cmd::output(Command::new("rustc").arg("-vV"))?;
    info.lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("`rustc -vV` names no host")
}
