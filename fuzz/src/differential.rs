//! The parse oracle: what our parser must make of a frame, derived from etherparse's view of
//! it. Where ours deliberately differs from a general-purpose parser the difference is
//! written out here, next to where the oracle handles it:
//!
//! 1. Ours hands IPv4 options (IHL > 5) to the kernel (`Pass`), which etherparse parses
//!    happily. A later fragment (offset > 0) has no L4 header: ours takes only its
//!    addresses (the fast path translates it from its first fragment's record); a first
//!    fragment is parsed as an unfragmented packet, L4 header included.
//! 2. Ours verifies the IPv4 header checksum (`Drop(BadIpChecksum)`); etherparse does not.
//! 3. Ours hands "special" addresses (0/8, 127/8, 224/4, 240/4) to the kernel.
//! 4. Ours reads only the fixed 20 bytes of a TCP header (ports, flags, checksum); the data
//!    offset is not checked (etherparse refuses a data offset < 5 or options beyond the
//!    packet). Such segments are forwarded as they are: the receiver judges them. The oracle
//!    then takes the ports from the first four bytes as etherparse's 8-byte UDP header view
//!    reads them (same layout).
//! 5. Ours ignores the UDP length field and the ICMP code (an echo with a code other than 0
//!    is still an echo; an error type with any code is still an error); the oracle uses
//!    etherparse's raw type byte and bytes 5-8 instead of its decoded `Icmpv4Type`.
//! 6. The packet embedded in an ICMP error is translated only when its header has no options
//!    (IHL 5), is not a later fragment, is addressed from the error's destination, and the
//!    error carries its first 8 L4 bytes (28 bytes in all); otherwise the error is `Other`.
//! 7. Ethertypes below 0x0600 (802.3 lengths) are just another L3 to ours, as to
//!    etherparse's Ethernet II view.

use etherparse::{
    Ethernet2HeaderSlice, Icmpv4Slice, IpNumber, Ipv4HeaderSlice, Ipv4Slice, SingleVlanHeaderSlice,
    TcpHeaderSlice, UdpHeaderSlice,
    checksum::Sum16BitWords,
    err::{Layer, ipv4::SliceError},
};
use router_common::{CtKey, Reason};

use crate::fast_path::{self, Accepted, Final, FlowShape, Parsed};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// What our parser must return for `frame`, from etherparse alone.
pub fn expected(frame: &[u8]) -> Parsed {
    use Final::{Drop, Pass};
    let Ok(eth) = Ethernet2HeaderSlice::from_slice(frame) else {
        return Parsed::Final(Drop(Reason::TruncatedEthernet));
    };
    match eth.ether_type().0 {
        ETH_P_IP => {}
        ETH_P_ARP => return Parsed::Arp,
        ETH_P_IPV6 => return Parsed::Final(Pass(Reason::Ipv6)),
        ETH_P_8021Q | ETH_P_8021AD => {
            return Parsed::Final(match SingleVlanHeaderSlice::from_slice(&frame[14..]) {
                Err(_) => Pass(Reason::OtherL3),
                Ok(vlan) => match vlan.ether_type().0 {
                    ETH_P_8021Q | ETH_P_8021AD => Pass(Reason::OtherL3),
                    _ => Pass(Reason::Vlan),
                },
            });
        }
        _ => return Parsed::Final(Pass(Reason::OtherL3)),
    }
    let l3 = &frame[14..];
    // Structure: version, IHL >= 5, the header within the frame, total length covering the
    // header and within the frame. An authentication header etherparse cannot parse is not
    // our concern (AH is just another protocol to ours): the IPv4 header itself is fine.
    match Ipv4Slice::from_slice(l3) {
        Ok(_) | Err(SliceError::Exts(_)) => {}
        Err(SliceError::Len(e)) if e.layer == Layer::IpAuthHeader => {}
        Err(SliceError::Len(_)) | Err(SliceError::Header(_)) => {
            return Parsed::Final(Drop(Reason::MalformedIpv4));
        }
    }
    let ip = Ipv4HeaderSlice::from_slice(l3).expect("Ipv4Slice accepted the header");
    if ip.ihl() != 5 {
        return Parsed::Final(Pass(Reason::IpOptions)); // difference 1
    }
    // Summed over the raw header: etherparse's `Ipv4Header` has no field for the reserved
    // flag bit, so `to_header().calc_header_checksum()` would leave it out.
    if Sum16BitWords::new().add_slice(ip.slice()).ones_complement() != 0 {
        return Parsed::Final(Drop(Reason::BadIpChecksum)); // difference 2
    }
    if special(ip.source()) || special(ip.destination()) {
        return Parsed::Final(Pass(Reason::SpecialAddress)); // difference 3
    }
    if ip.fragments_offset().value() != 0 {
        return Parsed::LaterFragment {
            src: ip.source(),
            dst: ip.destination(),
            proto: ip.protocol().0,
        }; // difference 1
    }
    let payload = &l3[20..usize::from(ip.total_len())];
    let proto = ip.protocol();
    let needed = match proto {
        IpNumber::TCP => 20,
        IpNumber::UDP | IpNumber::ICMP => 8,
        _ => 0,
    };
    if payload.len() < needed {
        return Parsed::Final(Drop(Reason::MalformedL4));
    }
    let (src, dst) = (ip.source(), ip.destination());
    let key = |sport: u16, dport: u16| CtKey {
        zone: 0,
        proto: proto.0,
        _pad: 0,
        src,
        dst,
        sport: sport.to_be_bytes(),
        dport: dport.to_be_bytes(),
    };
    let plain = Accepted {
        src,
        dst,
        proto: proto.0,
        key: key(0, 0),
        shape: FlowShape::Other,
        tcp_flags: 0,
    };
    let accepted = match proto {
        IpNumber::TCP => match TcpHeaderSlice::from_slice(payload) {
            Ok(tcp) => Accepted {
                key: key(tcp.source_port(), tcp.destination_port()),
                shape: FlowShape::Ports,
                tcp_flags: tcp_flags(&tcp),
                ..plain
            },
            // Difference 4: the data offset is not ours to judge; the flags byte is not
            // compared (etherparse gives no view of it).
            Err(_) => {
                let ports = UdpHeaderSlice::from_slice(payload).expect("20 bytes");
                return Parsed::Ipv4(Accepted {
                    key: key(ports.source_port(), ports.destination_port()),
                    shape: FlowShape::Ports,
                    tcp_flags: u32::MAX, // marker: compare everything but the flags
                    ..plain
                });
            }
        },
        IpNumber::UDP => {
            let udp = UdpHeaderSlice::from_slice(payload).expect("8 bytes");
            Accepted {
                key: key(udp.source_port(), udp.destination_port()),
                shape: FlowShape::Ports,
                ..plain
            }
        }
        IpNumber::ICMP => {
            // etherparse also checks the length of timestamp messages (exactly 20 bytes);
            // those are `Other` to ours whatever their length.
            let icmp = match Icmpv4Slice::from_slice(payload) {
                Ok(icmp) => icmp,
                Err(e)
                    if matches!(
                        e.layer,
                        Layer::Icmpv4Timestamp | Layer::Icmpv4TimestampReply
                    ) =>
                {
                    return Parsed::Ipv4(plain);
                }
                Err(e) => panic!("etherparse refuses 8 bytes of ICMP: {e:?}"),
            };
            let rest = icmp.bytes5to8();
            let id = u16::from_be_bytes([rest[0], rest[1]]);
            // Difference 5: the raw type, whatever the code.
            match icmp.type_u8() {
                8 => Accepted {
                    key: key(id, 0),
                    shape: FlowShape::EchoRequest,
                    ..plain
                },
                0 => Accepted {
                    key: key(0, id),
                    shape: FlowShape::EchoReply,
                    ..plain
                },
                3 | 11 | 12 => error_flow(icmp.payload(), &plain).unwrap_or(plain),
                _ => plain,
            }
        }
        _ => plain,
    };
    Parsed::Ipv4(accepted)
}

/// The flow an ICMP error is about (difference 6), from the error's payload as etherparse
/// delimits it (the outer total length).
fn error_flow(embedded: &[u8], outer: &Accepted) -> Option<Accepted> {
    let inner = Ipv4HeaderSlice::from_slice(embedded).ok()?;
    if inner.ihl() != 5 || inner.fragments_offset().value() != 0 {
        return None;
    }
    if inner.source() != outer.dst {
        return None;
    }
    let l4 = &embedded[20..];
    let proto = inner.protocol();
    let (shape, sport, dport) = match proto {
        IpNumber::TCP | IpNumber::UDP => {
            let ports = UdpHeaderSlice::from_slice(l4).ok()?;
            (
                FlowShape::ErrorPorts,
                ports.source_port(),
                ports.destination_port(),
            )
        }
        IpNumber::ICMP => {
            let icmp = Icmpv4Slice::from_slice(l4).ok()?;
            let rest = icmp.bytes5to8();
            let id = u16::from_be_bytes([rest[0], rest[1]]);
            match icmp.type_u8() {
                8 => (FlowShape::ErrorEchoRequest, id, 0),
                0 => (FlowShape::ErrorEchoReply, 0, id),
                _ => return None,
            }
        }
        _ => return None,
    };
    // The error travels the flow's reply direction: the tuple inverted.
    Some(Accepted {
        key: CtKey {
            zone: 0,
            proto: proto.0,
            _pad: 0,
            src: inner.destination(),
            dst: inner.source(),
            sport: dport.to_be_bytes(),
            dport: sport.to_be_bytes(),
        },
        shape,
        ..outer.clone()
    })
}

fn tcp_flags(tcp: &TcpHeaderSlice) -> u32 {
    [
        tcp.fin(),
        tcp.syn(),
        tcp.rst(),
        tcp.psh(),
        tcp.ack(),
        tcp.urg(),
        tcp.ece(),
        tcp.cwr(),
    ]
    .iter()
    .enumerate()
    .fold(0, |acc, (bit, set)| acc | (u32::from(*set) << bit))
}

/// Addresses the kernel never forwards (README: "source or destination 0/8, 127/8,
/// multicast, class E, broadcast").
fn special(addr: [u8; 4]) -> bool {
    addr[0] == 0 || addr[0] == 127 || addr[0] >= 224
}

/// The fuzz target's body: ours and the oracle must agree on `frame`.
pub fn check(frame: &[u8]) {
    let mut buf = frame.to_vec();
    let ours = fast_path::parse(&mut buf);
    assert_eq!(buf, frame, "parsing wrote to the frame");
    let want = expected(frame);
    let agree = match (&ours, &want) {
        (Parsed::Ipv4(o), Parsed::Ipv4(w)) if w.tcp_flags == u32::MAX => {
            let mut w = w.clone();
            w.tcp_flags = o.tcp_flags;
            *o == w
        }
        _ => ours == want,
    };
    assert!(
        agree,
        "ours and etherparse disagree on {frame:02x?}\n ours: {ours:?}\n want: {want:?}"
    );
}
