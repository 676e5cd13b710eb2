/// The eBPF crate links with `bpf-linker`, a dependency cargo cannot see: rebuild when the
/// binary on PATH changes (for example after `cargo xtask setup` rebuilt it).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
