//! A split virtqueue in the legacy-compatible layout (used ring on its own
//! 4 KiB-aligned page), driven synchronously: one chain in flight per
//! request, except for pre-posted receive buffers.

use crate::alloc::alloc;
use crate::io::{read16, read32, write16, write32, write64};
use core::sync::atomic::{fence, Ordering};

pub struct Queue {
    pub index: u16,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
}

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

fn align(v: u64, a: u64) -> u64 {
    v.next_multiple_of(a)
}

impl Queue {
    pub fn new(index: u16, size: u16) -> Option<Queue> {
        let n = size as u64;
        let used_off = align(16 * n + 6 + 2 * n, 4096);
        let total = used_off + align(6 + 8 * n, 4096);
        let base = alloc(total as usize, 4096)?;
        Some(Queue {
            index,
            size,
            desc: base,
            avail: base + 16 * n,
            used: base + used_off,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
        })
    }

    /// Publishes a chain of (address, length, device-writable) buffers;
    /// returns its head descriptor. The caller notifies.
    pub fn push(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let k = bufs.len() as u16;
        if self.next_desc + k > self.size {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let d = self.desc + 16 * (head as u64 + i as u64);
            let last = i + 1 == bufs.len();
            write64(d, addr);
            write32(d + 8, len);
            let flags = if write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            write16(d + 12, flags);
            write16(d + 14, if last { 0 } else { head + i as u16 + 1 });
        }
        self.next_desc = (head + k) % self.size;
        let slot = self.avail + 4 + 2 * (self.avail_idx % self.size) as u64;
        write16(slot, head);
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        write16(self.avail + 2, self.avail_idx);
        fence(Ordering::SeqCst);
        head
    }

    /// The next used element (id, length), if the device returned one.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        fence(Ordering::SeqCst);
        if read16(self.used + 2) == self.last_used {
            return None;
        }
        let e = self.used + 4 + 8 * (self.last_used % self.size) as u64;
        let r = (read32(e), read32(e + 4));
        self.last_used = self.last_used.wrapping_add(1);
        Some(r)
    }
}
