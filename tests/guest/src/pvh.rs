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
    /// "pvh" or "linux": how the VMM handed over.
    pub protocol: &'static str,
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
    BadZeroPage(u32),
    NoMemmap(u32),
}

/// Reads start_info at `addr`.
pub fn parse(addr: u64, out: &mut BootInfo) -> Result<(), Error> {
    let magic = read32(addr);
    if magic != START_INFO_MAGIC {
        return Err(Error::BadMagic(magic));
    }
    out.protocol = "pvh";
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

/// Reads Linux's zero page (`boot_params`) at `addr`: the 32-bit boot
/// protocol, used when the guest is packed as a bzImage.
pub fn parse_linux(addr: u64, out: &mut BootInfo) -> Result<(), Error> {
    let magic = read32(addr + 0x202);
    if magic != 0x5372_6448 {
        return Err(Error::BadZeroPage(magic));
    }
    out.protocol = "linux";
    out.version = read32(addr + 0x206) & 0xffff;
    out.rsdp = read64(addr + 0x70);
    let cmdline = read32(addr + 0x228) as u64;
    let size = read32(addr + 0x238) as usize;
    out.cmdline_len = 0;
    if cmdline != 0 {
        while out.cmdline_len < out.cmdline.len().min(size.max(1)) {
            let b = read8(cmdline + out.cmdline_len as u64);
            if b == 0 {
                break;
            }
            out.cmdline[out.cmdline_len] = b;
            out.cmdline_len += 1;
        }
    }
    let entries = (read8(addr + 0x1e8) as usize).min(MAX_E820);
    for i in 0..entries {
        let e = addr + 0x2d0 + (i as u64) * 20;
        out.memmap[i] = E820 {
            addr: read64(e),
            size: read64(e + 8),
            kind: read32(e + 16),
        };
    }
    out.memmap_len = entries;
    Ok(())
}
