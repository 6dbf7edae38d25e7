//! The session-sync connection between an HA router's active node and a standby: one TCP
//! connection per router and standby, opened by the standby, carrying frames
//! `[u32 length][u8 kind][payload]` (integers little-endian).
//!
//! Times never cross the wire as clock readings: a session's creation and last packet go
//! as ages (nanoseconds before the frame was made), and the receiver places them on its
//! own monotonic clock. Session keys and entries go as the fast path's own `#[repr(C)]`
//! values, so both nodes must share a byte order (they run the same build).

use router_common::{CtEntry, CtKey};

/// The longest frame either side accepts: a batch of [`MAX_BATCH`] entries and then some.
pub const MAX_FRAME: usize = 4 + 1 + 12 + MAX_BATCH * ENTRY_BYTES;
/// Entries in one frame at most.
pub const MAX_BATCH: usize = 4096;
const KEY_BYTES: usize = size_of::<CtKey>();
const ENTRY_BYTES: usize = KEY_BYTES + size_of::<CtEntry>();
const STATE_BYTES: usize = KEY_BYTES + 4;

/// What one frame says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Standby to active, first: which router, which node, the epoch it follows.
    Hello {
        router: String,
        node: String,
        epoch: i64,
    },
    /// Either way, when there is nothing else to send: "still here".
    Heartbeat,
    /// Active to standby: session entries to write as they are (both directions of new
    /// sessions; refreshed entries), times as ages.
    Entries {
        batch: u64,
        entries: Vec<(CtKey, CtEntry)>,
    },
    /// Active to standby: entries whose TCP state changed (key, flags now).
    TcpStates {
        batch: u64,
        states: Vec<(CtKey, u32)>,
    },
    /// Active to standby: every session was sent once since the connection opened.
    ResyncDone { batch: u64 },
    /// Standby to active: everything up to `batch` is written.
    Ack { batch: u64 },
    /// Active to standby: take over now (a planned switchover); sent after the last batch.
    Handover { batch: u64 },
    /// Active to standby: session entries no longer in the active's table (aged out,
    /// flushed, ended by a configuration change).
    Removed { batch: u64, keys: Vec<CtKey> },
}

mod kind {
    pub const HELLO: u8 = 1;
    pub const HEARTBEAT: u8 = 2;
    pub const ENTRIES: u8 = 3;
    pub const TCP_STATES: u8 = 4;
    pub const RESYNC_DONE: u8 = 5;
    pub const ACK: u8 = 6;
    pub const HANDOVER: u8 = 7;
    pub const REMOVED: u8 = 8;
}

/// Why a frame could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum WireError {
    /// The length prefix says more than [`MAX_FRAME`] or less than a kind byte.
    Length(usize),
    UnknownKind(u8),
    /// The payload does not have the size its kind says.
    Truncated(&'static str),
    BadText,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Length(n) => write!(f, "a frame of {n} bytes (at most {MAX_FRAME})"),
            WireError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            WireError::Truncated(what) => write!(f, "a {what} frame of the wrong size"),
            WireError::BadText => write!(f, "a hello that is not UTF-8 text"),
        }
    }
}

fn bytes_of<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: `T` is one of the fast path's `#[repr(C)]` integer-only values (no padding
    // bytes left uninitialised: they are explicit fields); read as bytes.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

fn value_of<T: Copy + Default>(bytes: &[u8]) -> T {
    let mut value = T::default();
    let n = size_of::<T>().min(bytes.len());
    // SAFETY: `T` is an integer-only `#[repr(C)]` value: any bytes make a valid one.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&raw mut value).cast::<u8>(), n);
    }
    value
}

impl Frame {
    /// The frame as it goes on the wire, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; 4];
        match self {
            Frame::Hello {
                router,
                node,
                epoch,
            } => {
                out.push(kind::HELLO);
                out.extend_from_slice(&epoch.to_le_bytes());
                let text = format!("{router}\n{node}");
                out.extend_from_slice(text.as_bytes());
            }
            Frame::Heartbeat => out.push(kind::HEARTBEAT),
            Frame::Entries { batch, entries } => {
                out.push(kind::ENTRIES);
                out.extend_from_slice(&batch.to_le_bytes());
                out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for (key, entry) in entries {
                    out.extend_from_slice(bytes_of(key));
                    out.extend_from_slice(bytes_of(entry));
                }
            }
            Frame::TcpStates { batch, states } => {
                out.push(kind::TCP_STATES);
                out.extend_from_slice(&batch.to_le_bytes());
                out.extend_from_slice(&(states.len() as u32).to_le_bytes());
                for (key, flags) in states {
                    out.extend_from_slice(bytes_of(key));
                    out.extend_from_slice(&flags.to_le_bytes());
                }
            }
            Frame::ResyncDone { batch } => {
                out.push(kind::RESYNC_DONE);
                out.extend_from_slice(&batch.to_le_bytes());
            }
            Frame::Ack { batch } => {
                out.push(kind::ACK);
                out.extend_from_slice(&batch.to_le_bytes());
            }
            Frame::Handover { batch } => {
                out.push(kind::HANDOVER);
                out.extend_from_slice(&batch.to_le_bytes());
            }
            Frame::Removed { batch, keys } => {
                out.push(kind::REMOVED);
                out.extend_from_slice(&batch.to_le_bytes());
                out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
                for key in keys {
                    out.extend_from_slice(bytes_of(key));
                }
            }
        }
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_le_bytes());
        out
    }

    /// The length a frame's 4-byte prefix announces, checked.
    pub fn body_length(prefix: [u8; 4]) -> Result<usize, WireError> {
        let n = u32::from_le_bytes(prefix) as usize;
        if n == 0 || n > MAX_FRAME {
            return Err(WireError::Length(n));
        }
        Ok(n)
    }

    /// Reads a frame's body (what follows the length prefix).
    pub fn decode(body: &[u8]) -> Result<Frame, WireError> {
        let (&k, rest) = body.split_first().ok_or(WireError::Length(0))?;
        let u64_at = |what, at: usize| {
            rest.get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
                .ok_or(WireError::Truncated(what))
        };
        match k {
            kind::HELLO => {
                let epoch = u64_at("hello", 0)? as i64;
                let text = std::str::from_utf8(&rest[8..]).map_err(|_| WireError::BadText)?;
                let (router, node) = text.split_once('\n').ok_or(WireError::Truncated("hello"))?;
                Ok(Frame::Hello {
                    router: router.to_string(),
                    node: node.to_string(),
                    epoch,
                })
            }
            kind::HEARTBEAT if rest.is_empty() => Ok(Frame::Heartbeat),
            kind::HEARTBEAT => Err(WireError::Truncated("heartbeat")),
            kind::ENTRIES | kind::TCP_STATES | kind::REMOVED => {
                let batch = u64_at("batch", 0)?;
                let count = rest
                    .get(8..12)
                    .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
                    .ok_or(WireError::Truncated("batch"))?;
                let items = &rest[12..];
                let size = match k {
                    kind::ENTRIES => ENTRY_BYTES,
                    kind::TCP_STATES => STATE_BYTES,
                    _ => KEY_BYTES,
                };
                if count > MAX_BATCH || items.len() != count * size {
                    return Err(WireError::Truncated("batch"));
                }
                if k == kind::REMOVED {
                    let keys = items.chunks_exact(size).map(value_of).collect();
                    Ok(Frame::Removed { batch, keys })
                } else if k == kind::ENTRIES {
                    let entries = items
                        .chunks_exact(size)
                        .map(|c| (value_of(&c[..KEY_BYTES]), value_of(&c[KEY_BYTES..])))
                        .collect();
                    Ok(Frame::Entries { batch, entries })
                } else {
                    let states = items
                        .chunks_exact(size)
                        .map(|c| {
                            let flags =
                                u32::from_le_bytes(c[KEY_BYTES..].try_into().unwrap_or_default());
                            (value_of(&c[..KEY_BYTES]), flags)
                        })
                        .collect();
                    Ok(Frame::TcpStates { batch, states })
                }
            }
            kind::RESYNC_DONE | kind::ACK | kind::HANDOVER => {
                if rest.len() != 8 {
                    return Err(WireError::Truncated("control"));
                }
                let batch = u64_at("control", 0)?;
                Ok(match k {
                    kind::RESYNC_DONE => Frame::ResyncDone { batch },
                    kind::ACK => Frame::Ack { batch },
                    _ => Frame::Handover { batch },
                })
            }
            other => Err(WireError::UnknownKind(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> CtKey {
        CtKey {
            zone: 1,
            proto: 6,
            _pad: 0,
            src: [10, 0, 0, n],
            dst: [198, 18, 0, 1],
            sport: [0x30, n],
            dport: [0, 80],
        }
    }

    fn round_trip(frame: Frame) {
        let bytes = frame.encode();
        let prefix: [u8; 4] = bytes[..4].try_into().expect("a length prefix");
        let n = Frame::body_length(prefix).expect("a valid length");
        assert_eq!(n, bytes.len() - 4);
        assert_eq!(Frame::decode(&bytes[4..]).expect("a frame"), frame);
    }

    #[test]
    fn every_frame_reads_back_as_written() {
        round_trip(Frame::Hello {
            router: "r1".into(),
            node: "net-2".into(),
            epoch: 42,
        });
        round_trip(Frame::Heartbeat);
        let entry = CtEntry {
            new_src: [198, 18, 0, 2],
            peer: key(9),
            created_ns: 5,
            last_seen_ns: 7,
            tcp_flags: 0x12,
            direction: 1,
            kind: 2,
            ..CtEntry::default()
        };
        round_trip(Frame::Entries {
            batch: 3,
            entries: vec![(key(1), entry), (key(2), CtEntry::default())],
        });
        round_trip(Frame::TcpStates {
            batch: 4,
            states: vec![(key(3), 0x15)],
        });
        round_trip(Frame::ResyncDone { batch: 5 });
        round_trip(Frame::Ack { batch: 6 });
        round_trip(Frame::Handover { batch: 7 });
        round_trip(Frame::Removed {
            batch: 8,
            keys: vec![key(4), key(5)],
        });
    }

    #[test]
    fn bad_frames_are_refused_by_name() {
        assert_eq!(Frame::body_length([0; 4]), Err(WireError::Length(0)));
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert!(Frame::body_length(huge).is_err());
        assert_eq!(Frame::decode(&[99]), Err(WireError::UnknownKind(99)));
        assert_eq!(
            Frame::decode(&[kind::ACK, 1, 2]),
            Err(WireError::Truncated("control"))
        );
        // A batch that claims more entries than it carries.
        let mut bytes = Frame::Entries {
            batch: 1,
            entries: vec![(key(1), CtEntry::default())],
        }
        .encode();
        bytes[4 + 1 + 8] = 2;
        assert_eq!(
            Frame::decode(&bytes[4..]),
            Err(WireError::Truncated("batch"))
        );
        assert_eq!(
            Frame::decode(&[kind::HELLO, 0, 0, 0, 0, 0, 0, 0, 0, 0xff]),
            Err(WireError::BadText)
        );
    }
}
