use super::*;

const SEC: u64 = 1_000_000_000;
const NOW: u64 = 10_000 * SEC;
const S: u8 = ct_tcp::SYN;
const A: u8 = ct_tcp::ACK;
const F: u8 = ct_tcp::FIN;
const R: u8 = ct_tcp::RST;

fn flags(bits: u8) -> CtEntry {
    CtEntry {
        tcp_flags: u32::from(bits),
        ..CtEntry::default()
    }
}

fn tcp(orig: u8, reply: Option<u8>) -> State {
    State::derive(&flags(orig), reply.map(flags).as_ref(), IPPROTO_TCP)
}

#[test]
fn tcp_lifecycle() {
    assert_eq!(tcp(S, None), State::SynSent);
    assert_eq!(tcp(S, Some(0)), State::SynSent);
    assert_eq!(tcp(S, Some(S | A)), State::SynRecv);
    assert_eq!(tcp(S | A, Some(S | A)), State::Established);
    assert_eq!(tcp(S | A | F, Some(S | A)), State::FinWait);
    assert_eq!(tcp(S | A, Some(S | A | F)), State::CloseWait);
    assert_eq!(tcp(S | A | F, Some(S | A | F)), State::TimeWait);
    assert_eq!(tcp(S | A | F, Some(S | A | F | R)), State::Close);
}

#[test]
fn tcp_reset_either_way_closes() {
    assert_eq!(tcp(S | R, None), State::Close);
    assert_eq!(tcp(S, Some(R | A)), State::Close);
    assert_eq!(tcp(S | A, Some(S | A | R)), State::Close);
}

#[test]
fn tcp_picked_up_mid_stream() {
    assert_eq!(tcp(A, Some(A)), State::Established);
    // Only one side heard from yet: not established.
    assert_eq!(tcp(A, None), State::SynSent);
    assert_eq!(tcp(A, Some(0)), State::SynSent);
    // The reply side's SYN without the original's ACK is still the handshake.
    assert_eq!(tcp(S, Some(S | A)), State::SynRecv);
}

#[test]
fn udp_icmp_and_others() {
    let orig = CtEntry {
        packets: 3,
        ..CtEntry::default()
    };
    let silent = CtEntry::default();
    let answered = CtEntry {
        packets: 1,
        ..CtEntry::default()
    };
    assert_eq!(State::derive(&orig, None, IPPROTO_UDP), State::Udp);
    assert_eq!(State::derive(&orig, Some(&silent), IPPROTO_UDP), State::Udp);
    assert_eq!(
        State::derive(&orig, Some(&answered), IPPROTO_UDP),
        State::UdpStream
    );
    assert_eq!(State::derive(&orig, None, IPPROTO_ICMP), State::Icmp);
    assert_eq!(State::derive(&orig, Some(&answered), 47), State::Generic);
    // TCP flags on a non-TCP entry mean nothing.
    assert_eq!(State::derive(&flags(R), None, IPPROTO_UDP), State::Udp);
}

#[test]
fn timeout_table() {
    let t = Timeouts::default();
    let secs = |s: State| s.timeout(&t).as_secs();
    assert_eq!(secs(State::SynSent), 120);
    assert_eq!(secs(State::SynRecv), 60);
    assert_eq!(secs(State::Established), 432_000);
    assert_eq!(secs(State::FinWait), 120);
    assert_eq!(secs(State::CloseWait), 60);
    assert_eq!(secs(State::TimeWait), 120);
    assert_eq!(secs(State::Close), 10);
    assert_eq!(secs(State::Udp), 30);
    assert_eq!(secs(State::UdpStream), 120);
    assert_eq!(secs(State::Icmp), 30);
    assert_eq!(secs(State::Generic), 600);
    let custom = Timeouts {
        udp: 7,
        ..Timeouts::default()
    };
    assert_eq!(State::Udp.timeout(&custom), Duration::from_secs(7));
}

#[test]
fn timeouts_parse_partially() {
    let t: Timeouts = serde_json::from_str(r#"{"udp": 5}"#).expect("valid");
    assert_eq!(t.udp, 5);
    assert_eq!(t.tcp_established, 432_000);
    assert!(serde_json::from_str::<Timeouts>(r#"{"udpp": 5}"#).is_err());
}

#[test]
fn monotonic_clock_advances() {
    let a = monotonic_ns();
    let b = monotonic_ns();
    assert!(a > 0 && b >= a);
}

fn key(proto: u8, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> CtKey {
    CtKey {
        zone: 0,
        proto,
        _pad: 0,
        src,
        dst,
        sport: sport.to_be_bytes(),
        dport: dport.to_be_bytes(),
    }
}

/// A SNAT session of `orig` to `gw:port`, as the fast path builds it.
fn snat(orig: CtKey, gw: [u8; 4], port: u16, icmp: bool) -> ((CtKey, CtEntry), (CtKey, CtEntry)) {
    let new_sport = port.to_be_bytes();
    let reply_key = if icmp {
        CtKey {
            src: orig.dst,
            dst: gw,
            sport: [0; 2],
            dport: new_sport,
            ..orig
        }
    } else {
        CtKey {
            src: orig.dst,
            dst: gw,
            sport: orig.dport,
            dport: new_sport,
            ..orig
        }
    };
    let fwd = CtEntry {
        new_src: gw,
        new_dst: orig.dst,
        new_sport,
        new_dport: orig.dport,
        peer: reply_key,
        direction: ct_dir::ORIGINAL,
        kind: ct_kind::SNAT,
        ..CtEntry::default()
    };
    let rev = CtEntry {
        new_src: orig.dst,
        new_dst: orig.src,
        new_sport: orig.dport,
        new_dport: orig.sport,
        peer: orig,
        direction: ct_dir::REPLY,
        kind: ct_kind::SNAT,
        ..CtEntry::default()
    };
    ((orig, fwd), (reply_key, rev))
}

const CLIENT: [u8; 4] = [10, 0, 0, 5];
const SERVER: [u8; 4] = [198, 51, 100, 7];
const GW: [u8; 4] = [203, 0, 113, 2];

#[test]
fn session_view() {
    let ((k, mut f), (_, mut r)) =
        snat(key(IPPROTO_TCP, CLIENT, 40000, SERVER, 80), GW, 1025, false);
    f.tcp_flags = u32::from(S | A);
    r.tcp_flags = u32::from(S | A);
    f.created_ns = NOW - 100 * SEC;
    f.last_seen_ns = NOW - 10 * SEC;
    r.last_seen_ns = NOW - 4 * SEC;
    (f.packets, f.bytes, r.packets, r.bytes) = (5, 500, 4, 4000);
    let s = session(&k, &f, Some(&r), NOW, &Timeouts::default());
    assert_eq!(
        (s.proto.as_str(), s.kind.as_str(), s.state),
        ("tcp", "snat", "ESTABLISHED")
    );
    assert_eq!(
        (s.age_secs, s.idle_secs, s.expires_in_secs),
        (100, 4, 432_000 - 4)
    );
    assert_eq!(
        s.original.to_string_parts(),
        ("10.0.0.5", 40000, "198.51.100.7", 80)
    );
    assert_eq!(
        s.translated.to_string_parts(),
        ("203.0.113.2", 1025, "198.51.100.7", 80)
    );
    assert_eq!(
        s.reply.to_string_parts(),
        ("198.51.100.7", 80, "203.0.113.2", 1025)
    );
    assert_eq!((s.original_packets, s.reply_bytes), (5, 4000));
}

#[test]
fn icmp_shows_the_echo_id_as_port() {
    let ((k, f), _) = snat(key(IPPROTO_ICMP, CLIENT, 77, SERVER, 0), GW, 1500, true);
    let s = session(&k, &f, None, NOW, &Timeouts::default());
    assert_eq!((s.original.sport, s.original.dport), (77, 77));
    assert_eq!((s.translated.sport, s.translated.dport), (1500, 1500));
    assert_eq!((s.reply.sport, s.reply.dport), (1500, 1500));
    assert_eq!(s.state, "ICMP");
}

impl Tuple {
    fn to_string_parts(&self) -> (&'static str, u16, &'static str, u16) {
        let leak = |a: Ipv4Addr| -> &'static str { Box::leak(a.to_string().into_boxed_str()) };
        (leak(self.src), self.sport, leak(self.dst), self.dport)
    }
}

/// Against a real BPF hash map: needs root (CAP_BPF).
#[test]
fn gc_purge_and_flush_on_a_kernel_map() {
    let mut map = match HashMap::<MapData, CtKey, CtEntry>::create(64, 0) {
        Ok(m) => m,
        Err(e) => {
            eprintln!(
                "note: gc_purge_and_flush_on_a_kernel_map skipped: creating a BPF map needs root (CAP_BPF): {e}"
            );
            return;
        }
    };
    let mut put = |k: CtKey, mut e: CtEntry, created: u64, seen: u64| {
        e.created_ns = NOW - created * SEC;
        e.last_seen_ns = NOW - seen * SEC;
        map.insert(k, e, 0).expect("insert");
    };
    // Established TCP, idle 1 h: stays.
    let ((k1, mut f1), (rk1, mut r1)) = snat(
        key(IPPROTO_TCP, CLIENT, 40000, SERVER, 443),
        GW,
        40000,
        false,
    );
    f1.tcp_flags = u32::from(S | A);
    r1.tcp_flags = u32::from(S | A);
    put(k1, f1, 7200, 3600);
    put(rk1, r1, 7200, 3600);
    // Unreplied UDP idle 31 s: expires (30 s).
    let ((k2, f2), (rk2, r2)) = snat(key(IPPROTO_UDP, CLIENT, 5000, SERVER, 53), GW, 5000, false);
    put(k2, f2, 31, 31);
    put(rk2, r2, 31, 31);
    // Replied UDP, original idle 100 s but reply seen 20 s ago: stays (120 s).
    let ((k3, f3), (rk3, mut r3)) =
        snat(key(IPPROTO_UDP, CLIENT, 5001, SERVER, 53), GW, 5001, false);
    r3.packets = 1;
    put(k3, f3, 100, 100);
    put(rk3, r3, 100, 20);
    // A reply entry without its original, 1 s old: a creation in flight, stays.
    let (_, (rk4, r4)) = snat(
        key(IPPROTO_TCP, CLIENT, 40001, SERVER, 443),
        GW,
        40001,
        false,
    );
    put(rk4, r4, 1, 1);
    // The same, 60 s old: an orphan, removed.
    let (_, (rk5, r5)) = snat(
        key(IPPROTO_TCP, CLIENT, 40002, SERVER, 443),
        GW,
        40002,
        false,
    );
    put(rk5, r5, 60, 60);
    // An original whose reply entry belongs to another session now: an orphan, removed.
    let ((k6, mut f6), _) = snat(
        key(IPPROTO_TCP, CLIENT, 40003, SERVER, 443),
        GW,
        40000,
        false,
    );
    f6.peer = rk1;
    put(k6, f6, 60, 60);

    let report = collect_garbage(&mut map, NOW, &Timeouts::default()).expect("gc");
    assert_eq!(
        report,
        GcReport {
            scanned: 9,
            expired_sessions: 1,
            orphans_removed: 2,
            // The two SNAT sessions left (k1, k3), both from CLIENT.
            snat_sources: [(CLIENT, 2)].into_iter().collect(),
        }
    );
    let left: BTreeSet<CtKey> = map.keys().map(|k| k.expect("key")).collect();
    let want: BTreeSet<CtKey> = [k1, rk1, k3, rk3, rk4].into_iter().collect();
    assert_eq!(left, want);

    let sessions = list(&map, NOW, &Timeouts::default()).expect("list");
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0].state, "ESTABLISHED");
    assert_eq!(sessions[1].state, "REPLIED");

    // Removing the client's address ends both of its sessions and the half-made one.
    let purged = purge(&mut map, |k, e| {
        [k.src, k.dst, e.new_src, e.new_dst].contains(&CLIENT)
    })
    .expect("purge");
    assert_eq!(purged, 3);
    assert_eq!(map.keys().count(), 0);

    let ((k7, f7), (rk7, r7)) = snat(key(IPPROTO_ICMP, CLIENT, 9, SERVER, 0), GW, 9, true);
    map.insert(rk7, r7, 0).expect("insert");
    map.insert(k7, f7, 0).expect("insert");
    assert_eq!(flush(&mut map).expect("flush"), 1);
    assert_eq!(map.keys().count(), 0);
}
