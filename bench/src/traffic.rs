//! The generator and the sink: `bench-ebpf`'s two XDP programs.

use std::time::{Duration, Instant};

use aya::{
    Ebpf, include_bytes_aligned,
    maps::{Array, PerCpuArray, PerCpuValues},
    programs::{Xdp, XdpMode},
    util::nr_cpus,
};
use router_common::bench::{GenConfig, SinkStats, bench_names as names};
use router_user::testrun;

static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-ebpf"));

/// Frames the kernel builds per live-frames batch.
const BATCH: u32 = 64;

/// A sink attached to an interface of the calling thread's namespace; detached on drop.
pub struct Sink {
    ebpf: Ebpf,
}

impl Sink {
    /// Attaches to `ifname` (in the calling thread's namespace), counting UDP to `port`.
    pub fn attach(ifname: &str, port: u16) -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(OBJECT)?;
        Array::<_, u32>::try_from(map(&mut ebpf, names::SINK_PORT)?)?.set(0, u32::from(port), 0)?;
        let prog: &mut Xdp = program(&mut ebpf, names::SINK_PROG)?.try_into()?;
        prog.load()?;
        prog.attach(ifname, XdpMode::Driver)?;
        Ok(Self { ebpf })
    }

    /// Test frames received so far.
    pub fn packets(&mut self) -> anyhow::Result<u64> {
        Ok(self.counts()?.packets)
    }

    /// Test frames and their bytes (whole frames) received so far, over every CPU.
    pub fn counts(&mut self) -> anyhow::Result<SinkStats> {
        let stats: PerCpuArray<_, SinkStats> =
            PerCpuArray::try_from(map(&mut self.ebpf, names::SINK_STATS)?)?;
        Ok(stats
            .get(&0, 0)?
            .iter()
            .fold(SinkStats::default(), |all, s| SinkStats {
                packets: all.packets + s.packets,
                bytes: all.bytes + s.bytes,
            }))
    }
}

/// The live-frames generator, sending out of an interface of the calling thread's namespace.
pub struct Generator {
    ebpf: Ebpf,
    ifindex: u32,
    frame: Vec<u8>,
}

impl Generator {
    pub fn new(ifname: &str, cfg: GenConfig) -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(OBJECT)?;
        Array::<_, GenConfig>::try_from(map(&mut ebpf, names::GEN_CONFIG)?)?.set(0, cfg, 0)?;
        let cpus = nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        PerCpuArray::<_, u32>::try_from(map(&mut ebpf, names::GEN_SEQ)?)?.set(
            0,
            PerCpuValues::try_from(vec![0u32; cpus])?,
            0,
        )?;
        let prog: &mut Xdp = program(&mut ebpf, names::GEN_PROG)?.try_into()?;
        prog.load()?;
        let c = std::ffi::CString::new(ifname)?;
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        anyhow::ensure!(ifindex != 0, "no interface {ifname}");
        Ok(Self {
            ebpf,
            ifindex,
            frame: vec![0u8; cfg.frame_len as usize],
        })
    }

    /// Attaches the generator's program to `ifname` (of the calling thread's namespace; a
    /// spare interface no frame reaches). An XDP program that is attached somewhere stays
    /// in the kernel's XDP dispatcher; unattached, every test run with `repeat > 1` adds it
    /// to the dispatcher and removes it again, each time patching the dispatcher's code
    /// and waiting for an RCU grace period. Used by `routerbench --profile` to measure what
    /// that costs the generator.
    pub fn attach(&mut self, ifname: &str) -> anyhow::Result<()> {
        let prog: &mut Xdp = program(&mut self.ebpf, names::GEN_PROG)?.try_into()?;
        prog.attach(ifname, XdpMode::Driver)?;
        Ok(())
    }

    /// Sends frames for about `duration`, `rate` frames per second on average when given
    /// (as fast as it can otherwise); returns (frames sent, seconds taken).
    ///
    /// Unpaced, each test run sends a chunk sized to last about 50 ms (a syscall per frame
    /// would be the bottleneck). Paced, each test run sends what the schedule owes by then
    /// (at line speed) and the generator sleeps while it is ahead: the bursts are as long
    /// as a test run takes, 1 ms with the program attached somewhere, tens of milliseconds
    /// unattached (see `attach`).
    pub fn run_for(&mut self, duration: Duration, rate: Option<u64>) -> anyhow::Result<(u64, f64)> {
        anyhow::ensure!(
            rate != Some(0),
            "a rate of 0 frames per second sends nothing"
        );
        let prog: &Xdp = self
            .ebpf
            .program(names::GEN_PROG)
            .ok_or_else(|| anyhow::anyhow!("no generator program"))?
            .try_into()?;
        let start = Instant::now();
        let mut sent = 0u64;
        let mut chunk: u32 = 20_000;
        while start.elapsed() < duration {
            if let Some(rate) = rate {
                let rate = rate as f64;
                // Owed by now, counting the frame due at the start.
                let owed = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
                if owed <= sent {
                    let next = Duration::from_secs_f64((sent + 1) as f64 / rate);
                    std::thread::sleep(next.saturating_sub(start.elapsed()));
                    continue;
                }
                chunk = (owed - sent).min(u64::from(MAX_CHUNK)) as u32;
            }
            let t = Instant::now();
            testrun::send_xdp_live(prog, self.ifindex, &self.frame, chunk, BATCH)?;
            sent += u64::from(chunk);
            if rate.is_none() {
                let took = t.elapsed().as_secs_f64().max(1e-6);
                chunk = ((f64::from(chunk) * 0.05 / took) as u32).clamp(1_000, MAX_CHUNK);
            }
        }
        Ok((sent, start.elapsed().as_secs_f64()))
    }
}

/// The most frames one test run sends.
const MAX_CHUNK: u32 = 2_000_000;

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow::anyhow!("bench object has no map {name}"))
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow::anyhow!("bench object has no program {name}"))
}
