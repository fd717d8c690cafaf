//! The PVH boot ABI: `hvm_start_info` (version 1, with the memory map),
//! the command line and modules (the initrd), as Xen's
//! `include/public/arch-x86/hvm/start_info.h` defines them.

use super::{layout, E820Entry};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

pub const START_INFO_MAGIC: u32 = 0x336e_c578;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the kernel command line is {0} bytes, more than the {max} allowed", max = layout::CMDLINE_MAX - 1)]
    CmdlineTooLong(usize),
    #[error("too many memory map entries: {0}")]
    MemmapTooLong(usize),
    #[error("cannot write the PVH boot information to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// A module handed to the kernel (the initrd).
pub struct Module {
    pub addr: u64,
    pub size: u64,
}

/// Writes the NUL-terminated command line at `layout::CMDLINE` (shared
/// with the Linux boot protocol); returns its length.
pub fn write_cmdline<M: GuestMemory>(mem: &M, cmdline: &str) -> Result<usize, Error> {
    if cmdline.len() >= layout::CMDLINE_MAX {
        return Err(Error::CmdlineTooLong(cmdline.len()));
    }
    let mut c = cmdline.as_bytes().to_vec();
    c.push(0);
    mem.write_slice(&c, GuestAddress(layout::CMDLINE))
        .map_err(Error::Write)?;
    Ok(cmdline.len())
}

/// Writes start_info, the memory map, the command line and the module list;
/// returns the address to pass in %ebx.
pub fn write<M: GuestMemory>(
    mem: &M,
    cmdline: &str,
    memmap: &[E820Entry],
    rsdp: u64,
    module: Option<Module>,
) -> Result<u64, Error> {
    write_cmdline(mem, cmdline)?;
    if memmap.len() * 24 > (layout::MODLIST - layout::MEMMAP) as usize {
        return Err(Error::MemmapTooLong(memmap.len()));
    }
    let mut c = cmdline.as_bytes().to_vec();
    c.push(0);
    mem.write_slice(&c, GuestAddress(layout::CMDLINE))
        .map_err(Error::Write)?;
    for (i, e) in memmap.iter().enumerate() {
        let mut b = [0u8; 24];
        b[0..8].copy_from_slice(&e.addr.to_le_bytes());
        b[8..16].copy_from_slice(&e.size.to_le_bytes());
        b[16..20].copy_from_slice(&(e.kind as u32).to_le_bytes());
        mem.write_slice(&b, GuestAddress(layout::MEMMAP + 24 * i as u64))
            .map_err(Error::Write)?;
    }
    let nr_modules = if let Some(m) = &module {
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&m.addr.to_le_bytes());
        b[8..16].copy_from_slice(&m.size.to_le_bytes());
        mem.write_slice(&b, GuestAddress(layout::MODLIST))
            .map_err(Error::Write)?;
        1u32
    } else {
        0
    };
    let mut si = [0u8; 56];
    si[0..4].copy_from_slice(&START_INFO_MAGIC.to_le_bytes());
    si[4..8].copy_from_slice(&1u32.to_le_bytes()); // version 1: memmap present
    si[12..16].copy_from_slice(&nr_modules.to_le_bytes());
    si[16..24].copy_from_slice(&(if nr_modules > 0 { layout::MODLIST } else { 0 }).to_le_bytes());
    si[24..32].copy_from_slice(&layout::CMDLINE.to_le_bytes());
    si[32..40].copy_from_slice(&rsdp.to_le_bytes());
    si[40..48].copy_from_slice(&layout::MEMMAP.to_le_bytes());
    si[48..52].copy_from_slice(&(memmap.len() as u32).to_le_bytes());
    mem.write_slice(&si, GuestAddress(layout::START_INFO))
        .map_err(Error::Write)?;
    Ok(layout::START_INFO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn start_info_points_at_what_was_written() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let map = layout::e820(1 << 20 << 9);
        let at = write(
            &mem,
            "console=ttyS0",
            &map,
            0xe0000,
            Some(Module {
                addr: 0x80000,
                size: 10,
            }),
        )
        .unwrap();
        let mut si = [0u8; 56];
        mem.read_slice(&mut si, GuestAddress(at)).unwrap();
        assert_eq!(
            u32::from_le_bytes(si[0..4].try_into().unwrap()),
            START_INFO_MAGIC
        );
        assert_eq!(
            u32::from_le_bytes(si[48..52].try_into().unwrap()) as usize,
            map.len()
        );
        let cmd = u64::from_le_bytes(si[24..32].try_into().unwrap());
        let mut buf = [0u8; 14];
        mem.read_slice(&mut buf, GuestAddress(cmd)).unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
        assert!(matches!(
            write(&mem, &"x".repeat(layout::CMDLINE_MAX), &map, 0, None),
            Err(Error::CmdlineTooLong(_))
        ));
    }
}
