//! Writes the seed corpus of `parse_differential` (fuzz/corpus/parse_differential/): one
//! frame of each kind the parser tells apart, built with etherparse, so a short fuzz run
//! starts from every branch. Run from the repository root:
//! `cargo +nightly run --manifest-path fuzz/Cargo.toml --example parse_seeds`.

use etherparse::{Icmpv4Type, PacketBuilder, icmpv4::TimeExceededCode};

const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const B: [u8; 6] = [2, 0, 0, 0, 0, 2];
const SRC: [u8; 4] = [10, 0, 1, 5];
const DST: [u8; 4] = [198, 18, 0, 10];

fn ip() -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    PacketBuilder::ethernet2(A, B).ipv4(SRC, DST, 64)
}

fn write(step: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    step(&mut out);
    out
}

fn tcp() -> Vec<u8> {
    write(|o| {
        ip().tcp(40000, 80, 1, 65535)
            .syn()
            .write(o, b"hello")
            .unwrap()
    })
}

fn udp() -> Vec<u8> {
    write(|o| ip().udp(5000, 53).write(o, b"query").unwrap())
}

fn echo(request: bool) -> Vec<u8> {
    write(|o| {
        let b = ip();
        let b = if request {
            b.icmpv4_echo_request(7, 1)
        } else {
            b.icmpv4_echo_reply(7, 1)
        };
        b.write(o, b"ping").unwrap()
    })
}

/// An ICMP error of type `ty` from a router on the path back to SRC about `original` (an
/// Ethernet frame SRC sent), quoting `keep` bytes of its IPv4 packet.
fn error(original: &[u8], keep: usize, ty: u8) -> Vec<u8> {
    let quoted = &original[14..(14 + keep).min(original.len())];
    write(|o| {
        let b = PacketBuilder::ethernet2(A, B).ipv4([203, 0, 113, 1], SRC, 64);
        let b = if ty == 11 {
            b.icmpv4(Icmpv4Type::TimeExceeded(
                TimeExceededCode::TtlExceededInTransit,
            ))
        } else {
            b.icmpv4_raw(ty, 0, [0, 0, 0, 0])
        };
        b.write(o, quoted).unwrap()
    })
}

fn fix_ip_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame[24] = 0;
    frame[25] = 0;
    let sum = etherparse::checksum::Sum16BitWords::new()
        .add_slice(&frame[14..14 + ihl])
        .ones_complement();
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
}

fn main() {
    let dir = std::path::Path::new("fuzz/corpus/parse_differential");
    std::fs::create_dir_all(dir).unwrap();
    let mut seeds: Vec<(&str, Vec<u8>)> = vec![
        ("tcp", tcp()),
        ("udp", udp()),
        ("echo-request", echo(true)),
        ("echo-reply", echo(false)),
        ("error-tcp", error(&tcp(), 48, 11)),
        ("error-tcp-8", error(&tcp(), 28, 3)),
        ("error-udp", error(&udp(), 28, 3)),
        ("error-echo", error(&echo(true), 28, 12)),
        ("error-short", error(&udp(), 20, 11)),
    ];
    // Fragment, options, a bad checksum, a special address, a truncated L4 header, a
    // total length beyond the frame, Ethernet padding after a short packet.
    let mut frag = udp();
    frag[20] = 0x20; // MF
    fix_ip_checksum(&mut frag);
    seeds.push(("fragment", frag));
    let mut opts = udp();
    opts[14] = 0x46;
    opts.splice(34..34, [1, 1, 1, 0]); // NOP NOP NOP EOL
    let tot = u16::from_be_bytes([opts[16], opts[17]]) + 4;
    opts[16..18].copy_from_slice(&tot.to_be_bytes());
    fix_ip_checksum(&mut opts);
    seeds.push(("options", opts));
    let mut bad = tcp();
    bad[24] ^= 0xff;
    seeds.push(("bad-checksum", bad));
    let mut special = udp();
    special[30] = 127;
    fix_ip_checksum(&mut special);
    seeds.push(("special", special));
    let mut short = tcp();
    short.truncate(14 + 20 + 12);
    short[16..18].copy_from_slice(&32u16.to_be_bytes());
    fix_ip_checksum(&mut short);
    seeds.push(("short-tcp", short));
    let mut long = udp();
    long[16..18].copy_from_slice(&1400u16.to_be_bytes());
    fix_ip_checksum(&mut long);
    seeds.push(("total-length-beyond-frame", long));
    let mut padded = error(&udp(), 20, 11);
    padded.extend_from_slice(&udp()[34..42]);
    seeds.push(("error-embedded-in-padding", padded));
    // Other L2s.
    let vlan = write(|o| {
        PacketBuilder::ethernet2(A, B)
            .single_vlan(etherparse::VlanId::try_new(10).unwrap())
            .ipv4(SRC, DST, 64)
            .udp(1, 2)
            .write(o, &[])
            .unwrap()
    });
    seeds.push(("vlan", vlan));
    let mut qinq = tcp();
    qinq.splice(12..12, [0x88, 0xa8, 0, 10, 0x81, 0, 0, 20]);
    seeds.push(("qinq", qinq));
    let mut ipv6 = udp();
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    seeds.push(("ipv6", ipv6));
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&A);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&A);
    arp.extend_from_slice(&SRC);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&DST);
    seeds.push(("arp", arp));
    for (name, frame) in seeds {
        std::fs::write(dir.join(name), frame).unwrap();
    }
}
