//! Pages on their way out: guest memory that a running guest may write
//! while it is sent. Such memory is never seen as a `&[u8]` (that would
//! promise Rust nothing changes it, a data race by Rust's rules even when
//! only the kernel reads it): it travels as [`VolatileSlice`]s, handed to
//! `writev` as they are or copied out with vm-memory's volatile copy, and
//! its zero check reads it with volatile loads.

use std::io::Write;
use vm_memory::{VolatileMemory, VolatileSlice};

/// Whether a page is all zero. Runs for every page a migration sends, on
/// memory a running guest may be writing: eight volatile word loads per
/// step, aligned; as fast as the plain-slice check it replaced
/// (`scripts/bench/zero-page.sh`).
pub fn is_zero_page(page: &VolatileSlice) -> bool {
    const STEP: usize = 64;
    let guard = page.ptr_guard();
    let p = guard.as_ptr();
    let whole = if p.align_offset(8) == 0 {
        page.len() / STEP * STEP
    } else {
        0
    };
    let words = p.cast::<u64>();
    for i in (0..whole / 8).step_by(STEP / 8) {
        let mut acc = 0;
        for k in 0..STEP / 8 {
            // SAFETY: `page` is valid for reads of `len` bytes while its
            // guard lives (VolatileSlice's invariant); `i + k` words are
            // below `whole` <= len bytes, and `p` is 8-aligned (checked).
            // Volatile: the guest may write the word meanwhile.
            acc |= unsafe { std::ptr::read_volatile(words.add(i + k)) };
        }
        if acc != 0 {
            return false;
        }
    }
    // The rest (an unaligned or odd-sized page, which guest RAM never is).
    let rest = match page.offset(whole) {
        Ok(r) => r,
        Err(_) => return true,
    };
    let Ok(bytes) = rest.get_array_ref::<u8>(0, rest.len()) else {
        return false;
    };
    (0..bytes.len()).all(|i| bytes.load(i) == 0)
}

/// What gathered records and guest pages are written to.
pub trait GuestWrite: Write {
    /// Writes a prefix of `bufs` and returns its length. The buffers may
    /// be guest memory that a running guest writes meanwhile: hand them
    /// to the kernel as they are (`writev`) or copy them out with
    /// [`copy_out`]; never make a `&[u8]` of them.
    fn write_slices(&mut self, bufs: &[VolatileSlice]) -> std::io::Result<usize>;
}

/// Copies `bufs` out of guest memory (vm-memory's volatile copy) and
/// writes them whole to `w`: for writers that are not a descriptor
/// (a buffer, a file behind a `BufWriter`, a test).
pub fn copy_out<W: Write + ?Sized>(w: &mut W, bufs: &[VolatileSlice]) -> std::io::Result<usize> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut out = vec![0u8; total];
    let mut at = 0;
    for b in bufs {
        at += b.copy_to(&mut out[at..at + b.len()]);
    }
    w.write_all(&out)?;
    Ok(total)
}

impl GuestWrite for Vec<u8> {
    fn write_slices(&mut self, bufs: &[VolatileSlice]) -> std::io::Result<usize> {
        copy_out(self, bufs)
    }
}

/// Small record bytes and whole pages, written with one `writev` per
/// [`Gather::FULL`] bytes: pages go from guest memory to the socket
/// without being copied into a buffer first.
pub struct Gather<'p> {
    head: Vec<u8>,
    segs: Vec<Seg<'p>>,
    bytes: usize,
}

enum Seg<'p> {
    /// The next `n` bytes of `head` (segments take `head` in order).
    Head(usize),
    Page(VolatileSlice<'p>),
}

impl<'p> Gather<'p> {
    /// Bytes gathered before a write is due.
    pub const FULL: usize = 1 << 20;
    /// Segments per `writev` (below Linux's IOV_MAX of 1024).
    const MAX_SEGS: usize = 1000;

    pub fn new() -> Gather<'p> {
        Gather {
            head: Vec::with_capacity(16 << 10),
            segs: Vec::with_capacity(Self::MAX_SEGS),
            bytes: 0,
        }
    }

    /// Record bytes (copied; consecutive ones share a segment).
    pub fn head(&mut self, b: &[u8]) {
        self.head.extend_from_slice(b);
        match self.segs.last_mut() {
            Some(Seg::Head(n)) => *n += b.len(),
            _ => self.segs.push(Seg::Head(b.len())),
        }
        self.bytes += b.len();
    }

    /// A page, referenced (not copied) until the next write.
    pub fn page(&mut self, p: VolatileSlice<'p>) {
        self.bytes += p.len();
        self.segs.push(Seg::Page(p));
    }

    /// Whether a write is due.
    pub fn full(&self) -> bool {
        self.bytes >= Self::FULL || self.segs.len() + 2 >= Self::MAX_SEGS
    }

    /// Writes everything gathered, then starts over.
    pub fn write_to<W: GuestWrite + ?Sized>(&mut self, w: &mut W) -> std::io::Result<()> {
        let mut head = &mut self.head[..];
        let mut slices: Vec<VolatileSlice> = Vec::with_capacity(self.segs.len());
        for s in &self.segs {
            match s {
                Seg::Head(n) => {
                    let (this, rest) = std::mem::take(&mut head).split_at_mut(*n);
                    head = rest;
                    slices.push(VolatileSlice::from(this));
                }
                Seg::Page(p) => slices.push(*p),
            }
        }
        let mut first = 0;
        while first < slices.len() {
            match w.write_slices(&slices[first..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(mut n) => {
                    // Past what was written: whole slices, then into one.
                    while first < slices.len() && n >= slices[first].len() {
                        n -= slices[first].len();
                        first += 1;
                    }
                    if n > 0 {
                        slices[first] = slices[first]
                            .offset(n)
                            .map_err(|_| std::io::Error::other("a writer wrote too much"))?;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        drop(slices);
        self.head.clear();
        self.segs.clear();
        self.bytes = 0;
        Ok(())
    }
}

impl Default for Gather<'_> {
    fn default() -> Self {
        Gather::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pages_are_told_from_pages_with_one_byte_set() {
        let mut page = vec![0u64; 512];
        let bytes = |p: &mut Vec<u64>| {
            // SAFETY: test memory, not touched otherwise while the slice lives.
            unsafe { VolatileSlice::new(p.as_mut_ptr().cast(), 4096) }
        };
        assert!(is_zero_page(&bytes(&mut page)));
        for at in [0, 7, 8, 63, 64, 4000, 4095] {
            let mut p = page.clone();
            p[at / 8] = 1 << (8 * (at % 8));
            assert!(!is_zero_page(&bytes(&mut p)), "byte {at}");
        }
        // Unaligned and odd-sized: the byte path.
        let mut raw = [0u8; 200];
        assert!(is_zero_page(&VolatileSlice::from(&mut raw[1..198])));
        raw[150] = 1;
        assert!(!is_zero_page(&VolatileSlice::from(&mut raw[1..198])));
        assert!(is_zero_page(&VolatileSlice::from(&mut raw[151..])));
    }
}
