//! The checks behind the fuzz targets, over router-ebpf's packet logic built for the host
//! (the same source files as the eBPF programs) and etherparse as the independent oracle.
//!
//! - [`differential`]: any bytes as an Ethernet frame; our `parse_l2`/`parse_ipv4`/`flow::of`
//!   against what etherparse makes of the frame.
//! - [`rewrite`]: well-formed packets built by etherparse, rewritten by our `rewrite::apply`,
//!   compared byte for byte with the packet etherparse builds with the translated fields
//!   (every checksum recomputed from scratch).
//! - [`fast_path`]: router-ebpf's parse and rewrite run on a host buffer, their results as
//!   plain comparable values (the side of each check the oracle is compared with).

pub mod differential;
pub mod fast_path;
pub mod rewrite;
