//! Loading the kernel (a PVH ELF or a bzImage) and the initrd.

use super::GuestMemoryMmap;
use crate::config::VmConfig;
use anyhow::{anyhow, bail, Context, Result};
use arch::x86_64::{layout, pvh};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use vm_memory::{Bytes, GuestAddress};

/// A loaded kernel and how to enter it.
pub(super) enum Kernel {
    /// An ELF with a PVH entry note.
    Pvh { entry: u64, end: u64 },
    /// A bzImage: Linux's 32-bit boot protocol (linux-loader has it on
    /// x86 hosts only).
    #[cfg(target_arch = "x86_64")]
    Linux {
        entry: u64,
        end: u64,
        hdr: linux_loader::loader::bootparam::setup_header,
    },
}

pub(super) fn load_kernel(path: &Path, mem: &GuestMemoryMmap) -> Result<Kernel> {
    #[cfg(target_arch = "x86_64")]
    use linux_loader::loader::{bzimage::BzImage, KernelLoader};
    let mut f =
        File::open(path).with_context(|| format!("cannot open kernel {}", path.display()))?;
    let mut head = [0u8; 0x210];
    let n = f
        .read(&mut head)
        .with_context(|| format!("cannot read kernel {}", path.display()))?;
    if n >= 4 && &head[..4] == b"\x7fELF" {
        let k = arch::x86_64::elf::load(mem, &mut f, layout::HIMEM_START)
            .with_context(|| format!("cannot load kernel {}", path.display()))?;
        log::info!(
            "kernel {}: {}-bit ELF, PVH entry {:#x}, loaded up to {:#x}",
            path.display(),
            k.bits,
            k.entry,
            k.end
        );
        return Ok(Kernel::Pvh {
            entry: k.entry,
            end: k.end,
        });
    }
    #[cfg(target_arch = "x86_64")]
    if n >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        let himem = Some(GuestAddress(layout::HIMEM_START));
        let r = BzImage::load(mem, None, &mut f, himem)
            .map_err(|e| anyhow!("cannot load bzImage {}: {e}", path.display()))?;
        let hdr = r
            .setup_header
            .ok_or_else(|| anyhow!("bzImage {} has no setup header", path.display()))?;
        log::info!(
            "kernel {}: bzImage, boot protocol {:#x}, loaded at {:#x}",
            path.display(),
            { hdr.version },
            r.kernel_load.0
        );
        // The kernel needs init_size bytes from its load address, more than
        // the file holds (decompression buffer, bss).
        let end = r.kernel_end.max(r.kernel_load.0 + { hdr.init_size } as u64);
        return Ok(Kernel::Linux {
            entry: r.kernel_load.0,
            end,
            hdr,
        });
    }
    bail!(
        "{} is not a kernel vmm can boot: neither an ELF with a PVH entry note nor a bzImage",
        path.display()
    )
}

/// Places the initrd at the top of low RAM (below `max`, the kernel's
/// `initrd_addr_max` for bzImages).
pub(super) fn load_initrd(
    cfg: &VmConfig,
    mem: &GuestMemoryMmap,
    kernel_end: u64,
    max: u64,
) -> Result<Option<pvh::Module>> {
    let Some(path) = &cfg.initrd else {
        return Ok(None);
    };
    let mut f =
        File::open(path).with_context(|| format!("cannot open initrd {}", path.display()))?;
    let size = f.seek(SeekFrom::End(0))?;
    f.rewind()?;
    // At the top of low RAM, page aligned.
    let top = layout::low_ram_size(cfg.memory).min(max);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= kernel_end);
    let Some(addr) = addr else {
        bail!(
            "initrd {} ({} bytes) does not fit in guest memory below {:#x}",
            path.display(),
            size,
            top
        );
    };
    let mut buf = Vec::with_capacity(size as usize);
    f.read_to_end(&mut buf)
        .with_context(|| format!("cannot read initrd {}", path.display()))?;
    mem.write_slice(&buf, GuestAddress(addr))
        .map_err(|e| anyhow!("cannot copy initrd into guest memory: {e}"))?;
    Ok(Some(pvh::Module { addr, size }))
}
