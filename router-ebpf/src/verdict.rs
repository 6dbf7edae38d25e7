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
