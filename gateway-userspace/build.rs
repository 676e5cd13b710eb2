//! Builds the XDP program (gateway-ebpf) for the BPF target with the nightly pinned in
//! gateway-ebpf/rust-toolchain.toml, so `include_bytes_aligned!` in `src/xdp/` embeds a fresh
//! object. `AYA_BUILD_SKIP=1` skips it
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
    let pin = root_dir.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={pin}");
    let text = std::fs::read_to_string(&pin).with_context(|| format!("reading {pin}"))?;
    let toolchain: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {pin}"))?;
    let channel = toolchain
        .get("toolchain")
        .and_then(|table| table.get("channel"))
        .and_then(toml::Value::as_str)
        .ok_or_else(|| anyhow!("{pin}: no toolchain.channel string"))?;
    aya_build::build_ebpf([package], Toolchain::Custom(channel)).with_context(|| {
        format!(
            "building the XDP program with {channel} failed: run `cargo xtask setup` \
             (it installs {channel} with rust-src, and bpf-linker)"
        )
    })
}
