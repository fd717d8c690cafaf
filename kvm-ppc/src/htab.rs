//! KVM's HTAB fd records: how KVM hands the hash page table out (and
//! takes it back) — `struct kvm_get_htab_header` in host order (`index`,
//! `n_valid`, `n_invalid`), then `n_valid` big-endian HPTEs of 16 bytes,
//! the shape of the chunks QEMU's `spapr/htab` section carries
//! big-endian (the `migration` crate's `htab`).

use thiserror::Error;

/// Bytes of one HPTE (two doublewords).
pub const HPTE_SIZE: usize = 16;
const HEADER: usize = 8;

/// A run of the table: `valid` HPTEs from `index`, then `n_invalid`
/// invalid ones (not carried).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub index: u32,
    pub n_invalid: u16,
    /// `n_valid` HPTEs, 16 bytes each.
    pub valid: Vec<u8>,
}

impl Chunk {
    pub fn n_valid(&self) -> u16 {
        (self.valid.len() / HPTE_SIZE) as u16
    }

    fn end(&self) -> u64 {
        u64::from(self.index) + u64::from(self.n_valid()) + u64::from(self.n_invalid)
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    #[error("HTAB record at byte {at} is cut short: {need} bytes needed, {have} left")]
    Truncated { at: usize, need: usize, have: usize },
    #[error("HTAB chunk at entry {index} covers {count} entries, past the table's {entries}")]
    OutOfRange {
        index: u32,
        count: u64,
        entries: u64,
    },
}

/// One header and its HPTEs from `buf` at `at`: (index, valid, invalid).
fn record(
    buf: &[u8],
    at: usize,
    u32_of: fn([u8; 4]) -> u32,
    u16_of: fn([u8; 2]) -> u16,
) -> Result<(Chunk, usize), Error> {
    let have = buf.len() - at;
    if have < HEADER {
        return Err(Error::Truncated {
            at,
            need: HEADER,
            have,
        });
    }
    let h = &buf[at..at + HEADER];
    let index = u32_of([h[0], h[1], h[2], h[3]]);
    let n_valid = u16_of([h[4], h[5]]) as usize;
    let n_invalid = u16_of([h[6], h[7]]);
    let need = HEADER + n_valid * HPTE_SIZE;
    if have < need {
        return Err(Error::Truncated { at, need, have });
    }
    let valid = buf[at + HEADER..at + need].to_vec();
    Ok((
        Chunk {
            index,
            n_invalid,
            valid,
        },
        at + need,
    ))
}

fn check(c: &Chunk, entries: u64) -> Result<(), Error> {
    if c.end() > entries {
        return Err(Error::OutOfRange {
            index: c.index,
            count: c.end() - u64::from(c.index),
            entries,
        });
    }
    Ok(())
}

/// The records a read of KVM's HTAB fd returned (host byte order), for a
/// table of `entries` HPTEs.
pub fn from_kvm(buf: &[u8], entries: u64) -> Result<Vec<Chunk>, Error> {
    let mut out = vec![];
    let mut at = 0;
    while at < buf.len() {
        let (c, next) = record(buf, at, u32::from_ne_bytes, u16::from_ne_bytes)?;
        check(&c, entries)?;
        out.push(c);
        at = next;
    }
    Ok(out)
}

/// What a write to KVM's HTAB fd takes (host byte order).
pub fn to_kvm(chunks: &[Chunk]) -> Vec<u8> {
    let mut b = vec![];
    for c in chunks {
        b.extend_from_slice(&c.index.to_ne_bytes());
        b.extend_from_slice(&c.n_valid().to_ne_bytes());
        b.extend_from_slice(&c.n_invalid.to_ne_bytes());
        b.extend_from_slice(&c.valid);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpte(n: u8) -> [u8; HPTE_SIZE] {
        let mut e = [0; HPTE_SIZE];
        e[0] = 0x80; // HPTE_V_VALID's byte, big-endian
        e[15] = n;
        e
    }

    fn chunks() -> Vec<Chunk> {
        vec![
            Chunk {
                index: 0,
                n_invalid: 6,
                valid: [hpte(1), hpte(2)].concat(),
            },
            Chunk {
                index: 4096,
                n_invalid: 0,
                valid: hpte(3).to_vec(),
            },
        ]
    }

    /// KVM's records (host order) become the stream's chunks and back.
    #[test]
    fn kvm_records_round_trip() {
        let raw = to_kvm(&chunks());
        assert_eq!(raw[..4], 0u32.to_ne_bytes());
        assert_eq!(raw[4..6], 2u16.to_ne_bytes());
        assert_eq!(from_kvm(&raw, 1 << 16).unwrap(), chunks());
    }

    /// A corrupt read is refused by what is wrong, never read past.
    #[test]
    fn bad_records_are_refused() {
        assert_eq!(
            from_kvm(&to_kvm(&chunks()), 4096).unwrap_err(),
            Error::OutOfRange {
                index: 4096,
                count: 1,
                entries: 4096
            }
        );
        assert!(matches!(
            from_kvm(&to_kvm(&chunks())[..5], 1 << 16),
            Err(Error::Truncated {
                at: 0,
                need: 8,
                have: 5
            })
        ));
        assert!(matches!(
            from_kvm(&to_kvm(&chunks())[..20], 1 << 16),
            Err(Error::Truncated {
                at: 0,
                need: 40,
                have: 20
            })
        ));
    }
}
