//! For the eBPF target this library is empty: it is only here so that router-user can name
//! this crate as a build dependency (cargo then rebuilds the eBPF object when it changes);
//! the programs are in `main.rs`, which declares its own modules.
//!
//! For the host it exposes the fast path's pure packet logic, built from the very same
//! source files as the programs: parsing, the flow tuple, checksums, the rewrite and the
//! `Frame` abstraction (over a host buffer: [`context::Frame::over`]). Nothing here touches
//! a map. The fuzz targets in `fuzz/` run it against an independent parser (etherparse).
#![no_std]

#[cfg(not(target_arch = "bpf"))]
pub mod context;
#[cfg(not(target_arch = "bpf"))]
pub mod csum;
#[cfg(not(target_arch = "bpf"))]
pub mod flow;
#[cfg(not(target_arch = "bpf"))]
pub mod parse;
#[cfg(not(target_arch = "bpf"))]
pub mod rewrite;
#[cfg(not(target_arch = "bpf"))]
pub mod verdict;
