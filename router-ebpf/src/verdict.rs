//! What the pipeline decided for a packet.

use router_common::Reason;

#[derive(Clone, Copy)]
pub enum Verdict {
    /// Headers rewritten; send out of `ifindex`.
    Forward { ifindex: u32 },
    /// Hand to the kernel untouched.
    Pass(Reason),
    /// Discard.
    Drop(Reason),
}
