//! `routerctl trace`: one made-up packet through a running router's real programs
//! (BPF_PROG_TEST_RUN against its live configuration, changing nothing live). See
//! `docs/observability.md`.

use std::net::Ipv4Addr;

use router_user::{
    Error,
    trace::{self, IcmpType, Packet, Proto},
};

#[derive(clap::Args)]
pub struct Args {
    /// The router.
    #[arg(long)]
    router: String,
    /// The interface the packet arrives on.
    #[arg(long = "in", value_name = "IFACE")]
    ingress: String,
    #[arg(long)]
    src: Ipv4Addr,
    #[arg(long)]
    dst: Ipv4Addr,
    /// tcp, udp or icmp.
    #[arg(long, default_value = "udp")]
    proto: Proto,
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
    /// echo-request or echo-reply.
    #[arg(long, default_value = "echo-request")]
    icmp_type: IcmpType,
    /// ICMP echo identifier.
    #[arg(long, default_value_t = 1)]
    icmp_id: u16,
    #[arg(long, default_value_t = 64)]
    ttl: u8,
    /// IPv4 total length (headers plus zero payload); default: headers only.
    #[arg(long)]
    len: Option<usize>,
    /// Default: 02:00:00:74:72:63.
    #[arg(long, value_parser = trace::parse_mac)]
    src_mac: Option<[u8; 6]>,
    /// Default: the ingress interface's MAC.
    #[arg(long, value_parser = trace::parse_mac)]
    dst_mac: Option<[u8; 6]>,
    /// Machine-readable output (one JSON object, shape in docs/observability.md).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<(), Error> {
    let packet = Packet {
        src: args.src,
        dst: args.dst,
        proto: args.proto,
        sport: args.sport,
        dport: args.dport,
        tcp_flags: args.tcp_flags,
        icmp_type: args.icmp_type,
        icmp_id: args.icmp_id,
        ttl: args.ttl,
        len: args.len,
        src_mac: args.src_mac.unwrap_or(trace::DEFAULT_SRC_MAC),
        dst_mac: args.dst_mac,
    };
    let result = trace::trace(&args.router, &args.ingress, &packet)?;
    if args.json {
        let text = serde_json::to_string_pretty(&result)
            .map_err(|e| Error::io("encoding JSON", std::io::Error::other(e)))?;
        println!("{text}");
    } else {
        print!("{}", trace::text(&result));
    }
    Ok(())
}
