//! Running a program on one frame (BPF_PROG_TEST_RUN), the way `routerctl trace`, the
//! packet tests and the benchmarks do it: the frame "arrives" on an interface, the program
//! runs on it in the kernel, and the verdict, the frame as the program left it and the
//! kernel's own timing come back.
//!
//! The kernel builds the program's context from a prefix of it given by the caller:
//!
//! - XDP (`struct xdp_md`): `data_end` is the frame's length and `ingress_ifindex` the
//!   arrival interface (receive queue 0);
//! - TC (`struct __sk_buff`): the fields up to `ifindex`, which sets the skb's device (and
//!   so its ingress interface: the kernel refuses `ingress_ifindex` next to `ifindex`); the
//!   rest is zero-filled. The skb's mark is read back afterwards.

use std::io;

use aya::programs::{SchedClassifier, TestRun, TestRunAttrs, TestRunOptions, Xdp};

use crate::error::Error;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// The most bytes a program can add in front of a test-run frame (XDP_PACKET_HEADROOM);
/// the output buffer has that much room beyond the input frame, and a program that grows
/// the frame further fails its run with ENOSPC.
const GROWTH: usize = 256;

/// `struct xdp_md` up to `rx_queue_index`, with the offsets of the fields set here.
const XDP_MD_LEN: usize = 24;
const XDP_MD_DATA_END: usize = 4;
const XDP_MD_INGRESS_IFINDEX: usize = 12;

/// `struct __sk_buff` up to `ifindex`, with the offsets of the fields used here.
const SK_BUFF_IN_LEN: usize = 44;
const SK_BUFF_MARK: usize = 8;
const SK_BUFF_IFINDEX: usize = 40;
/// All of `struct __sk_buff` (192 bytes today), with room for the kernel to grow it.
const SK_BUFF_OUT_LEN: usize = 256;

/// One of the router's two program entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entry {
    Xdp,
    Tc,
}

impl Entry {
    /// `"xdp"` or `"tc"`.
    pub fn name(self) -> &'static str {
        match self {
            Entry::Xdp => "xdp",
            Entry::Tc => "tc",
        }
    }

    /// The verdict that sends a frame out of another interface.
    pub fn redirect(self) -> u32 {
        match self {
            Entry::Xdp => XDP_REDIRECT,
            Entry::Tc => TC_ACT_REDIRECT,
        }
    }

    /// The verdict that hands a frame to the kernel's stack.
    pub fn pass(self) -> u32 {
        match self {
            Entry::Xdp => XDP_PASS,
            Entry::Tc => TC_ACT_OK,
        }
    }

    /// The verdict that drops a frame.
    pub fn drop(self) -> u32 {
        match self {
            Entry::Xdp => XDP_DROP,
            Entry::Tc => TC_ACT_SHOT,
        }
    }
}

/// What one test run returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// The program's return value (of the last repetition).
    pub verdict: u32,
    /// The frame as the program left it (after the last repetition).
    pub frame: Vec<u8>,
    /// The kernel's mean time per repetition, around the program alone.
    pub duration_ns: u64,
    /// TC: the skb's mark afterwards. XDP frames carry no mark.
    pub mark: Option<u32>,
}

/// Runs an XDP program `repeat` times (0 counts as 1) on `frame` as if it arrived on
/// `ingress_ifindex`, queue 0. The repetitions share one buffer: each sees the frame the
/// previous one left.
pub fn run_xdp(prog: &Xdp, ingress_ifindex: u32, frame: &[u8], repeat: u32) -> Result<Run, Error> {
    let ctx = xdp_md(ingress_ifindex, frame)?;
    let mut out = vec![0u8; frame.len() + GROWTH];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        repeat,
        ..Default::default()
    };
    let result = prog
        .test_run(opts)
        .map_err(|e| failed(Entry::Xdp, frame.len(), e))?;
    out.truncate(result.data_size_out as usize);
    Ok(Run {
        verdict: result.return_value,
        frame: out,
        duration_ns: result.duration.as_nanos() as u64,
        mark: None,
    })
}

/// Runs a TC program `repeat` times (0 counts as 1) on `frame` as if it arrived on
/// `ingress_ifindex` (the skb's device). The repetitions share one buffer, as with
/// [`run_xdp`].
pub fn run_tc(
    prog: &SchedClassifier,
    ingress_ifindex: u32,
    frame: &[u8],
    repeat: u32,
) -> Result<Run, Error> {
    let mut ctx = [0u8; SK_BUFF_IN_LEN];
    put_u32(&mut ctx, SK_BUFF_IFINDEX, ingress_ifindex);
    let mut ctx_out = [0u8; SK_BUFF_OUT_LEN];
    let mut out = vec![0u8; frame.len() + GROWTH];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        ctx_out: Some(&mut ctx_out),
        repeat,
        ..Default::default()
    };
    let result = prog
        .test_run(opts)
        .map_err(|e| failed(Entry::Tc, frame.len(), e))?;
    out.truncate(result.data_size_out as usize);
    let mut mark = [0u8; 4];
    mark.copy_from_slice(&ctx_out[SK_BUFF_MARK..SK_BUFF_MARK + 4]);
    Ok(Run {
        verdict: result.return_value,
        frame: out,
        duration_ns: result.duration.as_nanos() as u64,
        mark: Some(u32::from_ne_bytes(mark)),
    })
}

/// Sends `count` copies of `frame` through an XDP program as live frames
/// (BPF_F_TEST_XDP_LIVE_FRAMES), `batch` at a time, as if they arrived on
/// `ingress_ifindex`: unlike a test run, what the program transmits or redirects really
/// leaves. Each copy starts from `frame` (the program's changes are not carried over) and
/// nothing comes back but the kernel's mean time per frame, in ns.
pub fn send_xdp_live(
    prog: &Xdp,
    ingress_ifindex: u32,
    frame: &[u8],
    count: u32,
    batch: u32,
) -> Result<u64, Error> {
    let ctx = xdp_md(ingress_ifindex, frame)?;
    let opts = TestRunOptions {
        data_in: Some(frame),
        ctx_in: Some(&ctx),
        repeat: count,
        attrs: TestRunAttrs::new().xdp_live_frames(batch),
        ..Default::default()
    };
    let result = prog.test_run(opts).map_err(|e| {
        Error::io(
            format!(
                "BPF_PROG_TEST_RUN with live frames of {count} {}-byte frames",
                frame.len()
            ),
            io_error(e),
        )
    })?;
    Ok(result.duration.as_nanos() as u64)
}

fn xdp_md(ingress_ifindex: u32, frame: &[u8]) -> Result<[u8; XDP_MD_LEN], Error> {
    let len = u32::try_from(frame.len()).map_err(|_| {
        Error::io(
            "BPF_PROG_TEST_RUN",
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a frame of {} bytes", frame.len()),
            ),
        )
    })?;
    let mut ctx = [0u8; XDP_MD_LEN];
    put_u32(&mut ctx, XDP_MD_DATA_END, len);
    put_u32(&mut ctx, XDP_MD_INGRESS_IFINDEX, ingress_ifindex);
    Ok(ctx)
}

fn put_u32(ctx: &mut [u8], at: usize, value: u32) {
    ctx[at..at + 4].copy_from_slice(&value.to_ne_bytes());
}

/// A failed test run as [`Error::Io`]: a refusal by the kernel keeps its errno (EINVAL
/// for a frame it cannot build a context for, ENOSPC for an output larger than the
/// buffer), so callers can tell them apart.
fn failed(entry: Entry, len: usize, e: aya::programs::ProgramError) -> Error {
    let what = format!(
        "BPF_PROG_TEST_RUN of the {} entry on a {len}-byte frame",
        entry.name()
    );
    let source = io_error(e);
    let what = if source.raw_os_error() == Some(libc::ENOSPC) {
        format!("{what} (the output is longer than {} bytes)", len + GROWTH)
    } else {
        what
    };
    Error::io(what, source)
}

fn io_error(e: aya::programs::ProgramError) -> io::Error {
    match e {
        aya::programs::ProgramError::SyscallError(e) => e.io_error,
        other => io::Error::other(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_context_holds_the_frame_length_and_the_interface() {
        let ctx = xdp_md(7, &[0u8; 60]).expect("a small frame");
        assert_eq!(
            ctx[XDP_MD_DATA_END..XDP_MD_DATA_END + 4],
            60u32.to_ne_bytes()
        );
        assert_eq!(
            ctx[XDP_MD_INGRESS_IFINDEX..XDP_MD_INGRESS_IFINDEX + 4],
            7u32.to_ne_bytes()
        );
        // data, data_meta and rx_queue_index stay 0.
        assert!(
            ctx[..4]
                .iter()
                .chain(&ctx[8..12])
                .chain(&ctx[16..])
                .all(|b| *b == 0)
        );
    }

    #[test]
    fn verdicts_per_entry() {
        assert_eq!(
            [Entry::Xdp.redirect(), Entry::Xdp.pass(), Entry::Xdp.drop()],
            [4, 2, 1]
        );
        assert_eq!(
            [Entry::Tc.redirect(), Entry::Tc.pass(), Entry::Tc.drop()],
            [7, 0, 2]
        );
    }
}
