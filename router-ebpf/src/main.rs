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
mod flow;
mod maps;
mod nat;
mod parse;
mod pipeline;
mod rewrite;
mod route;
mod verdict;

use aya_ebpf::{
    bindings::bpf_redir_neigh,
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_xdp_adjust_meta},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use router_common::{Reason, xdp_meta};

use crate::{context::Frame, maps::EGRESS_DEVS, verdict::Verdict};

/// Headers the TC entry wants in the linear part of the skb before parsing: up to the
/// checksum of a TCP header embedded in an ICMP error.
const TC_LINEAR_BYTES: u32 = 14 + 20 + 8 + 20 + 18;

#[xdp]
pub fn router_xdp(ctx: XdpContext) -> u32 {
    let frame = Frame::from_xdp(&ctx);
    let mut verdict = pipeline::process(&frame);
    let action = match verdict {
        Verdict::Forward { ifindex, .. } => match EGRESS_DEVS.redirect(ifindex, 0) {
            Ok(action) => action,
            Err(_) => {
                verdict = Verdict::Drop(Reason::RedirectFailed);
                xdp_action::XDP_DROP
            }
        },
        Verdict::Pass(reason) => {
            let tag = if reason == Reason::XdpToTc {
                xdp_meta::TC_FORWARD
            } else {
                xdp_meta::DONE
            };
            tag_for_tc(&ctx, tag);
            xdp_action::XDP_PASS
        }
        Verdict::Drop(_) => xdp_action::XDP_DROP,
    };
    counters::count(frame.ingress, frame.len, &verdict);
    action
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
        Some(_) | None => {}
    }
    // SAFETY: reading our own context.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        counters::count(ifindex(&ctx), ctx.len(), &Verdict::Pass(Reason::Vlan));
        return TC_ACT_OK;
    }
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < TC_LINEAR_BYTES && ctx.len() > linear {
        // Best effort: a failure leaves the headers short, which parsing then reports.
        let _ = ctx.pull_data(TC_LINEAR_BYTES.min(ctx.len()));
    }
    let frame = Frame::from_tc(&ctx);
    let mut verdict = pipeline::process(&frame);
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
        Verdict::Pass(_) => TC_ACT_OK,
        Verdict::Drop(_) => TC_ACT_SHOT,
    };
    counters::count(frame.ingress, frame.len, &verdict);
    action
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
