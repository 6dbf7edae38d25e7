//! The fast path, shared by the XDP and TC entries: parse, route, rewrite.

use router_common::Reason;

use crate::{context::Frame, maps::IFACES, parse, route, verdict::Verdict};

/// Runs the pipeline on `frame`. Packet bytes change only on `Verdict::Forward`.
#[inline(always)]
pub fn process(frame: &Frame) -> Verdict {
    let eth = match parse::parse_l2(frame) {
        Ok(eth) => eth,
        Err(verdict) => return verdict,
    };
    // SAFETY: map values are plain data; the entry is read, never kept.
    let Some(iface) = (unsafe { IFACES.get(&frame.ingress) }) else {
        return Verdict::Pass(Reason::UnknownIngress);
    };
    // SAFETY: `parse_l2` bounds-checked the Ethernet header.
    if unsafe { (*eth).dst_addr } != iface.mac {
        return Verdict::Pass(Reason::NotRouterMac);
    }
    let pkt = match parse::parse_ipv4(frame, eth) {
        Ok(pkt) => pkt,
        Err(verdict) => return verdict,
    };
    route::forward(frame, &pkt)
}
