//! Linux's x86 boot protocol for a bzImage (Documentation/arch/x86/boot.rst):
//! the "zero page" (`boot_params`) with the kernel's own setup header, the
//! e820 map, the command line, the initrd and the RSDP; the 32-bit entry
//! at `code32_start` with %esi pointing at it.

use super::{layout, E820Entry};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{GuestAddress, GuestMemoryBackend};

/// Where the zero page goes.
pub const ZERO_PAGE: u64 = 0x7000;

const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const LOADER_UNDEFINED: u8 = 0xff;
const CAN_USE_HEAP: u8 = 0x80;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the kernel's setup header is missing or too old (boot protocol {0:#x}, vmm needs 2.12)"
    )]
    OldProtocol(u16),
    #[error("too many memory map entries for the zero page: {0}")]
    MemmapTooLong(usize),
    #[error("cannot write the boot parameters to guest memory")]
    Write(#[source] linux_loader::configurator::Error),
}

/// Fills and writes the zero page; the command line must already be at
/// `layout::CMDLINE`. Returns the zero page's address.
pub fn write_boot_params<M: GuestMemoryBackend>(
    mem: &M,
    hdr: setup_header,
    cmdline_len: usize,
    memmap: &[E820Entry],
    rsdp: u64,
    initrd: Option<(u64, u64)>,
) -> Result<u64, Error> {
    // 2.12: 64-bit-capable loaders, xloadflags, acpi_rsdp_addr is honoured
    // from 2.14 but harmless before.
    if hdr.header != HDR_MAGIC || hdr.version < 0x020c {
        return Err(Error::OldProtocol(hdr.version));
    }
    let mut p = boot_params {
        hdr,
        ..Default::default()
    };
    p.hdr.boot_flag = BOOT_FLAG_MAGIC;
    p.hdr.type_of_loader = LOADER_UNDEFINED;
    p.hdr.loadflags |= CAN_USE_HEAP;
    p.hdr.heap_end_ptr = 0xfe00;
    p.hdr.cmd_line_ptr = layout::CMDLINE as u32;
    p.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.hdr.ramdisk_size = size as u32;
    }
    p.acpi_rsdp_addr = rsdp;
    if memmap.len() > p.e820_table.len() {
        return Err(Error::MemmapTooLong(memmap.len()));
    }
    for (slot, e) in p.e820_table.iter_mut().zip(memmap) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    p.e820_entries = memmap.len() as u8;
    LinuxBootConfigurator::write_bootparams::<M>(
        &BootParams::new(&p, GuestAddress(ZERO_PAGE)),
        mem,
    )
    .map_err(Error::Write)?;
    Ok(ZERO_PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    #[test]
    fn zero_page_carries_map_cmdline_and_initrd() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let hdr = setup_header {
            header: HDR_MAGIC,
            version: 0x020f,
            ..Default::default()
        };
        let map = layout::e820(512 << 20);
        let at = write_boot_params(&mem, hdr, 13, &map, 0xe0000, Some((0x800000, 4096))).unwrap();
        let mut b = [0u8; 4096];
        mem.read_slice(&mut b, GuestAddress(at)).unwrap();
        assert_eq!(b[0x1e8] as usize, map.len());
        assert_eq!(u16::from_le_bytes([b[0x1fe], b[0x1ff]]), BOOT_FLAG_MAGIC);
        assert_eq!(
            u32::from_le_bytes(b[0x228..0x22c].try_into().unwrap()),
            layout::CMDLINE as u32
        );
        assert_eq!(
            u32::from_le_bytes(b[0x218..0x21c].try_into().unwrap()),
            0x800000
        );
        assert_eq!(
            u64::from_le_bytes(b[0x70..0x78].try_into().unwrap()),
            0xe0000
        );
        let old = setup_header {
            header: HDR_MAGIC,
            version: 0x0204,
            ..Default::default()
        };
        assert!(matches!(
            write_boot_params(&mem, old, 0, &map, 0, None),
            Err(Error::OldProtocol(0x204))
        ));
    }
}
