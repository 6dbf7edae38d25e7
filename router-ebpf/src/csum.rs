//! Internet checksum helpers (RFC 1071, incremental updates per RFC 1624).

/// Folds a 32-bit one's-complement sum to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// One's-complement sum of a 20-byte IPv4 header (options are never summed here: packets
/// with options go to the kernel). A valid header sums to 0xffff.
#[inline(always)]
pub fn ipv4_header_sum(hdr: &[u8; 20]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 20 {
        sum += u32::from(u16::from_be_bytes([hdr[i], hdr[i + 1]]));
        i += 2;
    }
    fold(sum)
}

/// The accumulated difference of several 16-bit words of checksummed data, applied to a
/// checksum at once (one pass per checksum field, whatever changed).
#[derive(Clone, Copy, Default)]
pub struct Delta(u32);

impl Delta {
    #[inline(always)]
    pub fn word(&mut self, old: [u8; 2], new: [u8; 2]) {
        self.0 += u32::from(!u16::from_be_bytes(old)) + u32::from(u16::from_be_bytes(new));
        self.0 = u32::from(fold(self.0));
    }

    #[inline(always)]
    pub fn addr(&mut self, old: [u8; 4], new: [u8; 4]) {
        self.word([old[0], old[1]], [new[0], new[1]]);
        self.word([old[2], old[3]], [new[2], new[3]]);
    }

    #[inline(always)]
    pub fn merge(&mut self, other: Delta) {
        self.0 = u32::from(fold(self.0 + other.0));
    }

    /// The difference as the kernel's `__wsum`: a folded one's-complement sum of the
    /// words as the CPU loads them from memory (little-endian here), not as the wire reads.
    #[inline(always)]
    pub fn wsum(&self) -> u32 {
        u32::from(fold(self.0).swap_bytes())
    }

    /// `check` (as read from the packet) after the changes.
    #[inline(always)]
    pub fn apply(&self, check: [u8; 2]) -> [u8; 2] {
        let sum = u32::from(!u16::from_be_bytes(check)) + self.0;
        (!fold(sum)).to_be_bytes()
    }
}
