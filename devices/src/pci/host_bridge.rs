//! The host bridge at 00:00.0 (identity of q35's MCH, 8086:29c0, so that
//! guests see the board they expect).

use super::config::{self, ConfigSpace};
use super::PciFunction;
use crate::model::property::PropKind;
use crate::model::types::{p, TypeInfo};

/// The `q35-pcihost` type: the board's own (`-device` cannot create it);
/// its properties are the machine's, set with `-global q35-pcihost.P=V`
/// and by the compat arrays. They shape what the board's firmware tables
/// say about the PCI host, not the function's configuration space.
pub static TYPE: TypeInfo = TypeInfo {
    name: "q35-pcihost",
    parent: Some("device"),
    abstract_: false,
    bus: None,
    description: "the Q35 PCI host bridge (the board's)",
    props: &[
        p(
            "x-pci-hole64-fix",
            PropKind::Bool,
            "on",
            "declare the whole 64-bit PCI window in ACPI (off: only what 64-bit BARs use, as QEMU up to 2.10)",
        ),
        p(
            "x-pci-root-uid",
            PropKind::U8,
            "0",
            "PCI0._UID in the DSDT (1 on QEMU's pc-q35-5.1 and older, a machine class option there)",
        ),
    ],
};

pub struct HostBridge {
    cfg: ConfigSpace,
}

impl HostBridge {
    pub fn new() -> HostBridge {
        let mut cfg = ConfigSpace::new(0x8086, 0x29c0, 0x06_00_00, 0);
        cfg.set_u16(config::SUBSYSTEM_VENDOR_ID, 0x1af4);
        cfg.set_u16(config::SUBSYSTEM_ID, 0x1100);
        // Memory space and bus master are fixed on; nothing is writable.
        cfg.set_u16(config::COMMAND, 0x0006);
        HostBridge { cfg }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciFunction for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.cfg
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.cfg
    }
}
