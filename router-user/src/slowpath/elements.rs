//! Map elements written to nf_tables over netlink directly: every change of a router's
//! floating IPs is one batch, one transaction, with nothing read back.
//!
//! libnftables lists a map's elements from the kernel before it changes one, so at 10,000
//! floating IPs each change cost it about 90 ms; the kernel itself needs a few. The table
//! and its maps are still made by libnftables (`rules`); only their elements come here.

use std::{io, os::fd::AsRawFd as _, os::fd::FromRawFd as _, os::fd::OwnedFd};

/// One map's changes: keys to delete, then key-value pairs to add.
pub struct MapChange<'a> {
    pub map: &'a str,
    pub delete: Vec<[u8; 4]>,
    pub add: Vec<([u8; 4], [u8; 4])>,
}

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLMSG_ERROR: u16 = 2;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

/// Elements per message: an attribute's length is 16 bits, and an element takes 28 bytes.
const PER_MESSAGE: usize = 1000;

/// Applies `changes` to the maps of the IPv4 table `table` in the calling thread's network
/// namespace, as one transaction: every change or none.
pub fn apply(table: &str, changes: &[MapChange]) -> io::Result<()> {
    let mut batch = Batch::default();
    batch.message(
        NFNL_MSG_BATCH_BEGIN,
        0,
        libc::AF_UNSPEC as u8,
        NFNL_SUBSYS_NFTABLES,
        |_| {},
    );
    for change in changes {
        for keys in change.delete.chunks(PER_MESSAGE) {
            batch.elements(
                NFT_MSG_DELSETELEM,
                table,
                change.map,
                keys.iter().map(|k| (*k, None)),
            );
        }
        for pairs in change.add.chunks(PER_MESSAGE) {
            batch.elements(
                NFT_MSG_NEWSETELEM,
                table,
                change.map,
                pairs.iter().map(|(k, v)| (*k, Some(*v))),
            );
        }
    }
    if batch.acks.is_empty() {
        return Ok(());
    }
    batch.message(
        NFNL_MSG_BATCH_END,
        0,
        libc::AF_UNSPEC as u8,
        NFNL_SUBSYS_NFTABLES,
        |_| {},
    );
    batch.send()
}

#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    seq: u32,
    /// Sequence numbers of the messages that are acknowledged.
    acks: Vec<u32>,
}

impl Batch {
    /// Appends one message (netlink header, nfgenmsg, then what `body` writes).
    fn message(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        body: impl FnOnce(&mut Vec<u8>),
    ) {
        self.seq += 1;
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, below
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf
            .extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        body(&mut self.buf);
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        if flags & NLM_F_ACK != 0 {
            self.acks.push(self.seq);
        }
    }

    /// One element message: `(key, Some(value))` adds, `(key, None)` deletes.
    fn elements(
        &mut self,
        msg: u16,
        table: &str,
        map: &str,
        elements: impl Iterator<Item = ([u8; 4], Option<[u8; 4]>)>,
    ) {
        let flags = NLM_F_ACK
            | if msg == NFT_MSG_NEWSETELEM {
                NLM_F_CREATE
            } else {
                0
            };
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        self.message(kind, flags, libc::AF_INET as u8, 0, |buf| {
            attr(buf, NFTA_SET_ELEM_LIST_TABLE, &c_string(table));
            attr(buf, NFTA_SET_ELEM_LIST_SET, &c_string(map));
            nested(buf, NFTA_SET_ELEM_LIST_ELEMENTS, |buf| {
                for (key, value) in elements {
                    nested(buf, NFTA_LIST_ELEM, |buf| {
                        nested(buf, NFTA_SET_ELEM_KEY, |buf| {
                            attr(buf, NFTA_DATA_VALUE, &key)
                        });
                        if let Some(value) = value {
                            nested(buf, NFTA_SET_ELEM_DATA, |buf| {
                                attr(buf, NFTA_DATA_VALUE, &value)
                            });
                        }
                    });
                }
            });
        });
    }

    /// Sends the batch and waits for every acknowledgement; the first error fails it (the
    /// kernel then aborted the whole transaction).
    fn send(self) -> io::Result<()> {
        // SAFETY: plain socket call; the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // The whole batch goes in one message, which must fit the send buffer.
        let size = (self.buf.len() + 4096) as libc::c_int;
        set_option(&socket, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, size)?;
        // An error's answer without a copy of the (large) message it is about.
        set_option(&socket, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1)?;
        // A kernel that never answers fails the change rather than holding the router.
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: `timeout` outlives the call and is as long as said.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: all zeroes is a valid `sockaddr_nl` (the kernel as the peer).
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: the buffer and the address outlive the call.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                self.buf.as_ptr().cast(),
                self.buf.len(),
                0,
                (&raw const address).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut waiting = self.acks.len();
        let mut reply = vec![0u8; 64 * 1024];
        while waiting > 0 {
            // SAFETY: the buffer outlives the call and is as long as said.
            let n = unsafe {
                libc::recv(
                    socket.as_raw_fd(),
                    reply.as_mut_ptr().cast(),
                    reply.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut at = 0;
            let n = n as usize;
            while at + 16 <= n {
                let len =
                    u32::from_ne_bytes(reply[at..at + 4].try_into().unwrap_or_default()) as usize;
                let kind = u16::from_ne_bytes([reply[at + 4], reply[at + 5]]);
                if len < 16 || at + len > n {
                    return Err(io::Error::other("a truncated netlink answer"));
                }
                if kind == NLMSG_ERROR && len >= 20 {
                    let code =
                        i32::from_ne_bytes(reply[at + 16..at + 20].try_into().unwrap_or_default());
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    waiting = waiting.saturating_sub(1);
                }
                at += (len + 3) & !3;
            }
        }
        Ok(())
    }
}

fn set_option(
    socket: &OwnedFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` outlives the call and is as long as said.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn c_string(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// A netlink attribute, padded to 4 bytes.
fn attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    buf.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// A nested attribute holding what `inner` writes.
fn nested(buf: &mut Vec<u8>, kind: u16, inner: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    inner(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}
