//! Support for the flood and exhaustion tests (`tests/floods.rs`):
//!
//! - [`SynFlood`]: a TCP SYN generator on the kernel's XDP live-frames test run (the
//!   technique of `bench-ebpf`'s generator, whose program only writes UDP from one source).
//!   Its XDP program is assembled here and loaded with the raw `bpf(2)` calls, so this crate
//!   needs no eBPF build: every run takes the next number `n` from a counter map and writes
//!   a complete Ethernet/IPv4/TCP SYN from a distinct source (address and port derived from
//!   `n`), with both checksums valid, then `XDP_TX` sends it out of the generator's
//!   interface. The counter is exactly the number of frames built, and distinct `n` are
//!   distinct tuples. Where the kernel refuses live frames, the same frames ([`syn_frame`])
//!   are built here and sent from an `AF_PACKET` socket, counted as they leave.
//! - [`EchoServer`] and [`Chatter`]: long-lived TCP connections echoing a counter, timing
//!   every round trip.
//! - [`UdpCollector`] and [`UdpFlows`]: many UDP flows, one socket each, and receivers that
//!   record the tuple every datagram arrived with and echo it back.
//! - Reading a process's resident memory and an interface's MAC address.

use std::{
    collections::BTreeMap,
    io::{self, ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::traffic::{in_ns, join};

// ---------------------------------------------------------------------------------------
// The SYN generator

/// `bpf(2)` with hand-written attributes (the layouts of `union bpf_attr` in the UAPI).
mod bpf {
    use super::*;

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    pub const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

    #[repr(C)]
    #[derive(Default)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }

    #[repr(C)]
    #[derive(Default)]
    struct MapElem {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

    #[repr(C)]
    #[derive(Default)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }

    #[repr(C)]
    #[derive(Default)]
    pub struct TestRun {
        pub prog_fd: u32,
        pub retval: u32,
        pub data_size_in: u32,
        pub data_size_out: u32,
        pub data_in: u64,
        pub data_out: u64,
        pub repeat: u32,
        pub duration: u32,
        pub ctx_size_in: u32,
        pub ctx_size_out: u32,
        pub ctx_in: u64,
        pub ctx_out: u64,
        pub flags: u32,
        pub cpu: u32,
        pub batch_size: u32,
        pub _pad: u32,
    }

    fn sys<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
        // SAFETY: `attr` is a live, initialised attribute block of the layout `cmd` takes,
        // and its size is passed with it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut T,
                std::mem::size_of::<T>() as libc::c_uint,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    fn fd(rc: i64) -> OwnedFd {
        // SAFETY: the kernel just returned this new descriptor to us.
        unsafe { OwnedFd::from_raw_fd(rc as i32) }
    }

    /// An array map of one u64.
    pub fn counter_map() -> io::Result<OwnedFd> {
        let mut attr = MapCreate {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 8,
            max_entries: 1,
            ..Default::default()
        };
        attr.map_name[..8].copy_from_slice(b"synflood");
        sys(BPF_MAP_CREATE, &mut attr).map(fd)
    }

    pub fn read_counter(map: &OwnedFd) -> io::Result<u64> {
        let key = 0u32;
        let mut value = 0u64;
        let mut attr = MapElem {
            map_fd: map.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: &mut value as *mut u64 as u64,
            ..Default::default()
        };
        sys(BPF_MAP_LOOKUP_ELEM, &mut attr)?;
        Ok(value)
    }

    pub fn write_counter(map: &OwnedFd, value: u64) -> io::Result<()> {
        let key = 0u32;
        let mut attr = MapElem {
            map_fd: map.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: &value as *const u64 as u64,
            ..Default::default()
        };
        sys(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }

    /// Loads an XDP program; the verifier's log is in the error.
    pub fn load_xdp(insns: &[[u8; 8]]) -> io::Result<OwnedFd> {
        let license = b"GPL\0";
        let mut log = vec![0u8; 1 << 16];
        let mut attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            ..Default::default()
        };
        attr.prog_name[..8].copy_from_slice(b"synflood");
        sys(BPF_PROG_LOAD, &mut attr).map(fd).map_err(|e| {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            io::Error::new(
                e.kind(),
                format!(
                    "loading the SYN generator: {e}\n{}",
                    String::from_utf8_lossy(&log[..end])
                ),
            )
        })
    }

    pub fn test_run(attr: &mut TestRun) -> io::Result<()> {
        sys(BPF_PROG_TEST_RUN, attr).map(|_| ())
    }
}

/// A tiny eBPF assembler: just the instructions the generator uses.
mod asm {
    pub type Insn = [u8; 8];
    pub const R0: u8 = 0;
    pub const R1: u8 = 1;
    pub const R2: u8 = 2;
    pub const R3: u8 = 3;
    pub const R4: u8 = 4;
    pub const R6: u8 = 6;
    pub const R7: u8 = 7;
    pub const R8: u8 = 8;
    pub const R9: u8 = 9;
    pub const R10: u8 = 10;

    pub fn raw(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        let mut i = [0u8; 8];
        i[0] = code;
        i[1] = dst | (src << 4);
        i[2..4].copy_from_slice(&off.to_le_bytes());
        i[4..8].copy_from_slice(&imm.to_le_bytes());
        i
    }
    pub fn mov(dst: u8, src: u8) -> Insn {
        raw(0xbf, dst, src, 0, 0)
    }
    pub fn mov_imm(dst: u8, imm: i32) -> Insn {
        raw(0xb7, dst, 0, 0, imm)
    }
    pub fn add_imm(dst: u8, imm: i32) -> Insn {
        raw(0x07, dst, 0, 0, imm)
    }
    pub fn and_imm(dst: u8, imm: i32) -> Insn {
        raw(0x57, dst, 0, 0, imm)
    }
    pub fn rsh_imm(dst: u8, imm: i32) -> Insn {
        raw(0x77, dst, 0, 0, imm)
    }
    pub fn xor_imm(dst: u8, imm: i32) -> Insn {
        raw(0xa7, dst, 0, 0, imm)
    }
    /// dst = *(u32 *)(src + off)
    pub fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
        raw(0x61, dst, src, off, 0)
    }
    /// dst = *(u64 *)(src + off)
    pub fn ldx_dw(dst: u8, src: u8, off: i16) -> Insn {
        raw(0x79, dst, src, off, 0)
    }
    /// *(u64 *)(dst + off) = src
    pub fn stx_dw(dst: u8, off: i16, src: u8) -> Insn {
        raw(0x7b, dst, src, off, 0)
    }
    /// *(u16 *)(dst + off) = src
    pub fn stx_h(dst: u8, off: i16, src: u8) -> Insn {
        raw(0x6b, dst, src, off, 0)
    }
    /// *(u32 *)(dst + off) = imm
    pub fn st_w(dst: u8, off: i16, imm: i32) -> Insn {
        raw(0x62, dst, 0, off, imm)
    }
    /// *(u16 *)(dst + off) = imm
    pub fn st_h(dst: u8, off: i16, imm: i32) -> Insn {
        raw(0x6a, dst, 0, off, imm)
    }
    /// if dst > src (unsigned) goto +off
    pub fn jgt(dst: u8, src: u8, off: i16) -> Insn {
        raw(0x2d, dst, src, off, 0)
    }
    /// if dst == imm goto +off
    pub fn jeq_imm(dst: u8, imm: i32, off: i16) -> Insn {
        raw(0x15, dst, 0, off, imm)
    }
    pub fn call(helper: i32) -> Insn {
        raw(0x85, 0, 0, 0, helper)
    }
    pub fn exit() -> Insn {
        raw(0x95, 0, 0, 0, 0)
    }
    /// dst = the map `fd` (two instructions).
    pub fn ld_map_fd(dst: u8, fd: i32) -> [Insn; 2] {
        [raw(0x18, dst, 1, 0, fd), raw(0, 0, 0, 0, 0)]
    }
}

const ETH_LEN: usize = 14;
/// Ethernet + IPv4 + TCP without options.
const SYN_FRAME_LEN: usize = ETH_LEN + 20 + 20;
// Offsets in the frame of the fields written per packet.
const IP_ID_AT: usize = ETH_LEN + 4;
const SRC_LOW_AT: usize = ETH_LEN + 14;
const SPORT_AT: usize = ETH_LEN + 20;
const SEQ_AT: usize = ETH_LEN + 24;

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn csum_add(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// The SYN every run starts from: source `src_net`.0.0 port 0, IP id 0xffff, sequence
/// 0xffffffff, checksums computed. Each run writes a 16-bit value `x` into the source
/// address's low half and `!x` into the IP id (the IPv4 checksum does not move) and into the
/// low half of the sequence number (nor does the TCP checksum, whose pseudo-header holds the
/// source address); likewise `y` into the source port and `!y` into the high half of the
/// sequence number.
fn syn_template(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src_net: [u8; 2],
    dst: SocketAddrV4,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(SYN_FRAME_LEN);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let src = [src_net[0], src_net[1], 0, 0];
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[4..6].copy_from_slice(&0xffffu16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let c = csum_fold(csum_add(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let c = csum_fold(csum_add(&pseudo) + csum_add(&tcp));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&tcp);
    debug_assert_eq!(f.len(), SYN_FRAME_LEN);
    f
}

/// The generator's program: bounds check, `n = counter++`, the template written whole
/// (frame pages are recycled between runs, and a router downstream may have rewritten the
/// last frame in place), `x = n & 0xffff`, `y = (n >> 16) + 1024` and their complements as
/// [`syn_template`] explains, `XDP_TX`. Distinct `n` (below 2^32) give distinct
/// (source address, source port).
fn syn_program(template: &[u8], counter_fd: i32) -> Vec<asm::Insn> {
    use asm::*;
    let mut p = vec![
        mov(R6, R1),
        ldx_w(R2, R6, 0), // data
        ldx_w(R3, R6, 4), // data_end
        mov(R4, R2),
        add_imm(R4, SYN_FRAME_LEN as i32),
    ];
    let mut to_drop = vec![p.len()];
    p.push(jgt(R4, R3, 0));
    p.push(mov(R7, R2));
    p.push(st_w(R10, -4, 0)); // key 0
    p.push(mov(R2, R10));
    p.push(add_imm(R2, -4));
    p.extend(ld_map_fd(R1, counter_fd));
    p.push(call(1)); // bpf_map_lookup_elem
    to_drop.push(p.len());
    p.push(jeq_imm(R0, 0, 0));
    p.push(ldx_dw(R8, R0, 0));
    p.push(mov(R1, R8));
    p.push(add_imm(R1, 1));
    p.push(stx_dw(R0, 0, R1));
    let mut at = 0;
    while at + 4 <= template.len() {
        let w = i32::from_le_bytes(template[at..at + 4].try_into().expect("4 bytes"));
        p.push(st_w(R7, at as i16, w));
        at += 4;
    }
    if at < template.len() {
        let h = i32::from(u16::from_le_bytes([template[at], template[at + 1]]));
        p.push(st_h(R7, at as i16, h));
    }
    p.extend([
        mov(R9, R8),
        and_imm(R9, 0xffff),
        stx_h(R7, SRC_LOW_AT as i16, R9),
        xor_imm(R9, -1),
        stx_h(R7, IP_ID_AT as i16, R9),
        stx_h(R7, (SEQ_AT + 2) as i16, R9),
        mov(R9, R8),
        rsh_imm(R9, 16),
        add_imm(R9, 1024),
        stx_h(R7, SPORT_AT as i16, R9),
        xor_imm(R9, -1),
        stx_h(R7, SEQ_AT as i16, R9),
        mov_imm(R0, 3), // XDP_TX
        exit(),
    ]);
    let drop_at = p.len();
    p.push(mov_imm(R0, 1)); // XDP_DROP
    p.push(exit());
    for j in to_drop {
        let off = (drop_at - (j + 1)) as i16;
        p[j][2..4].copy_from_slice(&off.to_le_bytes());
    }
    p
}

/// The frame the generator's program writes for number `n` (for checking the program).
pub fn syn_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src_net: [u8; 2],
    dst: SocketAddrV4,
    n: u32,
) -> Vec<u8> {
    let mut f = syn_template(dst_mac, src_mac, src_net, dst);
    // The program's 16-bit stores are little-endian.
    let x = (n & 0xffff) as u16;
    let y = ((n >> 16) + 1024) as u16;
    f[SRC_LOW_AT..SRC_LOW_AT + 2].copy_from_slice(&x.to_le_bytes());
    f[IP_ID_AT..IP_ID_AT + 2].copy_from_slice(&(!x).to_le_bytes());
    f[SEQ_AT + 2..SEQ_AT + 4].copy_from_slice(&(!x).to_le_bytes());
    f[SPORT_AT..SPORT_AT + 2].copy_from_slice(&y.to_le_bytes());
    f[SEQ_AT..SEQ_AT + 2].copy_from_slice(&(!y).to_le_bytes());
    f
}

/// Runs the generator's program `runs` times on a copy of its template (no live frames,
/// no device) and returns each output frame: what the flood puts on the wire for numbers
/// 0, 1, ... `runs - 1`, and the program's counter afterwards.
pub fn syn_generator_output(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src_net: [u8; 2],
    target: SocketAddrV4,
    runs: u32,
) -> io::Result<(Vec<Vec<u8>>, u64)> {
    let template = syn_template(dst_mac, src_mac, src_net, target);
    let counter = bpf::counter_map()?;
    bpf::write_counter(&counter, 0)?;
    let prog = bpf::load_xdp(&syn_program(&template, counter.as_raw_fd()))?;
    // Whatever was left in the frame: the program must write every header byte.
    let input = vec![0xa5u8; template.len()];
    let mut frames = Vec::new();
    for _ in 0..runs {
        let mut out = vec![0u8; template.len() + 256];
        let mut attr = bpf::TestRun {
            prog_fd: prog.as_raw_fd() as u32,
            data_size_in: input.len() as u32,
            data_size_out: out.len() as u32,
            data_in: input.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
            ..Default::default()
        };
        bpf::test_run(&mut attr)?;
        if attr.retval != 3 {
            return Err(io::Error::other(format!(
                "the generator returned {} (XDP_TX is 3)",
                attr.retval
            )));
        }
        out.truncate(attr.data_size_out as usize);
        frames.push(out);
    }
    Ok((frames, bpf::read_counter(&counter)?))
}

/// What a flood sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct FloodReport {
    /// Frames built and handed to `XDP_TX` (the program's counter: one per distinct tuple).
    pub frames: u64,
    pub secs: f64,
}

impl FloodReport {
    pub fn rate(&self) -> f64 {
        self.frames as f64 / self.secs.max(1e-9)
    }
}

/// Where a SYN flood goes: built in the sender's namespace, out of `ifname`, to the router
/// interface whose MAC is `dst_mac`, from `src_net`.0.0/16 to `target`.
#[derive(Clone, Debug)]
pub struct SynFloodSpec {
    pub ns: String,
    pub ifname: String,
    pub dst_mac: [u8; 6],
    pub src_net: [u8; 2],
    pub target: SocketAddrV4,
}

/// A running SYN flood; [`SynFlood::finish`] stops it.
pub struct SynFlood {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<io::Result<FloodReport>>>,
}

impl SynFlood {
    /// Loads the generator in `spec.ns` and floods for at most `max`, as fast as the
    /// kernel builds frames (live frames, batches of 64). Returns once the first frames
    /// went out (or the generator failed).
    pub fn start(spec: &SynFloodSpec, max: Duration) -> io::Result<Self> {
        let spec = spec.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ns = spec.ns.clone();
        let thread = in_ns(&ns, move || {
            let result = flood_loop(&spec, max, &thread_stop, &ready_tx);
            if let Err(e) = &result {
                let _ = ready_tx.send(Err(io::Error::new(e.kind(), e.to_string())));
            }
            result
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Self {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(io::Error::new(
                ErrorKind::TimedOut,
                "the SYN generator did not start",
            )),
        }
    }

    /// Stops the flood; what it sent.
    pub fn finish(mut self) -> io::Result<FloodReport> {
        self.stop.store(true, Ordering::Relaxed);
        join(self.thread.take().expect("flood thread"))
    }
}

impl Drop for SynFlood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn flood_loop(
    spec: &SynFloodSpec,
    max: Duration,
    stop: &AtomicBool,
    ready: &std::sync::mpsc::Sender<io::Result<()>>,
) -> io::Result<FloodReport> {
    let ifindex = crate::topo::ifindex(&spec.ifname);
    let src_mac = mac_here(&spec.ifname)?;
    if !router_user::datapath::features::kernel().xdp_live_frames {
        return packet_flood_loop(spec, ifindex, src_mac, max, stop, ready);
    }
    let template = syn_template(spec.dst_mac, src_mac, spec.src_net, spec.target);
    let counter = bpf::counter_map()?;
    bpf::write_counter(&counter, 0)?;
    let prog = bpf::load_xdp(&syn_program(&template, counter.as_raw_fd()))?;
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(template.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let start = Instant::now();
    // Each test run swaps the XDP dispatcher in and out, two RCU grace periods (several
    // ms): runs are made long (~250 ms, sized from the kernel's ns per frame), so the
    // generator spends its time generating. The stop flag is seen between runs.
    let mut chunk: u32 = 10_000;
    let mut first = true;
    while !stop.load(Ordering::Relaxed) && start.elapsed() < max {
        let mut attr = bpf::TestRun {
            prog_fd: prog.as_raw_fd() as u32,
            data_size_in: template.len() as u32,
            data_in: template.as_ptr() as u64,
            repeat: chunk,
            ctx_size_in: ctx.len() as u32,
            ctx_in: ctx.as_ptr() as u64,
            flags: bpf::BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size: 64,
            ..Default::default()
        };
        bpf::test_run(&mut attr)
            .map_err(|e| io::Error::new(e.kind(), format!("live-frames test run: {e}")))?;
        if first {
            first = false;
            let _ = ready.send(Ok(()));
        }
        let ns_per_frame = f64::from(attr.duration.max(1));
        let left = max.saturating_sub(start.elapsed()).as_secs_f64().min(0.25);
        chunk = ((left * 1e9 / ns_per_frame) as u32).clamp(1_000, 10_000_000);
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(FloodReport {
        frames: bpf::read_counter(&counter)?,
        secs,
    })
}

/// The flood from an `AF_PACKET` socket, 64 frames per send: the frames the generator's
/// program would write for numbers 0, 1, ..., each counted once it has left.
fn packet_flood_loop(
    spec: &SynFloodSpec,
    ifindex: u32,
    src_mac: [u8; 6],
    max: Duration,
    stop: &AtomicBool,
    ready: &std::sync::mpsc::Sender<io::Result<()>>,
) -> io::Result<FloodReport> {
    let socket = crate::packet_socket::PacketSocket::bind(ifindex)?;
    let start = Instant::now();
    let mut sent: u32 = 0;
    let mut first = true;
    while !stop.load(Ordering::Relaxed) && start.elapsed() < max {
        let mut frames: Vec<Vec<u8>> = (0..64)
            .map(|i| syn_frame(spec.dst_mac, src_mac, spec.src_net, spec.target, sent + i))
            .collect();
        let n = socket.send(&mut frames)?;
        if n == 0 {
            thread::yield_now();
        }
        sent += n as u32;
        if first && n > 0 {
            first = false;
            let _ = ready.send(Ok(()));
        }
    }
    Ok(FloodReport {
        frames: u64::from(sent),
        secs: start.elapsed().as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------------------
// Long-lived TCP connections

/// An echo server on `0.0.0.0:port` in a namespace: accepts any number of connections and
/// echoes each (8-byte blocks) until the peer closes or the server stops.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(ns: &str, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        let thread = in_ns(ns, move || {
            let listener = TcpListener::bind(("0.0.0.0", port))
                .unwrap_or_else(|e| panic!("listen {port}: {e}"));
            listener.set_nonblocking(true).expect("nonblocking");
            ready_tx.send(()).expect("ready");
            let mut conns = Vec::new();
            let hard = Instant::now() + Duration::from_secs(600);
            while !s.load(Ordering::Relaxed) && Instant::now() < hard {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let s = s.clone();
                        conns.push(thread::spawn(move || echo(conn, &s)));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("echo server ready");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

fn echo(mut conn: TcpStream, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 8];
    let mut have = 0;
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf[have..]) {
            Ok(0) => return,
            Ok(n) => {
                have += n;
                if have == buf.len() {
                    have = 0;
                    if conn.write_all(&buf).is_err() {
                        return;
                    }
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a chatter saw: the completion time and duration of every round trip.
#[derive(Debug, Clone, Default)]
pub struct ChatReport {
    pub started: Option<Instant>,
    /// (completed at, round-trip time).
    pub trips: Vec<(Instant, Duration)>,
    /// Why the connection ended early, if it did.
    pub error: Option<String>,
}

impl ChatReport {
    /// Round trips completed within `[from, to]`.
    pub fn trips_between(&self, from: Instant, to: Instant) -> usize {
        self.trips
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .count()
    }

    /// The longest time without a completed round trip within `[from, to]`.
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut last = from;
        let mut gap = Duration::ZERO;
        for (t, _) in self.trips.iter().filter(|(t, _)| *t >= from && *t <= to) {
            gap = gap.max(t.duration_since(last));
            last = *t;
        }
        gap.max(to.saturating_duration_since(last))
    }

    /// The slowest round trip within `[from, to]`.
    pub fn max_rtt(&self, from: Instant, to: Instant) -> Duration {
        self.trips
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default()
    }
}

/// A TCP connection from a namespace that echoes an 8-byte counter every `interval`; any
/// error, timeout (`io_timeout`) or wrong byte ends it.
pub struct Chatter {
    stop: Arc<AtomicBool>,
    count: Arc<std::sync::atomic::AtomicU64>,
    thread: Option<thread::JoinHandle<ChatReport>>,
}

impl Chatter {
    /// Connects (bounded by 3 s) before returning; a failed connection is in the report.
    pub fn start(ns: &str, target: SocketAddrV4, interval: Duration, io_timeout: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (s, c) = (stop.clone(), count.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = in_ns(ns, move || {
            let mut report = ChatReport {
                started: Some(Instant::now()),
                ..ChatReport::default()
            };
            let mut conn = match TcpStream::connect_timeout(&target.into(), Duration::from_secs(3))
            {
                Ok(c) => c,
                Err(e) => {
                    report.error = Some(format!("connect {target}: {e}"));
                    let _ = ready_tx.send(());
                    return report;
                }
            };
            let _ = ready_tx.send(());
            let _ = conn.set_nodelay(true);
            let _ = conn.set_read_timeout(Some(io_timeout));
            let _ = conn.set_write_timeout(Some(io_timeout));
            let hard = Instant::now() + Duration::from_secs(600);
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) && Instant::now() < hard {
                let t = Instant::now();
                if let Err(e) = conn.write_all(&n.to_be_bytes()) {
                    report.error = Some(format!("write #{n}: {e}"));
                    break;
                }
                let mut back = [0u8; 8];
                if let Err(e) = conn.read_exact(&mut back) {
                    report.error = Some(format!("read #{n} after {:?}: {e}", t.elapsed()));
                    break;
                }
                if u64::from_be_bytes(back) != n {
                    report.error = Some(format!("echo #{n} came back as {back:?}"));
                    break;
                }
                let done = Instant::now();
                report.trips.push((done, done - t));
                c.fetch_add(1, Ordering::Relaxed);
                n += 1;
                thread::sleep(interval);
            }
            report
        });
        let _ = ready_rx.recv_timeout(Duration::from_secs(5));
        Self {
            stop,
            count,
            thread: Some(thread),
        }
    }

    /// Round trips completed so far.
    pub fn trips(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn finish(mut self) -> ChatReport {
        self.stop.store(true, Ordering::Relaxed);
        join(self.thread.take().expect("chatter thread"))
    }
}

impl Drop for Chatter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection and one echoed round trip from `ns` to `target`, bounded by `wait`.
pub fn tcp_round_trip(ns: &str, target: SocketAddrV4, wait: Duration) -> Result<Duration, String> {
    join(in_ns(ns, move || {
        let t = Instant::now();
        let mut c = TcpStream::connect_timeout(&target.into(), wait)
            .map_err(|e| format!("connect {target}: {e}"))?;
        c.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
        c.write_all(&0x5eed_u64.to_be_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut back = [0u8; 8];
        c.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
        if u64::from_be_bytes(back) != 0x5eed {
            return Err(format!("echo came back as {back:?}"));
        }
        Ok(t.elapsed())
    }))
}

// ---------------------------------------------------------------------------------------
// Many UDP flows

/// One datagram as a receiver saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReceivedDatagram {
    /// The receiver's address (the translated destination).
    pub at: SocketAddrV4,
    /// The translated source.
    pub from: SocketAddrV4,
    /// The flow id the sender put in the payload.
    pub flow: u64,
}

/// UDP receivers in a namespace, one socket per address, recording every datagram and
/// echoing it back to its source.
pub struct UdpCollector {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<ReceivedDatagram>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl UdpCollector {
    pub fn start(ns: &str, addrs: &[SocketAddrV4]) -> Self {
        let addrs = addrs.to_vec();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), seen.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = in_ns(ns, move || {
            let socks: Vec<(SocketAddrV4, UdpSocket)> = addrs
                .iter()
                .map(|a| {
                    let sock = UdpSocket::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"));
                    sock.set_nonblocking(true).expect("nonblocking");
                    (*a, sock)
                })
                .collect();
            ready_tx.send(()).expect("ready");
            let mut buf = [0u8; 64];
            let hard = Instant::now() + Duration::from_secs(600);
            while !s.load(Ordering::Relaxed) && Instant::now() < hard {
                let mut idle = true;
                for (at, sock) in &socks {
                    while let Ok((n, SocketAddr::V4(from))) = sock.recv_from(&mut buf) {
                        idle = false;
                        if n < 8 {
                            continue;
                        }
                        let flow = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                        out.lock().expect("seen").push(ReceivedDatagram {
                            at: *at,
                            from,
                            flow,
                        });
                        let _ = sock.send_to(&buf[..n], from);
                    }
                }
                if idle {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("UDP receivers ready");
        Self {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<ReceivedDatagram> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for UdpCollector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// UDP flows from one namespace, each its own socket (its own source port) to one
/// destination, identified by a flow id carried in every datagram.
pub struct UdpFlows {
    pub flows: Vec<UdpFlow>,
}

pub struct UdpFlow {
    pub id: u64,
    pub sport: u16,
    pub dst: SocketAddrV4,
    sock: UdpSocket,
}

impl UdpFlows {
    /// Opens one socket per (id, source port, destination) in namespace `ns`.
    pub fn open(ns: &str, flows: Vec<(u64, u16, SocketAddrV4)>) -> Self {
        let flows = join(in_ns(ns, move || {
            flows
                .into_iter()
                .map(|(id, sport, dst)| {
                    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, sport))
                        .unwrap_or_else(|e| panic!("bind udp {sport}: {e}"));
                    sock.set_nonblocking(true).expect("nonblocking");
                    UdpFlow {
                        id,
                        sport,
                        dst,
                        sock,
                    }
                })
                .collect()
        }));
        Self { flows }
    }

    /// One datagram on every flow, `pace` apart.
    pub fn send_all(&self, pace: Duration) {
        for f in &self.flows {
            f.sock
                .send_to(&f.id.to_be_bytes(), f.dst)
                .unwrap_or_else(|e| panic!("send flow {} to {}: {e}", f.id, f.dst));
            thread::sleep(pace);
        }
    }

    /// One datagram on each flow whose id is in `ids`, `pace` apart.
    pub fn send_only(&self, ids: &std::collections::BTreeSet<u64>, pace: Duration) {
        for f in self.flows.iter().filter(|f| ids.contains(&f.id)) {
            f.sock
                .send_to(&f.id.to_be_bytes(), f.dst)
                .unwrap_or_else(|e| panic!("send flow {} to {}: {e}", f.id, f.dst));
            thread::sleep(pace);
        }
    }

    /// Echoes received on every flow (drained, non-blocking): flow id -> sources.
    pub fn echoes(&self) -> BTreeMap<u64, Vec<SocketAddrV4>> {
        let mut out: BTreeMap<u64, Vec<SocketAddrV4>> = BTreeMap::new();
        let mut buf = [0u8; 64];
        for f in &self.flows {
            while let Ok((n, SocketAddr::V4(from))) = f.sock.recv_from(&mut buf) {
                if n >= 8 && u64::from_be_bytes(buf[..8].try_into().expect("8 bytes")) == f.id {
                    out.entry(f.id).or_default().push(from);
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// Small readings

/// Raises this process's open-file limit to at least `n` (for thousands of flow sockets).
pub fn raise_fd_limit(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit to fill and then to set.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur < n {
            lim.rlim_cur = n;
            lim.rlim_max = lim.rlim_max.max(n);
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim),
                0,
                "raising RLIMIT_NOFILE to {n}: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// `VmRSS` of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// CPU time (user + system) process `pid` has used so far, all threads.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/stat: {e}"));
    // Fields after the command name (which may hold spaces, in parentheses): state is
    // field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().expect("a number"))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64((f[0] + f[1]) as f64 / hz)
}

/// The MAC address of `ifname` in namespace `ns`.
pub fn mac_of(ns: &str, ifname: &str) -> [u8; 6] {
    crate::topo::try_mac_of(Some(ns), ifname)
        .unwrap_or_else(|e| panic!("the MAC of {ifname} in {ns}: {e}"))
}

/// The MAC of `ifname` in the calling thread's namespace (SIOCGIFHWADDR).
fn mac_here(ifname: &str) -> io::Result<[u8; 6]> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    // SAFETY: ifreq is plain data; zeroed is a valid start.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: a valid socket and ifreq for SIOCGIFHWADDR.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR filled the hardware-address member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}

/// A verifiable flood frame: the program's output for `n`, checked by etherparse
/// (exercised by the tests' self-check).
pub fn check_syn_frame(frame: &[u8]) -> Result<(SocketAddrV4, SocketAddrV4), String> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(frame).map_err(|e| e.to_string())?;
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        return Err("not IPv4".into());
    };
    let h = ip.header();
    let hdr = h.to_header();
    if hdr.calc_header_checksum() != hdr.header_checksum {
        return Err("bad IPv4 checksum".into());
    }
    let Some(TransportSlice::Tcp(tcp)) = p.transport else {
        return Err("not TCP".into());
    };
    let want = tcp
        .to_header()
        .calc_checksum_ipv4(&hdr, tcp.payload())
        .map_err(|e| e.to_string())?;
    if want != tcp.checksum() {
        return Err(format!(
            "bad TCP checksum {:#x}, want {want:#x}",
            tcp.checksum()
        ));
    }
    if !tcp.syn() || tcp.ack() {
        return Err("not a SYN".into());
    }
    Ok((
        SocketAddrV4::new(h.source_addr(), tcp.source_port()),
        SocketAddrV4::new(h.destination_addr(), tcp.destination_port()),
    ))
}
