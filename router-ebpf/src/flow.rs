//! The tuple a packet belongs to, for session lookups and NAT decisions.

use router_common::CtKey;

use crate::{
    context::Frame,
    parse::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4Packet, L3_OFFSET, L4_OFFSET},
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// Offset of the IPv4 header embedded in an ICMP error.
pub const INNER_L3_OFFSET: usize = L4_OFFSET + 8;
/// Offset of the L4 header embedded in an ICMP error (embedded options are not handled).
pub const INNER_L4_OFFSET: usize = INNER_L3_OFFSET + 20;

/// What kind of packet the tuple was taken from; it says where the ports live.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// TCP or UDP: ports at the start of the L4 header.
    Ports,
    /// ICMP echo request or reply: the identifier is the request's source "port" and the
    /// reply's destination "port".
    EchoRequest,
    EchoReply,
    /// An ICMP error whose embedded packet is TCP, UDP or ICMP echo: the tuple is the
    /// embedded packet's, inverted (the error travels the reply direction of that flow).
    Error(EmbeddedShape),
    /// Anything else: addresses only.
    Other,
}

impl Shape {
    /// A small number for the hand-off between the pipeline's two halves.
    #[inline(always)]
    pub fn code(self) -> u8 {
        match self {
            Shape::Ports => 0,
            Shape::EchoRequest => 1,
            Shape::EchoReply => 2,
            Shape::Error(EmbeddedShape::Ports) => 3,
            Shape::Error(EmbeddedShape::EchoRequest) => 4,
            Shape::Error(EmbeddedShape::EchoReply) => 5,
            Shape::Other => 6,
        }
    }

    #[inline(always)]
    pub fn from_code(code: u8) -> Self {
        match code {
            0 => Shape::Ports,
            1 => Shape::EchoRequest,
            2 => Shape::EchoReply,
            3 => Shape::Error(EmbeddedShape::Ports),
            4 => Shape::Error(EmbeddedShape::EchoRequest),
            5 => Shape::Error(EmbeddedShape::EchoReply),
            _ => Shape::Other,
        }
    }
}

/// The shape of the packet embedded in an ICMP error.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum EmbeddedShape {
    Ports,
    EchoRequest,
    EchoReply,
}

pub struct Flow {
    /// Zone 0 until the pipeline knows the ingress interface's zone.
    pub key: CtKey,
    pub shape: Shape,
    /// TCP flags byte (0 for anything else).
    pub tcp_flags: u32,
}

impl Flow {
    pub fn is_error(&self) -> bool {
        matches!(self.shape, Shape::Error(_))
    }
}

#[inline(always)]
fn key(proto: u8, src: [u8; 4], dst: [u8; 4], sport: [u8; 2], dport: [u8; 2]) -> CtKey {
    CtKey {
        zone: 0,
        proto,
        _pad: 0,
        src,
        dst,
        sport,
        dport,
    }
}

/// The flow of `pkt` (which the parser validated, L4 header included).
#[inline(always)]
pub fn of(frame: &Frame, pkt: &Ipv4Packet) -> Flow {
    let plain = |shape| Flow {
        key: key(pkt.proto, pkt.src, pkt.dst, [0; 2], [0; 2]),
        shape,
        tcp_flags: 0,
    };
    match pkt.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            let Some(l4) = frame.ptr_at::<[u8; 4]>(L4_OFFSET) else {
                return plain(Shape::Other);
            };
            // SAFETY: bounds checked by `ptr_at`.
            let l4 = unsafe { &*l4 };
            let tcp_flags = match frame.ptr_at::<u8>(L4_OFFSET + 13) {
                // SAFETY: bounds checked by `ptr_at`.
                Some(flags) if pkt.proto == IPPROTO_TCP => u32::from(unsafe { *flags }),
                _ => 0,
            };
            Flow {
                key: key(pkt.proto, pkt.src, pkt.dst, [l4[0], l4[1]], [l4[2], l4[3]]),
                shape: Shape::Ports,
                tcp_flags,
            }
        }
        IPPROTO_ICMP => {
            let Some(icmp) = frame.ptr_at::<[u8; 8]>(L4_OFFSET) else {
                return plain(Shape::Other);
            };
            // SAFETY: bounds checked by `ptr_at`.
            let icmp = unsafe { &*icmp };
            let id = [icmp[4], icmp[5]];
            match icmp[0] {
                ICMP_ECHO_REQUEST => Flow {
                    key: key(pkt.proto, pkt.src, pkt.dst, id, [0; 2]),
                    shape: Shape::EchoRequest,
                    tcp_flags: 0,
                },
                ICMP_ECHO_REPLY => Flow {
                    key: key(pkt.proto, pkt.src, pkt.dst, [0; 2], id),
                    shape: Shape::EchoReply,
                    tcp_flags: 0,
                },
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => {
                    error_flow(frame, pkt).unwrap_or_else(|| plain(Shape::Other))
                }
                _ => plain(Shape::Other),
            }
        }
        _ => plain(Shape::Other),
    }
}

/// The flow an ICMP error is about, as a packet of that flow's reply direction would
/// carry it; `None` when the embedded packet cannot be translated (options, a later
/// fragment, truncated, another protocol) or the error is not addressed to its source.
#[inline(always)]
fn error_flow(frame: &Frame, pkt: &Ipv4Packet) -> Option<Flow> {
    // The 28 bytes must be the error's own (within its total length), not bytes after the
    // IPv4 packet (Ethernet padding, a trailer) that happen to be in the frame.
    // SAFETY: the parser validated the IPv4 header.
    let tot_len = usize::from(u16::from_be_bytes(unsafe { (*pkt.ip).tot_len }));
    if L3_OFFSET + tot_len < INNER_L3_OFFSET + 28 {
        return None;
    }
    let inner = frame.ptr_at::<[u8; 28]>(INNER_L3_OFFSET)?;
    // SAFETY: bounds checked by `ptr_at`.
    let inner = unsafe { &*inner };
    let frags = u16::from_be_bytes([inner[6], inner[7]]);
    if inner[0] != 0x45 || frags & 0x1fff != 0 {
        return None;
    }
    let proto = inner[9];
    let src = [inner[12], inner[13], inner[14], inner[15]];
    let dst = [inner[16], inner[17], inner[18], inner[19]];
    if src != pkt.dst {
        return None;
    }
    let (shape, sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (
            EmbeddedShape::Ports,
            [inner[20], inner[21]],
            [inner[22], inner[23]],
        ),
        IPPROTO_ICMP => match inner[20] {
            ICMP_ECHO_REQUEST => (EmbeddedShape::EchoRequest, [inner[24], inner[25]], [0; 2]),
            ICMP_ECHO_REPLY => (EmbeddedShape::EchoReply, [0; 2], [inner[24], inner[25]]),
            _ => return None,
        },
        _ => return None,
    };
    Some(Flow {
        key: key(proto, dst, src, dport, sport),
        shape: Shape::Error(shape),
        tcp_flags: 0,
    })
}
