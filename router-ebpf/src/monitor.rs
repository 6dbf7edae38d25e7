//! `routerctl monitor`: an event per dropped or passed packet while a monitor runs (see
//! `router_common::MonitorConfig`). Costs nothing but one array lookup when nobody watches,
//! and nothing at all for forwarded packets.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use router_common::{Event, Reason};

use crate::{
    context::Frame,
    maps::{EVENTS, MONITOR},
    verdict::Verdict,
};

/// The reason to report for `verdict`, if any (0: none).
#[inline(always)]
pub fn reason_of(verdict: &Verdict) -> u32 {
    match *verdict {
        Verdict::Pass(Reason::XdpToTc) => 0,
        Verdict::Pass(reason) | Verdict::Drop(reason) => reason as u32,
        _ => 0,
    }
}

/// Reports a packet dropped or passed for `reason` if a monitor is running (the entries call
/// it through global functions of their own, which keeps the event off their stack).
#[inline(always)]
pub fn report(frame: &Frame, reason: u32) {
    let Some(until) = MONITOR.get(0).map(|m| m.until_ns) else {
        return;
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now >= until {
        return;
    }
    let mut event = Event {
        ts_ns: now,
        ifindex: frame.ingress,
        reason,
        len: frame.len(),
        ..Event::default()
    };
    if let Some(h) = frame.ptr_at::<[u8; 38]>(0) {
        // SAFETY: bounds checked by `ptr_at`.
        let h = unsafe { &*h };
        if h[12] == 0x08 && h[13] == 0x00 {
            event.proto = h[23];
            event.src = [h[26], h[27], h[28], h[29]];
            event.dst = [h[30], h[31], h[32], h[33]];
            // Ports only where the L4 header is: no options, not a later fragment.
            let later_fragment = (h[20] & 0x1f) | h[21] != 0;
            if h[14] == 0x45 && (h[23] == 6 || h[23] == 17) && !later_fragment {
                event.sport = [h[34], h[35]];
                event.dport = [h[36], h[37]];
            }
        }
    }
    // A full ring loses the event; the counters still have the packet.
    let _ = EVENTS.output::<Event>(&event, 0);
}
