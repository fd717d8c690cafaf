//! The sPAPR hash page table where the platform holds it: QEMU's "vhyp"
//! table under TCG and qtest (KVM-PPC HV keeps its own in the kernel and
//! serves these calls there). The guest edits it only through the MMU
//! hypercalls — `H_ENTER`, `H_REMOVE`, `H_READ`, `H_PROTECT`,
//! `H_BULK_REMOVE` — served as QEMU 7.2's `spapr_softmmu.c` serves them;
//! every entry they store is marked changed, so a migration sends the
//! valid entries once and then only what changed (QEMU's `spapr/htab`
//! passes, which keep the marks in a software bit of the entry itself;
//! here they are a bitmap beside the table, so `H_READ` never shows one).
//!
//! The table is 2^order bytes of 16-byte big-endian HPTEs, in groups
//! (PTEGs) of 8.

use migration::htab::{Chunk, HtabSource, HPTE_SIZE};
use std::sync::{Arc, Mutex};

/// First doubleword.
pub const V_VALID: u64 = 0x1;
pub const V_LARGE: u64 = 0x4;
/// Second doubleword.
pub const R_RPN: u64 = 0x0fff_ffff_ffff_f000;
pub const R_WIMG: u64 = 0x78;
pub const R_W: u64 = 0x40;
pub const R_I: u64 = 0x20;
pub const R_M: u64 = 0x10;
const R_PP0: u64 = 0x8000_0000_0000_0000;
const R_KEY_HI: u64 = 0x3000_0000_0000_0000;
const R_KEY_LO: u64 = 0xe00;
const R_N: u64 = 0x4;
const R_PP: u64 = 0x3;
const R_C: u64 = 0x80;
const R_R: u64 = 0x100;

/// The calls' flags (PAPR bit numbers, MSB 0).
pub const H_EXACT: u64 = 1 << (63 - 24);
pub const H_READ_4: u64 = 1 << (63 - 26);
pub const H_AVPN: u64 = 1 << (63 - 32);
pub const H_ANDCOND: u64 = 1 << (63 - 33);

/// H_BULK_REMOVE's translation specifiers.
const BULK_TYPE: u64 = 0xc000_0000_0000_0000;
const BULK_REQUEST: u64 = 0x4000_0000_0000_0000;
const BULK_RESPONSE: u64 = 0x8000_0000_0000_0000;
const BULK_END: u64 = 0xc000_0000_0000_0000;
const BULK_FLAGS: u64 = 0x0300_0000_0000_0000;
const BULK_ANDCOND: u64 = 0x0100_0000_0000_0000;
const BULK_AVPN: u64 = 0x0200_0000_0000_0000;
const BULK_PTEX: u64 = 0x00ff_ffff_ffff_ffff;
const BULK_PARM: u64 = 0x2000_0000_0000_0000;

/// Why an MMU hypercall failed (the caller turns it into PAPR's code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HptError {
    /// `H_PARAMETER`: an index outside the table, a page size or storage
    /// attributes the platform does not take.
    Parameter,
    /// `H_PTEG_FULL`: no free slot where the entry was asked to go.
    PtegFull,
    /// `H_NOT_FOUND`: no valid entry there, or not the one named.
    NotFound,
}

/// The page an entry maps: 4 KiB unless it is large, then the first of
/// `large` (page shift, encoding in the RPN's low bits) its encoding
/// matches; 0 for none (QEMU's `ppc_hash64_hpte_page_shift_noslb`).
pub fn page_shift(large: &[(u32, u64)], v: u64, r: u64) -> u32 {
    if v & V_LARGE == 0 {
        return 12;
    }
    large
        .iter()
        .find(|&&(shift, enc)| r & (((1u64 << shift) - 1) & R_RPN) == enc << 12)
        .map_or(0, |p| p.0)
}

/// The table and which of its entries changed since a migration last
/// sent them.
pub struct Hpt {
    order: u32,
    table: Vec<u8>,
    /// Guest RAM's size: entries mapping below it must be cacheable
    /// memory (WIMG = 0010).
    ram_size: u64,
    /// The large pages the machine lets a guest map ([`page_shift`]).
    large: Vec<(u32, u64)>,
    /// One bit an entry: stored since last sent.
    changed: Vec<u64>,
    /// No pass has sent the whole table yet.
    first_pass: bool,
}

impl Hpt {
    /// An empty table of 2^order bytes for a guest with `ram_size` bytes
    /// of RAM that may map the `large` pages ([`page_shift`]).
    pub fn new(order: u32, ram_size: u64, large: Vec<(u32, u64)>) -> Hpt {
        let entries = 1usize << (order - 4);
        Hpt {
            order,
            table: vec![0; 1 << order],
            ram_size,
            large,
            changed: vec![0; entries.div_ceil(64)],
            first_pass: true,
        }
    }

    pub fn order(&self) -> u32 {
        self.order
    }

    pub fn entries(&self) -> u64 {
        1 << (self.order - 4)
    }

    /// Entry `i`'s two doublewords.
    fn get(&self, i: u64) -> (u64, u64) {
        let at = i as usize * HPTE_SIZE;
        let dw = |o: usize| u64::from_be_bytes(self.table[o..o + 8].try_into().expect("8 bytes"));
        (dw(at), dw(at + 8))
    }

    fn set(&mut self, i: u64, v: u64, r: u64) {
        let at = i as usize * HPTE_SIZE;
        self.table[at..at + 8].copy_from_slice(&v.to_be_bytes());
        self.table[at + 8..at + 16].copy_from_slice(&r.to_be_bytes());
        self.changed[i as usize / 64] |= 1 << (i % 64);
    }

    fn check(&self, ptex: u64) -> Result<(), HptError> {
        if ptex < self.entries() {
            Ok(())
        } else {
            Err(HptError::Parameter)
        }
    }

    /// `H_ENTER(flags, ptex, pteh, ptel)`: stores the entry in the first
    /// free slot of `ptex`'s group (or exactly at `ptex` with `H_EXACT`);
    /// returns where.
    pub fn enter(&mut self, flags: u64, ptex: u64, pteh: u64, ptel: u64) -> Result<u64, HptError> {
        let shift = page_shift(&self.large, pteh, ptel);
        if shift == 0 {
            return Err(HptError::Parameter);
        }
        let raddr = (ptel & R_RPN) & !((1u64 << shift) - 1);
        if raddr < self.ram_size {
            // RAM: cacheable, coherent memory only.
            if ptel & R_WIMG != R_M {
                return Err(HptError::Parameter);
            }
        } else {
            // I/O: cache-inhibited, perhaps coherent.
            let wim = ptel & (R_W | R_I | R_M);
            if wim != R_I && wim != R_I | R_M {
                return Err(HptError::Parameter);
            }
        }
        let pteh = pteh & !0x60;
        self.check(ptex)?;
        let group = ptex & !7;
        let slot = if flags & H_EXACT == 0 {
            (group..group + 8)
                .find(|&i| self.get(i).0 & V_VALID == 0)
                .ok_or(HptError::PtegFull)?
        } else if self.get(ptex).0 & V_VALID != 0 {
            return Err(HptError::PtegFull);
        } else {
            ptex
        };
        self.set(slot, pteh, ptel);
        Ok(slot)
    }

    /// `H_REMOVE(flags, ptex, avpn)`: the removed entry's doublewords, if
    /// it was valid (and, with `H_AVPN`, maps `avpn`; with `H_ANDCOND`,
    /// has none of its bits).
    pub fn remove(&mut self, flags: u64, ptex: u64, avpn: u64) -> Result<(u64, u64), HptError> {
        self.check(ptex)?;
        let (v, r) = self.get(ptex);
        if v & V_VALID == 0
            || (flags & H_AVPN != 0 && v & !0x7f != avpn)
            || (flags & H_ANDCOND != 0 && v & avpn != 0)
        {
            return Err(HptError::NotFound);
        }
        self.set(ptex, 0, 0);
        Ok((v, r))
    }

    /// `H_BULK_REMOVE`: up to four (specifier, avpn) pairs in `args`, each
    /// specifier rewritten into its response, as QEMU's `h_bulk_remove`.
    pub fn bulk_remove(&mut self, args: &mut [u64]) -> Result<(), HptError> {
        for pair in args.chunks_exact_mut(2).take(4) {
            let (tsh, tsl) = (pair[0], pair[1]);
            match tsh & BULK_TYPE {
                BULK_END => break,
                BULK_REQUEST => {}
                _ => return Err(HptError::Parameter),
            }
            let mut resp = (tsh & (BULK_PTEX | BULK_FLAGS)) | BULK_RESPONSE;
            if resp & BULK_ANDCOND != 0 && resp & BULK_AVPN != 0 {
                pair[0] = resp | BULK_PARM;
                return Err(HptError::Parameter);
            }
            // The specifier's flags are H_REMOVE's, 26 bits up.
            let flags = (resp & BULK_FLAGS) >> 26;
            match self.remove(flags, resp & BULK_PTEX, tsl) {
                Ok((_, r)) => resp |= (r & (R_C | R_R)) << 43,
                Err(HptError::NotFound) => resp |= 1 << 60,
                Err(e) => {
                    pair[0] = resp | BULK_PARM;
                    return Err(e);
                }
            }
            pair[0] = resp;
        }
        Ok(())
    }

    /// `H_PROTECT(flags, ptex, avpn)`: new page protection and key bits.
    pub fn protect(&mut self, flags: u64, ptex: u64, avpn: u64) -> Result<(), HptError> {
        self.check(ptex)?;
        let (v, mut r) = self.get(ptex);
        if v & V_VALID == 0 || (flags & H_AVPN != 0 && v & !0x7f != avpn) {
            return Err(HptError::NotFound);
        }
        r &= !(R_PP0 | R_PP | R_N | R_KEY_HI | R_KEY_LO);
        r |= (flags << 55) & R_PP0;
        r |= (flags << 48) & R_KEY_HI;
        r |= flags & (R_PP | R_N | R_KEY_LO);
        self.set(ptex, v, r);
        Ok(())
    }

    /// `H_READ(flags, ptex)`: the entry, or with `H_READ_4` the four from
    /// `ptex` rounded down to a multiple of 4.
    pub fn read(&self, flags: u64, ptex: u64) -> Result<Vec<(u64, u64)>, HptError> {
        self.check(ptex)?;
        let (from, n) = if flags & H_READ_4 != 0 {
            (ptex & !3, 4)
        } else {
            (ptex, 1)
        };
        Ok((from..from + n).map(|i| self.get(i)).collect())
    }

    /// A migration starts: its first pass sends every valid entry.
    pub fn begin_migration(&mut self) {
        self.first_pass = true;
    }

    /// The next migration pass: on the first, every valid entry; then
    /// every entry stored since it was last sent, the invalid ones as
    /// cleared (QEMU's `htab_save_first_pass` and `htab_save_later_pass`,
    /// here each a whole pass).
    pub fn changes(&mut self) -> Vec<Chunk> {
        let first = std::mem::replace(&mut self.first_pass, false);
        let n = self.entries();
        let valid = |t: &Hpt, i: u64| t.table[i as usize * HPTE_SIZE + 7] & V_VALID as u8 != 0;
        let changed = |t: &Hpt, i: u64| t.changed[i as usize / 64] & (1 << (i % 64)) != 0;
        let send = |t: &Hpt, i: u64| if first { valid(t, i) } else { changed(t, i) };
        let mut out = vec![];
        let mut i = 0;
        while i < n {
            if !first && self.changed[i as usize / 64] == 0 {
                i = (i | 63) + 1;
                continue;
            }
            if !send(self, i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < n && i - start < u64::from(u16::MAX) && send(self, i) && valid(self, i) {
                i += 1;
            }
            let cleared = i;
            while !first
                && i < n
                && i - cleared < u64::from(u16::MAX)
                && changed(self, i)
                && !valid(self, i)
            {
                i += 1;
            }
            out.push(Chunk {
                index: start as u32,
                n_invalid: (i - cleared) as u16,
                valid: self.table[start as usize * HPTE_SIZE..cleared as usize * HPTE_SIZE]
                    .to_vec(),
            });
        }
        self.changed.fill(0);
        out
    }

    /// A migration's table of 2^order bytes replaces this one, empty.
    pub fn resize(&mut self, order: u32) {
        *self = Hpt::new(order, self.ram_size, std::mem::take(&mut self.large));
    }

    /// A chunk from a migration (inside the table: the stream's reader
    /// checked it against the order it gave).
    pub fn load(&mut self, c: &Chunk) -> Result<(), HptError> {
        if c.end() > self.entries() {
            return Err(HptError::Parameter);
        }
        let at = c.index as usize * HPTE_SIZE;
        self.table[at..at + c.valid.len()].copy_from_slice(&c.valid);
        let cleared = at + c.valid.len();
        self.table[cleared..cleared + usize::from(c.n_invalid) * HPTE_SIZE].fill(0);
        Ok(())
    }
}

/// The board's table (shared with the vCPUs' hypercalls) as the
/// migration engine reads it.
pub struct Migrated(pub Arc<Mutex<Hpt>>);

impl HtabSource for Migrated {
    fn begin(&self) {
        self.0.lock().expect("hpt lock").begin_migration();
    }

    fn order(&self) -> Option<u32> {
        Some(self.0.lock().expect("hpt lock").order)
    }

    fn changes(&self, _last: bool) -> Result<Vec<Chunk>, String> {
        // Every pass is whole: the last one is like the others.
        Ok(self.0.lock().expect("hpt lock").changes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pseries-2.8's large pages: 16 MiB and 16 GiB too.
    fn large() -> Vec<(u32, u64)> {
        vec![(24, 0x38), (16, 1), (24, 8), (24, 0), (34, 3)]
    }

    /// 2^18 bytes: 16,384 entries, 2,048 groups; 256 MiB of RAM.
    fn hpt() -> Hpt {
        Hpt::new(18, 256 << 20, large())
    }

    /// A 4 KiB page of RAM at `page`, cacheable (WIMG = 0010).
    fn ram_pte(page: u64) -> u64 {
        (page << 12) | R_M
    }

    #[test]
    fn enter_takes_the_first_free_slot_of_the_group_or_the_exact_one() {
        let mut t = hpt();
        let v = (0xabc << 7) | V_VALID;
        assert_eq!(t.enter(0, 17, v, ram_pte(1)), Ok(16));
        assert_eq!(t.enter(0, 17, v, ram_pte(2)), Ok(17));
        assert_eq!(t.enter(H_EXACT, 20, v, ram_pte(3)), Ok(20));
        assert_eq!(t.enter(H_EXACT, 20, v, ram_pte(4)), Err(HptError::PtegFull));
        for _ in 0..5 {
            t.enter(0, 16, v, ram_pte(5)).unwrap();
        }
        assert_eq!(t.enter(0, 23, v, ram_pte(6)), Err(HptError::PtegFull));
        assert_eq!(t.read(0, 20), Ok(vec![(v, ram_pte(3))]));
        // The software bits QEMU keeps in the entry are the guest's to
        // lose.
        assert_eq!(t.enter(0, 0, v | 0x60, ram_pte(7)), Ok(0));
        assert_eq!(t.read(0, 0).unwrap()[0].0, v);
    }

    #[test]
    fn enter_refuses_what_qemu_refuses() {
        let mut t = hpt();
        let v = V_VALID;
        assert_eq!(
            t.enter(0, 16_384, v, ram_pte(1)),
            Err(HptError::Parameter),
            "past the table"
        );
        assert_eq!(
            t.enter(0, 0, v, 1 << 12),
            Err(HptError::Parameter),
            "RAM not coherent"
        );
        assert_eq!(
            t.enter(0, 0, v, ram_pte(1) | R_I),
            Err(HptError::Parameter),
            "RAM inhibited"
        );
        let io = 1u64 << 40;
        assert_eq!(t.enter(0, 0, v, io | R_I), Ok(0), "I/O, cache-inhibited");
        assert_eq!(
            t.enter(0, 0, v, io | R_M),
            Err(HptError::Parameter),
            "I/O cached"
        );
        // Large pages: 64 KiB (encoding 1 in a 64 KiB segment), 16 MiB,
        // 16 GiB; from pseries-3.0 64 KiB only.
        assert_eq!(page_shift(&large(), V_LARGE, 0x1000), 16);
        assert_eq!(page_shift(&large(), V_LARGE, 0x1_000_000), 24);
        assert_eq!(page_shift(&large(), V_LARGE, 0x4_0000_3000), 34);
        assert_eq!(page_shift(&[(16, 1)], V_LARGE, 0x1_000_000), 0);
        assert_eq!(page_shift(&large(), V_LARGE, 0x5000), 0);
        assert_eq!(
            t.enter(0, 8, v | V_LARGE, 0x5000 | R_M),
            Err(HptError::Parameter)
        );
        assert_eq!(t.enter(0, 8, v | V_LARGE, 0x1_0000 | 0x1000 | R_M), Ok(8));
    }

    #[test]
    fn remove_protect_and_read_four() {
        let mut t = hpt();
        let v = (0x1234 << 7) | V_VALID;
        t.enter(H_EXACT, 41, v, ram_pte(9)).unwrap();
        assert_eq!(
            t.remove(H_AVPN, 41, v & !0x7f ^ 0x80),
            Err(HptError::NotFound)
        );
        assert_eq!(t.remove(H_ANDCOND, 41, 0x200), Err(HptError::NotFound));
        t.protect(0x3 | (1 << 63 >> 55), 41, 0).unwrap();
        let (_, r) = t.read(0, 41).unwrap()[0];
        assert_eq!(r, ram_pte(9) | 0x3 | R_PP0);
        let four = t.read(H_READ_4, 43).unwrap();
        assert_eq!(four.len(), 4);
        assert_eq!(four[1], (v, r));
        assert_eq!(t.remove(H_AVPN, 41, v & !0x7f), Ok((v, r)));
        assert_eq!(t.remove(0, 41, 0), Err(HptError::NotFound));
        assert_eq!(t.protect(0, 41, 0), Err(HptError::NotFound));
    }

    #[test]
    fn bulk_remove_answers_each_request() {
        let mut t = hpt();
        let v = V_VALID;
        t.enter(H_EXACT, 3, v, ram_pte(1) | R_C).unwrap();
        let mut args = [BULK_REQUEST | 3, 0, BULK_REQUEST | 4, 0, BULK_END, 0, 0, 0];
        assert_eq!(t.bulk_remove(&mut args), Ok(()));
        assert_eq!(args[0], BULK_RESPONSE | 3 | (R_C << 43));
        assert_eq!(args[2], BULK_RESPONSE | 4 | (1 << 60), "not found");
        assert_eq!(t.read(0, 3).unwrap()[0], (0, 0));
        let mut bad = [BULK_REQUEST | 16_384, 0];
        assert_eq!(t.bulk_remove(&mut bad), Err(HptError::Parameter));
        assert_eq!(bad[0] & BULK_PARM, BULK_PARM);
    }

    /// The first pass sends the valid entries; later ones what changed,
    /// a removed entry as cleared; a table loading them ends up equal.
    #[test]
    fn passes_carry_the_table_to_a_fresh_one() {
        let mut t = hpt();
        let v = V_VALID;
        for i in [0, 1, 2, 100, 16_383] {
            t.enter(H_EXACT, i, v | (i << 7), ram_pte(i)).unwrap();
        }
        let mut dst = Hpt::new(20, 256 << 20, large());
        dst.resize(18);
        let first = t.changes();
        assert_eq!(
            first
                .iter()
                .map(|c| (c.index, c.n_valid(), c.n_invalid))
                .collect::<Vec<_>>(),
            vec![(0, 3, 0), (100, 1, 0), (16_383, 1, 0)]
        );
        assert!(t.changes().is_empty(), "nothing changed since");
        // Another migration starts over: everything valid again.
        t.begin_migration();
        assert_eq!(t.changes(), first);
        assert!(t.changes().is_empty());
        t.remove(0, 1, 0).unwrap();
        t.remove(0, 2, 0).unwrap();
        t.enter(H_EXACT, 5000, v, ram_pte(3)).unwrap();
        t.protect(0x2, 100, 0).unwrap();
        let later = t.changes();
        assert_eq!(
            later
                .iter()
                .map(|c| (c.index, c.n_valid(), c.n_invalid))
                .collect::<Vec<_>>(),
            vec![(1, 0, 2), (100, 1, 0), (5000, 1, 0)]
        );
        for c in first.iter().chain(&later) {
            dst.load(c).unwrap();
        }
        assert!(dst.table == t.table, "the tables differ");
        assert_eq!(
            dst.load(&Chunk {
                index: 16_383,
                n_invalid: 1,
                valid: vec![0; 16]
            }),
            Err(HptError::Parameter)
        );
    }
}
