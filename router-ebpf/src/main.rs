//! The router fast path: one pipeline (`pipeline::process`) with an XDP and a TC entry.
#![no_std]
#![no_main]
// Atomic adds on session counters: `core::sync::atomic` has no read-modify-write on BPF.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod arp;
mod conntrack;
mod context;
mod counters;
mod csum;
mod firewall;
mod flow;
mod flow_cache;
mod fragment;
mod ha;
mod maps;
mod monitor;
mod nat;
mod parse;
mod pipeline;
mod rewrite;
mod route;
mod verdict;
mod verify;
mod walk;

use aya_ebpf::{
    bindings::{__sk_buff, bpf_redir_neigh, xdp_md},
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_xdp_adjust_meta},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use router_common::{REJECT_MARK, Reason, xdp_meta};

use crate::{context::Frame, maps::EGRESS_DEVS, verdict::Verdict};

/// Headers the TC entry wants in the linear part of the skb before parsing: up to the
/// checksum of a TCP header embedded in an ICMP error.
const TC_LINEAR_BYTES: u32 = 14 + 20 + 8 + 20 + 18;

/// `frags`: the program takes multi-buffer frames, so an interface whose MTU exceeds a page
/// (jumbo frames, MTU 9000) can run it natively. Headers are always in the first buffer;
/// only the frame's length comes from all of them.
#[xdp(frags)]
pub fn router_xdp(ctx: XdpContext) -> u32 {
    let frame = Frame::from_xdp(&ctx);
    let epoch = flow_cache::epoch();
    let cached = if flow_cache::may_hold(&frame, epoch) {
        router_xdp_cached(ctx.ctx, epoch)
    } else {
        flow_cache::MISSED
    };
    let mut verdict = match cached {
        flow_cache::MISSED => pipeline::verdict(
            &frame,
            {
                flow_cache::begin(epoch);
                router_xdp_decide(ctx.ctx)
            },
            || router_xdp_classify(ctx.ctx),
            || router_xdp_forward(ctx.ctx),
            || router_xdp_checksum(ctx.ctx),
            || router_xdp_finish(ctx.ctx),
            || router_xdp_fragment(ctx.ctx),
        ),
        ifindex => Verdict::Forward {
            ifindex,
            resolve: [0; 4],
        },
    };
    let action = match verdict {
        Verdict::Forward { ifindex, .. } => match EGRESS_DEVS.redirect(ifindex, 0) {
            Ok(action) => action,
            Err(_) => {
                verdict = Verdict::Drop(Reason::RedirectFailed);
                xdp_action::XDP_DROP
            }
        },
        Verdict::Pass(reason) => {
            if !tags_for_tc() {
                if reason != Reason::XdpToTc {
                    // Untagged, the TC entry decides the packet again: it counts it.
                    return xdp_action::XDP_PASS;
                }
            } else {
                let tag = match reason {
                    Reason::XdpToTc => xdp_meta::TC_FORWARD,
                    Reason::FwReject => xdp_meta::REJECT,
                    _ => xdp_meta::DONE,
                };
                tag_for_tc(&ctx, tag);
            }
            xdp_action::XDP_PASS
        }
        Verdict::Drop(_) | Verdict::Finish => xdp_action::XDP_DROP,
    };
    let len = frame.len();
    counters::count(frame.ingress, pipeline::counter_slot(), len, &verdict);
    if !matches!(verdict, Verdict::Pass(Reason::XdpToTc)) {
        // Handed over, the TC entry decides the packet again and counts that.
        firewall::count_decided(len);
    }
    let reason = monitor::reason_of(&verdict);
    if reason != 0 {
        let _ = router_xdp_report(ctx.ctx, reason);
    }
    action
}

/// Non-zero if the kernel lets XDP programs call `bpf_xdp_adjust_meta`; the loader sets it
/// to 0 or 1 (`router_common::globals::XDP_META`). Read-only: the verifier knows its value
/// and does not look at the code the other value would run.
///
/// The default is a value no other constant of the program has: LLVM gives equal read-only
/// constants one address, and with a default of 1 it pointed the `&1` the SNAT source
/// count is inserted with at this global, which the loader then set to 0.
#[unsafe(no_mangle)]
static XDP_META: u32 = 0x5244_4d54;

/// Whether the XDP entry tags the packets it passes for the TC entry.
#[inline(always)]
fn tags_for_tc() -> bool {
    // SAFETY: a plain read of a read-only global; volatile, so that the compiler keeps the
    // load the verifier resolves instead of folding in the default.
    unsafe { core::ptr::read_volatile(&XDP_META) != 0 }
}

/// Leaves `tag` in the XDP metadata area for the TC entry. Where the driver has no
/// metadata support the TC entry finds no tag and runs the pipeline itself.
#[inline(always)]
fn tag_for_tc(ctx: &XdpContext, tag: u32) {
    // SAFETY: plain helper call on our own context.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(xdp_meta::LEN as i32)) } != 0 {
        return;
    }
    let (meta, data) = (ctx.metadata(), ctx.data());
    if meta + xdp_meta::LEN > data {
        return;
    }
    // SAFETY: bounds checked just above.
    unsafe { *(meta as *mut u32) = tag };
}

#[classifier]
pub fn router_tc(ctx: TcContext) -> i32 {
    match xdp_tag(&ctx) {
        Some(xdp_meta::DONE) => return TC_ACT_OK,
        Some(xdp_meta::REJECT) => {
            mark_rejected(&ctx);
            return TC_ACT_OK;
        }
        Some(_) | None => {}
    }
    // SAFETY: reading our own context.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        let pass = Verdict::Pass(Reason::Vlan);
        counters::count(ifindex(&ctx), pipeline::NO_SLOT, ctx.len(), &pass);
        return TC_ACT_OK;
    }
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < TC_LINEAR_BYTES && ctx.len() > linear {
        // Best effort: a failure leaves the headers short, which parsing then reports.
        let _ = ctx.pull_data(TC_LINEAR_BYTES.min(ctx.len()));
    }
    let frame = Frame::from_tc(&ctx);
    let epoch = flow_cache::epoch();
    let cached = if flow_cache::may_hold(&frame, epoch) {
        router_tc_cached(ctx.skb.skb, epoch)
    } else {
        flow_cache::MISSED
    };
    let mut verdict = match cached {
        flow_cache::MISSED => pipeline::verdict(
            &frame,
            {
                flow_cache::begin(epoch);
                router_tc_decide(ctx.skb.skb)
            },
            || router_tc_classify(ctx.skb.skb),
            || router_tc_forward(ctx.skb.skb),
            || router_tc_checksum(ctx.skb.skb),
            || router_tc_finish(ctx.skb.skb),
            || router_tc_fragment(ctx.skb.skb),
        ),
        ifindex => Verdict::Forward {
            ifindex,
            resolve: [0; 4],
        },
    };
    let action = match verdict {
        Verdict::Forward { ifindex, resolve } => {
            // SAFETY: plain helper calls from the TC entry.
            let rc = if resolve == [0; 4] {
                unsafe { bpf_redirect(ifindex, 0) }
            } else {
                unsafe { redirect_neigh(ifindex, resolve) }
            };
            if rc == aya_ebpf::bindings::TC_ACT_REDIRECT as i64 {
                rc as i32
            } else {
                verdict = Verdict::Drop(Reason::RedirectFailed);
                TC_ACT_SHOT
            }
        }
        Verdict::Pass(reason) => {
            if reason == Reason::FwReject {
                mark_rejected(&ctx);
            }
            TC_ACT_OK
        }
        Verdict::Drop(_) | Verdict::Finish => TC_ACT_SHOT,
    };
    counters::count(
        frame.ingress,
        pipeline::counter_slot(),
        frame.len(),
        &verdict,
    );
    firewall::count_decided(frame.len());
    let reason = monitor::reason_of(&verdict);
    if reason != 0 {
        let _ = router_tc_report(ctx.skb.skb, reason);
    }
    action
}

/// Marks a packet the firewall rejects; the slow path's nftables rule answers it.
#[inline(always)]
fn mark_rejected(ctx: &TcContext) {
    // SAFETY: `mark` is writable from TC programs.
    unsafe { (*ctx.skb.skb).mark = REJECT_MARK };
}

// The pipeline's stages are global functions: the verifier checks each once, on its own,
// so its cost is their sum rather than their product, and each has its own stack.

/// A packet of a cached flow under XDP (see `flow_cache::forward`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_xdp_cached(ctx: *mut xdp_md, epoch: u32) -> u32 {
    flow_cache::forward(&Frame::from_xdp(&XdpContext::new(ctx)), epoch)
}

/// A packet of a cached flow under TC.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_tc_cached(skb: *mut __sk_buff, epoch: u32) -> u32 {
    flow_cache::forward(&Frame::from_tc(&TcContext::new(skb)), epoch)
}

/// The first stage of the pipeline under XDP (see `pipeline::decide`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_xdp_decide(ctx: *mut xdp_md) -> u32 {
    pipeline::decide(&Frame::from_xdp(&XdpContext::new(ctx)))
}

/// The first stage of the pipeline under TC.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_tc_decide(skb: *mut __sk_buff) -> u32 {
    pipeline::decide(&Frame::from_tc(&TcContext::new(skb)))
}

/// The second stage under XDP (see `pipeline::classify`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_xdp_classify(ctx: *mut xdp_md) -> u32 {
    pipeline::classify(&Frame::from_xdp(&XdpContext::new(ctx)))
}

/// The second stage under TC.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_tc_classify(skb: *mut __sk_buff) -> u32 {
    pipeline::classify(&Frame::from_tc(&TcContext::new(skb)))
}

/// The third stage under XDP (see `pipeline::forward`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_xdp_forward(ctx: *mut xdp_md) -> u32 {
    pipeline::forward(&Frame::from_xdp(&XdpContext::new(ctx)))
}

/// The third stage under TC.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_tc_forward(skb: *mut __sk_buff) -> u32 {
    pipeline::forward(&Frame::from_tc(&TcContext::new(skb)))
}

/// The L4 checksum check under XDP (see `pipeline::checksum_check`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_xdp_checksum(ctx: *mut xdp_md) -> u32 {
    pipeline::checksum_check(&Frame::from_xdp(&XdpContext::new(ctx)))
}

/// The L4 checksum check under TC.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_tc_checksum(skb: *mut __sk_buff) -> u32 {
    pipeline::checksum_check(&Frame::from_tc(&TcContext::new(skb)))
}

/// `routerctl monitor`'s event under XDP (see `monitor::report`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_xdp_report(ctx: *mut xdp_md, reason: u32) -> u32 {
    monitor::report(&Frame::from_xdp(&XdpContext::new(ctx)), reason);
    0 // global functions must return a scalar
}

/// `routerctl monitor`'s event under TC.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_tc_report(skb: *mut __sk_buff, reason: u32) -> u32 {
    monitor::report(&Frame::from_tc(&TcContext::new(skb)), reason);
    0 // global functions must return a scalar
}

/// The second half of the pipeline under XDP (see `pipeline::finish`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_xdp_finish(ctx: *mut xdp_md) -> u32 {
    pipeline::finish(&Frame::from_xdp(&XdpContext::new(ctx)))
}

/// The second half of the pipeline under TC.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_tc_finish(skb: *mut __sk_buff) -> u32 {
    pipeline::finish(&Frame::from_tc(&TcContext::new(skb)))
}

/// The second half for a later fragment under XDP (see `pipeline::finish_fragment`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_xdp_fragment(ctx: *mut xdp_md) -> u32 {
    pipeline::finish_fragment(&Frame::from_xdp(&XdpContext::new(ctx)))
}

/// The second half for a later fragment under TC.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn router_tc_fragment(skb: *mut __sk_buff) -> u32 {
    pipeline::finish_fragment(&Frame::from_tc(&TcContext::new(skb)))
}

/// Redirects to `ifindex` with the kernel resolving `next_hop`'s MAC (queueing the packet
/// while it asks), which XDP cannot do.
///
/// # Safety
/// Only from the TC entry.
#[inline(always)]
unsafe fn redirect_neigh(ifindex: u32, next_hop: [u8; 4]) -> i64 {
    let mut params: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    params.nh_family = AF_INET;
    params.__bindgen_anon_1.ipv4_nh = u32::from_ne_bytes(next_hop);
    let size = size_of::<bpf_redir_neigh>() as i32;
    // SAFETY: `params` lives across the call.
    unsafe { bpf_redirect_neigh(ifindex, &mut params, size, 0) }
}

const AF_INET: u32 = 2;

/// The tag the XDP entry left in front of the frame, if any.
#[inline(always)]
fn xdp_tag(ctx: &TcContext) -> Option<u32> {
    // SAFETY: reading our own context.
    let meta = unsafe { (*ctx.skb.skb).data_meta } as usize;
    if meta + xdp_meta::LEN > ctx.data() {
        return None;
    }
    // SAFETY: bounds checked just above.
    Some(unsafe { *(meta as *const u32) })
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: reading our own context.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
