//! `routergen`: the project's traffic generator on its own. UDP frames from XDP live frames
//! (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, every header written on every run)
//! out of an interface, in `--flows` flows (source ports `--src-port` upwards), of
//! `--size` bytes, at `--rate` frames per second or as fast as it can, for `--duration`.
//! With `--sink-dev`, an XDP sink on the receiving interface counts (and drops) the UDP
//! frames to `--dst-port` that arrive, and the loss is reported.
//!
//! ```text
//! routergen --netns gen --dev eth0 --dst-mac 02:00:00:00:00:02 \
//!     --src 198.18.0.1 --dst 198.18.1.10 --flows 1024 --size 64 --rate 100000 \
//!     --duration 2 --sink-netns vm --sink-dev eth0
//! ```

use std::{net::Ipv4Addr, time::Duration};

use anyhow::Context as _;
use bench::traffic::{Generator, Sending, Sink};
use clap::Parser;
use router_common::bench::GenConfig;
use router_tests::{netns::within, topo::try_mac_of};
use serde::Serialize;

#[derive(Parser)]
#[command(about = "UDP traffic from XDP live frames, optionally counted by an XDP sink")]
struct Args {
    /// Namespace (`ip netns`) of the sending interface; this one when not given.
    #[arg(long)]
    netns: Option<String>,
    /// The sending interface.
    #[arg(long)]
    dev: String,
    /// Destination MAC: the next hop's (a router's port, or the receiver's).
    #[arg(long, value_parser = router_user::trace::parse_mac)]
    dst_mac: [u8; 6],
    /// Source MAC; the sending interface's when not given.
    #[arg(long, value_parser = router_user::trace::parse_mac)]
    src_mac: Option<[u8; 6]>,
    #[arg(long)]
    src: Ipv4Addr,
    #[arg(long)]
    dst: Ipv4Addr,
    /// The first flow's source port; flow i sends from `src-port + i`.
    #[arg(long, default_value_t = 10_000)]
    src_port: u16,
    #[arg(long, default_value_t = 9)]
    dst_port: u16,
    /// Flows, sent in turn (1 to 65,536).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    flows: u32,
    /// Frame size in bytes, Ethernet header included (42 to 3,500).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(42..=3_500))]
    size: u32,
    /// Frames per second (the average, in bursts of 1 ms); as fast as possible when not
    /// given.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// Seconds to send (fractions allowed).
    #[arg(long, default_value_t = 1.0)]
    duration: f64,
    /// Namespace of the receiving interface; this one when not given.
    #[arg(long, requires = "sink_dev")]
    sink_netns: Option<String>,
    /// Count what arrives here with an XDP sink (attached for the run, detached after).
    #[arg(long)]
    sink_dev: Option<String>,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// What a run did.
#[derive(Serialize)]
struct Report {
    sent: u64,
    seconds: f64,
    offered_pps: f64,
    frame_bytes: u32,
    flows: u32,
    /// How the frames were sent: `live_frames` (BPF_PROG_TEST_RUN), or `packet_socket`
    /// where the kernel refuses live frames.
    sending: &'static str,
    /// With a sink: frames (and bytes) it counted, and the loss.
    delivered: Option<u64>,
    delivered_bytes: Option<u64>,
    delivered_pps: Option<f64>,
    lost: Option<u64>,
}

/// Runs `f` in namespace `ns`, or where the thread is.
fn inside<T>(ns: Option<&str>, f: impl FnOnce() -> T) -> T {
    match ns {
        Some(ns) => within(ns, f),
        None => f(),
    }
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("routergen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.duration.is_finite() && args.duration > 0.0 && args.duration <= 3600.0,
        "--duration: {} is not between 0 and 3600 seconds",
        args.duration
    );
    let duration = Duration::from_secs_f64(args.duration);
    let netns = args.netns.as_deref();
    let src_mac = match args.src_mac {
        Some(mac) => mac,
        None => {
            try_mac_of(netns, &args.dev).map_err(|e| anyhow::anyhow!("--dev {}: {e}", args.dev))?
        }
    };
    let cfg = GenConfig {
        dst_mac: args.dst_mac,
        src_mac,
        src_ip: args.src.octets(),
        dst_ip: args.dst.octets(),
        src_port: args.src_port,
        dst_port: args.dst_port,
        flows: args.flows,
        frame_len: args.size,
    };
    let mut sink = match &args.sink_dev {
        Some(dev) => Some(
            inside(args.sink_netns.as_deref(), || {
                Sink::attach(dev, args.dst_port)
            })
            .with_context(|| format!("attaching the sink to {dev}"))?,
        ),
        None => None,
    };
    let mut generator = inside(netns, || Generator::new(&args.dev, cfg))
        .with_context(|| format!("loading the generator for {}", args.dev))?;
    let (sent, seconds) = inside(netns, || generator.run_for(duration, args.rate))?;
    // Frames still in flight (queues, a router) arrive within a few milliseconds.
    std::thread::sleep(Duration::from_millis(100));
    let counted = sink.as_mut().map(|s| s.counts()).transpose()?;
    let report = Report {
        sent,
        seconds,
        offered_pps: sent as f64 / seconds,
        frame_bytes: args.size,
        flows: args.flows,
        sending: match generator.sending() {
            Sending::LiveFrames => "live_frames",
            Sending::PacketSocket => "packet_socket",
        },
        delivered: counted.map(|c| c.packets),
        delivered_bytes: counted.map(|c| c.bytes),
        delivered_pps: counted.map(|c| c.packets as f64 / seconds),
        lost: counted.map(|c| sent.saturating_sub(c.packets)),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "sent {} frames of {} B in {} flow(s) in {:.3} s: {:.0} frames/s ({})",
            report.sent,
            report.frame_bytes,
            report.flows,
            report.seconds,
            report.offered_pps,
            report.sending.replace('_', " ")
        );
        if let (Some(d), Some(pps), Some(lost)) =
            (report.delivered, report.delivered_pps, report.lost)
        {
            println!(
                "the sink counted {d} ({pps:.0} frames/s); lost {lost} ({:.3}%)",
                lost as f64 * 100.0 / report.sent.max(1) as f64
            );
        }
    }
    Ok(())
}
