//! The in-kernel XICS's state as KVM exchanges it: each interrupt
//! source's 64-bit attribute (`KVM_DEV_XICS_GRP_SOURCES`) and each vCPU's
//! presentation controller in `KVM_REG_PPC_ICP_STATE`, to and from the
//! fields QEMU's `ics` and `icp` sections carry (`ics_set_kvm_state`,
//! `icp_set_kvm_state` and their inverses).

use crate::uapi::*;

/// A source as the `ics/irq` section holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Source {
    pub server: u32,
    pub priority: u8,
    pub saved_priority: u8,
    /// QEMU's `XICS_STATUS_*`: asserted, sent, rejected, masked pending.
    pub status: u8,
    /// `XICS_FLAGS_IRQ_LSI` (1) or `_MSI` (2).
    pub flags: u8,
}

const STATUS_ASSERTED: u8 = 0x1;
const STATUS_SENT: u8 = 0x2;
const STATUS_REJECTED: u8 = 0x4;
const STATUS_MASKED_PENDING: u8 = 0x8;
const FLAG_LSI: u8 = 0x1;
const MASKED: u8 = 0xff;

/// The kernel's attribute for `s` (QEMU's `ics_set_kvm_state_one`): the
/// priority to return to, and the mask bit for a masked source.
pub fn source_to_kvm(s: &Source) -> u64 {
    let mut v = u64::from(s.server) | u64::from(s.saved_priority) << KVM_XICS_PRIORITY_SHIFT;
    if s.priority == MASKED {
        v |= KVM_XICS_MASKED;
    }
    if s.flags & FLAG_LSI != 0 {
        v |= KVM_XICS_LEVEL_SENSITIVE;
        if s.status & STATUS_ASSERTED != 0 {
            v |= KVM_XICS_PENDING;
        }
    } else if s.status & STATUS_MASKED_PENDING != 0 {
        v |= KVM_XICS_PENDING;
    }
    if s.status & STATUS_SENT != 0 {
        v |= KVM_XICS_PRESENTED;
    }
    if s.status & STATUS_REJECTED != 0 {
        v |= KVM_XICS_QUEUED;
    }
    v
}

/// The source the kernel's attribute `v` describes (QEMU's
/// `ics_get_kvm_state`); `flags` are the board's (the kernel knows only
/// level or edge).
pub fn source_from_kvm(v: u64, flags: u8) -> Source {
    let saved_priority = (v >> KVM_XICS_PRIORITY_SHIFT) as u8;
    let priority = if v & KVM_XICS_MASKED != 0 {
        MASKED
    } else {
        saved_priority
    };
    let mut status = 0;
    if v & KVM_XICS_PENDING != 0 {
        status |= if v & KVM_XICS_LEVEL_SENSITIVE != 0 {
            STATUS_ASSERTED
        } else {
            STATUS_MASKED_PENDING | STATUS_REJECTED
        };
    }
    if v & KVM_XICS_PRESENTED != 0 {
        status |= STATUS_SENT;
    }
    if v & KVM_XICS_QUEUED != 0 {
        status |= STATUS_REJECTED;
    }
    Source {
        server: v as u32,
        priority,
        saved_priority,
        status,
        flags,
    }
}

/// A vCPU's presentation controller as QEMU's `icp/server` section holds
/// it: XIRR (CPPR in the top byte, XISR below), the pending priority and
/// MFRR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Icp {
    pub xirr: u32,
    pub pending_priority: u8,
    pub mfrr: u8,
}

pub fn icp_to_kvm(i: &Icp) -> u64 {
    let cppr = u64::from(i.xirr >> 24);
    let xisr = u64::from(i.xirr & 0xff_ffff);
    cppr << KVM_REG_PPC_ICP_CPPR_SHIFT
        | xisr << KVM_REG_PPC_ICP_XISR_SHIFT
        | u64::from(i.mfrr) << KVM_REG_PPC_ICP_MFRR_SHIFT
        | u64::from(i.pending_priority) << KVM_REG_PPC_ICP_PPRI_SHIFT
}

pub fn icp_from_kvm(v: u64) -> Icp {
    let cppr = (v >> KVM_REG_PPC_ICP_CPPR_SHIFT) as u8;
    let xisr = (v >> KVM_REG_PPC_ICP_XISR_SHIFT) as u32 & 0xff_ffff;
    Icp {
        xirr: u32::from(cppr) << 24 | xisr,
        mfrr: (v >> KVM_REG_PPC_ICP_MFRR_SHIFT) as u8,
        pending_priority: (v >> KVM_REG_PPC_ICP_PPRI_SHIFT) as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_round_trip_through_the_kernels_attribute() {
        let cases = [
            // Routed to server 3 at priority 5, an asserted LSI.
            Source {
                server: 3,
                priority: 5,
                saved_priority: 5,
                status: STATUS_ASSERTED,
                flags: FLAG_LSI,
            },
            // Masked by ibm,int-off, its priority kept.
            Source {
                server: 1,
                priority: MASKED,
                saved_priority: 4,
                status: 0,
                flags: 2,
            },
            // An MSI presented to its server, another one queued.
            Source {
                server: 0,
                priority: 6,
                saved_priority: 6,
                status: STATUS_SENT,
                flags: 2,
            },
            Source {
                server: 0,
                priority: 6,
                saved_priority: 6,
                status: STATUS_REJECTED,
                flags: 2,
            },
            // Masked at reset.
            Source {
                server: 0,
                priority: MASKED,
                saved_priority: MASKED,
                status: 0,
                flags: 0,
            },
        ];
        for s in cases {
            let v = source_to_kvm(&s);
            assert_eq!(source_from_kvm(v, s.flags), s, "{v:#x}");
        }
        let masked = source_to_kvm(&cases[1]);
        assert_eq!(masked, 1 | 4 << 32 | KVM_XICS_MASKED);
        assert_ne!(source_to_kvm(&cases[0]) & KVM_XICS_LEVEL_SENSITIVE, 0);
    }

    #[test]
    fn the_presentation_state_round_trips() {
        let i = Icp {
            xirr: 0x05_001234,
            pending_priority: 0x05,
            mfrr: 0xff,
        };
        let v = icp_to_kvm(&i);
        assert_eq!(v >> 56, 0x05, "CPPR");
        assert_eq!(icp_from_kvm(v), i);
    }
}
