//! Guest-physical layout of the q35-style board (the same places QEMU's q35
//! uses, so guests and tools find things where they expect them).

use super::{E820Entry, E820Kind};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// PVH `hvm_start_info`, its memory map and module list.
pub const START_INFO: u64 = 0x6000;
pub const MEMMAP: u64 = 0x6100;
pub const MODLIST: u64 = 0x6f00;
/// Kernel command line (up to `CMDLINE_MAX` bytes).
pub const CMDLINE: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 0x10000;
/// Top of conventional memory; the EBDA and BIOS area above it are reserved.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables, RSDP first (in the BIOS area, where guests scan for it).
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x100000;
/// Where kernels are loaded.
pub const HIMEM_START: u64 = 0x100000;

/// PCIe ECAM (MMCONFIG): 256 buses.
pub const ECAM_START: u64 = 0xb000_0000;
pub const ECAM_SIZE: u64 = 256 * MIB;
/// 32-bit PCI memory window.
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
pub const PCI_MMIO32_END: u64 = 0xfec0_0000;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM's TSS and identity-map pages (Intel), out of the guest's way.
pub const KVM_TSS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP: u64 = 0xfffb_c000;
/// RAM above 4 GiB starts here.
pub const HIGH_RAM_START: u64 = 4 * GIB;
/// 64-bit PCI memory window size (placed above RAM).
pub const PCI_MMIO64_SIZE: u64 = 64 * GIB;

/// ACPI PM I/O block (as q35's ICH9): PM1a event, PM1a control, PM timer.
pub const PM_BASE: u16 = 0x600;
pub const PM1A_EVT: u16 = PM_BASE;
pub const PM1A_CNT: u16 = PM_BASE + 4;
pub const PM_TMR: u16 = PM_BASE + 8;
/// Reset control register (write 0x06 resets), as q35's.
pub const RESET_PORT: u16 = 0xcf9;
pub const SCI_IRQ: u8 = 9;
/// The `SLP_TYP` value the DSDT's `\_S5` announces.
pub const S5_SLP_TYP: u8 = 5;

/// How much of RAM sits below 4 GiB: all of it if it fits under the ECAM
/// window, else 2 GiB (QEMU's q35 rule), so the PCI hole stays large.
pub fn low_ram_size(ram: u64) -> u64 {
    if ram >= ECAM_START {
        2 * GIB
    } else {
        ram
    }
}

/// The guest RAM regions (address, size) for `ram` bytes.
pub fn ram_regions(ram: u64) -> Vec<(u64, u64)> {
    let low = low_ram_size(ram);
    let mut v = vec![(0, low)];
    if ram > low {
        v.push((HIGH_RAM_START, ram - low));
    }
    v
}

/// Start of the 64-bit PCI window: above RAM, 1 GiB aligned.
pub fn pci_mmio64_start(ram: u64) -> u64 {
    let high_end = HIGH_RAM_START + ram.saturating_sub(low_ram_size(ram));
    high_end.next_multiple_of(GIB)
}

/// The memory map the guest is told about.
pub fn e820(ram: u64) -> Vec<E820Entry> {
    let low = low_ram_size(ram);
    let mut v = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: EBDA_START,
            size: ACPI_END - EBDA_START,
            kind: E820Kind::Reserved,
        },
        E820Entry {
            addr: HIMEM_START,
            size: low - HIMEM_START,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: ECAM_START,
            size: ECAM_SIZE,
            kind: E820Kind::Reserved,
        },
    ];
    if ram > low {
        v.push(E820Entry {
            addr: HIGH_RAM_START,
            size: ram - low,
            kind: E820Kind::Ram,
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_is_all_low() {
        assert_eq!(ram_regions(512 * MIB), vec![(0, 512 * MIB)]);
        let ram: u64 = e820(512 * MIB)
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, 512 * MIB - (ACPI_END - EBDA_START));
    }

    #[test]
    fn large_ram_splits_at_2g_and_resumes_at_4g() {
        assert_eq!(ram_regions(5 * GIB), vec![(0, 2 * GIB), (4 * GIB, 3 * GIB)]);
        assert_eq!(pci_mmio64_start(5 * GIB), 7 * GIB);
        // Exactly at the ECAM window: the hole must not overlap RAM.
        assert_eq!(low_ram_size(ECAM_START), 2 * GIB);
        assert_eq!(low_ram_size(ECAM_START - 1), ECAM_START - 1);
    }
}
