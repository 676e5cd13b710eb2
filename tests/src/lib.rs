//! Support library for the gateway's integration tests.
//!
//! - [`netns`]: network namespaces and veth pairs made by the test, removed on drop.
//! - [`frames`]: exact Ethernet frames (VLAN, IPv4 options/fragments, IPv6 extension headers,
//!   TCP/UDP/ICMP with correct checksums, ARP) for `BPF_PROG_TEST_RUN` and raw sends.
//! - [`raw`]: an `AF_PACKET` socket that puts such frames on a real interface.
//! - [`daemon`]: runs the real `gateway` binary and reads its stats.
//! - [`scrape`]: a Prometheus scrape, parsed.
//! - [`redis`]: a real redis-server started by the test; [`cluster_lab`]: two gateway
//!   namespaces with XDP, a client and Redis, for cluster mode.
//! - [`traffic`]: real TCP/UDP between namespaces, every wait bounded.
//! - [`xdp_run`]: one frame through the real XDP program (`BPF_PROG_TEST_RUN`), its reason;
//!   [`xdp_model`]: the verdict as a plain-Rust model, to compare with it.
//!
//! Traffic rule: these helpers only ever send to loopback or to addresses inside namespaces the
//! test created itself.

pub mod cluster_lab;
pub mod daemon;
pub mod frames;
pub mod jwks;
pub mod lab;
pub mod netns;
pub mod raw;
pub mod redis;
pub mod scrape;
pub mod traffic;
pub mod upstream;
pub mod xdp_model;
pub mod xdp_run;

mod process;
#[cfg(test)]
mod selftest;

pub use daemon::{Gateway, gateway_bin, gateway_cmd, json_lines, run_expect_failure};
pub use frames::{Ext, Frame};
pub use netns::{NetNs, Side, VethEnd, VethLink, iface_stats, vlan_supported};
pub use raw::RawSocket;

/// Runs the real `openssl` CLI with `args` in `dir` (test keys and certificates); a failure
/// panics with openssl's own message.
pub fn openssl_in(dir: &std::path::Path, args: &[&str]) {
    let output = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether a test that needs the kernel (namespaces, XDP, raw sockets) can run here.
///
/// Those tests need root. CI runs as root, so there a non-root run is a setup error and panics
/// rather than letting kernel tests pass by skipping. Elsewhere they skip, saying so.
pub fn kernel_tests_enabled(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("kernel tests must run in CI: run as root ({test} needs root, and CI=true)");
    }
    eprintln!("skipping {test}: needs root (network namespaces, XDP, raw sockets)");
    false
}
