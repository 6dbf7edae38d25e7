//! Maps of the benchmark traffic generator and sink (`bench-ebpf`), shared with `bench`.

/// What the generator writes: UDP frames of `frame_len` bytes from `src_ip`:`src_port + i`
/// to `dst_ip`:`dst_port`, for flows `i` in `0..flows`, round robin.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GenConfig {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src_ip: [u8; 4],
    pub dst_ip: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub flows: u32,
    pub frame_len: u32,
}

/// Per-CPU counters of the sink: test frames received (and dropped by it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SinkStats {
    pub packets: u64,
    pub bytes: u64,
}

pub mod bench_names {
    pub const GEN_PROG: &str = "bench_gen";
    pub const SINK_PROG: &str = "bench_sink";
    pub const GEN_CONFIG: &str = "GEN_CONFIG";
    pub const GEN_SEQ: &str = "GEN_SEQ";
    pub const SINK_PORT: &str = "SINK_PORT";
    pub const SINK_STATS: &str = "SINK_STATS";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, integers only, no implicit padding.
    unsafe impl aya::Pod for super::GenConfig {}
    unsafe impl aya::Pod for super::SinkStats {}
}
