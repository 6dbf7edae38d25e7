//! Builds the eBPF object (router-ebpf) with aya-build into OUT_DIR, where the library
//! embeds it: one artifact, no path to find at run time.
fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "router-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../router-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
