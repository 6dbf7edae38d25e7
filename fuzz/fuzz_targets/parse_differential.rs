//! Any bytes as an Ethernet frame: our parser (`parse_l2`, `parse_ipv4`, `flow::of`) must
//! agree with etherparse, up to the documented differences (`router_fuzz::differential`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| router_fuzz::differential::check(frame));
