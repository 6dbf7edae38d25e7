//! Traffic generator and sink for the benchmarks.
//!
//! `bench_gen` runs under BPF_PROG_TEST_RUN with live frames: every run writes a complete
//! set of headers (Ethernet, IPv4 with its checksum, UDP) for the next flow and returns
//! XDP_TX, which sends the frame out of the generator's veth. Frame pages are recycled
//! between runs, so nothing a router downstream rewrote in place (MACs, addresses, ports,
//! TTL, checksums: all header bytes) may survive into the next frame; the payload is never
//! written by anyone and is left as the first run found it.
//!
//! `bench_sink`, attached to the receiving veth, counts and drops UDP frames to the test
//! port and lets everything else (ARP above all) through.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use router_common::bench::{GenConfig, SinkStats};

#[map]
static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);
#[map]
static GEN_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
#[map]
static SINK_PORT: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static SINK_STATS: PerCpuArray<SinkStats> = PerCpuArray::with_max_entries(1, 0);

const HEADERS: usize = 14 + 20 + 8;

#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    let Some(cfg) = GEN_CONFIG.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + HEADERS > end {
        return xdp_action::XDP_ABORTED;
    }
    let Some(seq) = GEN_SEQ.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: a per-CPU value.
    let n = unsafe {
        let n = *seq;
        *seq = n.wrapping_add(1);
        n
    };
    let flow = match n.checked_rem(cfg.flows) {
        Some(f) => f,
        None => 0,
    };
    let sport = cfg.src_port.wrapping_add(flow as u16);
    let l3_len = (end - data - 14) as u16;
    let hdr = data as *mut [u8; HEADERS];
    // SAFETY: bounds checked above.
    let h = unsafe { &mut *hdr };
    h[0..6].copy_from_slice(&cfg.dst_mac);
    h[6..12].copy_from_slice(&cfg.src_mac);
    h[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = [
        0x45,
        0,
        (l3_len >> 8) as u8,
        l3_len as u8,
        0,
        0,
        0x40,
        0, // DF, no fragment
        64,
        17,
        0,
        0,
        cfg.src_ip[0],
        cfg.src_ip[1],
        cfg.src_ip[2],
        cfg.src_ip[3],
        cfg.dst_ip[0],
        cfg.dst_ip[1],
        cfg.dst_ip[2],
        cfg.dst_ip[3],
    ];
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        sum += u32::from(u16::from_be_bytes([ip[i], ip[i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let check = !(sum as u16);
    h[14..34].copy_from_slice(&ip);
    h[24..26].copy_from_slice(&check.to_be_bytes());
    let udp_len = l3_len - 20;
    h[34..36].copy_from_slice(&sport.to_be_bytes());
    h[36..38].copy_from_slice(&cfg.dst_port.to_be_bytes());
    h[38..40].copy_from_slice(&udp_len.to_be_bytes());
    h[40..42].copy_from_slice(&[0, 0]); // no UDP checksum
    xdp_action::XDP_TX
}

#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + HEADERS > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked above.
    let h = unsafe { &*(data as *const [u8; HEADERS]) };
    let port = u32::from(u16::from_be_bytes([h[36], h[37]]));
    let wanted = SINK_PORT.get(0).copied().unwrap_or(0);
    if h[12..14] != [0x08, 0x00] || h[23] != 17 || port != wanted {
        return xdp_action::XDP_PASS;
    }
    if let Some(stats) = SINK_STATS.get_ptr_mut(0) {
        // SAFETY: a per-CPU value.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += (end - data) as u64;
        }
    }
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
