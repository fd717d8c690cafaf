//! KVM's HTAB fd records: how KVM hands the hash page table out (and
//! takes it back) — `struct kvm_get_htab_header` in host order (`index`,
//! `n_valid`, `n_invalid`), then `n_valid` big-endian HPTEs of 16 bytes,
//! the shape of the chunks QEMU's `spapr/htab` section carries
//! big-endian (the `migration` crate's `htab`).

use thiserror::Error;

/// Bytes of one HPTE (two doublewords).
pub const HPTE_SIZE: usize = 16;
const HEADER: usize = 8;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    #[error("HTAB record at byte {at} is cut short: {need} bytes needed, {have} left")]
    Truncated { at: usize, need: usize, have: usize },
    #[error("HTAB record at entry {index} covers {count} entries, past the table's {entries}")]
    OutOfRange {
        index: u32,
        count: u64,
        entries: u64,
    },
}

/// The records a read of KVM's HTAB fd returned (host byte order), for a
/// table of `entries` HPTEs: `each(index, valid HPTEs, n_invalid)` in
/// order, or what is wrong with the first bad one.
pub fn from_kvm(
    buf: &[u8],
    entries: u64,
    mut each: impl FnMut(u32, &[u8], u16),
) -> Result<(), Error> {
    let mut at = 0;
    while at < buf.len() {
        let have = buf.len() - at;
        if have < HEADER {
            return Err(Error::Truncated {
                at,
                need: HEADER,
                have,
            });
        }
        let h = &buf[at..at + HEADER];
        let index = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]);
        let n_valid = u16::from_ne_bytes([h[4], h[5]]);
        let n_invalid = u16::from_ne_bytes([h[6], h[7]]);
        let need = HEADER + usize::from(n_valid) * HPTE_SIZE;
        if have < need {
            return Err(Error::Truncated { at, need, have });
        }
        let count = u64::from(n_valid) + u64::from(n_invalid);
        if u64::from(index) + count > entries {
            return Err(Error::OutOfRange {
                index,
                count,
                entries,
            });
        }
        each(index, &buf[at + HEADER..at + need], n_invalid);
        at += need;
    }
    Ok(())
}

/// One record as a write to KVM's HTAB fd takes it (host byte order):
/// `valid` (whole HPTEs, at most 65,535) from `index`, then `n_invalid`
/// entries to clear.
pub fn to_kvm(index: u32, valid: &[u8], n_invalid: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&index.to_ne_bytes());
    out.extend_from_slice(&((valid.len() / HPTE_SIZE) as u16).to_ne_bytes());
    out.extend_from_slice(&n_invalid.to_ne_bytes());
    out.extend_from_slice(valid);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpte(n: u8) -> [u8; HPTE_SIZE] {
        let mut e = [0; HPTE_SIZE];
        e[7] = 0x01; // HPTE64_V_VALID, big-endian
        e[15] = n;
        e
    }

    fn records() -> Vec<u8> {
        let mut b = vec![];
        to_kvm(0, &[hpte(1), hpte(2)].concat(), 6, &mut b);
        to_kvm(4096, &hpte(3), 0, &mut b);
        b
    }

    /// What a read returns comes back record by record.
    #[test]
    fn records_round_trip() {
        let raw = records();
        assert_eq!(raw[..4], 0u32.to_ne_bytes());
        assert_eq!(raw[4..6], 2u16.to_ne_bytes());
        assert_eq!(raw.len(), 8 + 32 + 8 + 16);
        let mut got = vec![];
        from_kvm(&raw, 1 << 16, |i, v, n| got.push((i, v.to_vec(), n))).unwrap();
        assert_eq!(
            got,
            [
                (0, [hpte(1), hpte(2)].concat(), 6),
                (4096, hpte(3).to_vec(), 0)
            ]
        );
    }

    /// A corrupt read is refused by what is wrong, never read past.
    #[test]
    fn bad_records_are_refused() {
        let none = |_: u32, _: &[u8], _: u16| {};
        assert_eq!(
            from_kvm(&records(), 4096, none).unwrap_err(),
            Error::OutOfRange {
                index: 4096,
                count: 1,
                entries: 4096
            }
        );
        assert!(matches!(
            from_kvm(&records()[..5], 1 << 16, none),
            Err(Error::Truncated {
                at: 0,
                need: 8,
                have: 5
            })
        ));
        assert!(matches!(
            from_kvm(&records()[..20], 1 << 16, none),
            Err(Error::Truncated {
                at: 0,
                need: 40,
                have: 20
            })
        ));
    }
}
