//! What the running kernel lets the programs do, asked once per process and handed to the
//! object's loader as read-only globals: the verifier knows their values and never looks at
//! the code a missing feature would need.
//!
//! `bpf_xdp_adjust_meta` is the one the router's object depends on. The XDP entry uses it
//! to tag a packet it passes to the kernel for the TC entry; some kernel builds refuse the
//! helper to every XDP program ("program of this type cannot use helper"), and there the
//! TC entry decides again what the XDP entry passed.
//!
//! Also asked: whether `BPF_PROG_TEST_RUN` may send live frames (the benchmarks'
//! generator), which some kernel builds refuse with `EPERM`.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::OnceLock,
};

use aya::EbpfLoader;
use router_common::globals;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_FUNC_XDP_ADJUST_META: i32 = 54;
const XDP_PASS: i32 = 2;

/// What the kernel allows, as the programs' globals hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelFeatures {
    /// XDP programs may call `bpf_xdp_adjust_meta`.
    pub xdp_meta: bool,
    /// `BPF_PROG_TEST_RUN` may send live frames (`BPF_F_TEST_XDP_LIVE_FRAMES`).
    pub xdp_live_frames: bool,
}

/// The running kernel's features (asked on first use).
pub fn kernel() -> KernelFeatures {
    static FEATURES: OnceLock<KernelFeatures> = OnceLock::new();
    *FEATURES.get_or_init(|| {
        let features = KernelFeatures {
            xdp_meta: load_xdp(&adjust_meta_program()).is_some(),
            xdp_live_frames: live_frames_allowed(),
        };
        if !features.xdp_meta {
            tracing::info!(
                "this kernel refuses bpf_xdp_adjust_meta to XDP programs: the TC entry decides again what the XDP entry passes"
            );
        }
        features
    })
}

/// Sets the globals of the router's object that say what the kernel allows.
pub fn configure(loader: &mut EbpfLoader<'_>) {
    static ON: u32 = 1;
    static OFF: u32 = 0;
    let meta = if kernel().xdp_meta { &ON } else { &OFF };
    loader.override_global(globals::XDP_META, meta, true);
}

/// `r2 = -4; call bpf_xdp_adjust_meta; r0 = XDP_PASS; exit` (r1 holds the context).
fn adjust_meta_program() -> [u64; 4] {
    [
        insn(0xb7, 2, 0, -4),
        insn(0x85, 0, 0, BPF_FUNC_XDP_ADJUST_META),
        insn(0xb7, 0, 0, XDP_PASS),
        insn(0x95, 0, 0, 0),
    ]
}

/// One eBPF instruction: opcode, destination and source registers, no offset, immediate.
fn insn(code: u8, dst: u8, src: u8, imm: i32) -> u64 {
    let bytes = [code, (src << 4) | dst, 0, 0];
    let low = u32::from_le_bytes(bytes);
    u64::from(low) | (u64::from(imm as u32) << 32)
}

/// Whether the kernel lets `BPF_PROG_TEST_RUN` send live frames. Asked with an empty frame,
/// which the kernel refuses as invalid (`EINVAL`) after the permission check (`EPERM`):
/// nothing is sent either way.
fn live_frames_allowed() -> bool {
    let Some(prog) = load_xdp(&[insn(0xb7, 0, 0, XDP_PASS), insn(0x95, 0, 0, 0)]) else {
        return false;
    };
    // union bpf_attr for BPF_PROG_TEST_RUN: prog_fd, then zeros up to flags (word 16).
    let mut attr = [0u32; 32];
    attr[0] = prog.as_raw_fd() as u32;
    attr[16] = BPF_F_TEST_XDP_LIVE_FRAMES;
    // SAFETY: `attr` outlives the call and is larger than the part of bpf_attr the kernel
    // reads for this command; no data pointer is given (size 0).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr.as_mut_ptr(),
            size_of_val(&attr),
        )
    };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
}

/// `program` loaded as an XDP program, or `None` if the kernel refuses it.
fn load_xdp(program: &[u64]) -> Option<OwnedFd> {
    let license = c"GPL";
    // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license (the rest
    // zero: no log, no attach type).
    let mut attr = [0u32; 32];
    attr[0] = BPF_PROG_TYPE_XDP;
    attr[1] = program.len() as u32;
    let insns = program.as_ptr() as u64;
    attr[2] = insns as u32;
    attr[3] = (insns >> 32) as u32;
    let lic = license.as_ptr() as u64;
    attr[4] = lic as u32;
    attr[5] = (lic >> 32) as u32;
    // SAFETY: `attr`, `program` and `license` outlive the call; `attr` is larger than the
    // part of bpf_attr the kernel reads for this command, the rest zero.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            attr.as_mut_ptr(),
            size_of_val(&attr),
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new descriptor the kernel just gave us; closed when dropped.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_are_encoded_as_the_kernel_reads_them() {
        // r2 = -4: opcode 0xb7, dst 2, imm 0xfffffffc.
        assert_eq!(insn(0xb7, 2, 0, -4), 0xffff_fffc_0000_02b7);
        assert_eq!(insn(0x95, 0, 0, 0), 0x95);
    }

    #[test]
    fn a_program_is_loaded_or_refused_as_the_verifier_says() {
        let pass = [insn(0xb7, 0, 0, XDP_PASS), insn(0x95, 0, 0, 0)];
        assert!(load_xdp(&pass).is_some());
        // A call of helper 0 (unspec) never verifies.
        let refused = [
            insn(0x85, 0, 0, 0),
            insn(0xb7, 0, 0, XDP_PASS),
            insn(0x95, 0, 0, 0),
        ];
        assert!(load_xdp(&refused).is_none());
    }
}
