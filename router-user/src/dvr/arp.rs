//! Asking for the external next hop's MAC from an interface without an address: a compute
//! node's copy of a distributed router owns no address on the external network, so the
//! kernel would ask with an address of another interface (or not at all). routerd asks
//! itself, as the node's floating IP (the address the next hop must reach it by anyway, so
//! the question also teaches it where that floating IP is), or with no sender address (an
//! ARP probe, RFC 5227) when the node has none yet.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use crate::ha::garp::request;

const ETH_P_ARP: u16 = 0x0806;

/// Asks `target`'s MAC on interface `ifindex` (MAC `mac`) as `sender`, `tries` times, each
/// waiting `wait` for the answer. Runs in the calling thread's namespace.
pub fn resolve(
    ifindex: u32,
    mac: [u8; 6],
    sender: Ipv4Addr,
    target: Ipv4Addr,
    tries: u32,
    wait: Duration,
) -> std::io::Result<Option<[u8; 6]>> {
    // SAFETY: plain socket calls on a descriptor owned below; `sockaddr_ll` zeroed then
    // filled; buffers outlive the calls.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let socket = OwnedFd::from_raw_fd(fd);
        let mut at: libc::sockaddr_ll = std::mem::zeroed();
        at.sll_family = libc::AF_PACKET as u16;
        at.sll_protocol = ETH_P_ARP.to_be();
        at.sll_ifindex = ifindex as i32;
        if libc::bind(
            socket.as_raw_fd(),
            (&raw const at).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let slice = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const slice).cast(),
            size_of::<libc::timeval>() as u32,
        );
        let request = request(mac, sender, target);
        let mut to = at;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let mut buf = [0u8; 128];
        for _ in 0..tries {
            if libc::sendto(
                socket.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            ) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let deadline = Instant::now() + wait;
            while Instant::now() < deadline {
                let n = libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
                if n > 0
                    && let Some(answer) = answer_from(&buf[..n as usize], target)
                {
                    return Ok(Some(answer));
                }
            }
        }
        Ok(None)
    }
}

/// The MAC an ARP reply from `target` gives.
fn answer_from(frame: &[u8], target: Ipv4Addr) -> Option<[u8; 6]> {
    let arp = frame.get(14..42)?;
    let is_reply = frame[12..14] == [0x08, 0x06] && arp[..8] == [0, 1, 8, 0, 6, 4, 0, 2];
    (is_reply && arp[14..18] == target.octets()).then(|| {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&arp[8..14]);
        mac
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_from_the_target_gives_its_mac() {
        let target = Ipv4Addr::new(198, 18, 0, 1);
        let mut reply = request([2, 0, 0, 0, 0, 9], target, Ipv4Addr::new(198, 18, 0, 10));
        reply[21] = 2;
        assert_eq!(answer_from(&reply, target), Some([2, 0, 0, 0, 0, 9]));
        // A request, or a reply from another address, is not the answer.
        let asked = request([2, 0, 0, 0, 0, 9], target, Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(answer_from(&asked, target), None);
        assert_eq!(answer_from(&reply, Ipv4Addr::new(198, 18, 0, 2)), None);
        assert_eq!(answer_from(&reply[..30], target), None);
    }
}
