//! Per-interface counters, updated once per packet.

use router_common::{IfaceStats, REASON_SLOTS, Reason};

use crate::{
    maps::{FIP_STATS, IFACE_FORWARDED, IFACE_STATS, SNAT_STATS},
    verdict::Verdict,
};

/// Counts `verdict` for a packet of `bytes` that arrived on `ingress`, whose slot is `slot`
/// (`pipeline::counter_slot`). Interfaces user space did not register have no entry and
/// are not counted.
#[inline(always)]
pub fn count(ingress: u32, slot: u32, bytes: u32, verdict: &Verdict) {
    let bytes = u64::from(bytes);
    if let Verdict::Forward { resolve, .. } = *verdict {
        // Only a packet that came by a registered interface is forwarded, so `slot` is its.
        if let Some(fwd) = IFACE_FORWARDED.get_ptr_mut(slot) {
            // SAFETY: a per-CPU value: nothing else writes this CPU's copy while we run.
            unsafe {
                (*fwd).packets += 1;
                (*fwd).bytes += bytes;
            }
        }
        if resolve == [0; 4] {
            return;
        }
    }
    let Some(stats) = IFACE_STATS.get_ptr_mut(&ingress) else {
        return;
    };
    // SAFETY: as above.
    let stats: &mut IfaceStats = unsafe { &mut *stats };
    match *verdict {
        // Forwarded, through the kernel's neighbour resolution.
        Verdict::Forward { .. } => bump(stats, Reason::NoNeighbor),
        Verdict::Pass(reason) => {
            // Handing to TC is not a pass to the kernel: the TC entry counts the outcome.
            if reason != Reason::XdpToTc {
                stats.pass_packets += 1;
                stats.pass_bytes += bytes;
            }
            bump(stats, reason);
        }
        Verdict::Drop(reason) => {
            stats.drop_packets += 1;
            stats.drop_bytes += bytes;
            bump(stats, reason);
        }
        // Resolved by `pipeline::verdict` before anything is counted.
        Verdict::Finish => {}
    }
}

#[inline(always)]
fn bump(stats: &mut IfaceStats, reason: Reason) {
    // `black_box`: the compiler knows every reason is < 32 and would drop the bound check
    // the verifier needs to see.
    let slot = core::hint::black_box(reason as u32) as usize;
    if slot < REASON_SLOTS {
        stats.reasons[slot] += 1;
    }
}

/// Counts a packet translated by floating IP `fip`: `inbound` to it, else from it.
#[inline(always)]
pub fn fip(fip: [u8; 4], bytes: u32, inbound: bool) {
    let Some(stats) = FIP_STATS.get_ptr_mut(&fip) else {
        return;
    };
    // SAFETY: a per-CPU value.
    let stats = unsafe { &mut *stats };
    if inbound {
        stats.in_packets += 1;
        stats.in_bytes += u64::from(bytes);
    } else {
        stats.out_packets += 1;
        stats.out_bytes += u64::from(bytes);
    }
}

/// Counts a packet of a SNAT (or hairpin) session: `original` direction, or a reply.
#[inline(always)]
pub fn snat(bytes: u32, original: bool) {
    let Some(stats) = SNAT_STATS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU value.
    let stats = unsafe { &mut *stats };
    if original {
        stats.out_packets += 1;
        stats.out_bytes += u64::from(bytes);
    } else {
        stats.in_packets += 1;
        stats.in_bytes += u64::from(bytes);
    }
}
