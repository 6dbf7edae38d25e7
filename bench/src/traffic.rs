//! The generator and the sink: `bench-ebpf`'s two XDP programs. Where the kernel refuses
//! live frames to `BPF_PROG_TEST_RUN`, the generator sends the same frames from an
//! `AF_PACKET` socket instead (see [`PacketSender`]).

use std::time::{Duration, Instant};

use aya::{
    Ebpf, include_bytes_aligned,
    maps::{Array, PerCpuArray, PerCpuValues},
    programs::{Xdp, XdpMode},
    util::nr_cpus,
};
use router_common::bench::{GenConfig, SinkStats, bench_names as names};
use router_tests::packet_socket::PacketSocket;
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

/// The generator, sending out of an interface of the calling thread's namespace: live
/// frames of the generator program, or (where the kernel refuses those) an `AF_PACKET`
/// socket with the same frames.
pub struct Generator {
    ebpf: Ebpf,
    ifindex: u32,
    frame: Vec<u8>,
    packet: Option<PacketSender>,
}

/// How the generator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sending {
    /// `BPF_PROG_TEST_RUN` live frames: the generator program writes each frame's headers
    /// and transmits it from the kernel, batches of 64 per syscall.
    LiveFrames,
    /// An `AF_PACKET` socket bypassing the qdisc, `sendmmsg` of 64 frames per syscall:
    /// where the kernel refuses live frames. The frames are the same; each costs more
    /// generator CPU (a socket send each), so absolute rates are lower.
    PacketSocket,
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
        let packet = if router_user::datapath::features::kernel().xdp_live_frames {
            None
        } else {
            Some(PacketSender::new(ifindex, &cfg)?)
        };
        Ok(Self {
            ebpf,
            ifindex,
            frame: vec![0u8; cfg.frame_len as usize],
            packet,
        })
    }

    /// How this generator sends.
    pub fn sending(&self) -> Sending {
        if self.packet.is_some() {
            Sending::PacketSocket
        } else {
            Sending::LiveFrames
        }
    }

    /// Attaches the generator's program to `ifname` (of the calling thread's namespace; a
    /// spare interface no frame reaches). An XDP program that is attached somewhere stays
    /// in the kernel's XDP dispatcher; unattached, every test run with `repeat > 1` adds it
    /// to the dispatcher and removes it again, each time patching the dispatcher's code
    /// and waiting for an RCU grace period. Used by `routerbench --profile` to measure what
    /// that costs the generator.
    pub fn attach(&mut self, ifname: &str) -> anyhow::Result<()> {
        if self.packet.is_some() {
            // The socket runs no program: nothing to keep in the dispatcher.
            return Ok(());
        }
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
        // A socket's frames are taken through the veths and the router in the sender's
        // softirqs, on the CPU it sends from, as live frames are: pinned, every frame of the
        // run is, and the path's cost per frame is the CPU time per frame of one CPU.
        let _pinned = match self.packet {
            Some(_) => Some(OnThisCpu::pin()?),
            None => None,
        };
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
            match &mut self.packet {
                Some(sender) => sender.send(chunk)?,
                None => {
                    testrun::send_xdp_live(prog, self.ifindex, &self.frame, chunk, BATCH)?;
                }
            }
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

/// The generator's frames from an `AF_PACKET` socket bound to the interface: the headers
/// the generator program writes (Ethernet, IPv4 with its checksum, UDP without one, a
/// zero payload), one source port per flow in turn, 64 per `sendmmsg`.
pub struct PacketSender {
    socket: PacketSocket,
    /// `BATCH` frames, written once; only each one's UDP source port changes per send.
    frames: Vec<Vec<u8>>,
    flows: u32,
    src_port: u16,
    next_flow: u32,
}

/// Offset of the UDP source port in a generator frame.
const UDP_SPORT: usize = 14 + 20;

impl PacketSender {
    /// Sends out of interface `ifindex` of the calling thread's namespace.
    fn new(ifindex: u32, cfg: &GenConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(
            cfg.frame_len >= 42,
            "a frame of {} bytes holds no UDP header",
            cfg.frame_len
        );
        Ok(Self {
            socket: PacketSocket::bind(ifindex)?,
            frames: vec![frame_of(cfg); BATCH as usize],
            flows: cfg.flows.max(1),
            src_port: cfg.src_port,
            next_flow: 0,
        })
    }

    /// Sends `count` frames, the flows in turn. What the interface's queue has no room for
    /// is sent again, not dropped.
    fn send(&mut self, count: u32) -> anyhow::Result<()> {
        let mut left = count;
        while left > 0 {
            let n = left.min(BATCH) as usize;
            let first_flow = self.next_flow;
            for (i, frame) in self.frames[..n].iter_mut().enumerate() {
                let flow = (first_flow + i as u32) % self.flows;
                let port = self.src_port.wrapping_add(flow as u16);
                frame[UDP_SPORT..UDP_SPORT + 2].copy_from_slice(&port.to_be_bytes());
            }
            let sent = self.socket.send(&mut self.frames[..n])?;
            if sent == 0 {
                std::thread::yield_now();
            }
            self.next_flow = (first_flow + sent as u32) % self.flows;
            left -= sent as u32;
        }
        Ok(())
    }
}

/// The calling thread held to the CPU it runs on, until dropped (its earlier CPUs back).
struct OnThisCpu {
    before: nix::sched::CpuSet,
}

impl OnThisCpu {
    fn pin() -> anyhow::Result<Self> {
        let me = nix::unistd::Pid::from_raw(0);
        let before = nix::sched::sched_getaffinity(me)?;
        // SAFETY: no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        anyhow::ensure!(
            cpu >= 0,
            "sched_getcpu: {}",
            std::io::Error::last_os_error()
        );
        let mut only = nix::sched::CpuSet::new();
        only.set(cpu as usize)?;
        nix::sched::sched_setaffinity(me, &only)?;
        Ok(Self { before })
    }
}

impl Drop for OnThisCpu {
    fn drop(&mut self) {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &self.before);
    }
}

/// A whole frame as the generator program writes it (flow 0's source port).
fn frame_of(cfg: &GenConfig) -> Vec<u8> {
    let len = cfg.frame_len as usize;
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&cfg.dst_mac);
    f[6..12].copy_from_slice(&cfg.src_mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let l3_len = (len - 14) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&l3_len.to_be_bytes());
    ip[6] = 0x40; // DF, no fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&cfg.src_ip);
    ip[16..20].copy_from_slice(&cfg.dst_ip);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f[14..34].copy_from_slice(&ip);
    f[UDP_SPORT..UDP_SPORT + 2].copy_from_slice(&cfg.src_port.to_be_bytes());
    f[36..38].copy_from_slice(&cfg.dst_port.to_be_bytes());
    f[38..40].copy_from_slice(&(l3_len - 20).to_be_bytes());
    f
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow::anyhow!("bench object has no map {name}"))
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow::anyhow!("bench object has no program {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_frame_has_the_headers_of_the_generator_program() {
        let cfg = GenConfig {
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_mac: [2, 0, 0, 0, 0, 1],
            src_ip: [198, 18, 0, 1],
            dst_ip: [198, 18, 1, 10],
            src_port: 1000,
            dst_port: 9,
            flows: 4,
            frame_len: 64,
        };
        let f = frame_of(&cfg);
        assert_eq!(f.len(), 64);
        assert_eq!(f[12..16], [0x08, 0x00, 0x45, 0]);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 50, "IPv4 total length");
        assert_eq!((f[20], f[22], f[23]), (0x40, 64, 17), "DF, TTL, UDP");
        // A right header checksum: the header's words add up to 0xffff.
        let mut sum: u32 = f[14..34]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        sum = (sum & 0xffff) + (sum >> 16);
        assert_eq!(sum, 0xffff, "IPv4 header checksum");
        assert_eq!(u16::from_be_bytes([f[34], f[35]]), 1000);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 9);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 30);
    }
}
