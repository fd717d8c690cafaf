//! Guest RAM as the engine sees it: one named block (`pc.ram`) laid out
//! in host mappings, read in place when sending and written in place when
//! receiving. The VM side says where the mappings are; nothing here knows
//! a guest's physical memory map.

use crate::stream::{is_zero, RamSink, PAGE_SIZE};
use std::any::Any;
use vm_memory::VolatileSlice;

/// One host mapping of guest RAM and where it sits in the block.
#[derive(Clone, Copy, Debug)]
pub struct RamRegion {
    /// Byte offset of the mapping's first page in the block.
    pub offset: u64,
    host: *mut u8,
    len: usize,
}

// SAFETY: a RamRegion is an address range; who may touch the memory, and
// when, is decided by the engine's rules (see `Ram::new`), not by threads.
unsafe impl Send for RamRegion {}
// SAFETY: as above.
unsafe impl Sync for RamRegion {}

impl RamRegion {
    /// # Safety
    /// `host..host + len` must be mapped, readable and writable, and stay
    /// so for as long as the [`Ram`] that will hold this region lives.
    pub unsafe fn new(offset: u64, host: *mut u8, len: usize) -> RamRegion {
        RamRegion { offset, host, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.len / PAGE_SIZE
    }

    /// Page `i` of the region, which a running guest may write while it
    /// is read: a torn page is dirty again and travels again in the next
    /// pass, or the VM is stopped. A volatile slice, never a `&[u8]`.
    pub fn page(&self, i: usize) -> VolatileSlice<'_> {
        assert!(
            i < self.pages(),
            "page {i} of a {}-page region",
            self.pages()
        );
        // SAFETY: inside the mapping (asserted), which is valid for the
        // Ram's lifetime (RamRegion::new's contract); volatile accesses
        // only, so concurrent writes by the guest are allowed.
        unsafe { VolatileSlice::new(self.host.add(i * PAGE_SIZE), PAGE_SIZE) }
    }
}

/// A VM's RAM block and the mappings it lives in, kept alive together.
pub struct Ram {
    pub block: &'static str,
    /// The block's size (the guest's `-m`).
    pub size: u64,
    regions: Vec<RamRegion>,
    /// Whatever owns the mappings.
    _owner: Box<dyn Any + Send + Sync>,
}

impl Ram {
    /// `regions` in block order; `owner` keeps their mappings alive.
    ///
    /// # Safety
    /// Every region's mapping must stay valid while `owner` lives. Pages
    /// are written through a [`RamWriter`] only while nothing else runs on
    /// that memory (an incoming VM's vCPUs and devices are stopped).
    pub unsafe fn new(
        block: &'static str,
        size: u64,
        regions: Vec<RamRegion>,
        owner: Box<dyn Any + Send + Sync>,
    ) -> Ram {
        Ram {
            block,
            size,
            regions,
            _owner: owner,
        }
    }

    pub fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    /// The region holding block offset `offset`, and the byte in it.
    fn locate(&self, offset: u64) -> Option<(&RamRegion, usize)> {
        self.regions.iter().find_map(|r| {
            let at = offset.checked_sub(r.offset)? as usize;
            (at < r.len).then_some((r, at))
        })
    }

    /// The page at block offset `offset` (page aligned), to be written in
    /// place; `None` outside the block.
    ///
    /// # Safety
    /// Nothing else may access that page while the slice lives: on an
    /// incoming VM, whose vCPUs and devices are stopped, each page arrives
    /// on one connection only.
    // Exclusivity is the caller's to keep (the Safety section), as with
    // any view of guest memory shared with a guest.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn page_mut(&self, offset: u64) -> Option<&mut [u8]> {
        if !offset.is_multiple_of(PAGE_SIZE as u64) {
            return None;
        }
        let (r, at) = self.locate(offset)?;
        if at + PAGE_SIZE > r.len {
            return None;
        }
        // SAFETY: inside one mapping (checked above), which lives as long
        // as `self` (Ram::new's contract); exclusive per the caller's.
        Some(unsafe { std::slice::from_raw_parts_mut(r.host.add(at), PAGE_SIZE) })
    }

    /// Per region, a bitmap with every page set that was ever touched
    /// (present or swapped, per /proc/self/pagemap); pages never touched
    /// are zero and need not be read, let alone sent. Every page counts as
    /// touched when pagemap cannot be read.
    pub fn touched(&self) -> Vec<Vec<u64>> {
        self.regions
            .iter()
            .map(|r| {
                let pages = r.pages();
                let touched = touched_pages(r.host as usize, r.len)
                    .inspect_err(|e| {
                        log::warn!(
                            "cannot read /proc/self/pagemap ({e}): every page of guest RAM is read and sent"
                        )
                    })
                    .ok();
                let mut bits = vec![0u64; pages.div_ceil(64)];
                for i in 0..pages {
                    if touched.as_ref().is_none_or(|t| t[i]) {
                        bits[i / 64] |= 1 << (i % 64);
                    }
                }
                bits
            })
            .collect()
    }
}

/// Which pages of [addr, addr+len) were ever touched (present in memory or
/// swapped out), from /proc/self/pagemap.
fn touched_pages(addr: usize, len: usize) -> std::io::Result<Vec<bool>> {
    use std::io::{Read, Seek, SeekFrom};
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    let mut f = std::fs::File::open("/proc/self/pagemap")?;
    f.seek(SeekFrom::Start((addr / PAGE_SIZE * 8) as u64))?;
    let n = len / PAGE_SIZE;
    let mut raw = vec![0u8; n * 8];
    f.read_exact(&mut raw)?;
    Ok(raw
        .chunks_exact(8)
        .map(|e| u64::from_le_bytes(e.try_into().unwrap_or([0xff; 8])) & (PRESENT | SWAPPED) != 0)
        .collect())
}

/// The indices of the set bits below `n`, skipping empty words (a pass
/// over a large guest costs what is dirty, not its size).
pub fn set_bits(bits: &[u64], n: usize) -> impl Iterator<Item = usize> + '_ {
    bits.iter().enumerate().flat_map(move |(wi, &w)| {
        let mut w = w;
        std::iter::from_fn(move || {
            if w == 0 {
                return None;
            }
            let b = w.trailing_zeros() as usize;
            w &= w - 1;
            Some(wi * 64 + b)
        })
        .filter(move |&i| i < n)
    })
}

/// Set bits in per-region bitmaps.
pub fn count(bits: &[Vec<u64>]) -> u64 {
    bits.iter().flatten().map(|w| w.count_ones() as u64).sum()
}

/// ORs `more` into `into`, region by region.
pub fn merge(into: &mut [Vec<u64>], more: &[Vec<u64>]) {
    for (d, m) in into.iter_mut().zip(more) {
        for (a, b) in d.iter_mut().zip(m) {
            *a |= b;
        }
    }
}

/// Where an incoming VM's RAM is found by the multifd receivers, once its
/// board exists; emptied when the migration is over, so that the mapping
/// lives no longer than its board.
#[derive(Clone, Default)]
pub struct RamSlot(std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<Ram>>>>);

impl RamSlot {
    pub fn set(&self, ram: std::sync::Arc<Ram>) {
        *self.0.lock().expect("ram slot lock") = Some(ram);
    }

    /// Lets the RAM go (the migration is over).
    pub fn clear(&self) {
        self.0.lock().expect("ram slot lock").take();
    }

    /// The RAM, once there is some.
    pub(crate) fn wait(&self) -> std::sync::Arc<Ram> {
        loop {
            if let Some(r) = self.0.lock().expect("ram slot lock").clone() {
                return r;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// Writes incoming pages into a [`Ram`] (the stream reader's sink).
pub struct RamWriter<'a> {
    ram: &'a Ram,
    /// The first page that could not be written, if any.
    pub error: Option<String>,
}

impl<'a> RamWriter<'a> {
    pub fn new(ram: &'a Ram) -> RamWriter<'a> {
        RamWriter { ram, error: None }
    }
}

impl RamSink for RamWriter<'_> {
    fn block_len(&self, name: &str) -> Option<u64> {
        (name == self.ram.block).then_some(self.ram.size)
    }

    fn page(&mut self, _block: &str, offset: u64, data: &[u8]) {
        // SAFETY: the page is written and dropped here; a RamWriter writes
        // only into an incoming VM before it runs (Ram::new's contract).
        match unsafe { self.ram.page_mut(offset) } {
            // A zero page onto a page that already reads as zero (fresh
            // memory) is skipped: writing it would allocate the page for
            // nothing.
            Some(page) if is_zero(data) && is_zero(page) => {}
            Some(page) if data.len() == PAGE_SIZE => page.copy_from_slice(data),
            _ => {
                self.error
                    .get_or_insert(format!("cannot write guest RAM at {offset:#x}"));
            }
        }
    }

    fn page_target(&mut self, _block: &str, offset: u64) -> Option<&mut [u8]> {
        // SAFETY: borrowed from this writer, which the reader fills it
        // through before asking for the next page; as in `page`.
        unsafe { self.ram.page_mut(offset) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two regions with a hole between them in guest-physical terms, back
    /// to back in the block (as RAM below and above 4 GiB).
    fn ram(buf: &mut [u8]) -> Ram {
        let half = buf.len() / 2;
        let p = buf.as_mut_ptr();
        // SAFETY: both halves of `buf`, which outlives the Ram in each test.
        unsafe {
            Ram::new(
                "pc.ram",
                buf.len() as u64,
                vec![
                    RamRegion::new(0, p, half),
                    RamRegion::new(half as u64, p.add(half), half),
                ],
                Box::new(()),
            )
        }
    }

    #[test]
    fn pages_are_found_in_whichever_region_holds_them() {
        let mut buf = vec![0u8; 8 * PAGE_SIZE];
        let ram = ram(&mut buf);
        let mut w = RamWriter::new(&ram);
        w.page("pc.ram", 5 * PAGE_SIZE as u64, &[7; PAGE_SIZE]);
        w.page("pc.ram", 0, &[0; PAGE_SIZE]);
        assert!(w.error.is_none());
        // SAFETY: only looked at, nothing else uses the memory.
        unsafe {
            assert!(ram.page_mut(8 * PAGE_SIZE as u64).is_none(), "past the end");
            assert!(ram.page_mut(1).is_none(), "unaligned");
        }
        w.page("pc.ram", 8 * PAGE_SIZE as u64, &[1; PAGE_SIZE]);
        assert!(w.error.as_deref().unwrap().contains("0x8000"));
        drop(ram);
        assert!(buf[5 * PAGE_SIZE..6 * PAGE_SIZE].iter().all(|&b| b == 7));
        assert_eq!(buf.iter().filter(|&&b| b != 0).count(), PAGE_SIZE);
    }

    #[test]
    fn set_bits_lists_dirty_pages_only() {
        let bits = [0b1011u64, 0, 1 << 63 | 1];
        let got: Vec<usize> = set_bits(&bits, 200).collect();
        assert_eq!(got, vec![0, 1, 3, 128, 191]);
        assert_eq!(set_bits(&bits, 129).collect::<Vec<_>>(), vec![0, 1, 3, 128]);
        assert_eq!(count(&[bits.to_vec()]), 5);
    }
}
