//! Probes for the policy and firewall topology tests: nftables counters in a namespace
//! (what passed a host, by a match of our choosing), exact numbers of raw TCP segments and
//! ICMP echoes (so rule counters can be compared with what was sent), refused connections,
//! and a paced UDP stream that counts what it lost. Every wait is bounded.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{ErrorKind, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket},
    os::fd::{AsRawFd, OwnedFd},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, recv, sendto,
    setsockopt, socket, sockopt,
};

use crate::traffic::{in_ns, join};

// ---------------------------------------------------------------------------------------
// nftables counters

/// Named nftables counters in table `inet <table>` of namespace `ns`, each fed by one rule
/// (`<match> counter name "<name>"`) of a base chain on `hook`, followed by a jump to the
/// chain `blocked`, where drop rules can be added and flushed. The table goes with the
/// namespace.
pub struct NftCounters {
    pub ns: String,
    pub table: String,
}

impl NftCounters {
    /// Installs the table: `hook` is "forward" or "prerouting"; `counters` are (name, nft
    /// match expression).
    pub fn install(ns: &str, table: &str, hook: &str, counters: &[(&str, &str)]) -> Self {
        let mut text = format!("table inet {table} {{\n");
        for (name, _) in counters {
            text.push_str(&format!("  counter {name} {{ }}\n"));
        }
        let priority = if hook == "prerouting" { -300 } else { 0 };
        text.push_str("  chain blocked { }\n");
        text.push_str(&format!(
            "  chain counting {{\n    type filter hook {hook} priority {priority}; policy accept;\n"
        ));
        for (name, expr) in counters {
            text.push_str(&format!("    {expr} counter name \"{name}\"\n"));
        }
        text.push_str("    jump blocked\n  }\n}\n");
        nft_stdin(ns, &text);
        Self {
            ns: ns.to_string(),
            table: table.to_string(),
        }
    }

    /// Every counter's packets.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "nft", "-j", "list", "counters", "table", "inet",
            ])
            .arg(&self.table)
            .output()
            .expect("running nft");
        assert!(
            out.status.success(),
            "nft list counters in {}: {}",
            self.ns,
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("nft -j output is JSON");
        json["nftables"]
            .as_array()
            .expect("nftables array")
            .iter()
            .filter_map(|item| {
                let c = item.get("counter")?;
                Some((
                    c["name"].as_str()?.to_string(),
                    c["packets"].as_u64().unwrap_or(0),
                ))
            })
            .collect()
    }

    /// Packets counted by `name`.
    pub fn get(&self, name: &str) -> u64 {
        *self
            .snapshot()
            .get(name)
            .unwrap_or_else(|| panic!("no nft counter {name} in {}", self.ns))
    }

    /// Drops packets matching `expr` from now on (a rule in chain `blocked`).
    pub fn block(&self, expr: &str) {
        let cmd = format!("add rule inet {} blocked {expr} drop", self.table);
        nft_stdin(&self.ns, &cmd);
    }

    /// Removes every drop rule.
    pub fn unblock(&self) {
        let cmd = format!("flush chain inet {} blocked", self.table);
        nft_stdin(&self.ns, &cmd);
    }
}

/// Differences between two snapshots, for messages: `name: before -> after`.
pub fn describe(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
    after
        .iter()
        .map(|(k, v)| format!("{k}: {} -> {v}", before.get(k).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `after[name] - before[name]`.
pub fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, name: &str) -> u64 {
    let a = after.get(name).copied().unwrap_or(0);
    let b = before.get(name).copied().unwrap_or(0);
    a.saturating_sub(b)
}

fn nft_stdin(ns: &str, text: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running nft");
    child
        .stdin
        .take()
        .expect("nft stdin")
        .write_all(text.as_bytes())
        .expect("writing to nft");
    let out = child.wait_with_output().expect("waiting for nft");
    assert!(
        out.status.success(),
        "nft -f in {ns} failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sysctl -qw` for each `key=value` in namespace `ns`.
pub fn sysctl(ns: &str, settings: &[&str]) {
    for s in settings {
        crate::topo::run("ip", &["netns", "exec", ns, "sysctl", "-qw", s]);
    }
}

// ---------------------------------------------------------------------------------------
// Raw TCP segments and ICMP echoes, counted exactly

/// TCP flag bits.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// A 20-byte TCP header with `flags` and a correct checksum for `src` -> `dst`.
pub fn tcp_segment(src: SocketAddrV4, dst: SocketAddrV4, flags: u8, seq: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(20);
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes());
    h.push(5 << 4);
    h.push(flags);
    h.extend_from_slice(&64240u16.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.ip().octets());
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let sum = fold(sum16(&pseudo) + sum16(&h));
    h[16..18].copy_from_slice(&sum.to_be_bytes());
    h
}

/// Sends exactly `count` TCP segments with `flags` from `src` (an address of namespace
/// `ns`; ports `src.port()` + i) to `dst`, through a raw socket: no retransmissions, no
/// socket state, so a counter downstream must see exactly `count`.
pub fn send_tcp_raw(ns: &str, src: SocketAddrV4, dst: SocketAddrV4, flags: u8, count: u16) {
    join(in_ns(ns, move || {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Tcp,
        )
        .expect("raw TCP socket");
        nix::sys::socket::bind(
            fd.as_raw_fd(),
            &SockaddrIn::from(SocketAddrV4::new(*src.ip(), 0)),
        )
        .unwrap_or_else(|e| panic!("binding a raw socket to {}: {e}", src.ip()));
        for i in 0..count {
            let from = SocketAddrV4::new(*src.ip(), src.port() + i);
            let seg = tcp_segment(from, dst, flags, 0x1000_0000 + u32::from(i));
            sendto(
                fd.as_raw_fd(),
                &seg,
                &SockaddrIn::from(SocketAddrV4::new(*dst.ip(), 0)),
                MsgFlags::empty(),
            )
            .unwrap_or_else(|e| panic!("sending a raw TCP segment to {dst}: {e}"));
            thread::sleep(Duration::from_millis(5));
        }
    }));
}

fn raw_icmp_socket() -> OwnedFd {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    )
    .expect("raw ICMP socket");
    setsockopt(
        &fd,
        sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, 50_000),
    )
    .expect("SO_RCVTIMEO");
    fd
}

fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut msg = vec![8, 0, 0, 0];
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&seq.to_be_bytes());
    msg.extend_from_slice(b"policy-topology-probe");
    let sum = fold(sum16(&msg));
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    msg
}

/// What came back for echo requests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EchoResult {
    /// Echo replies with our identifier (by sequence number).
    pub replies: BTreeSet<u16>,
    /// ICMP errors quoting one of our requests: (from, type, code).
    pub errors: Vec<(Ipv4Addr, u8, u8)>,
}

/// Sends exactly `count` echo requests (identifier `id`, sequence 1..=count) from `ns` to
/// `dst` and collects, for `wait` after the last, the replies and the ICMP errors about
/// them.
pub fn echo(ns: &str, dst: Ipv4Addr, id: u16, count: u16, wait: Duration) -> EchoResult {
    join(in_ns(ns, move || {
        let fd = raw_icmp_socket();
        for seq in 1..=count {
            sendto(
                fd.as_raw_fd(),
                &echo_request(id, seq),
                &SockaddrIn::from(SocketAddrV4::new(dst, 0)),
                MsgFlags::empty(),
            )
            .unwrap_or_else(|e| panic!("sending an echo request to {dst}: {e}"));
            thread::sleep(Duration::from_millis(5));
        }
        let mut result = EchoResult::default();
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            let Ok(n) = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) else {
                continue;
            };
            let p = &buf[..n];
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let Some(icmp) = p.get(ihl..) else { continue };
            if icmp.len() < 8 {
                continue;
            }
            let from = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            match icmp[0] {
                0 if u16::from_be_bytes([icmp[4], icmp[5]]) == id => {
                    result
                        .replies
                        .insert(u16::from_be_bytes([icmp[6], icmp[7]]));
                }
                3 | 11 | 12 => {
                    // The quoted datagram: its IPv4 header, then our echo request.
                    let inner = &icmp[8..];
                    let Some(&v) = inner.first() else { continue };
                    let inner_ihl = usize::from(v & 0x0f) * 4;
                    let Some(q) = inner.get(inner_ihl..inner_ihl + 8) else {
                        continue;
                    };
                    if q[0] == 8 && u16::from_be_bytes([q[4], q[5]]) == id {
                        result.errors.push((from, icmp[0], icmp[1]));
                    }
                }
                _ => {}
            }
        }
        result
    }))
}

/// How a TCP connection attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connect {
    Connected,
    Refused,
    TimedOut,
    Other(ErrorKind),
}

/// A TCP connection attempt from `ns` to `target`, bounded by `wait`; returns how it ended
/// and how long it took.
pub fn tcp_connect(ns: &str, target: SocketAddrV4, wait: Duration) -> (Connect, Duration) {
    join(in_ns(ns, move || {
        let start = Instant::now();
        let outcome = match TcpStream::connect_timeout(&target.into(), wait) {
            Ok(_) => Connect::Connected,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Connect::Refused,
            Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
                Connect::TimedOut
            }
            Err(e) => Connect::Other(e.kind()),
        };
        (outcome, start.elapsed())
    }))
}

/// Sends one datagram on a connected UDP socket from `ns` to `target` and waits up to
/// `wait` for an answer: `Err(ConnectionRefused)` when an ICMP port unreachable came back.
pub fn udp_connected(ns: &str, target: SocketAddrV4, wait: Duration) -> Result<Vec<u8>, ErrorKind> {
    join(in_ns(ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.connect(target).expect("connect a UDP socket");
        sock.set_read_timeout(Some(wait)).expect("timeout");
        sock.send(b"probe").map_err(|e| e.kind())?;
        let mut buf = [0u8; 512];
        match sock.recv(&mut buf) {
            Ok(n) => Ok(buf[..n].to_vec()),
            Err(e) => Err(e.kind()),
        }
    }))
}

// ---------------------------------------------------------------------------------------
// A paced UDP stream

/// What a UDP stream's receiver got.
#[derive(Debug, Clone, Default)]
pub struct StreamReport {
    pub sent: u64,
    pub received: u64,
    /// Sequence numbers sent but never received.
    pub lost: Vec<u64>,
    /// Source addresses the receiver saw.
    pub sources: BTreeSet<SocketAddrV4>,
}

/// A stream of numbered datagrams from a client namespace to a server, one every
/// `interval`, until finished (or a hard cap of 60 s).
pub struct UdpStream {
    stop: Arc<AtomicBool>,
    sender: Option<thread::JoinHandle<u64>>,
    receiver: Option<thread::JoinHandle<(BTreeSet<u64>, BTreeSet<SocketAddrV4>)>>,
}

impl UdpStream {
    /// Starts the receiver on `0.0.0.0:listen_port` in `server_ns`, then the sender in
    /// `client_ns` (from `client_port`) to `target`.
    pub fn start(
        client_ns: &str,
        client_port: u16,
        target: SocketAddrV4,
        server_ns: &str,
        listen_port: u16,
        interval: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let rx_stop = stop.clone();
        let receiver = in_ns(server_ns, move || {
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, listen_port))
                .unwrap_or_else(|e| panic!("bind udp {listen_port}: {e}"));
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            ready_tx.send(()).expect("ready");
            let mut seqs = BTreeSet::new();
            let mut sources = BTreeSet::new();
            let mut buf = [0u8; 64];
            let hard = Instant::now() + Duration::from_secs(70);
            let mut stopped_at: Option<Instant> = None;
            while Instant::now() < hard {
                if stopped_at.is_none() && rx_stop.load(Ordering::Relaxed) {
                    stopped_at = Some(Instant::now());
                }
                // Drain for 500 ms after the sender stopped.
                if stopped_at.is_some_and(|t| t.elapsed() > Duration::from_millis(500)) {
                    break;
                }
                if let Ok((n, std::net::SocketAddr::V4(from))) = sock.recv_from(&mut buf)
                    && n >= 8
                {
                    seqs.insert(u64::from_be_bytes(buf[..8].try_into().expect("8 bytes")));
                    sources.insert(from);
                }
            }
            (seqs, sources)
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the stream's receiver did not get ready");
        let tx_stop = stop.clone();
        let sender = in_ns(client_ns, move || {
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, client_port))
                .unwrap_or_else(|e| panic!("bind udp {client_port}: {e}"));
            let hard = Instant::now() + Duration::from_secs(60);
            let mut seq = 0u64;
            let mut next = Instant::now();
            while !tx_stop.load(Ordering::Relaxed) && Instant::now() < hard {
                let _ = sock.send_to(&seq.to_be_bytes(), target);
                seq += 1;
                next += interval;
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    thread::sleep(d);
                }
            }
            seq
        });
        Self {
            stop,
            sender: Some(sender),
            receiver: Some(receiver),
        }
    }

    /// Stops the sender, lets the receiver drain, and reports.
    pub fn finish(mut self) -> StreamReport {
        self.stop.store(true, Ordering::Relaxed);
        let sent = join(self.sender.take().expect("sender"));
        let (seqs, sources) = join(self.receiver.take().expect("receiver"));
        StreamReport {
            sent,
            received: seqs.len() as u64,
            lost: (0..sent).filter(|s| !seqs.contains(s)).collect(),
            sources,
        }
    }
}

impl Drop for UdpStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.sender.take() {
            let _ = s.join();
        }
        if let Some(r) = self.receiver.take() {
            let _ = r.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// ARP, counted

/// Sends `count` ARP requests for `target` from `ns`'s interface `ifname` (as `sender`),
/// one every 20 ms, and counts the replies that say `target` is at some MAC, for `wait`
/// after the last request. Two routers answering for one address give two replies per
/// request.
pub fn arp_replies(
    ns: &str,
    ifname: &str,
    sender: Ipv4Addr,
    target: Ipv4Addr,
    count: usize,
    wait: Duration,
) -> usize {
    let mac = crate::topo::try_mac_of(Some(ns), ifname).expect("the interface's MAC");
    crate::netns::within(ns, || {
        const ETH_P_ARP: u16 = 0x0806;
        // SAFETY: plain socket calls on a descriptor owned below; `sockaddr_ll` zeroed
        // then filled; buffers outlive the calls.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ARP.to_be()),
            );
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let socket = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
            let name = std::ffi::CString::new(ifname).expect("interface name");
            let index = libc::if_nametoindex(name.as_ptr()) as i32;
            assert_ne!(index, 0, "interface {ifname} in {ns}");
            let mut to: libc::sockaddr_ll = std::mem::zeroed();
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_protocol = ETH_P_ARP.to_be();
            to.sll_ifindex = index;
            assert_eq!(
                libc::bind(
                    socket.as_raw_fd(),
                    (&raw const to).cast(),
                    size_of::<libc::sockaddr_ll>() as u32
                ),
                0,
                "bind: {}",
                std::io::Error::last_os_error()
            );
            let timeout = libc::timeval {
                tv_sec: 0,
                tv_usec: 10_000,
            };
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as u32,
            );
            let mut frame = [0u8; 42];
            frame[0..6].copy_from_slice(&[0xff; 6]);
            frame[6..12].copy_from_slice(&mac);
            frame[12..14].copy_from_slice(&[0x08, 0x06]);
            frame[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            frame[22..28].copy_from_slice(&mac);
            frame[28..32].copy_from_slice(&sender.octets());
            frame[38..42].copy_from_slice(&target.octets());
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
            let mut replies = 0;
            let mut next_send = Instant::now();
            let mut sent = 0;
            let mut deadline = Instant::now() + wait;
            while sent < count || Instant::now() < deadline {
                if sent < count && Instant::now() >= next_send {
                    libc::sendto(
                        socket.as_raw_fd(),
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&raw const to).cast(),
                        size_of::<libc::sockaddr_ll>() as u32,
                    );
                    sent += 1;
                    next_send += Duration::from_millis(20);
                    deadline = Instant::now() + wait;
                }
                let mut buf = [0u8; 64];
                let n = libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
                // An ARP reply (oper 2) from the target's address to us.
                if n >= 42
                    && buf[12..14] == [0x08, 0x06]
                    && buf[20..22] == [0, 2]
                    && buf[28..32] == target.octets()
                    && buf[38..42] == sender.octets()
                {
                    replies += 1;
                }
            }
            replies
        }
    })
}
