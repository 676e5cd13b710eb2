//! `cargo xtask setup`: installs what building and testing need. Every step first checks
//! whether its work is already done, so a second run takes a couple of seconds.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, StepContext as _};

/// Debian/Ubuntu packages that building and testing need:
/// - `build-essential`, `pkg-config`: C compiler and linker for build scripts and for
///   `cargo install bpf-linker`.
/// - `ca-certificates`: HTTPS to crates.io and the rustup servers.
/// - `iproute2`: `ip netns` and veth pairs, which the XDP tests build.
/// - `iptables`, `nftables`: the kernel firewalls that tests and benchmarks compare against.
/// - `ethtool`: inspects and tunes the test interfaces (offloads, channels) for native XDP.
/// - `curl`, `openssl`: real HTTP and TLS clients for the integration tests.
/// - `nginx-light`, `haproxy`: the proxies `bench proxy` compares the gateway with (started by
///   the bench on loopback; their system services are not started, see [`apt_packages`]).
/// - `wrk`: the second, independent load generator of `bench proxy` (`--wrk`).
/// - `valgrind`: `bench proxy --callgrind` counts the gateway's instructions per request.
/// - `clang`: builds the C reference program `bench xdp` times the gateway's XDP against.
/// - `redis-server`: the Redis that the cluster-mode tests start themselves (own port, no
///   persistence); its system service is not started either.
pub const APT_PACKAGES: &[&str] = &[
    "build-essential",
    "pkg-config",
    "ca-certificates",
    "iproute2",
    "iptables",
    "nftables",
    "ethtool",
    "curl",
    "openssl",
    "nginx-light",
    "haproxy",
    "wrk",
    "valgrind",
    "clang",
    // Cluster-mode tests start their own redis-server processes (never the system service).
    "redis-server",
];

/// The bpf-linker release that builds against the LLVM 22 shipped inside the nightly toolchain.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The newest LLVM major that [`BPF_LINKER_VERSION`] has an `llvm-N` feature for.
const BPF_LINKER_MAX_LLVM: u32 = 22;

/// Where the libLLVM prefix folders live. Not under `target/`: bpf-linker bakes the folder in
/// as its rpath, so `cargo clean` must not remove it.
const LLVM_PREFIX_ROOT: &str = "/opt/gateway-llvm";

/// What a step found or did, for the one-line summary.
enum Outcome {
    AlreadyPresent(String),
    Done(String),
}

type StepFn = fn() -> Result<Outcome>;

/// Runs every setup step in order; stops at the first that fails.
pub fn run() -> Result<()> {
    let steps: [(&str, StepFn); 4] = [
        ("apt packages", apt_packages),
        ("nightly toolchain", nightly_toolchain),
        ("lint components", default_components),
        ("bpf-linker", bpf_linker),
    ];
    for (name, step) in steps {
        let outcome = step().step(
            format!("setup: {name}"),
            "fix the error above, then rerun `cargo xtask setup`",
        )?;
        match outcome {
            Outcome::AlreadyPresent(what) => eprintln!("setup: {name}: already present ({what})"),
            Outcome::Done(what) => eprintln!("setup: {name}: done ({what})"),
        }
    }
    Ok(())
}

// ---- apt packages -------------------------------------------------------------------------

fn apt_packages() -> Result<Outcome> {
    let missing = missing_apt_packages()?;
    if missing.is_empty() {
        return Ok(Outcome::AlreadyPresent(format!(
            "{} packages",
            APT_PACKAGES.len()
        )));
    }
    let list = missing.join(" ");
    if !cmd::is_root() {
        return Err(anyhow::anyhow!("missing apt packages: {list}")).step(
            "setup: apt packages",
            format!(
                "setup needs root for apt: rerun `cargo xtask setup` as root, \
                 or run `sudo apt-get install -y {list}` and then rerun it"
            ),
        );
    }
    apt_get(&["update"])?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(missing.iter().map(String::as_str));
    let _no_services = NoServiceStarts::new()?;
    apt_get(&install)?;
    Ok(Outcome::Done(format!("installed {list}")))
}

/// Installing nginx or haproxy would also start them as system services (nginx on port 80);
/// the benches start their own instances. While this guard lives, Debian's
/// `/usr/sbin/policy-rc.d` (which invoke-rc.d and deb-systemd-invoke ask first) says no to
/// every service start. A policy file already there is left as it is.
struct NoServiceStarts(Option<&'static str>);

impl NoServiceStarts {
    const POLICY: &'static str = "/usr/sbin/policy-rc.d";

    fn new() -> Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        if std::path::Path::new(Self::POLICY).exists() {
            return Ok(NoServiceStarts(None));
        }
        std::fs::write(
            Self::POLICY,
            "#!/bin/sh\n# cargo xtask setup: no service starts\nexit 101\n",
        )
        .and_then(|()| {
            std::fs::set_permissions(Self::POLICY, std::fs::Permissions::from_mode(0o755))
        })
        .with_context(|| format!("writing {}", Self::POLICY))?;
        Ok(NoServiceStarts(Some(Self::POLICY)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The packages of [`APT_PACKAGES`] that dpkg does not report as installed.
fn missing_apt_packages() -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for &package in APT_PACKAGES {
        // dpkg-query exits non-zero for unknown packages; only a failure to start matters.
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", package])
            .output()
            .context("could not run dpkg-query")
            .step(
                "setup: apt packages",
                format!(
                    "this step supports Debian/Ubuntu; elsewhere install the equivalents of: {}",
                    APT_PACKAGES.join(" ")
                ),
            )?;
        if String::from_utf8_lossy(&out.stdout).trim() != "install ok installed" {
            missing.push(package.to_string());
        }
    }
    Ok(missing)
}

/// Runs apt-get without prompts; waits for the dpkg lock if another apt run holds it.
fn apt_get(args: &[&str]) -> Result<()> {
    let mut apt = Command::new("apt-get");
    apt.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-o", "DPkg::Lock::Timeout=600"])
        .args(args);
    cmd::run(&mut apt).step(
        "setup: apt packages",
        "check the apt output above (network, sources list, a held dpkg lock), then rerun",
    )
}

// ---- rustup components ------------------------------------------------------------------

/// Nightly components: `rust-src` for `-Z build-std=core` (the eBPF build), `clippy` for the
/// eBPF lint pass.
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy"];

/// The eBPF crate's toolchain file: the one place its nightly is pinned (by date).
const EBPF_TOOLCHAIN_FILE: &str = "gateway-ebpf/rust-toolchain.toml";

/// The pinned nightly, e.g. `nightly-2026-05-20`, read from [`EBPF_TOOLCHAIN_FILE`].
pub fn ebpf_toolchain() -> Result<String> {
    let path = cmd::workspace_root().join(EBPF_TOOLCHAIN_FILE);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let file: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    file.get("toolchain")
        .and_then(|table| table.get("channel"))
        .and_then(toml::Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("{}: no toolchain.channel string", path.display()))
}

/// Components of the default (stable) toolchain that `cargo xtask lint` uses.
const DEFAULT_COMPONENTS: &[&str] = &["rustfmt", "clippy"];

const RUSTUP_HINT: &str = "check the rustup output above (network, disk space), then rerun";

fn nightly_toolchain() -> Result<Outcome> {
    let nightly = ebpf_toolchain()?;
    // Fails when it is not installed (auto-install is off so it cannot hide that).
    let Ok(missing) = missing_components(Some(&nightly), NIGHTLY_COMPONENTS) else {
        let mut install = rustup();
        install.args(["toolchain", "install", &nightly, "--profile", "minimal"]);
        install.args(["--component", &NIGHTLY_COMPONENTS.join(",")]);
        cmd::run(&mut install).step(
            "setup: nightly toolchain",
            format!(
                "{RUSTUP_HINT}; if rustup says {nightly} does not exist for this host, pin \
                 another date in {EBPF_TOOLCHAIN_FILE}"
            ),
        )?;
        return Ok(Outcome::Done(format!(
            "installed {nightly} with {}",
            NIGHTLY_COMPONENTS.join(", ")
        )));
    };
    add_components(Some(&nightly), NIGHTLY_COMPONENTS, &missing)
}

fn default_components() -> Result<Outcome> {
    let missing = missing_components(None, DEFAULT_COMPONENTS)
        .context("listing the default toolchain's components")
        .step(
            "setup: lint components",
            "run `rustup default stable`, then rerun",
        )?;
    add_components(None, DEFAULT_COMPONENTS, &missing)
}

/// Which of `wanted` the toolchain (the active one if `None`) lacks.
fn missing_components<'a>(toolchain: Option<&str>, wanted: &[&'a str]) -> Result<Vec<&'a str>> {
    let mut list = rustup();
    list.args(["component", "list", "--installed"]);
    list.args(
        toolchain
            .map(|name| ["--toolchain", name])
            .into_iter()
            .flatten(),
    );
    let installed = cmd::output(&mut list)?;
    // Listed either bare (`rust-src`) or with the host triple (`clippy-x86_64-unknown-linux-gnu`).
    let has = |name: &str| {
        installed.lines().map(str::trim).any(|line| {
            line == name
                || line
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('-'))
        })
    };
    Ok(wanted.iter().copied().filter(|name| !has(name)).collect())
}

/// Adds `missing` (a subset of `wanted`) to the toolchain (the active one if `None`).
fn add_components(toolchain: Option<&str>, wanted: &[&str], missing: &[&str]) -> Result<Outcome> {
    let which = toolchain.unwrap_or("default toolchain");
    if missing.is_empty() {
        return Ok(Outcome::AlreadyPresent(format!(
            "{which} with {}",
            wanted.join(", ")
        )));
    }
    let mut add = rustup();
    add.args(["component", "add"]).args(missing);
    add.args(
        toolchain
            .map(|name| ["--toolchain", name])
            .into_iter()
            .flatten(),
    );
    cmd::run(&mut add).step(format!("setup: components of {which}"), RUSTUP_HINT)?;
    Ok(Outcome::Done(format!(
        "added {} to {which}",
        missing.join(", ")
    )))
}

/// `rustup` that never installs a toolchain behind our back.
fn rustup() -> Command {
    let mut rustup = Command::new("rustup");
    rustup.env("RUSTUP_AUTO_INSTALL", "0");
    rustup
}

// ---- bpf-linker ---------------------------------------------------------------------------

fn bpf_linker() -> Result<Outcome> {
    let llvm = NightlyLlvm::find().step(
        "setup: bpf-linker",
        format!(
            "the pinned nightly should ship libLLVM.so.<major>.<minor>-rust-*; reinstall it \
             (`rustup toolchain uninstall` it, then rerun setup) or pin another date in \
             {EBPF_TOOLCHAIN_FILE}"
        ),
    )?;
    if let Some((problem, what_to_do)) = linker_cannot_link(llvm.major) {
        return Err(anyhow::anyhow!(problem)).step("setup: bpf-linker", what_to_do);
    }
    let summary = |path: &Path| {
        format!(
            "{} {BPF_LINKER_VERSION}, LLVM {}",
            path.display(),
            llvm.major
        )
    };
    if let Some(path) = installed_bpf_linker(&llvm) {
        ensure_on_path(&path)?;
        return Ok(Outcome::AlreadyPresent(summary(&path)));
    }
    install_bpf_linker(&llvm)?;
    let path = installed_bpf_linker(&llvm)
        .context("bpf-linker was installed but does not run or does not find its libLLVM")
        .step(
            "setup: bpf-linker",
            "check `bpf-linker --version` and `ldd $(which bpf-linker) | grep LLVM`",
        )?;
    ensure_on_path(&path)?;
    Ok(Outcome::Done(format!("installed {}", summary(&path))))
}

/// When bpf-linker [`BPF_LINKER_VERSION`] has no `llvm-N` feature for the pinned nightly's
/// LLVM major: what is wrong, and exactly what to do about it.
fn linker_cannot_link(llvm_major: u32) -> Option<(String, String)> {
    (llvm_major > BPF_LINKER_MAX_LLVM).then(|| {
        (
            format!(
                "the pinned nightly ships LLVM {llvm_major}, but bpf-linker \
                 {BPF_LINKER_VERSION} knows LLVM majors only up to {BPF_LINKER_MAX_LLVM}"
            ),
            format!(
                "either pin a nightly on LLVM {BPF_LINKER_MAX_LLVM} in {EBPF_TOOLCHAIN_FILE} \
                 (`rustc +nightly-YYYY-MM-DD -vV` prints its LLVM version), or raise \
                 BPF_LINKER_VERSION and BPF_LINKER_MAX_LLVM in xtask/src/setup.rs to a \
                 bpf-linker release with an `llvm-{llvm_major}` feature; then rerun setup"
            ),
        )
    })
}

/// The eBPF build looks bpf-linker up on PATH, so a copy only in cargo's bin folder is not enough.
fn ensure_on_path(path: &Path) -> Result<()> {
    let found = find_on_path("bpf-linker");
    if found.as_deref() == Some(path) {
        return Ok(());
    }
    let problem = match found {
        Some(other) => format!("PATH finds {} before {}", other.display(), path.display()),
        None => format!("{} is installed but not on PATH", path.display()),
    };
    let dir = path.parent().unwrap_or(path).display().to_string();
    Err(anyhow::anyhow!(problem)).step(
        "setup: bpf-linker",
        format!("put {dir} first on PATH (`export PATH={dir}:$PATH`), then rerun"),
    )
}

/// The libLLVM shared library inside the nightly toolchain.
struct NightlyLlvm {
    /// Full path, e.g. `<sysroot>/lib/libLLVM.so.22.1-rust-1.97.0-nightly`.
    path: PathBuf,
    /// File name, which is also its soname.
    file_name: String,
    /// LLVM major version, e.g. 22.
    major: u32,
}

impl NightlyLlvm {
    fn find() -> Result<Self> {
        let nightly = ebpf_toolchain()?;
        let sysroot = cmd::output(rustup().args(["run", &nightly, "rustc", "--print", "sysroot"]))?;
        let lib = Path::new(sysroot.trim()).join("lib");
        let entries = fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?;
        for entry in entries {
            let file_name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(major) = llvm_major(&file_name) {
                let path = lib.join(&file_name);
                return Ok(Self {
                    path,
                    file_name,
                    major,
                });
            }
        }
        bail!("no libLLVM.so.<major>.<minor>-rust-* in {}", lib.display())
    }

    /// `/opt/gateway-llvm/<file name>`: the LLVM_PREFIX bpf-linker is built against.
    fn prefix(&self) -> PathBuf {
        Path::new(LLVM_PREFIX_ROOT).join(&self.file_name)
    }
}

/// The LLVM major of a name like `libLLVM.so.22.1-rust-1.97.0-nightly`, if it is one.
fn llvm_major(file_name: &str) -> Option<u32> {
    let version = file_name.strip_prefix("libLLVM.so.")?;
    let (numbers, _) = version.split_once("-rust-")?;
    let (major, minor) = numbers.split_once('.')?;
    minor.parse::<u32>().ok()?;
    major.parse().ok()
}

/// The bpf-linker on PATH (or in cargo's bin folder), if it is the wanted version and loads a libLLVM of the nightly's
/// major version (a dangling prefix shows as "not found" in ldd).
fn installed_bpf_linker(llvm: &NightlyLlvm) -> Option<PathBuf> {
    let path = find_on_path("bpf-linker").or_else(|| in_cargo_bin("bpf-linker"))?;
    let version = cmd::output(Command::new(&path).arg("--version")).ok()?;
    if version.split_whitespace().nth(1) != Some(BPF_LINKER_VERSION) {
        return None;
    }
    let ldd = cmd::output(Command::new("ldd").arg(&path)).ok()?;
    let line = ldd.lines().find(|line| line.contains("libLLVM"))?;
    let (soname, resolved) = line.trim().split_once("=>")?;
    let resolved_ok = !resolved.contains("not found");
    let major_ok = llvm_major(soname.trim()) == Some(llvm.major);
    (resolved_ok && major_ok).then_some(path)
}

fn install_bpf_linker(llvm: &NightlyLlvm) -> Result<()> {
    let prefix = llvm.prefix();
    make_llvm_prefix(llvm, &prefix).step(
        "setup: bpf-linker",
        format!("setup needs write access to {LLVM_PREFIX_ROOT}: rerun it as root"),
    )?;
    let feature = format!("llvm-{}", llvm.major);
    let mut install = cmd::cargo(["install", "bpf-linker", "--version", BPF_LINKER_VERSION]);
    // --force: we only get here when an installed copy is the wrong version or is broken.
    install
        .args(["--locked", "--force", "--no-default-features", "--features"])
        .arg(&feature)
        .env("LLVM_PREFIX", &prefix);
    cmd::run(&mut install).step(
        "setup: bpf-linker",
        "check the build output above (build-essential installed? network?), then rerun",
    )
}

/// Makes `<prefix>/lib` with `libLLVM.so` (for linking) and `<file name>` (the soname, for
/// the loader) both pointing at the nightly's libLLVM.
fn make_llvm_prefix(llvm: &NightlyLlvm, prefix: &Path) -> Result<()> {
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in ["libLLVM.so", llvm.file_name.as_str()] {
        let link = lib.join(name);
        if fs::read_link(&link).ok().as_deref() == Some(llvm.path.as_path()) {
            continue;
        }
        // A stale link or file from an older toolchain: replace it.
        let _ = fs::remove_file(&link);
        symlink(&llvm.path, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), llvm.path.display()))?;
    }
    Ok(())
}

/// The first file called `name` in a PATH folder.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `name` in cargo's bin folder, where `cargo install` puts it.
fn in_cargo_bin(name: &str) -> Option<PathBuf> {
    let candidate = cargo_home()?.join("bin").join(name);
    candidate.is_file().then_some(candidate)
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nightly_on_an_llvm_bpf_linker_does_not_know_says_what_to_do() {
        for major in [19, 20, 21, BPF_LINKER_MAX_LLVM] {
            assert_eq!(linker_cannot_link(major), None, "LLVM {major}");
        }
        for major in [BPF_LINKER_MAX_LLVM + 1, BPF_LINKER_MAX_LLVM + 2, 99] {
            let (problem, what_to_do) = linker_cannot_link(major).expect("refused");
            assert!(problem.contains(&format!("LLVM {major}")), "{problem}");
            assert!(problem.contains(BPF_LINKER_VERSION), "{problem}");
            assert!(what_to_do.contains(EBPF_TOOLCHAIN_FILE), "{what_to_do}");
            assert!(
                what_to_do.contains(&format!("llvm-{major}")),
                "{what_to_do}"
            );
        }
    }

    #[test]
    fn the_ebpf_nightly_is_pinned_by_date() {
        let pinned = ebpf_toolchain().unwrap();
        let date = pinned.strip_prefix("nightly-").expect("a nightly");
        let parts: Vec<&str> = date.split('-').collect();
        assert!(
            parts.len() == 3 && parts.iter().all(|part| part.parse::<u32>().is_ok()),
            "{pinned} is not nightly-YYYY-MM-DD"
        );
    }

    #[test]
    fn llvm_prefix_links_are_made_once_and_repaired() {
        let dir = std::env::temp_dir().join(format!("xtask-prefix-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let file_name = "libLLVM.so.22.1-rust-test".to_string();
        let llvm = NightlyLlvm {
            path: dir.join(&file_name),
            file_name: file_name.clone(),
            major: 22,
        };
        fs::write(&llvm.path, b"").unwrap();
        let prefix = dir.join("prefix");
        let stale = prefix.join("lib/libLLVM.so");
        fs::create_dir_all(stale.parent().unwrap()).unwrap();
        symlink("/nonexistent", &stale).unwrap();

        make_llvm_prefix(&llvm, &prefix).unwrap();
        make_llvm_prefix(&llvm, &prefix).unwrap();
        for name in ["libLLVM.so", file_name.as_str()] {
            assert_eq!(
                fs::read_link(prefix.join("lib").join(name)).unwrap(),
                llvm.path
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn llvm_major_reads_rust_libllvm_names() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM.so.21.1-rust-1.92.0-stable"), Some(21));
        assert_eq!(llvm_major("libLLVM-22-rust-1.97.0-nightly.so"), None);
        assert_eq!(llvm_major("libLLVM.so"), None);
    }
}
