//! The ARP answers the router gives for its floating IPs on the gateway interface, so that
//! no floating IP needs to be configured on `qg` (and the kernel never owns one).

use network_types::eth::EthHdr;
use router_common::{IfaceEntry, Reason, iface_flags, iface_role};

use crate::{context::Frame, nat, verdict::Verdict};

/// An Ethernet/IPv4 ARP packet (RFC 826).
#[repr(C)]
struct ArpIpv4 {
    htype: [u8; 2],
    ptype: [u8; 2],
    hlen: u8,
    plen: u8,
    oper: [u8; 2],
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

const OPER_REQUEST: [u8; 2] = [0, 1];
const OPER_REPLY: [u8; 2] = [0, 2];

/// Answers an ARP request for a floating IP arriving on the gateway interface by turning
/// the frame into the reply and sending it back out; everything else goes to the kernel.
#[inline(always)]
pub fn answer(frame: &Frame, eth: *mut EthHdr, iface: &IfaceEntry) -> Verdict {
    if iface.role != iface_role::EXTERNAL {
        return Verdict::Pass(Reason::Arp);
    }
    let Some(arp) = frame.ptr_at::<ArpIpv4>(size_of::<EthHdr>()) else {
        return Verdict::Pass(Reason::Arp);
    };
    // SAFETY: bounds checked by `ptr_at`; the Ethernet header by the caller.
    unsafe {
        let a = &mut *arp;
        if a.htype != [0, 1] || a.ptype != [8, 0] || a.hlen != 6 || a.plen != 4 {
            return Verdict::Pass(Reason::Arp);
        }
        // An announcement (sender and target the same address) asks for no answer: it
        // is another node claiming the address, as an HA router's new active does.
        if a.oper != OPER_REQUEST || a.spa == a.tpa || nat::by_address(a.tpa).is_none() {
            return Verdict::Pass(Reason::Arp);
        }
        if frame.needs_xdp_egress && iface.flags & iface_flags::XDP_EGRESS == 0 {
            return Verdict::Pass(Reason::XdpToTc);
        }
        let (asker_mac, asker_ip, fip) = (a.sha, a.spa, a.tpa);
        a.oper = OPER_REPLY;
        a.tha = asker_mac;
        a.tpa = asker_ip;
        a.sha = iface.mac;
        a.spa = fip;
        (*eth).dst_addr = asker_mac;
        (*eth).src_addr = iface.mac;
    }
    Verdict::Forward {
        ifindex: frame.ingress,
        resolve: [0; 4],
    }
}
