//! The sPAPR VIO bus (QEMU's `hw/ppc/spapr_vio.c`): the hypervisor's own
//! virtual devices, each known to the guest by its unit address (`reg`)
//! under the device tree's `/vdevice`, with an interrupt source of its
//! own. What every VIO device migrates (`spapr_vio`) is here; the devices
//! are in their own files (`spapr_vty`).

migration::vmstate! {
    /// What every VIO device migrates: its address and interrupt, the
    /// interrupt mode the guest chose, and its command/response queue (a
    /// vty has none: zeros).
    pub static VMSTATE = "spapr_vio", version 1, minimum 1;
    pub struct VioState {
        reg: u32,
        irq: u32,
        signal_state: u64,
        #[wire("crq.qladdr")]
        crq_qladdr: u64,
        #[wire("crq.qsize")]
        crq_qsize: u32,
        #[wire("crq.qnext")]
        crq_qnext: u32,
    }
}

/// `SPAPR_VIO_REG_BASE`: the first address the machine gives a VIO device
/// (then one more per device, in creation order).
pub const REG_BASE: u32 = 0x7100_0000;

/// `SPAPR_IRQ_VIO`: where VIO interrupt sources start, from pseries-3.1.
pub const IRQ_VIO: u32 = 0x1100;

/// The interrupt source of the VIO device at `reg`, from pseries-3.1
/// (QEMU's `spapr_vio_reg_to_irq`): machine-given addresses map linearly,
/// libvirt's vty addresses (from 0x30000000) to 0xf0-0xff, libvirt's
/// others by their 0x1000 step. Before 3.1 QEMU took the first free
/// source instead (the board counts them).
pub fn reg_to_irq(reg: u32) -> u32 {
    let n = if reg >= REG_BASE {
        reg & 0xff
    } else if reg >= 0x3000_0000 {
        0xf0 | ((reg >> 12) & 0xf)
    } else {
        (reg >> 12) & 0xff
    };
    IRQ_VIO | n
}

/// A VIO device's address and interrupt source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VioAddr {
    pub reg: u32,
    pub irq: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU 7.2's device tree: the vty at 0x71000000 has source 0x1100,
    /// the NVRAM after it 0x1101, a second vty 0x1102.
    #[test]
    fn interrupts_follow_the_address_as_qemus_do() {
        assert_eq!(reg_to_irq(REG_BASE), 0x1100);
        assert_eq!(reg_to_irq(REG_BASE + 2), 0x1102);
        assert_eq!(reg_to_irq(0x3000_1000), 0x11f1);
        assert_eq!(reg_to_irq(0x2000), 0x1102);
    }
}
