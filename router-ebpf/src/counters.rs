//! Per-interface counters, updated once per packet.

use router_common::{IfaceStats, REASON_SLOTS, Reason};

use crate::{maps::IFACE_STATS, verdict::Verdict};

/// Counts `verdict` for a packet of `bytes` that arrived on `ingress`. Interfaces user space
/// did not register have no entry and are not counted.
#[inline(always)]
pub fn count(ingress: u32, bytes: u32, verdict: &Verdict) {
    let Some(stats) = IFACE_STATS.get_ptr_mut(&ingress) else {
        return;
    };
    // SAFETY: a per-CPU value: nothing else writes this CPU's copy while we run.
    let stats: &mut IfaceStats = unsafe { &mut *stats };
    let bytes = u64::from(bytes);
    match *verdict {
        Verdict::Forward { .. } => {
            stats.fwd_packets += 1;
            stats.fwd_bytes += bytes;
        }
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
    }
}

#[inline(always)]
fn bump(stats: &mut IfaceStats, reason: Reason) {
    let slot = reason as usize;
    if slot < REASON_SLOTS {
        stats.reasons[slot] += 1;
    }
}
