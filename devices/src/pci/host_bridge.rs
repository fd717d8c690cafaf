//! The host bridge at 00:00.0 (identity of q35's MCH, 8086:29c0, so that
//! guests see the board they expect).

use super::config::{self, ConfigSpace};
use super::PciFunction;

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
