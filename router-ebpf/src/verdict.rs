//! What the pipeline decided for a packet: the verdict, and for a forwarded packet the tuple
//! it leaves with (`Target`) and where it leaves (`Hop`). Nothing here touches a map, so
//! these types (and `parse`, `flow`, `csum`, `rewrite`, `context`) also build for the host,
//! where the fuzz targets run them (`lib.rs`).

use router_common::{CtEntry, CtKey, IfaceEntry, Reason};

#[derive(Clone, Copy)]
pub enum Verdict {
    /// Headers rewritten; send out of `ifindex`. With `resolve` other than 0.0.0.0 the MACs
    /// are not written yet: the kernel resolves that next hop and fills them in (TC only).
    /// (Not an `Option`: a partly undefined value spilled to the stack fails verification.)
    Forward { ifindex: u32, resolve: [u8; 4] },
    /// Hand to the kernel untouched.
    Pass(Reason),
    /// Discard.
    Drop(Reason),
    /// The first half of the pipeline decided to forward and left its decision in the
    /// hand-off for the second half (`pipeline::finish`).
    Finish,
}

impl Verdict {
    /// The verdict of a `Reason` number returned by a half of the pipeline.
    #[inline(always)]
    pub fn of_reason(code: u32) -> Self {
        match Reason::from_u32(code) {
            Some(reason) if reason.is_drop() => Verdict::Drop(reason),
            Some(reason) => Verdict::Pass(reason),
            None => Verdict::Drop(Reason::RedirectFailed),
        }
    }
}

/// The tuple a packet leaves with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

impl Target {
    #[inline(always)]
    pub fn of_key(key: &CtKey) -> Self {
        Self {
            src: key.src,
            dst: key.dst,
            sport: key.sport,
            dport: key.dport,
        }
    }

    #[inline(always)]
    pub fn of_entry(e: &CtEntry) -> Self {
        Self {
            src: e.new_src,
            dst: e.new_dst,
            sport: e.new_sport,
            dport: e.new_dport,
        }
    }
}

/// The interface a packet leaves by.
pub struct Egress {
    pub ifindex: u32,
    pub out: IfaceEntry,
}

/// Where a packet leaves.
pub struct Hop {
    pub egress: u32,
    pub out: IfaceEntry,
    pub next_hop: [u8; 4],
    /// The next hop's MAC, or `None` when the kernel must resolve it (TC only:
    /// `bpf_redirect_neigh`).
    pub mac: Option<[u8; 6]>,
}
