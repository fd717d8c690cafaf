//! The PVH `hvm_start_info` handed over in %ebx, copied out before anything
//! (the AP trampoline) can overwrite low memory.

use crate::io::{read32, read64, read8};

pub const START_INFO_MAGIC: u32 = 0x336e_c578;
pub const MAX_E820: usize = 64;

#[derive(Clone, Copy, Default)]
pub struct E820 {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

pub const E820_RAM: u32 = 1;

pub struct BootInfo {
    pub version: u32,
    pub memmap: [E820; MAX_E820],
    pub memmap_len: usize,
    pub cmdline: [u8; 1024],
    pub cmdline_len: usize,
    pub rsdp: u64,
}

impl BootInfo {
    pub fn memmap(&self) -> &[E820] {
        &self.memmap[..self.memmap_len]
    }
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }
}

pub enum Error {
    BadMagic(u32),
    NoMemmap(u32),
}

/// Reads start_info at `addr`.
pub fn parse(addr: u64, out: &mut BootInfo) -> Result<(), Error> {
    let magic = read32(addr);
    if magic != START_INFO_MAGIC {
        return Err(Error::BadMagic(magic));
    }
    out.version = read32(addr + 4);
    let cmdline = read64(addr + 24);
    out.rsdp = read64(addr + 32);
    if cmdline != 0 {
        let mut n = 0;
        while n < out.cmdline.len() {
            let b = read8(cmdline + n as u64);
            if b == 0 {
                break;
            }
            out.cmdline[n] = b;
            n += 1;
        }
        out.cmdline_len = n;
    }
    if out.version < 1 {
        return Err(Error::NoMemmap(out.version));
    }
    let memmap = read64(addr + 40);
    let entries = read32(addr + 48) as usize;
    for i in 0..entries.min(MAX_E820) {
        let e = memmap + (i as u64) * 24;
        out.memmap[i] = E820 {
            addr: read64(e),
            size: read64(e + 8),
            kind: read32(e + 16),
        };
    }
    out.memmap_len = entries.min(MAX_E820);
    Ok(())
}
