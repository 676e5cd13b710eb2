//! Builds the XDP program (gateway-ebpf) for the BPF target with the nightly toolchain, so
//! `include_bytes_aligned!` in `src/xdp/` embeds a fresh object. `AYA_BUILD_SKIP=1` skips it
//! (for tools that only type-check).
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("reading the workspace metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|package| package.name == "gateway-ebpf")
        .ok_or_else(|| anyhow!("gateway-ebpf is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = Package {
        name: "gateway-ebpf",
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default()).context(
        "building the XDP program failed: run `cargo xtask setup` (nightly rust-src, bpf-linker)",
    )
}
