//! Whole frames sent from an `AF_PACKET` socket: the generators' way out where the kernel
//! refuses live frames to `BPF_PROG_TEST_RUN` (`router_user::datapath::features`). Bound to
//! one interface of the namespace it is made in, past the qdisc (`PACKET_QDISC_BYPASS`, as
//! the driver gets frames from XDP), receiving nothing (protocol 0).

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

pub struct PacketSocket {
    socket: OwnedFd,
}

impl PacketSocket {
    /// A socket bound to interface `ifindex` of the calling thread's namespace.
    pub fn bind(ifindex: u32) -> io::Result<Self> {
        // SAFETY: plain socket creation; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(context("an AF_PACKET socket"));
        }
        // SAFETY: a new descriptor, owned from here on.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: `one` outlives the call, its size given.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(context("PACKET_QDISC_BYPASS"));
        }
        // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` outlives the call, its size given.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(context(&format!(
                "binding an AF_PACKET socket to ifindex {ifindex}"
            )));
        }
        Ok(Self { socket })
    }

    /// Sends `frames` in order with one `sendmmsg`: how many went (the first ones). 0 when
    /// the interface's queue has no room (`ENOBUFS`, `EAGAIN`): send the rest again.
    pub fn send(&self, frames: &mut [Vec<u8>]) -> io::Result<usize> {
        let mut iovecs: Vec<libc::iovec> = frames
            .iter_mut()
            .map(|f| libc::iovec {
                iov_base: f.as_mut_ptr().cast(),
                iov_len: f.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iov| {
                // SAFETY: an all-zero mmsghdr is valid; its one iovec is set next.
                let mut msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
                msg.msg_hdr.msg_iov = iov;
                msg.msg_hdr.msg_iovlen = 1;
                msg
            })
            .collect();
        // SAFETY: `msgs`, `iovecs` and the frames they point to outlive the call.
        let sent = unsafe {
            libc::sendmmsg(
                self.socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as u32,
                0,
            )
        };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOBUFS | libc::EAGAIN) => Ok(0),
            _ => Err(io::Error::new(
                e.kind(),
                format!(
                    "sending {} frames from an AF_PACKET socket: {e}",
                    frames.len()
                ),
            )),
        }
    }
}

fn context(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
