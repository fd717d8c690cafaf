//! Extends boot.S's identity map (0..4 GiB, 2 MiB pages) to any physical
//! range, from CPL3: the page tables are themselves identity-mapped and
//! user-writable. Only not-present entries become present, so no TLB flush
//! (which would need CPL0) is ever required.

use crate::io::{read64, write64};
use core::sync::atomic::{AtomicUsize, Ordering};

extern "C" {
    static boot_pdpt: [u64; 512];
}

const POOL_PDS: usize = 124;
#[repr(C, align(4096))]
struct Pool([[u64; 512]; POOL_PDS]);
static mut POOL: Pool = Pool([[0; 512]; POOL_PDS]);
static POOL_NEXT: AtomicUsize = AtomicUsize::new(0);

const GIB: u64 = 1 << 30;

pub enum Error {
    /// Beyond the first 512 GiB (one PML4 entry) or the PD pool.
    OutOfRange,
}

/// Makes [addr, addr+len) accessible (identity, 2 MiB pages).
pub fn map(addr: u64, len: u64) -> Result<(), Error> {
    if len == 0 {
        return Ok(());
    }
    let first = addr / GIB;
    let last = (addr + len - 1) / GIB;
    for gib in first..=last {
        if gib >= 512 {
            return Err(Error::OutOfRange);
        }
        let pdpt = core::ptr::addr_of!(boot_pdpt) as u64;
        if read64(pdpt + gib * 8) & 1 != 0 {
            continue;
        }
        let n = POOL_NEXT.fetch_add(1, Ordering::SeqCst);
        if n >= POOL_PDS {
            return Err(Error::OutOfRange);
        }
        // SAFETY: pool entry n is handed out once (fetch_add above).
        let pd = unsafe { core::ptr::addr_of_mut!(POOL.0[n]) } as u64;
        for i in 0..512u64 {
            write64(pd + i * 8, (gib * GIB + i * (2 << 20)) | 0x87);
        }
        write64(pdpt + gib * 8, pd | 7);
    }
    Ok(())
}
