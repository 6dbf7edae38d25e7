//! The router's two entries run on one frame ([`router_user::testrun`]) on a loaded
//! [`Datapath`]: [`run`] panics on a failed test run, [`try_run`] reports the kernel
//! refusing the frame.

use router_user::{Error, datapath::Datapath, testrun as lib};

pub use router_user::testrun::{
    Entry, Run, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_ABORTED, XDP_DROP, XDP_PASS,
    XDP_REDIRECT, XDP_TX,
};

/// Runs `entry` once on `frame` as if it arrived on `ingress`.
pub fn run(dp: &Datapath, entry: Entry, ingress: u32, frame: &[u8]) -> Run {
    run_once(dp, entry, ingress, frame).unwrap_or_else(|e| panic!("{e} ({frame:02x?})"))
}

/// Runs `entry` on `frame` as if it arrived on `ingress`: the run, or the errno
/// BPF_PROG_TEST_RUN failed with (the kernel refused to build the context, e.g. a frame
/// shorter than an Ethernet header, or larger than a page).
pub fn try_run(dp: &Datapath, entry: Entry, ingress: u32, frame: &[u8]) -> Result<Run, i32> {
    run_once(dp, entry, ingress, frame).map_err(|e| match &e {
        Error::Io { source, .. } => source.raw_os_error().unwrap_or_else(|| panic!("{e}")),
        _ => panic!("{e}"),
    })
}

fn run_once(dp: &Datapath, entry: Entry, ingress: u32, frame: &[u8]) -> Result<Run, Error> {
    match entry {
        Entry::Xdp => {
            let prog = dp.xdp().expect("Datapath::load loads the XDP program");
            lib::run_xdp(prog, ingress, frame, 1)
        }
        Entry::Tc => lib::run_tc(dp.tc(), ingress, frame, 1),
    }
}
