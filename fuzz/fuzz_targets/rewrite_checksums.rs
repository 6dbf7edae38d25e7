//! Well-formed TCP/UDP/ICMP packets (and ICMP errors about them) built by etherparse,
//! rewritten by `rewrite::apply`: the result must be the packet etherparse builds with the
//! translated fields, every checksum valid (`router_fuzz::rewrite`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: router_fuzz::rewrite::Input| router_fuzz::rewrite::check(input));
