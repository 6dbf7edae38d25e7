//! Gratuitous ARP from a router that just became active: every address it answers for
//! (gateway and further external subnets, floating IPs, internal gateways) announced on
//! its interface, so the external hosts and the VMs' switches learn that the router's
//! MAC is now behind this node.

use std::{net::Ipv4Addr, os::fd::AsRawFd as _, time::Duration};

use crate::{config::Router, error::Error, netns, paths};

/// When each round of announcements goes out, after the takeover. A lost first one is
/// repaired by the next; the later ones win back a switch that heard the router's MAC from
/// the old active after the first (one of its frames still queued when the first went out),
/// while the old active, handing over, still forwards what reaches it (for
/// `agent::HANDOVER_GRACE`, longer than the last round).
const ROUNDS: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(30),
    Duration::from_millis(200),
    Duration::from_millis(600),
];

/// What one interface announces.
pub fn announcements(router: &Router) -> Vec<(String, Vec<Ipv4Addr>)> {
    let mut out = Vec::new();
    if let Some(g) = &router.gateway {
        let mut addrs = vec![g.address.addr];
        addrs.extend(g.subnets.iter().map(|s| s.address.addr));
        addrs.extend(router.floating_ips.iter().map(|f| f.address));
        out.push((g.interface.clone(), addrs));
    }
    for i in &router.interfaces {
        out.push((i.name.clone(), vec![i.address.addr]));
    }
    out
}

/// Sends the router's gratuitous ARPs from its namespace (on a thread of its own, which
/// enters the namespace); returns how many frames went out.
pub fn announce(router: &Router) -> Result<usize, Error> {
    announce_these(router, announcements(router))
}

/// Sends gratuitous ARPs for `plan` (addresses by interface) from `router`'s namespace on
/// a thread of its own, without waiting for it (the rounds take most of a second).
pub fn announce_in_background(router: &Router, plan: Vec<(String, Vec<Ipv4Addr>)>) {
    let router = router.clone();
    std::thread::spawn(move || match announce_these(&router, plan) {
        Ok(n) => tracing::info!("router {}: {n} gratuitous ARP frames sent", router.id),
        Err(e) => tracing::warn!("router {}: gratuitous ARP: {e}", router.id),
    });
}

fn announce_these(router: &Router, plan: Vec<(String, Vec<Ipv4Addr>)>) -> Result<usize, Error> {
    let path = paths::netns_path(&router.namespace);
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                netns::enter(&path)
                    .map_err(|e| Error::io(format!("entering {}", path.display()), e))?;
                send_all(&plan)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(Error::io(
                    "gratuitous ARP",
                    std::io::Error::other("panicked"),
                ))
            })
    })
}

fn send_all(plan: &[(String, Vec<Ipv4Addr>)]) -> Result<usize, Error> {
    // SAFETY: plain socket call; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            0, // send only: no protocol bound, nothing received
        )
    };
    if fd < 0 {
        return Err(Error::io(
            "opening a packet socket",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut sent = 0;
    let started = std::time::Instant::now();
    for at in ROUNDS {
        if let Some(wait) = at.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        for (name, addrs) in plan {
            let (index, mac) = interface(socket.as_raw_fd(), name)?;
            for addr in addrs {
                let frame = frame(mac, *addr);
                // SAFETY: `sockaddr_ll` zeroed then filled; the frame outlives the call.
                let rc = unsafe {
                    let mut to: libc::sockaddr_ll = std::mem::zeroed();
                    to.sll_family = libc::AF_PACKET as u16;
                    to.sll_ifindex = index;
                    to.sll_halen = 6;
                    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
                    libc::sendto(
                        socket.as_raw_fd(),
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&raw const to).cast(),
                        size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                if rc < 0 {
                    return Err(Error::io(
                        format!("sending gratuitous ARP for {addr} on {name}"),
                        std::io::Error::last_os_error(),
                    ));
                }
                sent += 1;
            }
        }
    }
    Ok(sent)
}

/// The index and MAC of interface `name` in the calling thread's namespace.
fn interface(fd: i32, name: &str) -> Result<(i32, [u8; 6]), Error> {
    let missing = || Error::io(format!("interface {name}"), std::io::Error::last_os_error());
    // SAFETY: `ifreq` zeroed, its name filled within bounds; the ioctls fill the union.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req
            .ifr_name
            .iter_mut()
            .zip(name.bytes().take(libc::IFNAMSIZ - 1))
        {
            *dst = src as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFINDEX, &raw mut req) < 0 {
            return Err(missing());
        }
        let index = req.ifr_ifru.ifru_ifindex;
        if libc::ioctl(fd, libc::SIOCGIFHWADDR, &raw mut req) < 0 {
            return Err(missing());
        }
        let data = req.ifr_ifru.ifru_hwaddr.sa_data;
        let mut mac = [0u8; 6];
        for (m, d) in mac.iter_mut().zip(data.iter()) {
            *m = *d as u8;
        }
        Ok((index, mac))
    }
}

/// A gratuitous ARP request: "who has `addr`? tell `addr`", from `mac`, broadcast.
pub fn frame(mac: [u8; 6], addr: Ipv4Addr) -> [u8; 42] {
    request(mac, addr, addr)
}

/// An ARP request for `target` from `mac` as `sender`, broadcast.
pub fn request(mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&sender.octets());
    f[38..42].copy_from_slice(&target.octets());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_an_arp_request_for_the_senders_own_address() {
        let f = frame([2, 0, 0, 0, 0, 1], Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(
            &f[28..32],
            &f[38..42],
            "sender and target address are the same"
        );
        assert_eq!(&f[32..38], &[0; 6], "target MAC unknown");
        assert_eq!(&f[0..6], &[0xff; 6], "broadcast");
    }
}
