//! What the pipeline needs from a program context, so XDP and TC share one pipeline.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, xdp_md},
    helpers::{bpf_l4_csum_replace, bpf_skb_load_bytes, bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};

use crate::csum::Delta;

/// The packet as the pipeline sees it, whichever hook it came from.
pub struct Frame {
    /// First byte of the Ethernet header.
    pub data: usize,
    /// One past the last byte the program may touch directly.
    pub data_end: usize,
    /// Length of the whole packet in bytes under TC and on the host; XDP asks the kernel
    /// when it is needed (see [`Frame::len`]).
    known_len: u32,
    /// Interface the packet arrived on.
    pub ingress: u32,
    /// XDP: the egress must be able to take an XDP redirect, or the TC entry forwards.
    pub needs_xdp_egress: bool,
    /// A GSO super-packet (TC only): its size is not what goes on the wire, so the MTU
    /// check is left to segmentation.
    pub gso: bool,
    /// The socket buffer under TC; null under XDP.
    skb: *mut __sk_buff,
    /// The XDP context under XDP; null under TC.
    xdp: *mut xdp_md,
}

/// How a TCP or UDP checksum field treats zero.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L4Csum {
    Tcp,
    /// UDP: 0 means "no checksum" and stays 0; a computed 0 is sent as 0xffff.
    Udp,
}

impl Frame {
    #[inline(always)]
    pub fn from_xdp(ctx: &XdpContext) -> Self {
        Self {
            data: ctx.data(),
            data_end: ctx.data_end(),
            known_len: 0,
            ingress: ctx.ingress_ifindex() as u32,
            needs_xdp_egress: true,
            gso: false,
            skb: core::ptr::null_mut(),
            xdp: ctx.ctx,
        }
    }

    #[inline(always)]
    pub fn from_tc(ctx: &TcContext) -> Self {
        // SAFETY: `ctx.skb.skb` is the `__sk_buff` the kernel passed to the program.
        let (ingress, gso) = unsafe {
            let skb = &*ctx.skb.skb;
            (skb.ifindex, skb.gso_segs > 1 || skb.gso_size != 0)
        };
        Self {
            data: ctx.data(),
            data_end: ctx.data_end(),
            known_len: ctx.len(),
            ingress,
            needs_xdp_egress: false,
            gso,
            skb: ctx.skb.skb,
            xdp: core::ptr::null_mut(),
        }
    }

    /// A frame over a buffer in host memory, as XDP sees one (`len` is the buffer's length,
    /// no skb: the checksum helper is never called). For the fuzz targets, which run
    /// `parse`, `flow` and `rewrite` on the host; the frame must not outlive `buf`.
    ///
    /// # Safety
    /// Every use of the returned frame (and of pointers the parser derives from it) must
    /// happen while `buf` is alive and not otherwise borrowed.
    #[cfg(not(target_arch = "bpf"))]
    pub unsafe fn over(buf: &mut [u8], ingress: u32) -> Self {
        let data = buf.as_mut_ptr() as usize;
        Self {
            data,
            data_end: data + buf.len(),
            known_len: buf.len() as u32,
            ingress,
            needs_xdp_egress: true,
            gso: false,
            skb: core::ptr::null_mut(),
            xdp: core::ptr::null_mut(),
        }
    }

    /// Length of the whole packet in bytes (an skb, or a multi-buffer XDP frame, may hold
    /// more than `data_end - data`). Under XDP a helper call: the stages that never need it
    /// do not pay for it.
    #[inline(always)]
    pub fn len(&self) -> u32 {
        if self.xdp.is_null() {
            return self.known_len;
        }
        // SAFETY: plain helper call on the program's own context. It counts every buffer of
        // a multi-buffer frame.
        unsafe { bpf_xdp_get_buff_len(self.xdp) as u32 }
    }

    /// A pointer to a `T` at `offset`, if the whole `T` lies within the directly accessible
    /// data. The comparison is written so the verifier can see the bound.
    #[inline(always)]
    pub fn ptr_at<T>(&self, offset: usize) -> Option<*mut T> {
        let start = self.data + offset;
        if start + core::mem::size_of::<T>() > self.data_end {
            return None;
        }
        Some(start as *mut T)
    }

    /// Copies `len` bytes (at least 1) from `offset` into `to`, across the parts of a
    /// multi-buffer frame or a non-linear skb; `None` when the packet is shorter (or on the
    /// host, which has no helpers).
    #[inline(always)]
    pub fn load_bytes(&self, offset: usize, to: *mut u8, len: u32) -> Option<()> {
        // SAFETY: plain helper calls on our own context; `to` holds `len` bytes (the
        // caller's promise, which the verifier checks).
        let rc = unsafe {
            if !self.skb.is_null() {
                bpf_skb_load_bytes(self.skb as *const _, offset as u32, to as *mut _, len)
            } else if !self.xdp.is_null() {
                bpf_xdp_load_bytes(self.xdp, offset as u32, to as *mut _, len)
            } else {
                return None;
            }
        };
        (rc == 0).then_some(())
    }

    /// Applies address changes (`pseudo`, covered through the pseudo-header) and port
    /// changes (`data`) to the TCP or UDP checksum at `offset`. This must be the last write
    /// to the packet: under TC it calls a helper that invalidates packet pointers.
    ///
    /// Under TC the kernel helper is used because an skb from a local stack may carry
    /// CHECKSUM_PARTIAL: its field then holds only the pseudo-header sum, which must follow
    /// address changes but not port changes. XDP frames carry complete checksums.
    #[inline(always)]
    pub fn finish_l4_csum(&self, offset: usize, kind: L4Csum, pseudo: Delta, data: Delta) {
        let mangled = if kind == L4Csum::Udp {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        if !self.skb.is_null() {
            // SAFETY: plain helper calls on our own skb; size 0 means "`to` is a diff".
            // Failures leave the checksum wrong and the receiver drops the packet; they
            // only happen for offsets beyond the packet, which the parser excluded.
            unsafe {
                let flags = u64::from(BPF_F_PSEUDO_HDR) | mangled;
                bpf_l4_csum_replace(self.skb, offset as u32, 0, u64::from(pseudo.wsum()), flags);
                bpf_l4_csum_replace(self.skb, offset as u32, 0, u64::from(data.wsum()), mangled);
            }
            return;
        }
        let Some(field) = self.ptr_at::<[u8; 2]>(offset) else {
            return;
        };
        let mut all = pseudo;
        all.merge(data);
        // SAFETY: bounds checked by `ptr_at`.
        unsafe {
            if kind == L4Csum::Udp && *field == [0, 0] {
                return;
            }
            let mut new = all.apply(*field);
            if kind == L4Csum::Udp && new == [0, 0] {
                new = [0xff, 0xff];
            }
            *field = new;
        }
    }
}
