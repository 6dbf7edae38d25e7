//! BPF_PROG_TEST_RUN of the router's two entries on one frame.

use aya::programs::{TestRun, TestRunOptions};
use router_user::datapath::Datapath;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// Runs the XDP entry as if `frame` arrived on `ingress`; returns (verdict, output frame).
pub fn xdp(dp: &Datapath, ingress: u32, frame: &[u8]) -> (u32, Vec<u8>) {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        ..Default::default()
    };
    let result = dp
        .xdp()
        .expect("Datapath::load loads the XDP program")
        .test_run(opts)
        .expect("BPF_PROG_TEST_RUN (XDP)");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

/// Runs the TC entry as if `frame` arrived on `ingress`; returns (verdict, output frame).
pub fn tc(dp: &Datapath, ingress: u32, frame: &[u8]) -> (u32, Vec<u8>) {
    // struct __sk_buff up to `ifindex` (offset 40); the kernel zero-fills the rest and
    // refuses `ingress_ifindex` together with `ifindex`.
    let mut ctx = [0u8; 44];
    ctx[40..44].copy_from_slice(&ingress.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        ..Default::default()
    };
    let result = dp
        .tc()
        .test_run(opts)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN (TC) on {frame:02x?}: {e}"));
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

/// Runs the TC entry like [`tc`] and also returns the skb's mark afterwards.
pub fn tc_with_mark(dp: &Datapath, ingress: u32, frame: &[u8]) -> (u32, Vec<u8>, u32) {
    let mut ctx = [0u8; 44];
    ctx[40..44].copy_from_slice(&ingress.to_ne_bytes());
    let mut ctx_out = [0u8; 256];
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        ctx_out: Some(&mut ctx_out),
        ..Default::default()
    };
    let result = dp.tc().test_run(opts).expect("BPF_PROG_TEST_RUN (TC)");
    out.truncate(result.data_size_out as usize);
    // struct __sk_buff: len, pkt_type, mark, ...
    let mark = u32::from_ne_bytes([ctx_out[8], ctx_out[9], ctx_out[10], ctx_out[11]]);
    (result.return_value, out, mark)
}
