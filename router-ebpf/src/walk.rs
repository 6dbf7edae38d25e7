//! Bounded walks the verifier checks once: `bpf_loop` calls a step function for each index,
//! and the verifier checks that function on its own instead of unrolling the loop (a rule
//! walk of 64 rules was 64 copies of its body to verify).

use core::ffi::c_void;

use aya_ebpf::helpers::bpf_loop;

/// What a step returns: go on to the next index, or stop the walk.
pub const NEXT: i64 = 0;
pub const STOP: i64 = 1;

/// A step of a walk: the index and the walk's context (a `T` given to [`each`]).
pub type Step = extern "C" fn(u64, *mut c_void) -> i64;

/// Calls `step` for the indices `0..n` in order, with `ctx`, until it returns [`STOP`].
#[inline(always)]
pub fn each<T>(n: u32, step: Step, ctx: &mut T) {
    // SAFETY: `ctx` outlives the call, and `step` takes it back as the `T` it is.
    unsafe {
        bpf_loop(n, step as *mut c_void, ctx as *mut T as *mut c_void, 0);
    }
}

/// The context of a step, as the `T` the walk was given.
///
/// # Safety
/// Only in a step passed to [`each`] with a `T`.
#[inline(always)]
pub unsafe fn context<'a, T>(ctx: *mut c_void) -> &'a mut T {
    // SAFETY: the caller's promise: `ctx` is the `&mut T` given to `each`, alive for the walk.
    unsafe { &mut *(ctx as *mut T) }
}
