//! Only here so that bench can name this crate as a build dependency (cargo then
//! rebuilds the eBPF object when it changes); the programs are in `main.rs`.
#![no_std]
