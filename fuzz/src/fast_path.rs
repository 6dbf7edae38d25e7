//! The fast path's side of each comparison: runs router-ebpf's own parsing (and rewrite)
//! on a host buffer and returns its result as plain values the checks compare with the
//! oracle's (no pointers escape: every `Frame` lives only inside these functions, over a
//! buffer they borrow).

use router_common::{CtKey, Reason};
use router_ebpf::{
    context::Frame,
    flow::{self, EmbeddedShape, Flow, Shape},
    parse::{self, L2},
    rewrite,
    verdict::{Hop, Target, Verdict},
};

/// A verdict that ends processing (what `parse` returns instead of headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Final {
    Pass(Reason),
    Drop(Reason),
}

/// The shape of a flow, as `flow::Shape` (which has no `Debug`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowShape {
    Ports,
    EchoRequest,
    EchoReply,
    ErrorPorts,
    ErrorEchoRequest,
    ErrorEchoReply,
    Other,
}

impl FlowShape {
    pub fn of(shape: Shape) -> Self {
        match shape {
            Shape::Ports => Self::Ports,
            Shape::EchoRequest => Self::EchoRequest,
            Shape::EchoReply => Self::EchoReply,
            Shape::Error(EmbeddedShape::Ports) => Self::ErrorPorts,
            Shape::Error(EmbeddedShape::EchoRequest) => Self::ErrorEchoRequest,
            Shape::Error(EmbeddedShape::EchoReply) => Self::ErrorEchoReply,
            Shape::Other => Self::Other,
        }
    }
}

/// An IPv4 packet our parser accepted, and its flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    pub key: CtKey,
    pub shape: FlowShape,
    pub tcp_flags: u32,
}

/// What our parser made of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Final(Final),
    /// ARP: `arp.rs` (which needs maps) takes it from here.
    Arp,
    Ipv4(Accepted),
    /// A later fragment (offset > 0): no L4 header, no flow; `fragment.rs` (which needs
    /// maps) takes it from here.
    LaterFragment { src: [u8; 4], dst: [u8; 4], proto: u8 },
}

fn final_of(v: Verdict) -> Final {
    match v {
        Verdict::Pass(r) => Final::Pass(r),
        Verdict::Drop(r) => Final::Drop(r),
        Verdict::Forward { .. } | Verdict::Finish => {
            panic!("the parser returned a forwarding verdict")
        }
    }
}

fn later_fragment(pkt: &parse::Ipv4Packet) -> Parsed {
    Parsed::LaterFragment {
        src: pkt.src,
        dst: pkt.dst,
        proto: pkt.proto,
    }
}

/// `parse_l2`, `parse_ipv4` and `flow::of` on `buf` (an XDP-like frame: every byte
/// directly accessible).
pub fn parse(buf: &mut [u8]) -> Parsed {
    // SAFETY: the frame and the pointers derived from it are used only in this function,
    // while `buf` is borrowed mutably.
    let frame = unsafe { Frame::over(buf, 1) };
    let eth = match parse::parse_l2(&frame) {
        Ok(L2::Ipv4(eth)) => eth,
        Ok(L2::Arp(_)) => return Parsed::Arp,
        Err(v) => return Parsed::Final(final_of(v)),
    };
    let pkt = match parse::parse_ipv4(&frame, eth) {
        Ok(pkt) => pkt,
        Err(v) => return Parsed::Final(final_of(v)),
    };
    if pkt.is_later_fragment() {
        return later_fragment(&pkt);
    }
    let flow = flow::of(&frame, &pkt);
    Parsed::Ipv4(Accepted {
        src: pkt.src,
        dst: pkt.dst,
        proto: pkt.proto,
        key: flow.key,
        shape: FlowShape::of(flow.shape),
        tcp_flags: flow.tcp_flags,
    })
}

/// Parses `buf` (which must be accepted) and rewrites it in place as the pipeline's second
/// half does for a forwarded packet: towards `hop`, translated to `target`. Returns the
/// flow the rewrite was given.
pub fn parse_and_rewrite(
    buf: &mut [u8],
    target: impl FnOnce(&CtKey, FlowShape) -> Target,
    hop: &Hop,
) -> Result<(Accepted, Target), Parsed> {
    // SAFETY: as in `parse`.
    let frame = unsafe { Frame::over(buf, 1) };
    let eth = match parse::parse_l2(&frame) {
        Ok(L2::Ipv4(eth)) => eth,
        Ok(L2::Arp(_)) => return Err(Parsed::Arp),
        Err(v) => return Err(Parsed::Final(final_of(v))),
    };
    let pkt = match parse::parse_ipv4(&frame, eth) {
        Ok(pkt) => pkt,
        Err(v) => return Err(Parsed::Final(final_of(v))),
    };
    if pkt.is_later_fragment() {
        return Err(later_fragment(&pkt));
    }
    let flow = flow::of(&frame, &pkt);
    let accepted = Accepted {
        src: pkt.src,
        dst: pkt.dst,
        proto: pkt.proto,
        key: flow.key,
        shape: FlowShape::of(flow.shape),
        tcp_flags: flow.tcp_flags,
    };
    let target = target(&flow.key, accepted.shape);
    // The second half of the pipeline works from the hand-off and re-parses the headers.
    let flow = Flow {
        key: flow.key,
        shape: Shape::from_code(flow.shape.code()),
        tcp_flags: flow.tcp_flags,
    };
    let pkt = parse::reparse_ipv4(&frame).expect("reparse of an accepted packet");
    rewrite::apply(&frame, &pkt, &flow, &target, hop);
    Ok((accepted, target))
}
