//! High availability in the fast path: a standby or fenced copy of a router answers for
//! nothing, and an active one reports its sessions for the standbys.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use router_common::{CtEntry, CtKey, Reason, SyncRecord, ha_role, sync_what};

use crate::{maps::HA, maps::SYNC, verdict::Verdict};

/// What this copy of the router may do: `Err(drop)` when it must stay silent (a standby,
/// or an active whose controller let its hold lapse); `Ok(Some(mac))` while it hands the
/// router over (forward only, from `mac`); `Ok(None)` as always.
#[inline(always)]
pub fn check() -> Result<Option<[u8; 6]>, Verdict> {
    let Some(state) = HA.get(0) else {
        return Ok(None);
    };
    match state.role {
        ha_role::SINGLE => Ok(None),
        ha_role::STANDBY => Err(Verdict::Drop(Reason::Standby)),
        ha_role::HANDING_OVER => Ok(Some(state.handover_mac)),
        _ => {
            // SAFETY: plain helper call.
            let now = unsafe { bpf_ktime_get_coarse_ns() };
            if state.fence_at_ns != 0 && now > state.fence_at_ns {
                Err(Verdict::Drop(Reason::Fenced))
            } else {
                Ok(None)
            }
        }
    }
}

/// Whether the standbys want session records.
#[inline(always)]
fn syncing() -> bool {
    HA.get(0).is_some_and(|s| s.sync != 0)
}

/// Reports a session made, by its original direction's key and entry. A full ring loses
/// the record; the controller's periodic refresh sends the session anyway.
#[inline(always)]
pub fn created(key: &CtKey, entry: &CtEntry) {
    if syncing() {
        report(sync_what::CREATED, 0, key, entry);
    }
}

/// Reports that the session entry `key` reached a new TCP state (its flags now
/// `tcp_flags`), so a standby ages the session as the active does.
#[inline(always)]
pub fn tcp_state(key: &CtKey, tcp_flags: u32) {
    if syncing() {
        report(sync_what::TCP_STATE, tcp_flags, key, &CtEntry::default());
    }
}

#[inline(always)]
fn report(what: u32, tcp_flags: u32, key: &CtKey, entry: &CtEntry) {
    if let Some(mut slot) = SYNC.reserve::<SyncRecord>(0) {
        let record = slot.as_mut_ptr();
        // SAFETY: the slot is ours until submitted and sized for a record; its fields are
        // written one by one, so no record is built on the (nearly full) stack first.
        unsafe {
            (*record).what = what;
            (*record).tcp_flags = tcp_flags;
            (*record).key = *key;
            (*record).entry = *entry;
        }
        slot.submit(0);
    }
}
