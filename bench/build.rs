//! Builds the generator and sink (bench-ebpf) with aya-build into OUT_DIR, where
//! `traffic.rs` embeds them, with the toolchain the router's eBPF object is built with: the
//! dated nightly named in `ebpf-toolchain` at the workspace root, which `cargo xtask setup`
//! installs with rust-src (a plain `nightly` may lack it, or not be installed at all).

/// The toolchain that builds the eBPF objects (its LLVM must match bpf-linker's).
const EBPF_TOOLCHAIN: &str = include_str!("../ebpf-toolchain");

fn main() -> anyhow::Result<()> {
    println!(
        "cargo:rerun-if-changed={}/../ebpf-toolchain",
        env!("CARGO_MANIFEST_DIR")
    );
    let package = aya_build::Package {
        name: "bench-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../bench-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf(
        [package],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN.trim()),
    )
}
