//! Neutron's identifiers: every Neutron object (router, port, floating IP, firewall rule)
//! is named by a UUID, which the desired state keeps beside its own keys so that a sync
//! from Neutron can address an object by the id Neutron gave it.

use std::{fmt, str::FromStr};

/// A Neutron object's id: a UUID, written `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in
/// hexadecimal (either case is read; it is written in lower case, as Neutron writes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NeutronId([u8; 16]);

/// Where the hyphens of a UUID's text stand.
const HYPHENS: [usize; 4] = [8, 13, 18, 23];

/// What a message says an id must be.
pub const NEUTRON_ID_FORM: &str = "not a Neutron id (a UUID: 8-4-4-4-12 hexadecimal digits, like 6e2f1c3a-0b7d-4f6e-9a51-2c3d4e5f6a7b)";

impl FromStr for NeutronId {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != 36 {
            return Err(NEUTRON_ID_FORM);
        }
        let mut digits = [0u8; 32];
        let mut n = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if HYPHENS.contains(&i) {
                if b != b'-' {
                    return Err(NEUTRON_ID_FORM);
                }
                continue;
            }
            let d = char::from(b).to_digit(16).ok_or(NEUTRON_ID_FORM)?;
            // A hex digit is below 16.
            digits[n] = d as u8;
            n += 1;
        }
        let mut out = [0u8; 16];
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            out[i] = pair[0] << 4 | pair[1];
        }
        Ok(Self(out))
    }
}

impl fmt::Display for NeutronId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_a_uuid() {
        let text = "6e2f1c3a-0b7d-4f6e-9a51-2c3d4e5f6a7b";
        let id: NeutronId = text.parse().expect("a UUID");
        assert_eq!(id.to_string(), text);
        let upper: NeutronId = text.to_uppercase().parse().expect("upper case too");
        assert_eq!(upper, id);
        assert_eq!(upper.to_string(), text, "written in lower case");
    }

    #[test]
    fn refuses_what_is_not_a_uuid() {
        for bad in [
            "",
            "r1",
            "6e2f1c3a0b7d4f6e9a512c3d4e5f6a7b",
            "6e2f1c3a-0b7d-4f6e-9a51-2c3d4e5f6a7",
            "6e2f1c3a-0b7d-4f6e-9a51-2c3d4e5f6a7bb",
            "6e2f1c3a-0b7d-4f6e-9a51_2c3d4e5f6a7b",
            "6e2f1c3g-0b7d-4f6e-9a51-2c3d4e5f6a7b",
            "+e2f1c3a-0b7d-4f6e-9a51-2c3d4e5f6a7b",
        ] {
            assert_eq!(bad.parse::<NeutronId>(), Err(NEUTRON_ID_FORM), "{bad:?}");
        }
    }
}
