//! `spapr-pci-host-bridge`'s migration state, as QEMU's `spapr_pci`
//! section (`hw/ppc/spapr_pci.c`), and the seed it carries
//! (`../shared/seeds/spapr-phb-2.7-2.8-migration.txt`).
//!
//! QEMU 2.8 split the bridge's single MMIO window into a 32-bit and a
//! 64-bit one, converting 2.7's property on the way in; but 2.7's stream
//! compared the window (and the LIOBN, the I/O window) with
//! `VMSTATE_EQUAL`, so the raw 2.7 value met the converted one and every
//! 2.7 -> 2.8 migration failed. The fix, kept here: no equality check on
//! configuration in the stream. With `pre-2.8-migration` (on for
//! pseries-2.7 and older, off from pseries-2.8) the stream keeps 2.7's
//! layout through scratch fields (`mig_*`): read and ignored on load,
//! filled with 2.7-style values (the windows merged again) before save,
//! so a 2.7 destination's checks pass. Without it they are not sent.
//!
//! Here too: the bridge's type and properties (`spapr-pci-host-bridge`,
//! set with `-global` and by the pseries compat arrays), where its windows
//! go (QEMU's `spapr_phb_placement` and 2.7's), and its configuration
//! access as RTAS's `ibm,read-pci-config` / `ibm,write-pci-config` make it.
//! The PHB's MSI map (`msi_devs`, a counted array) travels as a source
//! had it.

use crate::model::property::PropKind;
use crate::model::types::{p, TypeInfo};
use crate::model::Props;
use crate::pci::{Bdf, PciRoot};
use migration::vmstate::{Description, LoadError, State, Vmstate};

/// The `spapr-pci-host-bridge` type: the pseries board's PHB 0 (`-device`
/// cannot create it); its properties are the machine's, set with
/// `-global spapr-pci-host-bridge.P=V` and by the compat arrays.
pub static TYPE: TypeInfo = TypeInfo {
    name: "spapr-pci-host-bridge",
    parent: Some("device"),
    abstract_: false,
    bus: None,
    description: "the sPAPR PCI host bridge (the pseries board's)",
    props: &[
        p(
            "mem_win_size",
            PropKind::U64,
            "0x80000000",
            "the 32-bit MMIO window's size (more than 2 GiB: 2.7's single window, split at 2 GiB as QEMU 2.8 does)",
        ),
        p(
            "mem64_win_size",
            PropKind::U64,
            "0x10000000000",
            "the 64-bit MMIO window's size",
        ),
        p(
            "io_win_size",
            PropKind::U64,
            "0x10000",
            "the I/O window's size",
        ),
        p(
            "pre-2.8-migration",
            PropKind::Bool,
            "off",
            "send the bridge in 2.7's layout (the mig_* fields), for a QEMU 2.7 destination",
        ),
        p(
            "x-legacy-irq-allocation",
            PropKind::Bool,
            "off",
            "the pins take the first free interrupt sources, as QEMU 3.0 and older allocated them (a machine class option there)",
        ),
        p(
            "x-modern-hotplug-events",
            PropKind::Bool,
            "on",
            "the machine has a hot-plug event source, claimed before the bridge (QEMU's modern-hotplug-events, off on pseries-2.7)",
        ),
        p(
            "x-placement-2-7",
            PropKind::Bool,
            "off",
            "place the windows as QEMU 2.7 did, above RAM (QEMU's phb_placement_2_7, a machine class option there)",
        ),
    ],
};

/// QEMU's `SPAPR_PCI_BASE`: where 2.8's PHB windows start (32 TiB).
pub const PCI_BASE: u64 = 1 << 45;
/// `SPAPR_PCI_MEM_WIN_BUS_OFFSET`: the PCI address the 32-bit window's
/// first byte is.
pub const MEM_WIN_BUS_OFFSET: u64 = 0x8000_0000;
/// `SPAPR_PCI_MEM64_WIN_SIZE`.
pub const MEM64_WIN_SIZE: u64 = 1 << 40;
/// The BUID of PHB 0.
pub const BASE_BUID: u64 = 0x0800_0000_2000_0000;
/// `SPAPR_IRQ_PCI_LSI`: PHB N's pins are LSIs from here + 4N.
pub const IRQ_PCI_LSI: u32 = 0x1200;
/// `SPAPR_IRQ_MSI`: where MSI sources are taken from (pseries-3.1 on).
pub const IRQ_MSI: u32 = 0x1300;
/// `SPAPR_PCI_MSI_WINDOW`: a function's MSI write here raises the
/// interrupt source its data names.
pub const MSI_WINDOW: u64 = 0x400_0000_0000;

/// A function's MSI-X table from its capability: the vectors, the BAR it
/// is in and its offset there.
pub fn msix_table(f: &dyn crate::pci::PciFunction) -> Option<(u32, u8, u64)> {
    let cfg = f.config();
    let at = cfg.capability(0x11)?;
    let control = cfg.read(at + 2, 2);
    let table = cfg.read(at + 4, 4);
    Some((
        (control & 0x7ff) + 1,
        (table & 7) as u8,
        u64::from(table & !7),
    ))
}

/// Points `n` of `f`'s MSI-X vectors at the MSI window, vector i with data
/// `first + i`, unmasked (QEMU's `spapr_msi_setmsg` and
/// `msix_set_message`): written into its table as firmware would, through
/// the BAR.
pub fn set_msix_messages(f: &mut dyn crate::pci::PciFunction, first: u32, n: u32) {
    let Some((vectors, bar, offset)) = msix_table(f) else {
        return;
    };
    for i in 0..n.min(vectors) {
        let at = offset + 16 * u64::from(i);
        let mut control = [0u8; 4];
        f.bar_read(bar, at + 12, &mut control);
        let mut entry = [0u8; 16];
        entry[..8].copy_from_slice(&MSI_WINDOW.to_le_bytes());
        entry[8..12].copy_from_slice(&first.wrapping_add(i).to_le_bytes());
        entry[12..].copy_from_slice(&(u32::from_le_bytes(control) & !1).to_le_bytes());
        f.bar_write(bar, at, &entry);
    }
}

/// `SPAPR_PCI_LIOBN(index, window)`.
pub fn liobn(index: u32, window: u32) -> u32 {
    0x8000_0000 | index << 8 | window
}

/// QEMU's `SPAPR_PCI_MEM32_WIN_SIZE`: the 32-bit window 2.8 carves out of
/// 2.7's single one.
pub const MEM32_WIN_SIZE: u64 = 0x8000_0000;

/// Interrupt pins, each an LSI of its own.
pub const PCI_NUM_PINS: usize = 4;

/// A bridge's configuration, as QEMU 2.8 and later hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhbConfig {
    pub buid: u64,
    pub dma_liobn: u32,
    pub mem_win_addr: u64,
    pub mem_win_size: u64,
    pub mem64_win_addr: u64,
    pub mem64_win_size: u64,
    /// The PCI address of the 64-bit window's first byte (the CPU address
    /// but for a split 2.7 window).
    pub mem64_win_pciaddr: u64,
    pub io_win_addr: u64,
    pub io_win_size: u64,
    /// The LSI each pin raises.
    pub lsi: [u32; PCI_NUM_PINS],
    /// `pre-2.8-migration`: the stream keeps 2.7's layout.
    pub pre_2_8_migration: bool,
}

impl PhbConfig {
    /// A 2.7-style configuration (one MMIO window, `mem_win_size` past
    /// 2 GiB) converted as QEMU 2.8 does: the first 2 GiB stay the 32-bit
    /// window, the rest becomes the 64-bit window right after it.
    pub fn converted(mut self) -> PhbConfig {
        if self.mem64_win_size == 0 && self.mem_win_size > MEM32_WIN_SIZE {
            self.mem64_win_addr = self.mem_win_addr + MEM32_WIN_SIZE;
            self.mem64_win_pciaddr = MEM_WIN_BUS_OFFSET + MEM32_WIN_SIZE;
            self.mem64_win_size = self.mem_win_size - MEM32_WIN_SIZE;
            self.mem_win_size = MEM32_WIN_SIZE;
        }
        self
    }

    /// The bridge `props` describe, as PHB `index` of a board with
    /// `ram_top` bytes of RAM whose pins take the interrupt sources from
    /// `lsi_base` (the board numbers them): placed as QEMU places it (its
    /// `spapr_phb_placement`, or 2.7's above RAM), windows converted.
    pub fn from_props(props: &Props, index: u32, ram_top: u64, lsi_base: u32) -> PhbConfig {
        let size = |n| props.uint(n).unwrap_or_default();
        let i = u64::from(index);
        let (io, mem32, mem64) = if props.bool("x-placement-2-7").unwrap_or(false) {
            // phb_placement_2_7: from the first TiB boundary above RAM,
            // 64 GiB a bridge: I/O at +2 GiB, memory at +2.5 GiB.
            let base = ram_top.next_multiple_of(1 << 40) + i * 0x10_0000_0000;
            (base + 0x8000_0000, base + 0xa000_0000, 0)
        } else {
            (
                PCI_BASE + i * 0x1_0000,
                PCI_BASE + (i + 1) * MEM32_WIN_SIZE,
                PCI_BASE + (i + 1) * MEM64_WIN_SIZE,
            )
        };
        let mem64_win_size = if mem64 == 0 {
            0
        } else {
            size("mem64_win_size")
        };
        PhbConfig {
            buid: BASE_BUID + i,
            dma_liobn: liobn(index, 0),
            mem_win_addr: mem32,
            mem_win_size: size("mem_win_size"),
            mem64_win_addr: mem64,
            mem64_win_size,
            mem64_win_pciaddr: mem64,
            io_win_addr: io,
            io_win_size: size("io_win_size"),
            lsi: std::array::from_fn(|pin| lsi_base + 4 * index + pin as u32),
            pre_2_8_migration: props.bool("pre-2.8-migration").unwrap_or(false),
        }
        .converted()
    }

    /// The single window 2.7 would show for this configuration (QEMU's
    /// `spapr_pci_pre_save`): the 64-bit window merged back when it
    /// follows the 32-bit one.
    fn mig_mem_win_size(&self) -> u64 {
        if self.mem64_win_size != 0 && self.mem64_win_addr == self.mem_win_addr + self.mem_win_size
        {
            self.mem_win_size + self.mem64_win_size
        } else {
            self.mem_win_size
        }
    }
}

migration::vmstate! {
    /// One interrupt pin's LSI, checked equal on load.
    pub static LSI = "spapr_pci/lsi", version 1, minimum 1;
    pub struct PhbLsi {
        irq: u32,
    }
}

migration::vmstate! {
    /// One entry of the bridge's MSI map: the function (its RTAS
    /// configuration address) and the MSIs it was given.
    pub static MSI = "spapr_pci/msi", version 1, minimum 1;
    pub struct PhbMsi {
        key: u32,
        #[wire("value.first_irq")]
        first_irq: u32,
        #[wire("value.num")]
        num: u32,
    }
}

migration::vmstate! {
    /// `spapr_pci` without `pre-2.8-migration` (pseries-2.8 and later).
    pub static SPAPR_PCI = "spapr_pci", version 2, minimum 2;
    pub struct PhbState {
        buid: u64,
        lsi_table: [PhbLsi; 4],
        msi_devs_num: i32,
        #[count(msi_devs_num)]
        msi_devs: Vec<PhbMsi>,
    }
}

migration::vmstate! {
    /// `spapr_pci` with `pre-2.8-migration` (pseries-2.7 and older): 2.7's
    /// layout, its configuration fields now scratch.
    pub static SPAPR_PCI_PRE_2_8 = "spapr_pci", version 2, minimum 2;
    pub struct PhbStatePre28 {
        buid: u64,
        mig_liobn: u32,
        mig_mem_win_addr: u64,
        mig_mem_win_size: u64,
        mig_io_win_addr: u64,
        mig_io_win_size: u64,
        lsi_table: [PhbLsi; 4],
        msi_devs_num: i32,
        #[count(msi_devs_num)]
        msi_devs: Vec<PhbMsi>,
    }
}

/// An RTAS configuration address: (bus, devfn, register); bits 31:28
/// are the register's bits 11:8 (extended configuration space).
pub fn config_address(addr: u32) -> (u8, u8, u16) {
    let reg = ((addr >> 20) & 0xf00) as u16 | (addr & 0xff) as u16;
    ((addr >> 16) as u8, (addr >> 8) as u8, reg)
}

/// The bridge's migrated side.
#[derive(Debug)]
pub struct SpaprPhb {
    pub cfg: PhbConfig,
    /// The MSI map RTAS `ibm,change-msi` fills: per function (by its
    /// RTAS configuration address), its first source and how many.
    pub msi: Vec<PhbMsi>,
}

impl SpaprPhb {
    const NAME: &'static str = "spapr_pci";

    pub fn new(cfg: PhbConfig) -> SpaprPhb {
        SpaprPhb { cfg, msi: vec![] }
    }

    /// Which function and register an RTAS configuration access on this
    /// bridge reaches, validated as QEMU's `finish_read_pci_config` does
    /// (size 1, 2 or 4; a function there; aligned; inside its
    /// configuration space); else RTAS's hardware error.
    fn config_target(
        &self,
        root: &PciRoot,
        buid: u64,
        addr: u32,
        size: u32,
    ) -> Result<(Bdf, u16, u8), i32> {
        let (bus, devfn, reg) = config_address(addr);
        if buid != self.cfg.buid || ![1, 2, 4].contains(&size) || bus != 0 {
            return Err(crate::rtas::HW_ERROR);
        }
        let bdf = Bdf::new(0, devfn >> 3, devfn & 7);
        let (_, f) = root
            .functions()
            .find(|(b, _)| **b == bdf)
            .ok_or(crate::rtas::HW_ERROR)?;
        // PCI Express functions have 4 KiB of configuration space.
        let express = f.config().capability(0x10).is_some();
        let space = if express { 4096 } else { 256 };
        if u32::from(reg) % size != 0 || reg >= space {
            return Err(crate::rtas::HW_ERROR);
        }
        Ok((bdf, reg, size as u8))
    }

    /// The function an RTAS MSI call names by its configuration address
    /// on bridge `buid`; else RTAS's parameter error (QEMU's).
    pub fn msi_function(&self, root: &PciRoot, buid: u64, addr: u32) -> Result<Bdf, i32> {
        let (bus, devfn, _) = config_address(addr);
        let bdf = Bdf::new(0, devfn >> 3, devfn & 7);
        if buid != self.cfg.buid || bus != 0 || !root.functions().any(|(b, _)| *b == bdf) {
            return Err(crate::rtas::PARAM_ERROR);
        }
        Ok(bdf)
    }

    /// The MSIs of the function at configuration address `addr`.
    pub fn msi_of(&self, addr: u32) -> Option<&PhbMsi> {
        self.msi.iter().find(|m| m.key == addr)
    }

    pub fn set_msi(&mut self, addr: u32, first_irq: u32, num: u32) {
        self.msi.retain(|m| m.key != addr);
        self.msi.push(PhbMsi {
            key: addr,
            first_irq,
            num,
        });
    }

    pub fn remove_msi(&mut self, addr: u32) -> Option<PhbMsi> {
        let at = self.msi.iter().position(|m| m.key == addr)?;
        Some(self.msi.remove(at))
    }

    /// `ibm,read-pci-config`: the register's value.
    pub fn read_config(
        &self,
        root: &mut PciRoot,
        buid: u64,
        addr: u32,
        size: u32,
    ) -> Result<u32, i32> {
        let (bdf, reg, size) = self.config_target(root, buid, addr, size)?;
        Ok(root.read(bdf, reg, size))
    }

    /// `ibm,write-pci-config`.
    pub fn write_config(
        &self,
        root: &mut PciRoot,
        buid: u64,
        addr: u32,
        size: u32,
        value: u32,
    ) -> Result<(), i32> {
        let (bdf, reg, size) = self.config_target(root, buid, addr, size)?;
        root.write(bdf, reg, size, value);
        Ok(())
    }

    fn lsi_table(&self) -> [PhbLsi; PCI_NUM_PINS] {
        self.cfg.lsi.map(|irq| PhbLsi { irq })
    }

    /// What must hold of a saved state whatever the layout: the same
    /// bridge (BUID), the same LSIs (QEMU's `VMSTATE_*_EQUAL`, kept for
    /// what cannot change under a guest).
    fn check(&self, buid: u64, lsi: &[PhbLsi; PCI_NUM_PINS]) -> Result<(), LoadError> {
        if buid != self.cfg.buid {
            return Err(LoadError::new(
                Self::NAME,
                format!(
                    "the stream's bridge has BUID {buid:#x}, this one {:#x}",
                    self.cfg.buid
                ),
            ));
        }
        for (pin, (have, want)) in lsi.iter().zip(self.cfg.lsi).enumerate() {
            if have.irq != want {
                return Err(LoadError::new(
                    Self::NAME,
                    format!("pin {pin}'s LSI is {} in the stream, {want} here", have.irq),
                ));
            }
        }
        Ok(())
    }
}

/// The bridge's section layout: with `pre-2.8-migration`, 2.7's scratch
/// fields too.
pub fn description_for(pre_2_8_migration: bool) -> &'static Description {
    if pre_2_8_migration {
        &SPAPR_PCI_PRE_2_8
    } else {
        &SPAPR_PCI
    }
}

impl migration::vmstate::Migratable for SpaprPhb {
    fn description(&self) -> &'static Description {
        description_for(self.cfg.pre_2_8_migration)
    }

    fn state(&self) -> State {
        let c = &self.cfg;
        if c.pre_2_8_migration {
            // What 2.7 would send, for a 2.7 destination's checks.
            PhbStatePre28 {
                buid: c.buid,
                mig_liobn: c.dma_liobn,
                mig_mem_win_addr: c.mem_win_addr,
                mig_mem_win_size: c.mig_mem_win_size(),
                mig_io_win_addr: c.io_win_addr,
                mig_io_win_size: c.io_win_size,
                lsi_table: self.lsi_table(),
                msi_devs_num: self.msi.len() as i32,
                msi_devs: self.msi.clone(),
            }
            .to_state()
        } else {
            PhbState {
                buid: c.buid,
                lsi_table: self.lsi_table(),
                msi_devs_num: self.msi.len() as i32,
                msi_devs: self.msi.clone(),
            }
            .to_state()
        }
    }

    fn load(&mut self, st: &State) -> Result<(), LoadError> {
        if self.cfg.pre_2_8_migration {
            // The mig_* fields are scratch: read, and ignored.
            let s = PhbStatePre28::from_state(st, Self::NAME)?;
            self.check(s.buid, &s.lsi_table)?;
            self.msi = s.msi_devs;
        } else {
            let s = PhbState::from_state(st, Self::NAME)?;
            self.check(s.buid, &s.lsi_table)?;
            self.msi = s.msi_devs;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use migration::stream::{decode_state, encode_state};
    use migration::vmstate::Migratable;

    /// A pseries-2.7 bridge as QEMU 2.7 configured it: one MMIO window of
    /// 64 GiB at 1 TiB (past the 2 GiB a 2.8 32-bit window holds).
    fn raw_2_7() -> PhbConfig {
        PhbConfig {
            buid: 0x0800_0000_2000_0000, // SPAPR_PCI_BASE_BUID
            dma_liobn: 0x8000_0000,
            mem_win_addr: 0x100_0000_0000,
            mem_win_size: 0x10_0000_0000,
            mem64_win_addr: 0,
            mem64_win_size: 0,
            mem64_win_pciaddr: 0,
            io_win_addr: 0x100_8000_0000,
            io_win_size: 0x1_0000,
            lsi: [0x1000, 0x1001, 0x1002, 0x1003],
            pre_2_8_migration: true,
        }
    }

    /// What QEMU 2.7's `VMSTATE_*_EQUAL` fields compared, on a destination
    /// with configuration `here`: the stream's values (at the scratch
    /// fields' places, 2.7's layout being the pre-2.8 one) against its own.
    fn equal_checks_of_2_7(here: &PhbConfig, st: &State) -> Result<(), String> {
        let s = PhbStatePre28::from_state(st, "spapr_pci").map_err(|e| e.to_string())?;
        for (name, stream, own) in [
            ("dma_liobn", s.mig_liobn as u64, here.dma_liobn as u64),
            ("mem_win_addr", s.mig_mem_win_addr, here.mem_win_addr),
            ("mem_win_size", s.mig_mem_win_size, here.mem_win_size),
            ("io_win_addr", s.mig_io_win_addr, here.io_win_addr),
            ("io_win_size", s.mig_io_win_size, here.io_win_size),
        ] {
            if stream != own {
                return Err(format!("{name}: {stream:#x} in the stream, {own:#x} here"));
            }
        }
        Ok(())
    }

    /// The stream QEMU 2.7 sent for its bridge: its raw values in 2.7's
    /// layout (which the pre-2.8 description keeps, byte for byte).
    fn stream_of_2_7() -> Vec<u8> {
        let c = raw_2_7();
        let st = PhbStatePre28 {
            buid: c.buid,
            mig_liobn: c.dma_liobn,
            mig_mem_win_addr: c.mem_win_addr,
            mig_mem_win_size: c.mem_win_size,
            mig_io_win_addr: c.io_win_addr,
            mig_io_win_size: c.io_win_size,
            lsi_table: c.lsi.map(|irq| PhbLsi { irq }),
            msi_devs_num: 0,
            msi_devs: vec![],
        }
        .to_state();
        encode_state(&SPAPR_PCI_PRE_2_8, &st).unwrap()
    }

    /// The seed's bug: a 2.8 destination converts 2.7's window (2 GiB
    /// 32-bit + the rest 64-bit); comparing the stream's raw 2.7 window
    /// with the converted one fails, as QEMU 2.8-rc's `VMSTATE_EQUAL` did.
    /// The fix's description reads the same bytes into scratch and takes
    /// them.
    #[test]
    fn forward_2_7_to_2_8_fails_with_equal_checks_and_loads_with_scratch_fields() {
        let here = raw_2_7().converted();
        assert_eq!(
            (here.mem_win_size, here.mem64_win_size),
            (MEM32_WIN_SIZE, 0xf_8000_0000)
        );
        let st = decode_state(&SPAPR_PCI_PRE_2_8, 2, &stream_of_2_7()).unwrap();
        let e = equal_checks_of_2_7(&here, &st).unwrap_err();
        assert_eq!(
            e,
            "mem_win_size: 0x1000000000 in the stream, 0x80000000 here"
        );
        SpaprPhb::new(here).load(&st).unwrap();
    }

    /// Backward: a 2.8 bridge with pre-2.8-migration sends 2.7's values
    /// (the windows merged again), so a 2.7 destination's checks pass.
    #[test]
    fn backward_2_8_to_2_7_sends_what_2_7_checks() {
        let phb = SpaprPhb::new(raw_2_7().converted());
        let bytes = encode_state(phb.description(), &phb.state()).unwrap();
        assert_eq!(bytes, stream_of_2_7(), "2.7's bytes exactly");
        let st = decode_state(&SPAPR_PCI_PRE_2_8, 2, &bytes).unwrap();
        equal_checks_of_2_7(&raw_2_7(), &st).unwrap();
    }

    /// From pseries-2.8 on, the scratch fields are not in the stream: its
    /// layout is buid, the LSIs and the MSI map; a bridge that differs
    /// where the guest would notice (BUID, an LSI) is refused, naming it.
    #[test]
    fn from_2_8_the_stream_has_no_scratch_and_checks_only_what_cannot_change() {
        let cfg = PhbConfig {
            pre_2_8_migration: false,
            ..raw_2_7().converted()
        };
        let phb = SpaprPhb::new(cfg);
        let bytes = encode_state(phb.description(), &phb.state()).unwrap();
        assert_eq!(bytes.len(), 8 + 4 * 4 + 4);
        let st = decode_state(&SPAPR_PCI, 2, &bytes).unwrap();
        let mut same = SpaprPhb::new(cfg);
        same.load(&st).unwrap();
        let mut other = SpaprPhb::new(PhbConfig {
            lsi: [0x1000, 0x1001, 0x1002, 0x1004],
            ..cfg
        });
        let e = other.load(&st).unwrap_err().to_string();
        assert!(
            e.contains("pin 3's LSI is 4099 in the stream, 4100 here"),
            "{e}"
        );
        // The MSI map travels: entries a source had (QEMU's layout, 12
        // bytes each) load, and go on in the next stream.
        same.msi = vec![
            PhbMsi {
                key: 0x800,
                first_irq: 0x1300,
                num: 2,
            },
            PhbMsi {
                key: 0x1000,
                first_irq: 0x1302,
                num: 1,
            },
        ];
        let bytes = encode_state(same.description(), &same.state()).unwrap();
        assert_eq!(bytes.len(), 8 + 4 * 4 + 4 + 2 * 12);
        let mut next = SpaprPhb::new(cfg);
        next.load(&decode_state(&SPAPR_PCI, 2, &bytes).unwrap())
            .unwrap();
        assert_eq!(next.msi, same.msi);
    }
}
