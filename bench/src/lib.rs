//! What the benchmark binaries share: the traffic generator and the sink (`traffic`).

pub mod traffic;
