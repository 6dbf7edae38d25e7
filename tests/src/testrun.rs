//! The router's two entries run on one frame ([`router_user::testrun`]) on a loaded
//! [`Datapath`]: [`run`] panics on a failed test run, [`try_run`] reports the kernel
//! refusing the frame.
//!
//! Where the kernel refuses the XDP entry its tags for the TC entry
//! (`router_user::datapath::features`), the TC entry decides and counts what the XDP entry
//! passes without handing it over; a run of the XDP entry then runs the TC entry on such a
//! frame as well, as the kernel would, so that counters read as on any kernel. The result
//! is the XDP entry's.

use aya::maps::{Map, MapData, MapInfo, PerCpuHashMap};
use router_common::{IfaceStats, Reason, map_names};
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
            if router_user::datapath::features::kernel().xdp_meta {
                return lib::run_xdp(prog, ingress, frame, 1);
            }
            let before = hand_overs(dp, ingress);
            let run = lib::run_xdp(prog, ingress, frame, 1)?;
            if run.verdict == XDP_PASS && hand_overs(dp, ingress) == before {
                // Passed, not handed over: the TC entry behind it decides and counts it.
                // A frame the TC test run refuses (one the kernel's stack would take, as an
                // IPv6 header cut short) stays uncounted here.
                match lib::run_tc(dp.tc(), ingress, &run.frame, 1) {
                    Ok(_) => {}
                    Err(Error::Io { source, .. })
                        if source.raw_os_error() == Some(libc::EINVAL) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(run)
        }
        Entry::Tc => lib::run_tc(dp.tc(), ingress, frame, 1),
    }
}

/// The XDP entry's hand-overs to the TC entry counted on `ingress` (`xdp_to_tc`), read from
/// the counters the program holds.
fn hand_overs(dp: &Datapath, ingress: u32) -> u64 {
    let prog = dp.xdp().expect("Datapath::load loads the XDP program");
    let ids = prog
        .info()
        .and_then(|i| i.map_ids())
        .ok()
        .flatten()
        .unwrap_or_default();
    let Some(id) = ids.into_iter().find(|id| {
        MapInfo::from_id(*id).is_ok_and(|m| m.name_as_str() == Some(map_names::IFACE_STATS))
    }) else {
        panic!("the XDP program holds no {}", map_names::IFACE_STATS);
    };
    let data = MapData::from_id(id).expect("opening IFACE_STATS");
    let map: PerCpuHashMap<_, u32, IfaceStats> =
        PerCpuHashMap::try_from(Map::PerCpuHashMap(data)).expect("IFACE_STATS");
    map.get(&ingress, 0)
        .map(|per_cpu| {
            per_cpu
                .iter()
                .map(|s| s.reasons[Reason::XdpToTc as usize])
                .sum()
        })
        .unwrap_or(0)
}

/// Keeps the calling thread on CPU 0 from here on: per-CPU state the programs keep (the
/// route cache, the LRU's free lists) then answers as one CPU's would.
pub fn stay_on_one_cpu() {
    let mut one_cpu = nix::sched::CpuSet::new();
    one_cpu.set(0).expect("CPU 0");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one_cpu).expect("pinning");
}
