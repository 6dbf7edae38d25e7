//! Builds the generator and sink (bench-ebpf) with aya-build into OUT_DIR, where
//! `traffic.rs` embeds them.
fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "bench-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../bench-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
