//! The ACPI tables of the q35-style board: RSDP, XSDT, FADT (with the PM1
//! blocks and the reset register), FACS, DSDT (PCI host bridge with its
//! windows, COM1, `\_S5`), MADT and MCFG. Built into one blob placed at
//! `layout::ACPI_START`, RSDP first.

use super::layout;
use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Device, EISAName, Interrupt, Name, Package,
    ResourceTemplate, Scope, IO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

const OEM_ID: [u8; 6] = *b"VMMVMM";
const OEM_TABLE: [u8; 8] = *b"VMMBOARD";

/// What the tables describe.
pub struct AcpiConfig {
    /// The vCPUs: every possible one gets a MADT entry, the present ones
    /// enabled.
    pub topology: super::topology::Topology,
    pub ram: u64,
    /// The PCI host's `_CRS` declares the whole 64-bit MMIO window (the
    /// host bridge's `x-pci-hole64-fix`); without it, only the range
    /// 64-bit BARs use, and vmm places every BAR below 4 GiB, so none.
    pub pci_hole64: bool,
    /// The PCI host's `_UID` (the host bridge's `x-pci-root-uid`).
    pub pci_root_uid: u8,
}

/// The tables, ready to copy to `base`.
pub struct AcpiTables {
    pub base: u64,
    pub bytes: Vec<u8>,
    pub rsdp: u64,
}

fn checksum(data: &[u8]) -> u8 {
    (!data.iter().fold(0u8, |s, b| s.wrapping_add(*b))).wrapping_add(1)
}

fn sdt(sig: &[u8; 4], len: u32, rev: u8) -> Sdt {
    Sdt::new(*sig, len, rev, OEM_ID, OEM_TABLE, 1)
}

fn dsdt(cfg: &AcpiConfig) -> Sdt {
    let mut t = sdt(b"DSDT", 36, 2);
    let mmio64_start = layout::pci_mmio64_start(cfg.ram);
    // The AML builders borrow their children, so each one gets a name.
    let buses = AddressSpace::new_bus_number(0u16, 0xffu16);
    let cfg_io = IO::new(0xcf8, 0xcf8, 1, 8);
    let io_lo = AddressSpace::new_io(0u16, 0x0cf7u16, None);
    let io_hi = AddressSpace::new_io(0x0d00u16, 0xffffu16, None);
    let mem32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        layout::PCI_MMIO32_START as u32,
        (layout::PCI_MMIO32_END - 1) as u32,
        None,
    );
    let mem64 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        mmio64_start,
        mmio64_start + layout::PCI_MMIO64_SIZE - 1,
        None,
    );
    let mut resources: Vec<&dyn Aml> = vec![&buses, &cfg_io, &io_lo, &io_hi, &mem32];
    if cfg.pci_hole64 {
        resources.push(&mem64);
    }
    let crs = ResourceTemplate::new(resources);
    let (hid, cid) = (EISAName::new("PNP0A08"), EISAName::new("PNP0A03"));
    let names = [
        Name::new("_HID".into(), &hid),
        Name::new("_CID".into(), &cid),
        Name::new("_ADR".into(), &aml::ZERO),
        Name::new("_SEG".into(), &aml::ZERO),
        Name::new("_UID".into(), &cfg.pci_root_uid),
        Name::new("_BBN".into(), &aml::ZERO),
        Name::new("_CRS".into(), &crs),
    ];
    let pci0 = Device::new("PCI0".into(), names.iter().map(|n| n as &dyn Aml).collect());
    let com1_io = IO::new(0x3f8, 0x3f8, 0, 8);
    let com1_irq = Interrupt::new(true, true, false, false, 4);
    let com1_crs = ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = EISAName::new("PNP0501");
    let com1_names = [
        Name::new("_HID".into(), &com1_hid),
        Name::new("_UID".into(), &aml::ZERO),
        Name::new("_CRS".into(), &com1_crs),
    ];
    let com1 = Device::new(
        "COM1".into(),
        com1_names.iter().map(|n| n as &dyn Aml).collect(),
    );
    Scope::new("\\_SB_".into(), vec![&pci0, &com1]).to_aml_bytes(&mut t);
    let s5 = layout::S5_SLP_TYP;
    let s5_pkg = Package::new(vec![&s5, &s5, &aml::ZERO, &aml::ZERO]);
    Name::new("_S5_".into(), &s5_pkg).to_aml_bytes(&mut t);
    let len = t.len() as u32;
    t.write_u32(4, len);
    t.update_checksum();
    t
}

fn facs() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&64u32.to_le_bytes());
    f[32] = 2; // version
    f
}

/// Generic Address Structure for an I/O port.
fn gas_io(t: &mut Sdt, off: usize, port: u16, bits: u8) {
    t.write_u8(off, 1); // system I/O
    t.write_u8(off + 1, bits);
    t.write_u8(off + 2, 0);
    t.write_u8(
        off + 3,
        if bits >= 32 {
            3
        } else if bits >= 16 {
            2
        } else {
            1
        },
    );
    t.write_u64(off + 4, port as u64);
}

fn fadt(dsdt: u64, facs: u64) -> Sdt {
    let mut t = sdt(b"FACP", 276, 6);
    t.write_u32(36, facs as u32);
    t.write_u32(40, dsdt as u32);
    t.write_u8(45, 0); // preferred PM profile: unspecified
    t.write_u16(46, layout::SCI_IRQ as u16);
    t.write_u32(56, layout::PM1A_EVT as u32);
    t.write_u32(64, layout::PM1A_CNT as u32);
    t.write_u32(76, layout::PM_TMR as u32);
    t.write_u8(88, 4); // PM1_EVT_LEN
    t.write_u8(89, 2); // PM1_CNT_LEN
    t.write_u8(91, 4); // PM_TMR_LEN
                       // WBINVD, PROC_C1, SLP_BUTTON (none), TMR_VAL_EXT (32-bit), RESET_REG_SUP.
    t.write_u32(112, 1 | (1 << 2) | (1 << 5) | (1 << 8) | (1 << 10));
    gas_io(&mut t, 116, layout::RESET_PORT, 8);
    t.write_u8(128, 0x06); // reset value
    t.write_u8(131, 0); // minor version
    t.write_u64(132, facs);
    t.write_u64(140, dsdt);
    gas_io(&mut t, 148, layout::PM1A_EVT, 32);
    gas_io(&mut t, 172, layout::PM1A_CNT, 16);
    gas_io(&mut t, 208, layout::PM_TMR, 32);
    t.write_u64(268, u64::from_le_bytes(*b"VMMVMM\0\0"));
    t.update_checksum();
    t
}

fn madt(topo: &super::topology::Topology) -> Sdt {
    let mut t = sdt(b"APIC", 44, 4);
    t.write_u32(36, layout::LAPIC_START as u32);
    t.write_u32(40, 1); // PCAT_COMPAT: 8259s present
    for i in 0..topo.maxcpus {
        // Processor local APIC: UID, APIC ID, enabled when present.
        let enabled = u8::from(i < topo.cpus);
        t.append_slice(&[0, 8, i as u8, topo.apic_id(i) as u8, enabled, 0, 0, 0]);
    }
    let mut ioapic = vec![1, 12, 0, 0];
    ioapic.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes());
    t.append_slice(&ioapic);
    // ISA IRQ 0 -> GSI 2; the SCI (IRQ 9) level, active high.
    for (irq, gsi, flags) in [
        (0u8, 2u32, 0u16),
        (layout::SCI_IRQ, layout::SCI_IRQ as u32, 0xd),
    ] {
        let mut iso = vec![2, 10, 0, irq];
        iso.extend_from_slice(&gsi.to_le_bytes());
        iso.extend_from_slice(&flags.to_le_bytes());
        t.append_slice(&iso);
    }
    t.append_slice(&[4, 6, 0xff, 0, 0, 1]); // LINT1 is NMI on every CPU
    let len = t.len() as u32;
    t.write_u32(4, len);
    t.update_checksum();
    t
}

fn mcfg() -> Sdt {
    let mut t = sdt(b"MCFG", 44, 1);
    let mut e = layout::ECAM_START.to_le_bytes().to_vec();
    e.extend_from_slice(&[0, 0, 0, 255, 0, 0, 0, 0]); // segment 0, buses 0-255
    t.append_slice(&e);
    let len = t.len() as u32;
    t.write_u32(4, len);
    t.update_checksum();
    t
}

/// Lays out every table from `layout::ACPI_START`.
pub fn build(cfg: &AcpiConfig) -> AcpiTables {
    let base = layout::ACPI_START;
    let mut bytes = vec![0u8; 64]; // RSDP (36 bytes) first
    let align = |b: &mut Vec<u8>| b.resize(b.len().next_multiple_of(16), 0);
    let place = |b: &mut Vec<u8>, data: &[u8]| {
        align(b);
        let at = base + b.len() as u64;
        b.extend_from_slice(data);
        at
    };
    let facs_at = place(&mut bytes, &facs());
    let dsdt_at = place(&mut bytes, dsdt(cfg).as_slice());
    let fadt_at = place(&mut bytes, fadt(dsdt_at, facs_at).as_slice());
    let madt_at = place(&mut bytes, madt(&cfg.topology).as_slice());
    let mcfg_at = place(&mut bytes, mcfg().as_slice());
    let mut xsdt = sdt(b"XSDT", 36, 1);
    for t in [fadt_at, madt_at, mcfg_at] {
        xsdt.append(t);
    }
    let len = xsdt.len() as u32;
    xsdt.write_u32(4, len);
    xsdt.update_checksum();
    let xsdt_at = place(&mut bytes, xsdt.as_slice());

    let mut rsdp = [0u8; 36];
    rsdp[0..8].copy_from_slice(b"RSD PTR ");
    rsdp[9..15].copy_from_slice(&OEM_ID);
    rsdp[15] = 2; // ACPI 2.0+: XSDT
    rsdp[20..24].copy_from_slice(&36u32.to_le_bytes());
    rsdp[24..32].copy_from_slice(&xsdt_at.to_le_bytes());
    rsdp[8] = checksum(&rsdp[..20]);
    rsdp[32] = checksum(&rsdp);
    bytes[..36].copy_from_slice(&rsdp);
    AcpiTables {
        base,
        bytes,
        rsdp: base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_at(t: &AcpiTables, addr: u64) -> &[u8] {
        let off = (addr - t.base) as usize;
        let len = u32::from_le_bytes(t.bytes[off + 4..off + 8].try_into().unwrap()) as usize;
        &t.bytes[off..off + len]
    }

    #[test]
    fn every_checksum_is_valid_and_tables_are_reachable() {
        let t = build(&AcpiConfig {
            topology: super::super::topology::Topology::flat(4),
            ram: 5 << 30,
            pci_hole64: true,
            pci_root_uid: 0,
        });
        assert!(t.bytes.len() as u64 <= layout::ACPI_END - layout::ACPI_START);
        let rsdp = &t.bytes[..36];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp[..20].iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        assert_eq!(rsdp.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        let xsdt = table_at(&t, u64::from_le_bytes(rsdp[24..32].try_into().unwrap()));
        assert_eq!(&xsdt[..4], b"XSDT");
        let mut sigs = vec![];
        for e in xsdt[36..].chunks(8) {
            let tab = table_at(&t, u64::from_le_bytes(e.try_into().unwrap()));
            assert_eq!(
                tab.iter().fold(0u8, |s, b| s.wrapping_add(*b)),
                0,
                "{:?}",
                &tab[..4]
            );
            sigs.push(tab[..4].to_vec());
            if &tab[..4] == b"FACP" {
                let dsdt = table_at(&t, u64::from_le_bytes(tab[140..148].try_into().unwrap()));
                assert_eq!(&dsdt[..4], b"DSDT");
                assert_eq!(dsdt.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
                assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
            }
            if &tab[..4] == b"APIC" {
                let cpus = tab[44..].chunks(1).count();
                assert!(cpus > 0);
                let lapics = count_madt(tab, 0);
                assert_eq!(lapics, 4);
            }
        }
        assert_eq!(
            sigs,
            vec![b"FACP".to_vec(), b"APIC".to_vec(), b"MCFG".to_vec()]
        );
    }

    /// QWord memory descriptors (ACPI 6.4.3.5.1: tag 0x8a, length 0x2b,
    /// resource type 0) in `aml`.
    fn qword_memory_windows(aml: &[u8]) -> usize {
        aml.windows(4)
            .filter(|w| w[..3] == [0x8a, 0x2b, 0x00] && w[3] == 0)
            .count()
    }

    /// The 64-bit window is in the PCI host's _CRS only with
    /// x-pci-hole64-fix (QEMU's pc-q35-2.7/2.8 declare none when no
    /// 64-bit BAR is placed, and vmm places none).
    #[test]
    fn the_64_bit_window_follows_hole64_fix() {
        for (fix, want) in [(true, 1), (false, 0)] {
            let t = build(&AcpiConfig {
                topology: super::super::topology::Topology::flat(1),
                ram: 1 << 30,
                pci_hole64: fix,
                pci_root_uid: 0,
            });
            let dsdt_at = t.bytes.windows(4).position(|w| w == b"DSDT").unwrap();
            let len = u32::from_le_bytes(t.bytes[dsdt_at + 4..dsdt_at + 8].try_into().unwrap());
            let dsdt = &t.bytes[dsdt_at..dsdt_at + len as usize];
            assert_eq!(dsdt.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
            assert_eq!(qword_memory_windows(dsdt), want, "hole64 fix {fix}");
        }
    }

    /// PCI0's `_UID` is the host bridge's (QEMU's pc-q35-5.1 and older
    /// say 1, newer 0), encoded as QEMU does (ZeroOp, OneOp).
    #[test]
    fn the_pci_root_uid_is_the_host_bridges() {
        for (uid, op) in [(0u8, 0x00u8), (1, 0x01)] {
            let t = build(&AcpiConfig {
                topology: super::super::topology::Topology::flat(1),
                ram: 1 << 30,
                pci_hole64: true,
                pci_root_uid: uid,
            });
            let pci0 = t.bytes.windows(4).position(|w| w == b"PCI0").unwrap();
            let at = pci0
                + t.bytes[pci0..]
                    .windows(4)
                    .position(|w| w == b"_UID")
                    .unwrap();
            assert_eq!(t.bytes[at - 1], 0x08, "NameOp");
            assert_eq!(t.bytes[at + 4], op, "_UID {uid}");
        }
    }

    fn count_madt(tab: &[u8], ty: u8) -> usize {
        let (mut off, mut n) = (44, 0);
        while off + 2 <= tab.len() {
            if tab[off] == ty {
                n += 1;
            }
            off += tab[off + 1] as usize;
        }
        n
    }
}
