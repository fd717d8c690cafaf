//! Booting a pseries guest's kernel without firmware (`-kernel vmlinux`):
//! the ELF loaded as QEMU's pseries loads it (either byte order, its
//! addresses taken in the low 256 MiB from `KERNEL_ADDR`, QEMU's
//! `translate_kernel_address`), the initrd after it, the RTAS blob and
//! the flattened device tree at the top of the real-mode area; the boot
//! vCPU enters the kernel as kexec and kvmtool enter it: r3 the device
//! tree, r4 the kernel's base, r5 0 (no Open Firmware client interface,
//! so Linux takes r3 as a flattened tree), in 64-bit real mode.

use crate::elf::{self, Endian, PT_LOAD};
use std::io::{Read, Seek};
use vm_memory::GuestMemoryBackend;

/// `EM_PPC64`.
pub const EM_PPC64: u16 = 21;
/// Where the kernel's low 256 MiB of addresses start (QEMU's
/// `kernel-addr` default, 0).
pub const KERNEL_ADDR: u64 = 0;
/// `FDT_MAX_SIZE`: the room the device tree has.
pub const FDT_MAX_SIZE: u64 = 0x10_0000;
/// `RTAS_MAX_ADDR`: RTAS and the tree stay below, in real-mode reach.
pub const RMA_MAX: u64 = 0x8000_0000;

/// The MSR a kernel is entered with: 64-bit (SF), machine checks on
/// (ME), translation off (real mode), big-endian (Linux's entry code
/// switches itself to little-endian).
pub const MSR_SF: u64 = 1 << 63;
pub const MSR_ME: u64 = 1 << 12;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Elf(#[from] elf::Error),
    #[error("the ELF is for machine {0}, not ppc64 ({EM_PPC64})")]
    Machine(u16),
    #[error("the ELF is 32-bit; pseries kernels are 64-bit")]
    Class32,
    #[error("the ELF has no segment to load")]
    Empty,
}

/// A loaded kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub entry: u64,
    /// Its lowest and one past its highest guest address.
    pub start: u64,
    pub end: u64,
    pub endian: Endian,
}

/// QEMU's `translate_kernel_address`: an ELF address (Linux links at
/// 0xc000000000000000) within the low 256 MiB, from `KERNEL_ADDR`.
pub fn translate(addr: u64) -> u64 {
    (addr & 0x0fff_ffff) + KERNEL_ADDR
}

/// Loads the ELF `vmlinux` in `f` into fresh `mem`.
pub fn load_kernel<F: Read + Seek, M: GuestMemoryBackend>(
    mem: &M,
    f: &mut F,
) -> Result<Kernel, Error> {
    let h = elf::read(f, |_, machine| match machine {
        EM_PPC64 => Ok(()),
        m => Err(Error::Machine(m)),
    })?;
    if h.bits != 64 {
        return Err(Error::Class32);
    }
    let (mut start, mut end) = (u64::MAX, 0);
    for (index, p) in h.phdrs.iter().enumerate() {
        if p.kind == PT_LOAD && p.memsz > 0 {
            let at = translate(p.paddr);
            end = end.max(h.load_segment(mem, f, index, at, KERNEL_ADDR)?);
            start = start.min(at);
        }
    }
    if end == 0 {
        return Err(Error::Empty);
    }
    Ok(Kernel {
        entry: translate(h.entry),
        start,
        end,
        endian: h.endian,
    })
}

/// Where the initrd goes: after the kernel with a little room, 64 KiB
/// aligned (QEMU's placement).
pub fn initrd_addr(kernel_end: u64) -> u64 {
    (kernel_end + 0x1_ffff) & !0xffff
}

/// Where firmware's pieces go in a guest of `ram` bytes: the device tree
/// at the top of the real-mode area, RTAS (`rtas_size` bytes of room, the
/// device tree's `rtas-size`) in the pages below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub fdt: u64,
    pub rtas: u64,
    /// RTAS's room, in whole pages.
    pub rtas_size: u64,
}

pub fn layout(ram: u64, rtas_size: u32) -> Layout {
    let fdt = ram.min(RMA_MAX) - FDT_MAX_SIZE;
    let rtas_size = u64::from(rtas_size).next_multiple_of(0x1000);
    Layout {
        fdt,
        rtas: fdt - rtas_size,
        rtas_size,
    }
}

/// The RTAS blob (QEMU's `spapr-rtas.S`): a guest calls it with its
/// argument buffer in r3; it hands the buffer to the hypervisor with the
/// `KVMPPC_H_RTAS` hypercall and returns. RTAS runs big-endian, so these
/// are big-endian instructions whatever the kernel's order.
pub fn rtas_blob() -> Vec<u8> {
    [
        0x7c64_1b78u32, // mr    r4,r3
        0x3c60_0000,    // lis   r3,KVMPPC_H_RTAS@h
        0x6063_f000,    // ori   r3,r3,KVMPPC_H_RTAS@l
        0x4400_0022,    // sc    1
        0x4e80_0020,    // blr
    ]
    .iter()
    .flat_map(|i| i.to_be_bytes())
    .collect()
}

/// The boot vCPU's registers at the kernel's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub pc: u64,
    pub msr: u64,
    /// r3, r4, r5.
    pub fdt: u64,
    pub kernel_base: u64,
    pub client_interface: u64,
}

pub fn entry(kernel: &Kernel, layout: &Layout) -> Entry {
    Entry {
        pc: kernel.entry,
        msr: MSR_SF | MSR_ME,
        fdt: layout.fdt,
        kernel_base: kernel.start,
        client_interface: 0,
    }
}

/// The order (log2 of bytes) of a guest's hash page table for `ram`
/// bytes of RAM, QEMU's `spapr_hpt_shift_for_ramsize`: 1/128 of RAM
/// rounded up to a power of two, between the architected 2^18 and 2^46.
pub fn hpt_shift_for_ram(ram: u64) -> u32 {
    let order = ram
        .max(1)
        .checked_next_power_of_two()
        .map_or(64, u64::trailing_zeros);
    let shift = order.saturating_sub(7);
    shift.clamp(18, 46)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    #[test]
    fn the_hash_table_is_a_128th_of_ram() {
        assert_eq!(hpt_shift_for_ram(256 << 20), 21);
        assert_eq!(hpt_shift_for_ram(2 << 30), 24);
        assert_eq!(hpt_shift_for_ram(3 << 30), 25, "rounded up");
        assert_eq!(hpt_shift_for_ram(16 << 20), 18, "the smallest there is");
        assert_eq!(hpt_shift_for_ram(u64::MAX), 46);
    }

    /// A 64-bit ppc64 ELF in `endian`: one PT_LOAD of `code` linked at
    /// `vaddr` (physical address the same), `bss` more bytes of memory,
    /// entered at `entry`.
    pub(crate) fn vmlinux(
        endian: Endian,
        vaddr: u64,
        code: &[u8],
        bss: u64,
        entry: u64,
    ) -> Vec<u8> {
        let w16 = |v: u16| match endian {
            Endian::Little => v.to_le_bytes().to_vec(),
            Endian::Big => v.to_be_bytes().to_vec(),
        };
        let w32 = |v: u32| match endian {
            Endian::Little => v.to_le_bytes().to_vec(),
            Endian::Big => v.to_be_bytes().to_vec(),
        };
        let w64 = |v: u64| match endian {
            Endian::Little => v.to_le_bytes().to_vec(),
            Endian::Big => v.to_be_bytes().to_vec(),
        };
        let mut f = b"\x7fELF".to_vec();
        f.push(2);
        f.push(if endian == Endian::Little { 1 } else { 2 });
        f.push(1);
        f.resize(16, 0);
        f.extend(w16(2)); // ET_EXEC
        f.extend(w16(EM_PPC64));
        f.extend(w32(1));
        f.extend(w64(entry));
        f.extend(w64(64)); // phoff
        f.extend(w64(0)); // shoff
        f.extend(w32(0)); // flags
        f.extend(w16(64));
        f.extend(w16(56));
        f.extend(w16(1));
        f.extend([0; 6]);
        assert_eq!(f.len(), 64);
        f.extend(w32(PT_LOAD));
        f.extend(w32(7));
        f.extend(w64(0x1000)); // offset
        f.extend(w64(vaddr));
        f.extend(w64(vaddr));
        f.extend(w64(code.len() as u64));
        f.extend(w64(code.len() as u64 + bss));
        f.extend(w64(0x1_0000));
        f.resize(0x1000, 0);
        f.extend_from_slice(code);
        f
    }

    #[test]
    fn a_vmlinux_of_either_order_lands_in_the_low_addresses() {
        for endian in [Endian::Little, Endian::Big] {
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
            let image = vmlinux(
                endian,
                0xc000_0000_0000_0000,
                b"head_64",
                0x100,
                0xc000_0000_0000_0010,
            );
            let k = load_kernel(&mem, &mut Cursor::new(image)).unwrap();
            assert_eq!(
                k,
                Kernel {
                    entry: 0x10,
                    start: 0,
                    end: 7 + 0x100,
                    endian
                }
            );
            let mut got = [0u8; 7];
            mem.read_slice(&mut got, GuestAddress(0)).unwrap();
            assert_eq!(&got, b"head_64");
        }
    }

    #[test]
    fn other_kernels_are_named() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut x86 = vmlinux(Endian::Little, 0, b"k", 0, 0);
        x86[18] = 62;
        let e = load_kernel(&mem, &mut Cursor::new(x86)).unwrap_err();
        assert_eq!(e.to_string(), "the ELF is for machine 62, not ppc64 (21)");
        // 2 MiB of bss in 1 MiB of RAM.
        let big = vmlinux(Endian::Big, 0, b"k", 2 << 20, 0);
        let e = load_kernel(&mem, &mut Cursor::new(big)).unwrap_err();
        assert!(
            e.to_string().contains("does not fit in the guest's 1 MiB"),
            "{e}"
        );
    }

    #[test]
    fn the_blob_and_the_tree_sit_below_the_real_mode_limit() {
        assert_eq!(
            layout(256 << 20, 0x82c),
            Layout {
                fdt: 0xff0_0000,
                rtas: 0xfef_f000,
                rtas_size: 0x1000
            }
        );
        assert_eq!(layout(8 << 30, 0x82c).fdt, 0x7ff0_0000);
        assert_eq!(layout(8 << 30, 0x1001).rtas, 0x7ff0_0000 - 0x2000);
        assert_eq!(initrd_addr(0x1_2345), 0x3_0000);
        let blob = rtas_blob();
        assert_eq!(blob.len(), 20);
        // `sc 1`: a hypercall.
        assert_eq!(blob[12..16], [0x44, 0, 0, 0x22]);
        let k = Kernel {
            entry: 0x10,
            start: 0,
            end: 0x100,
            endian: Endian::Little,
        };
        let e = entry(&k, &layout(256 << 20, 0x82c));
        assert_eq!((e.pc, e.fdt, e.client_interface), (0x10, 0xff0_0000, 0));
        assert_eq!(e.msr, 0x8000_0000_0000_1000);
    }
}
