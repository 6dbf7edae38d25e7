//! Real traffic between namespaces, from threads that enter them. Every loop is bounded in
//! count and time.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns};

/// Runs `f` on a new thread inside namespace `ns` and returns its result.
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("entering {path}: {e}"));
        f()
    })
}

pub fn join<T>(h: thread::JoinHandle<T>) -> T {
    h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// `ping -c count` from namespace `ns`; true when every echo was answered.
pub fn ping(ns: &str, dst: [u8; 4], count: u32) -> bool {
    ping_with(ns, dst, count, &[])
}

/// `ping -n -q -c count -i 0.2 -W 2 EXTRA… dst` from namespace `ns`; true when every echo
/// was answered.
fn ping_with(ns: &str, dst: [u8; 4], count: u32, extra: &[&str]) -> bool {
    let dst = Ipv4Addr::from(dst).to_string();
    let count = count.to_string();
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-n", "-q", "-c", &count])
        .args(["-i", "0.2", "-W", "2"])
        .args(extra)
        .arg(&dst)
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Deterministic test content: byte i of the stream.
fn content(i: usize) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

/// Sends `bytes` of known content over TCP from `client_ns` to `server`:`port`, to a server
/// listening on any address of `server_ns`; the server checks every byte. Returns the bytes
/// verified.
pub fn tcp_transfer(
    client_ns: &str,
    server_ns: &str,
    server: [u8; 4],
    port: u16,
    bytes: usize,
) -> usize {
    let addr = SocketAddrV4::new(Ipv4Addr::from(server), port);
    // Any address: `server` may be a floating IP, translated before it reaches the host.
    let listen = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let srv = in_ns(server_ns, move || {
        let listener = TcpListener::bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
        ready_tx.send(()).expect("signal ready");
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut buf = vec![0u8; 64 * 1024];
        let mut seen = 0usize;
        loop {
            let n = conn
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("server read after {seen} bytes: {e}"));
            if n == 0 {
                break;
            }
            for (k, b) in buf[..n].iter().enumerate() {
                assert_eq!(
                    *b,
                    content(seen + k),
                    "byte {} corrupted in transit",
                    seen + k
                );
            }
            seen += n;
        }
        conn.write_all(&(seen as u64).to_be_bytes()).expect("ack");
        seen
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    let cli = in_ns(client_ns, move || {
        let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_write_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let chunk: Vec<u8> = (0..bytes).map(content).collect();
        s.write_all(&chunk).expect("client write");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut ack = [0u8; 8];
        s.read_exact(&mut ack).expect("server ack");
        u64::from_be_bytes(ack) as usize
    });
    let acked = join(cli);
    let seen = join(srv);
    assert_eq!(acked, seen);
    seen
}

/// Sends one UDP datagram from `client_ns` to `server`:`port` in `server_ns` and returns
/// whether it arrived within `wait`.
pub fn udp_once(
    client_ns: &str,
    server_ns: &str,
    server: [u8; 4],
    port: u16,
    wait: Duration,
) -> bool {
    let addr = SocketAddrV4::new(Ipv4Addr::from(server), port);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let srv = in_ns(server_ns, move || {
        let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        sock.set_read_timeout(Some(wait)).expect("timeout");
        ready_tx.send(()).expect("ready");
        let mut buf = [0u8; 64];
        matches!(sock.recv(&mut buf), Ok(n) if &buf[..n] == b"first")
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    join(in_ns(client_ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.send_to(b"first", addr).expect("send");
    }));
    join(srv)
}

/// What a probe with a small TTL got back, as traceroute sees it.
#[derive(Debug, PartialEq, Eq)]
pub struct IcmpError {
    pub from: Ipv4Addr,
    pub icmp_type: u8,
}

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;

/// Sends a UDP probe with `ttl` from `ns` to `dst` (a closed port) and returns the ICMP
/// error the sender's kernel reports for it (IP_RECVERR), like one hop of traceroute.
pub fn udp_probe(ns: &str, dst: [u8; 4], ttl: u32) -> Option<IcmpError> {
    udp_probe_with(ns, dst, ttl, 5, false).map(|(e, _)| e)
}

/// As `udp_probe` with `len` bytes of payload, and with the don't-fragment bit when
/// `dont_fragment`; also returns the error's info field (the next-hop MTU of a
/// "fragmentation needed").
pub fn udp_probe_with(
    ns: &str,
    dst: [u8; 4],
    ttl: u32,
    len: usize,
    dont_fragment: bool,
) -> Option<(IcmpError, u32)> {
    join(in_ns(ns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        let fd = sock.as_raw_fd();
        let on: libc::c_int = 1;
        let ttl = ttl as libc::c_int;
        // SAFETY: valid socket and option buffers of the right size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_RECVERR,
                (&on as *const libc::c_int).cast(),
                4,
            );
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_TTL,
                (&ttl as *const libc::c_int).cast(),
                4,
            );
            if dont_fragment {
                let pmtu: libc::c_int = libc::IP_PMTUDISC_PROBE;
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    (&pmtu as *const libc::c_int).cast(),
                    4,
                );
            }
        }
        sock.send_to(
            &vec![0x55u8; len],
            SocketAddrV4::new(Ipv4Addr::from(dst), 33434),
        )
        .expect("send probe");
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Some(e) = read_errqueue(fd) {
                return Some(e);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }))
}

fn read_errqueue(fd: i32) -> Option<(IcmpError, u32)> {
    let mut data = [0u8; 64];
    let mut control = [0u8; 512];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid start.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    // SAFETY: all buffers live for the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
    if n < 0 {
        return None;
    }
    // SAFETY: walking the control messages the kernel wrote into `control`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::IPPROTO_IP && (*cmsg).cmsg_type == libc::IP_RECVERR {
                let err = libc::CMSG_DATA(cmsg) as *const libc::sock_extended_err;
                let offender = libc::SO_EE_OFFENDER(err) as *const libc::sockaddr_in;
                return Some((
                    IcmpError {
                        from: Ipv4Addr::from(u32::from_be((*offender).sin_addr.s_addr)),
                        icmp_type: (*err).ee_type,
                    },
                    (*err).ee_info,
                ));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    None
}

/// The namespace's kernel forwarding counter (IpForwDatagrams). /proc/net follows the *process*, so the
/// thread reads its own namespace through /proc/thread-self.
pub fn forwarded_by_kernel(ns: &str) -> u64 {
    join(in_ns(ns, || {
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("reading snmp");
        let mut lines = snmp.lines().filter(|l| l.starts_with("Ip:"));
        let names: Vec<&str> = lines
            .next()
            .expect("Ip header")
            .split_whitespace()
            .collect();
        let values: Vec<&str> = lines
            .next()
            .expect("Ip values")
            .split_whitespace()
            .collect();
        let at = names
            .iter()
            .position(|n| *n == "ForwDatagrams")
            .expect("ForwDatagrams column");
        values[at].parse().expect("a number")
    }))
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// What one large UDP datagram met: the source its receiver saw, and whether the receiver's
/// answer (the same bytes, sent back to that source) reached the sender whole.
#[derive(Debug, PartialEq, Eq)]
pub struct LargeUdp {
    pub seen_from: SocketAddrV4,
    pub answered: bool,
}

/// Asserts what a UDP exchange ([`large_udp`], [`udp_with_ip_options`]) met: the receiver
/// saw the datagram whole from `src`, and its answer came back whole.
pub fn assert_udp_seen_from(what: &str, got: Option<LargeUdp>, src: Ipv4Addr) {
    match got {
        Some(LargeUdp {
            seen_from,
            answered,
        }) => {
            assert_eq!(
                *seen_from.ip(),
                src,
                "{what}: the receiver saw the datagram from the wrong address"
            );
            assert!(answered, "{what}: the answer did not come back whole");
        }
        None => panic!("{what}: the datagram did not arrive whole"),
    }
}

/// Sends one UDP datagram of `len` bytes of known content (larger than the MTU: the stack
/// fragments it) from `client_ns` (port `port`) to `target`:`port`, received on any address
/// of `server_ns`, which checks every byte and sends it back. `None` when nothing intact
/// arrived within `wait`.
pub fn large_udp(
    client_ns: &str,
    server_ns: &str,
    target: [u8; 4],
    port: u16,
    len: usize,
    wait: Duration,
) -> Option<LargeUdp> {
    udp_exchange(client_ns, server_ns, target, port, len, wait, false)
}

/// As [`large_udp`], with both sockets sending IP options (four no-operation options): the
/// fast path hands such packets to the kernel, both ways.
pub fn udp_with_ip_options(
    client_ns: &str,
    server_ns: &str,
    target: [u8; 4],
    port: u16,
    len: usize,
    wait: Duration,
) -> Option<LargeUdp> {
    udp_exchange(client_ns, server_ns, target, port, len, wait, true)
}

/// Four IPv4 no-operation options on every datagram `sock` sends.
fn set_ip_options(sock: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let nops = [1u8; 4];
    // SAFETY: the option buffer outlives the call and its length is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            nops.as_ptr().cast(),
            nops.len() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "IP_OPTIONS: {}", std::io::Error::last_os_error());
}

fn udp_exchange(
    client_ns: &str,
    server_ns: &str,
    target: [u8; 4],
    port: u16,
    len: usize,
    wait: Duration,
    ip_options: bool,
) -> Option<LargeUdp> {
    let expected: Vec<u8> = (0..len).map(content).collect();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let want = expected.clone();
    let srv = in_ns(server_ns, move || {
        let sock =
            UdpSocket::bind(("0.0.0.0", port)).unwrap_or_else(|e| panic!("bind {port}: {e}"));
        sock.set_read_timeout(Some(wait)).expect("timeout");
        if ip_options {
            set_ip_options(&sock);
        }
        if ip_options {
            set_ip_options(&sock);
        }
        ready_tx.send(()).expect("ready");
        let mut buf = vec![0u8; 65536];
        let (n, from) = sock.recv_from(&mut buf).ok()?;
        if buf[..n] != want[..] {
            return None;
        }
        sock.send_to(&buf[..n], from).expect("answer");
        match from {
            std::net::SocketAddr::V4(v4) => Some(v4),
            std::net::SocketAddr::V6(_) => None,
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    let addr = SocketAddrV4::new(Ipv4Addr::from(target), port);
    let answered = join(in_ns(client_ns, move || {
        let sock = UdpSocket::bind(("0.0.0.0", port)).expect("bind");
        sock.set_read_timeout(Some(wait)).expect("timeout");
        if ip_options {
            set_ip_options(&sock);
        }
        sock.send_to(&expected, addr).expect("send");
        let mut buf = vec![0u8; 65536];
        matches!(sock.recv_from(&mut buf), Ok((n, _)) if buf[..n] == expected[..])
    }));
    join(srv).map(|seen_from| LargeUdp {
        seen_from,
        answered,
    })
}

/// `ping -R -c count` from `ns`: echo requests and replies carrying the record-route
/// option, which the fast path hands to the kernel. True when every echo was answered.
pub fn ping_record_route(ns: &str, dst: [u8; 4], count: u32) -> bool {
    ping_with(ns, dst, count, &["-R"])
}

/// `ping -s size -c count` from `ns` with fragmentation allowed (`-M dont`): the echo
/// requests and replies of `size` bytes are fragmented on an MTU of 1500. True when every
/// echo was answered.
pub fn ping_large(ns: &str, dst: [u8; 4], size: usize, count: u32) -> bool {
    ping_with(ns, dst, count, &["-M", "dont", "-s", &size.to_string()])
}
