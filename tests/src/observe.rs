//! What the endpoints of one exchange observe, recorded from their own sockets: the
//! receiver's view of the first packet (source and destination as its kernel delivered
//! them) and the sender's view of the answer (where it came from, and what it carried).
//! Two runs of the same exchange through two routers can then be compared value by value.
//!
//! Every exchange is bounded: each side gives up after `WAIT`.

use std::{
    fmt,
    io::{IoSliceMut, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, OwnedFd},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn,
    connect, recv, recvmsg, sendto, setsockopt, socket, sockopt,
};

use crate::traffic::{in_ns, join};

/// How long either side of an exchange waits for the other.
pub const WAIT: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        })
    }
}

/// The first packet as the receiving endpoint saw it. For ICMP echo, the source "port" is
/// the echo identifier and the destination port is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
}

/// The answer as the sender saw it: where it came from (for ICMP the port is the echo
/// identifier of the reply), and its content (the echoed token, or an HTTP body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub from: SocketAddrV4,
    pub data: String,
}

/// Both sides of one exchange; `None` where nothing arrived in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub seen: Option<Received>,
    pub answer: Option<Answer>,
}

/// One exchange of a test case, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub case: &'static str,
    pub proto: Protocol,
    pub seen: Option<Received>,
    pub answer: Option<Answer>,
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<34} {:<4} receiver saw ", self.case, self.proto)?;
        let icmp = self.proto == Protocol::Icmp;
        match &self.seen {
            Some(s) if icmp => write!(f, "{} -> {} id {}", s.src.ip(), s.dst.ip(), s.src.port())?,
            Some(s) => write!(f, "{} -> {}", s.src, s.dst)?,
            None => write!(f, "nothing")?,
        }
        write!(f, "; sender got ")?;
        match &self.answer {
            Some(a) if icmp => write!(f, "{:?} from {} id {}", a.data, a.from.ip(), a.from.port()),
            Some(a) => write!(f, "{:?} from {}", a.data, a.from),
            None => write!(f, "no answer"),
        }
    }
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("unexpected IPv6 address {a}"),
    }
}

/// Starts `server` in `server_ns`, waits until it is listening, then runs `client` in
/// `client_ns`; returns both results.
fn exchange<S, C>(
    server_ns: &str,
    server: impl FnOnce(mpsc::Sender<()>) -> Option<S> + Send + 'static,
    client_ns: &str,
    client: impl FnOnce() -> Option<C> + Send + 'static,
) -> (Option<S>, Option<C>)
where
    S: Send + 'static,
    C: Send + 'static,
{
    let (ready_tx, ready_rx) = mpsc::channel();
    let srv = in_ns(server_ns, move || server(ready_tx));
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the receiving side did not get ready");
    let cli = join(in_ns(client_ns, client));
    (join(srv), cli)
}

/// Accepts one connection within `wait`.
fn accept_within(listener: &TcpListener, wait: Duration) -> Option<(TcpStream, SocketAddr)> {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + wait;
    loop {
        match listener.accept() {
            Ok((conn, peer)) => {
                conn.set_nonblocking(false).expect("blocking");
                conn.set_read_timeout(Some(wait)).expect("timeout");
                conn.set_write_timeout(Some(wait)).expect("timeout");
                return Some((conn, peer));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return None;
                }
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Reads until `end` is in the data, EOF, or 4 KiB.
fn read_until(conn: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    let mut buf = [0u8; 1024];
    while data.len() < 4096 && !data.windows(end.len()).any(|w| w == end) {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    data
}

/// A TCP connection from local port `port` to `target`, bounded by `wait` (a blocking
/// connect honours SO_SNDTIMEO on Linux).
fn tcp_connect_from(port: u16, target: SocketAddrV4, wait: Duration) -> std::io::Result<TcpStream> {
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    let stream = TcpStream::from(fd);
    stream.set_write_timeout(Some(wait))?;
    stream.set_read_timeout(Some(wait))?;
    nix::sys::socket::bind(
        stream.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)),
    )?;
    connect(stream.as_raw_fd(), &SockaddrIn::from(target))?;
    Ok(stream)
}

/// TCP: a server on `0.0.0.0:listen_port` in `server_ns` records the peer and the local
/// address of the accepted connection and echoes one line; the client in `client_ns`
/// connects from `client_port` to `target`, sends `token`, and records the echo and the
/// address it is connected to.
pub fn tcp(
    client_ns: &str,
    client_port: u16,
    target: SocketAddrV4,
    server_ns: &str,
    listen_port: u16,
    token: &str,
) -> Exchange {
    let line = format!("{token}\n");
    let (seen, answer) = exchange(
        server_ns,
        move |ready| {
            let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, listen_port))
                .unwrap_or_else(|e| panic!("bind tcp {listen_port}: {e}"));
            ready.send(()).expect("ready");
            let (mut conn, peer) = accept_within(&listener, WAIT)?;
            let local = conn.local_addr().expect("local address");
            let got = read_until(&mut conn, b"\n");
            let _ = conn.write_all(&got);
            Some(Received {
                src: v4(peer),
                dst: v4(local),
            })
        },
        client_ns,
        move || {
            let mut s = tcp_connect_from(client_port, target, WAIT).ok()?;
            s.write_all(line.as_bytes()).ok()?;
            let echo = read_until(&mut s, b"\n");
            Some(Answer {
                from: v4(s.peer_addr().ok()?),
                data: String::from_utf8_lossy(&echo).trim_end().to_string(),
            })
        },
    );
    Exchange { seen, answer }
}

/// UDP: a server on `0.0.0.0:listen_port` in `server_ns` records the datagram's source
/// (recvmsg) and destination (IP_PKTINFO) and sends it back; the client in `client_ns`
/// sends `token` from `client_port` to `target` on an unconnected socket and records where
/// the first answer came from.
pub fn udp(
    client_ns: &str,
    client_port: u16,
    target: SocketAddrV4,
    server_ns: &str,
    listen_port: u16,
    token: &str,
) -> Exchange {
    let token = token.to_string();
    let (seen, answer) = exchange(
        server_ns,
        move |ready| {
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, listen_port))
                .unwrap_or_else(|e| panic!("bind udp {listen_port}: {e}"));
            setsockopt(&sock, sockopt::Ipv4PacketInfo, &true).expect("IP_PKTINFO");
            sock.set_read_timeout(Some(WAIT)).expect("timeout");
            ready.send(()).expect("ready");
            let mut buf = [0u8; 512];
            let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
            let (n, src, dst) = {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = recvmsg::<SockaddrIn>(
                    sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::empty(),
                )
                .ok()?;
                let src = SocketAddrV4::from(msg.address.expect("a source address"));
                let dst = msg
                    .cmsgs()
                    .expect("control messages")
                    .find_map(|c| match c {
                        ControlMessageOwned::Ipv4PacketInfo(pi) => {
                            Some(Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr)))
                        }
                        _ => None,
                    })
                    .expect("IP_PKTINFO");
                (msg.bytes, src, dst)
            };
            let _ = sock.send_to(&buf[..n], src);
            Some(Received {
                src,
                dst: SocketAddrV4::new(dst, listen_port),
            })
        },
        client_ns,
        move || {
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, client_port))
                .unwrap_or_else(|e| panic!("bind udp {client_port}: {e}"));
            sock.set_read_timeout(Some(WAIT)).expect("timeout");
            sock.send_to(token.as_bytes(), target).ok()?;
            let mut buf = [0u8; 512];
            let (n, from) = sock.recv_from(&mut buf).ok()?;
            Some(Answer {
                from: v4(from),
                data: String::from_utf8_lossy(&buf[..n]).to_string(),
            })
        },
    );
    Exchange { seen, answer }
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
        &nix::sys::time::TimeVal::new(0, 100_000),
    )
    .expect("SO_RCVTIMEO");
    fd
}

/// An ICMP message as a raw socket delivers it (with the IPv4 header).
struct Icmp<'a> {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp_type: u8,
    id: u16,
    payload: &'a [u8],
}

fn parse_icmp(packet: &[u8]) -> Option<Icmp<'_>> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let icmp = packet.get(ihl..)?;
    if packet.len() < 20 || icmp.len() < 8 {
        return None;
    }
    let addr =
        |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
    Some(Icmp {
        src: addr(12),
        dst: addr(16),
        icmp_type: icmp[0],
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        payload: &icmp[8..],
    })
}

/// Waits up to `WAIT` for an ICMP message of `icmp_type` carrying `payload`.
fn await_icmp(fd: &OwnedFd, icmp_type: u8, payload: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u16)> {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        let Ok(n) = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) else {
            continue;
        };
        if let Some(m) = parse_icmp(&buf[..n])
            && m.icmp_type == icmp_type
            && m.payload == payload
        {
            return Some((m.src, m.dst, m.id));
        }
    }
    None
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;

/// ICMP echo: a raw socket in `receiver_ns` records (source, destination, identifier) of
/// the echo request carrying `token` (the receiver's kernel answers it); the sender in
/// `sender_ns` sends one request with identifier `id` to `target` from a raw socket and
/// records where the reply carrying `token` came from, and its identifier.
pub fn icmp_echo(
    sender_ns: &str,
    id: u16,
    target: Ipv4Addr,
    receiver_ns: &str,
    token: &str,
) -> Exchange {
    let payload = token.as_bytes().to_vec();
    let wanted = payload.clone();
    let (seen, answer) = exchange(
        receiver_ns,
        move |ready| {
            let fd = raw_icmp_socket();
            ready.send(()).expect("ready");
            let (src, dst, id) = await_icmp(&fd, ICMP_ECHO_REQUEST, &wanted)?;
            Some(Received {
                src: SocketAddrV4::new(src, id),
                dst: SocketAddrV4::new(dst, 0),
            })
        },
        sender_ns,
        move || {
            let fd = raw_icmp_socket();
            let mut msg = vec![ICMP_ECHO_REQUEST, 0, 0, 0];
            msg.extend_from_slice(&id.to_be_bytes());
            msg.extend_from_slice(&1u16.to_be_bytes());
            msg.extend_from_slice(&payload);
            let sum = checksum(&msg);
            msg[2..4].copy_from_slice(&sum.to_be_bytes());
            sendto(
                fd.as_raw_fd(),
                &msg,
                &SockaddrIn::from(SocketAddrV4::new(target, 0)),
                MsgFlags::empty(),
            )
            .ok()?;
            let (src, _, id) = await_icmp(&fd, ICMP_ECHO_REPLY, &payload)?;
            Some(Answer {
                from: SocketAddrV4::new(src, id),
                data: String::from_utf8_lossy(&payload).to_string(),
            })
        },
    );
    Exchange { seen, answer }
}

/// The metadata request: a tiny HTTP responder on `0.0.0.0:listen_port` in `router_ns`
/// reads the request, records the peer and local address it saw, and answers
/// `HTTP/1.0 200 OK` with the peer address as the body; the VM in `vm_ns` connects from
/// `client_port` to `target` (169.254.169.254:80), sends a GET and records the body and the
/// address it is connected to.
pub fn metadata(
    vm_ns: &str,
    client_port: u16,
    target: SocketAddrV4,
    router_ns: &str,
    listen_port: u16,
) -> Exchange {
    let (seen, answer) = exchange(
        router_ns,
        move |ready| {
            let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, listen_port))
                .unwrap_or_else(|e| panic!("bind metadata {listen_port}: {e}"));
            ready.send(()).expect("ready");
            let (mut conn, peer) = accept_within(&listener, WAIT)?;
            let local = conn.local_addr().expect("local address");
            let request = read_until(&mut conn, b"\r\n\r\n");
            let first_line = String::from_utf8_lossy(&request)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            let body = if first_line.starts_with("GET ") {
                peer.to_string()
            } else {
                format!("bad request line {first_line:?}")
            };
            let _ = conn.write_all(
                format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{body}").as_bytes(),
            );
            Some(Received {
                src: v4(peer),
                dst: v4(local),
            })
        },
        vm_ns,
        move || {
            let mut s = tcp_connect_from(client_port, target, WAIT).ok()?;
            s.write_all(b"GET /latest/meta-data/ HTTP/1.0\r\nHost: 169.254.169.254\r\n\r\n")
                .ok()?;
            let from = v4(s.peer_addr().ok()?);
            let mut response = Vec::new();
            let _ = Read::by_ref(&mut s).take(8192).read_to_end(&mut response);
            let text = String::from_utf8_lossy(&response).to_string();
            let (head, body) = text.split_once("\r\n\r\n")?;
            if !head.starts_with("HTTP/1.0 200") {
                return None;
            }
            Some(Answer {
                from,
                data: body.to_string(),
            })
        },
    );
    Exchange { seen, answer }
}
