//! The fast path, shared by the XDP and TC entries: parse, NAT, route, rewrite.

use router_common::{Reason, ct_dir, iface_role};

use crate::{
    arp, conntrack,
    context::Frame,
    counters, flow,
    maps::IFACES,
    nat,
    parse::{self, IPPROTO_TCP, Ipv4Packet, L2, L4_OFFSET},
    rewrite, route,
    verdict::Verdict,
};

const METADATA_ADDR: [u8; 4] = [169, 254, 169, 254];
const HTTP_PORT: [u8; 2] = 80u16.to_be_bytes();

/// Runs the pipeline on `frame`. Packet bytes change only on `Verdict::Forward`.
#[inline(always)]
pub fn process(frame: &Frame) -> Verdict {
    let l2 = match parse::parse_l2(frame) {
        Ok(l2) => l2,
        Err(verdict) => return verdict,
    };
    // SAFETY: map values are plain data; the entry is copied, never kept.
    let Some(iface) = (unsafe { IFACES.get(&frame.ingress) }).copied() else {
        return Verdict::Pass(Reason::UnknownIngress);
    };
    let eth = match l2 {
        L2::Ipv4(eth) => eth,
        L2::Arp(eth) => return arp::answer(frame, eth, &iface),
    };
    // SAFETY: `parse_l2` bounds-checked the Ethernet header.
    if unsafe { (*eth).dst_addr } != iface.mac {
        return Verdict::Pass(Reason::NotRouterMac);
    }
    let pkt = match parse::parse_ipv4(frame, eth) {
        Ok(pkt) => pkt,
        Err(verdict) => return verdict,
    };
    if iface.role == iface_role::INTERNAL && is_metadata(frame, &pkt) {
        return Verdict::Pass(Reason::Metadata);
    }

    let mut flow = flow::of(frame, &pkt);
    flow.key.zone = iface.zone;
    let mut plan = nat::before_routing(&flow, iface.role);
    let hop = match route::lookup(frame, &pkt, plan.target.dst) {
        Ok(hop) => hop,
        Err(verdict) => return verdict,
    };
    if let Err(verdict) = nat::after_routing(&mut plan, &flow, iface.role, hop.out.role) {
        return verdict;
    }
    if let Err(verdict) = nat::commit(&mut plan, &flow, hop.out.zone) {
        return verdict;
    }
    count_nat(&plan, &flow, frame.len);
    rewrite::apply(frame, &pkt, &flow, &plan.target, &hop);
    Verdict::Forward {
        ifindex: hop.egress,
        resolve: match hop.mac {
            Some(_) => [0; 4],
            None => hop.next_hop,
        },
    }
}

/// TCP to 169.254.169.254:80: Neutron redirects it to the metadata proxy.
#[inline(always)]
fn is_metadata(frame: &Frame, pkt: &Ipv4Packet) -> bool {
    if pkt.dst != METADATA_ADDR || pkt.proto != IPPROTO_TCP {
        return false;
    }
    match frame.ptr_at::<[u8; 2]>(L4_OFFSET + 2) {
        // SAFETY: bounds checked by `ptr_at`.
        Some(dport) => unsafe { *dport == HTTP_PORT },
        None => false,
    }
}

/// Session state and the per-floating-IP and SNAT counters of a packet about to be
/// forwarded. ICMP errors count as traffic but do not move a session's state.
#[inline(always)]
fn count_nat(plan: &nat::Plan, flow: &flow::Flow, bytes: u32) {
    if let Some(fip) = plan.dnat_fip {
        counters::fip(fip, bytes, true);
    }
    if let Some(fip) = plan.snat_fip {
        counters::fip(fip, bytes, false);
    }
    if let Some(entry) = plan.session {
        // SAFETY: a map value; `direction` never changes after creation.
        let original = unsafe { (*entry).direction } == ct_dir::ORIGINAL;
        counters::snat(bytes, original);
        if !flow.is_error() {
            conntrack::touch(entry, bytes, flow.tcp_flags);
        }
    }
}
