//! What the pipeline needs from a program context, so XDP and TC share one pipeline.

use aya_ebpf::programs::{TcContext, XdpContext};

/// The packet as the pipeline sees it, whichever hook it came from.
pub struct Frame {
    /// First byte of the Ethernet header.
    pub data: usize,
    /// One past the last byte the program may touch directly.
    pub data_end: usize,
    /// Length of the whole packet in bytes (an skb may hold more than `data_end - data`).
    pub len: u32,
    /// Interface the packet arrived on.
    pub ingress: u32,
    /// XDP: the egress must be able to take an XDP redirect, or the TC entry forwards.
    pub needs_xdp_egress: bool,
    /// A GSO super-packet (TC only): its size is not what goes on the wire, so the MTU
    /// check is left to segmentation.
    pub gso: bool,
}

impl Frame {
    #[inline(always)]
    pub fn from_xdp(ctx: &XdpContext) -> Self {
        let (data, data_end) = (ctx.data(), ctx.data_end());
        Self {
            data,
            data_end,
            len: (data_end - data) as u32,
            ingress: ctx.ingress_ifindex() as u32,
            needs_xdp_egress: true,
            gso: false,
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
            len: ctx.len(),
            ingress,
            needs_xdp_egress: false,
            gso,
        }
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
}
