//! The sPAPR hash page table in the stream: QEMU's iterative `spapr/htab`
//! section (`hw/ppc/spapr.c`, `htab_save_*` and `htab_load`), version 1.
//!
//! ```text
//! START  be32 order (log2 of the table's bytes), or 0xffffffff: no table
//! PART   be32 0, chunks, end marker     (be32 0xffffffff alone: no table)
//! END    as PART: the last pass, the VM stopped
//! chunk  be32 index, be16 n_valid, be16 n_invalid, n_valid HPTEs of 16
//!        bytes (big-endian, as in the table); the n_invalid after them
//!        are cleared
//! end    a chunk of zeros
//! ```
//!
//! The table's holder (the board's emulated table, or KVM-PPC's HTAB fd)
//! decides what a pass carries: every valid entry first, then the entries
//! changed since.

/// The section's name, instance and version, as QEMU's.
pub const IDSTR: &str = "spapr/htab";
pub const VERSION: u32 = 1;
/// Bytes of one HPTE (two doublewords).
pub const HPTE_SIZE: usize = 16;
/// The header word for "no table" (a radix guest's).
pub(crate) const NONE: u32 = u32::MAX;
/// The smallest and largest tables QEMU makes (`spapr_hpt_shift_for_ramsize`).
pub const MIN_ORDER: u32 = 18;
pub const MAX_ORDER: u32 = 46;

/// A run of the table: `valid` HPTEs from `index`, then `n_invalid`
/// entries cleared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    pub index: u32,
    pub n_invalid: u16,
    /// `n_valid` HPTEs, 16 bytes each (at most 65,535 of them).
    pub valid: Vec<u8>,
}

impl Chunk {
    pub fn n_valid(&self) -> u16 {
        (self.valid.len() / HPTE_SIZE) as u16
    }

    /// The first entry past the run.
    pub fn end(&self) -> u64 {
        u64::from(self.index) + u64::from(self.n_valid()) + u64::from(self.n_invalid)
    }
}

/// What one `spapr/htab` section says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pass {
    /// The source's guest has no hash table (radix): free this side's.
    Free,
    /// The table is 2^order bytes: (re)allocate it, empty.
    Order(u32),
    /// Entries to take, in stream order.
    Chunks(Vec<Chunk>),
}

/// The table as the migration engine reads it on the source.
pub trait HtabSource: Send + Sync {
    /// A migration (or save) starts: its first pass sends every valid
    /// entry, whatever an earlier one sent (QEMU's `htab_save_setup`).
    fn begin(&self);
    /// log2 of the table's bytes; `None` when the guest has no table.
    fn order(&self) -> Option<u32>;
    /// The entries to send next: every valid one until a whole pass has
    /// gone, then those changed since they were last sent (an entry that
    /// became invalid goes as cleared). With `last` (the VM is stopped),
    /// everything still unsent.
    fn changes(&self, last: bool) -> Result<Vec<Chunk>, String>;
}

/// One PART or END section's body: the header word, the chunks and the
/// end marker (or the "no table" word alone).
pub(crate) fn encode_pass(has_table: bool, chunks: &[Chunk], out: &mut Vec<u8>) {
    if !has_table {
        out.extend_from_slice(&NONE.to_be_bytes());
        return;
    }
    out.extend_from_slice(&0u32.to_be_bytes());
    for c in chunks {
        out.extend_from_slice(&c.index.to_be_bytes());
        out.extend_from_slice(&c.n_valid().to_be_bytes());
        out.extend_from_slice(&c.n_invalid.to_be_bytes());
        out.extend_from_slice(&c.valid);
    }
    out.extend_from_slice(&[0; 8]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{Error, NoRam, Reader, Record, Writer};

    fn hpte(n: u8) -> [u8; HPTE_SIZE] {
        let mut e = [0; HPTE_SIZE];
        e[7] = 0x01; // HPTE64_V_VALID, big-endian
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

    /// START, a PART with chunks and an END with none, as bytes.
    fn stream(order: u32, chunks: &[Chunk]) -> Vec<u8> {
        let mut w = Writer::new(vec![], "pseries-2.8").unwrap();
        let id = w.htab_start(Some(order)).unwrap();
        w.htab_pass(id, false, true, chunks).unwrap();
        w.htab_pass(id, true, true, &[]).unwrap();
        w.finish().unwrap()
    }

    fn read(bytes: &[u8]) -> Result<Vec<(Pass, bool)>, Error> {
        let mut r = Reader::new(bytes, "pseries-2.8")?;
        let mut out = vec![];
        loop {
            match r.next_record(&|_, _| None, &mut NoRam)? {
                Record::Htab { pass, last } => out.push((pass, last)),
                Record::Eof { .. } => return Ok(out),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// QEMU's bytes: the START carries the order, a PART the header word
    /// 0, be32 index, be16 valid, be16 invalid and the HPTEs, a zero chunk
    /// ending it; each with the section's footer.
    #[test]
    fn the_section_is_qemus_layout() {
        let b = stream(20, &chunks());
        let start = 8 + 1 + 4 + 11; // header, configuration "pseries-2.8"
        let name = b"spapr/htab";
        assert_eq!(b[start], 0x01);
        assert_eq!(b[start + 5] as usize, name.len());
        assert_eq!(&b[start + 6..start + 16], name);
        let at = start + 16;
        assert_eq!(
            b[at..at + 8],
            [0, 0, 0, 0, 0, 0, 0, 1],
            "instance 0, version 1"
        );
        assert_eq!(b[at + 8..at + 12], 20u32.to_be_bytes(), "the order");
        assert_eq!(b[at + 12], 0x7e);
        let part = at + 17;
        assert_eq!(b[part], 0x02);
        let body = part + 5;
        assert_eq!(b[body..body + 4], [0; 4], "the header word");
        assert_eq!(b[body + 4..body + 12], [0, 0, 0, 0, 0, 2, 0, 6]);
        assert_eq!(b[body + 12..body + 28], hpte(1));
        assert_eq!(b[body + 44..body + 52], [0, 0, 0x10, 0, 0, 1, 0, 0]);
        let end = body + 52 + 16;
        assert_eq!(b[end..end + 8], [0; 8], "the end marker");
        assert_eq!(b[end + 8], 0x7e);
        assert_eq!(
            read(&b).unwrap(),
            vec![
                (Pass::Order(20), false),
                (Pass::Chunks(chunks()), false),
                (Pass::Chunks(vec![]), true)
            ]
        );
    }

    /// A radix guest's: the START and every pass say "no table".
    #[test]
    fn no_table_is_one_word() {
        let mut w = Writer::new(vec![], "pseries-2.8").unwrap();
        let id = w.htab_start(None).unwrap();
        w.htab_pass(id, true, false, &[]).unwrap();
        let b = w.finish().unwrap();
        assert_eq!(
            read(&b).unwrap(),
            vec![(Pass::Free, false), (Pass::Free, true)]
        );
        assert_eq!(b[24 + 16 + 8..24 + 16 + 12], [0xff; 4]);
    }

    /// A corrupt section is refused by what is wrong and where, never
    /// read past the table or without end.
    #[test]
    fn bad_sections_are_refused() {
        // A chunk past the end of the smallest table (2^18 bytes,
        // 16,384 entries).
        let past = [Chunk {
            index: 16_380,
            n_invalid: 4,
            valid: hpte(1).to_vec(),
        }];
        let e = read(&stream(18, &past)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::HtabOutOfRange {
                    index: 16_380,
                    end: 16_385,
                    entries: 16_384,
                    ..
                }
            ),
            "{e}"
        );
        // An order QEMU never makes.
        let mut b = stream(18, &[]);
        b[24 + 16 + 8..24 + 16 + 12].copy_from_slice(&47u32.to_be_bytes());
        let e = read(&b).unwrap_err();
        assert!(matches!(e, Error::HtabOrder { order: 47, .. }), "{e}");
        assert!(e.to_string().contains("18 to 46"), "{e}");
        // A version before QEMU's first, or after it.
        let mut b = stream(18, &[]);
        b[44..48].copy_from_slice(&0u32.to_be_bytes());
        let e = read(&b).unwrap_err();
        assert!(
            matches!(
                e,
                Error::VersionTooOld {
                    stream: 0,
                    minimum: 1,
                    ..
                }
            ),
            "{e}"
        );
        b[44..48].copy_from_slice(&2u32.to_be_bytes());
        let e = read(&b).unwrap_err();
        assert!(
            matches!(
                e,
                Error::VersionTooNew {
                    stream: 2,
                    local: 1,
                    ..
                }
            ),
            "{e}"
        );
        // Chunks before any order.
        let mut w = Writer::new(vec![], "pseries-2.8").unwrap();
        let id = w.htab_start(Some(18)).unwrap();
        w.htab_pass(id, false, true, &chunks()[..1]).unwrap();
        let mut b = w.finish().unwrap();
        let order_at = 24 + 16 + 8;
        b[order_at..order_at + 4].copy_from_slice(&[0; 4]);
        let e = read(&b).unwrap_err();
        assert!(matches!(e, Error::HtabNoTable { .. }), "{e}");
        // Chunks that never end: the same entry, over and over.
        let again: Vec<Chunk> = (0..140_000)
            .map(|_| Chunk {
                index: 5,
                n_invalid: 1,
                valid: vec![],
            })
            .collect();
        let e = read(&stream(18, &again)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::HtabTooLong {
                    entries: 16_384,
                    ..
                }
            ),
            "{e}"
        );
        // Cut short inside a chunk's entries.
        let b = stream(20, &chunks());
        let e = read(&b[..24 + 33 + 5 + 4 + 8 + 20]).unwrap_err();
        assert!(matches!(e, Error::Truncated { .. }), "{e}");
    }
}
