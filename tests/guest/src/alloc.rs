//! A bump allocator for DMA memory (virtqueues, buffers): identity-mapped,
//! never freed.

use core::sync::atomic::{AtomicUsize, Ordering};

const HEAP_SIZE: usize = 8 << 20;
#[repr(C, align(4096))]
struct Heap([u8; HEAP_SIZE]);
static mut HEAP: Heap = Heap([0; HEAP_SIZE]);
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Zeroed, `align`-aligned memory; its address is its physical address.
pub fn alloc(size: usize, align: usize) -> Option<u64> {
    let base = core::ptr::addr_of!(HEAP) as usize;
    let mut cur = NEXT.load(Ordering::SeqCst);
    loop {
        let start = (base + cur).next_multiple_of(align) - base;
        let end = start.checked_add(size)?;
        if end > HEAP_SIZE {
            return None;
        }
        match NEXT.compare_exchange(cur, end, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return Some((base + start) as u64),
            Err(v) => cur = v,
        }
    }
}
