//! What the pipeline decided for a packet.

use router_common::Reason;

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
}
