//! `routerctl trace`: one made-up packet through a running router's real programs
//! (BPF_PROG_TEST_RUN against its live configuration, changing nothing live). See
//! `docs/observability.md`.

use std::net::Ipv4Addr;

use router_user::trace::{self, IcmpType, Packet, Proto};

use crate::output::{Failure, Output};

/// `--proto`: the protocol numbers are accepted too.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ProtoArg {
    #[value(alias = "6")]
    Tcp,
    #[value(alias = "17")]
    Udp,
    #[value(alias = "1")]
    Icmp,
}

/// `--icmp-type`: the type numbers are accepted too.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum IcmpTypeArg {
    #[value(alias = "8")]
    EchoRequest,
    #[value(alias = "0")]
    EchoReply,
}

#[derive(clap::Args)]
pub struct Args {
    /// The router (its id).
    router: String,
    /// The interface the packet arrives on.
    #[arg(long = "in", value_name = "IFACE")]
    ingress: String,
    /// The packet's source address.
    #[arg(long)]
    src: Ipv4Addr,
    /// The packet's destination address.
    #[arg(long)]
    dst: Ipv4Addr,
    /// The packet's protocol.
    #[arg(long, value_enum, default_value_t = ProtoArg::Udp)]
    proto: ProtoArg,
    /// TCP or UDP source port.
    #[arg(long, default_value_t = 40000)]
    sport: u16,
    /// TCP or UDP destination port.
    #[arg(long, default_value_t = 80)]
    dport: u16,
    /// TCP flags: syn, ack, fin, rst, psh, urg, ece, cwr, comma-separated (syn,ack), none,
    /// or a number (0x12).
    #[arg(long, default_value = "syn", value_parser = trace::parse_tcp_flags)]
    tcp_flags: u8,
    /// The ICMP message.
    #[arg(long, value_enum, default_value_t = IcmpTypeArg::EchoRequest)]
    icmp_type: IcmpTypeArg,
    /// ICMP echo identifier.
    #[arg(long, default_value_t = 1)]
    icmp_id: u16,
    /// The IPv4 time to live.
    #[arg(long, default_value_t = 64)]
    ttl: u8,
    /// IPv4 total length (headers plus zero payload); default: headers only.
    #[arg(long)]
    len: Option<usize>,
    /// The source MAC; default: 02:00:00:74:72:63.
    #[arg(long, value_parser = trace::parse_mac)]
    src_mac: Option<[u8; 6]>,
    /// The destination MAC; default: the ingress interface's MAC.
    #[arg(long, value_parser = trace::parse_mac)]
    dst_mac: Option<[u8; 6]>,
}

/// Traces the packet; JSON: the document `trace` (its items as docs/observability.md
/// shows).
pub fn run(output: &Output, args: Args) -> Result<(), Failure> {
    let proto = match args.proto {
        ProtoArg::Tcp => Proto::Tcp,
        ProtoArg::Udp => Proto::Udp,
        ProtoArg::Icmp => Proto::Icmp,
    };
    let icmp_type = match args.icmp_type {
        IcmpTypeArg::EchoRequest => IcmpType::EchoRequest,
        IcmpTypeArg::EchoReply => IcmpType::EchoReply,
    };
    let packet = Packet {
        src: args.src,
        dst: args.dst,
        proto,
        sport: args.sport,
        dport: args.dport,
        tcp_flags: args.tcp_flags,
        icmp_type,
        icmp_id: args.icmp_id,
        ttl: args.ttl,
        len: args.len,
        src_mac: args.src_mac.unwrap_or(trace::DEFAULT_SRC_MAC),
        dst_mac: args.dst_mac,
    };
    let result = trace::trace(&args.router, &args.ingress, &packet)?;
    output.print("trace", &result, || trace::text(&result))
}
