//! The kernel's structures and numbers for a pseries VM (`linux/kvm.h`,
//! `asm/kvm.h` of powerpc), as `#[repr(C)]` types of the same layout.

/// `KVM_CREATE_VM`'s type: the HV (hypervisor mode, POWER8 and later
/// with KVM-HV) or PR (problem state, emulated) flavour.
pub const KVM_VM_PPC_HV: u64 = 1;
pub const KVM_VM_PPC_PR: u64 = 2;

pub const KVM_CAP_PPC_GET_PVINFO: u32 = 57;
pub const KVM_CAP_PPC_PAPR: u32 = 68;
/// Threads per virtual core (`KVM_ENABLE_CAP` on the VM: args[0]).
pub const KVM_CAP_PPC_SMT: u32 = 64;
/// Which hypercalls the kernel handles itself (args: the hcall, on/off).
pub const KVM_CAP_PPC_ENABLE_HCALL: u32 = 104;
pub const KVM_CAP_PPC_ALLOC_HTAB: u32 = 80;
pub const KVM_CAP_PPC_GET_SMMU_INFO: u32 = 78;
pub const KVM_CAP_PPC_HTAB_FD: u32 = 84;
pub const KVM_CAP_IRQ_XICS: u32 = 92;
pub const KVM_CAP_PPC_HTM: u32 = 132;
pub const KVM_CAP_PPC_MMU_RADIX: u32 = 134;
/// The guest may take interrupts with LPCR[AIL] = 3.
pub const KVM_CAP_PPC_AIL_MODE_3: u32 = 210;
pub const KVM_CAP_PPC_MMU_HASH_V3: u32 = 135;

/// `kvm_run.exit_reason`s a pseries vCPU comes back with.
pub const KVM_EXIT_UNKNOWN: u32 = 0;
pub const KVM_EXIT_DEBUG: u32 = 4;
pub const KVM_EXIT_MMIO: u32 = 6;
pub const KVM_EXIT_SHUTDOWN: u32 = 8;
pub const KVM_EXIT_FAIL_ENTRY: u32 = 9;
pub const KVM_EXIT_INTR: u32 = 10;
pub const KVM_EXIT_INTERNAL_ERROR: u32 = 17;
/// A hypercall KVM leaves to userspace.
pub const KVM_EXIT_PAPR_HCALL: u32 = 19;
pub const KVM_EXIT_SYSTEM_EVENT: u32 = 24;
/// Where `kvm_run.exit_reason` is.
pub const KVM_RUN_EXIT_REASON_OFFSET: usize = 8;
/// Where `kvm_run`'s exit union starts (`mmio`, `papr_hcall` are in it).
pub const KVM_RUN_EXIT_OFFSET: usize = 32;

/// `KVM_IRQ_LINE`'s levels on powerpc: an edge, a level lowered, raised.
pub const KVM_INTERRUPT_SET: i32 = -1;
pub const KVM_INTERRUPT_UNSET: i32 = -2;
pub const KVM_INTERRUPT_SET_LEVEL: i32 = -3;

/// `kvm_userspace_memory_region.flags`: log the slot's dirty pages.
pub const KVM_MEM_LOG_DIRTY_PAGES: u32 = 1;
/// `kvm_ioeventfd.flags`: signal only on the given value.
pub const KVM_IOEVENTFD_FLAG_DATAMATCH: u32 = 1;

/// The in-kernel XICS's attribute groups, and a source's 64-bit state in
/// `KVM_DEV_XICS_GRP_SOURCES`.
pub const KVM_DEV_XICS_GRP_SOURCES: u32 = 1;
pub const KVM_DEV_XICS_GRP_CTRL: u32 = 2;
pub const KVM_DEV_XICS_NR_SERVERS: u64 = 1;
pub const KVM_XICS_PRIORITY_SHIFT: u32 = 32;
pub const KVM_XICS_LEVEL_SENSITIVE: u64 = 1 << 40;
pub const KVM_XICS_MASKED: u64 = 1 << 41;
pub const KVM_XICS_PENDING: u64 = 1 << 42;
pub const KVM_XICS_PRESENTED: u64 = 1 << 43;
pub const KVM_XICS_QUEUED: u64 = 1 << 44;
/// `KVM_REG_PPC_ICP_STATE`'s fields: CPPR, XISR, MFRR, pending priority.
pub const KVM_REG_PPC_ICP_CPPR_SHIFT: u32 = 56;
pub const KVM_REG_PPC_ICP_XISR_SHIFT: u32 = 32;
pub const KVM_REG_PPC_ICP_MFRR_SHIFT: u32 = 24;
pub const KVM_REG_PPC_ICP_PPRI_SHIFT: u32 = 16;
/// `KVM_CREATE_DEVICE`'s type for the in-kernel XICS.
pub const KVM_DEV_TYPE_XICS: u32 = 3;

/// `KVM_PPC_GET_SMMU_INFO` flags.
pub const KVM_PPC_PAGE_SIZES_REAL: u64 = 1;
pub const KVM_PPC_1T_SEGMENTS: u64 = 2;
pub const KVM_PPC_NO_HASH: u64 = 4;

/// `KVM_PPC_GET_HTAB_FD` flags.
pub const KVM_GET_HTAB_BOLTED_ONLY: u64 = 1;
pub const KVM_GET_HTAB_WRITE: u64 = 2;

const KVM_REG_PPC: u64 = 0x1000_0000_0000_0000;
const KVM_REG_SIZE_U32: u64 = 0x0020_0000_0000_0000;
const KVM_REG_SIZE_U64: u64 = 0x0030_0000_0000_0000;

/// A 64-bit powerpc `ONE_REG` id.
pub const fn reg64(n: u64) -> u64 {
    KVM_REG_PPC | KVM_REG_SIZE_U64 | n
}
/// A 32-bit powerpc `ONE_REG` id.
pub const fn reg32(n: u64) -> u64 {
    KVM_REG_PPC | KVM_REG_SIZE_U32 | n
}

const KVM_REG_SIZE_U128: u64 = 0x0040_0000_0000_0000;

/// A 128-bit powerpc `ONE_REG` id.
pub const fn reg128(n: u64) -> u64 {
    KVM_REG_PPC | KVM_REG_SIZE_U128 | n
}

/// `KVM_REG_PPC_VR(n)`: vector register n (VSX's 32..64).
pub const fn vr(n: u64) -> u64 {
    reg128(0x40 + n)
}
/// `KVM_REG_PPC_VSR(n)`: VSX register n (0..32; its high half is FPR n).
pub const fn vsr(n: u64) -> u64 {
    reg128(0x60 + n)
}
pub const KVM_REG_PPC_FPSCR: u64 = reg64(0x80);
pub const KVM_REG_PPC_VSCR: u64 = reg32(0x81);
/// The vCPU's interrupt presentation state with the in-kernel XICS.
pub const KVM_REG_PPC_ICP_STATE: u64 = reg64(0x8c);
/// Whether the vCPU is online (HV KVM counts a core's online threads).
pub const KVM_REG_PPC_ONLINE: u64 = reg32(0xbf);
/// The logical partitioning control register.
pub const KVM_REG_PPC_LPCR_64: u64 = reg64(0xb5);
/// What the guest's timebase adds to the host's.
pub const KVM_REG_PPC_TB_OFFSET: u64 = reg64(0x9c);

/// The SPRs the backend saves and restores through `ONE_REG` (beside
/// `KVM_GET_REGS`/`SREGS`), by their uapi names.
pub const ONE_REGS: &[(&str, u64)] = &[
    ("KVM_REG_PPC_HIOR", reg64(0x1)),
    ("KVM_REG_PPC_DAR", reg64(0xc)),
    ("KVM_REG_PPC_DSISR", reg32(0xd)),
    ("KVM_REG_PPC_AMR", reg64(0xe)),
    ("KVM_REG_PPC_TB_OFFSET", KVM_REG_PPC_TB_OFFSET),
    ("KVM_REG_PPC_VTB", reg64(0xae)),
    ("KVM_REG_PPC_LPCR_64", KVM_REG_PPC_LPCR_64),
    ("KVM_REG_PPC_ARCH_COMPAT", reg32(0xb7)),
    ("KVM_REG_PPC_DEC_EXPIRY", reg64(0xbe)),
    ("KVM_REG_PPC_PTCR", reg64(0xc0)),
];

/// `struct kvm_regs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmRegs {
    pub pc: u64,
    pub cr: u64,
    pub ctr: u64,
    pub lr: u64,
    pub xer: u64,
    pub msr: u64,
    pub srr0: u64,
    pub srr1: u64,
    pub pid: u64,
    pub sprg: [u64; 8],
    pub gpr: [u64; 32],
}

/// `struct kvm_sregs`: the PVR, then a union whose Book3S-64 side is
/// SDR1 (`u[0]`) and 64 SLB entries (`u[1..129]`, ESID then VSID).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmSregs {
    pub pvr: u32,
    _pad: u32,
    pub u: [u64; 153],
}

impl Default for KvmSregs {
    fn default() -> Self {
        KvmSregs {
            pvr: 0,
            _pad: 0,
            u: [0; 153],
        }
    }
}

/// `struct kvm_one_reg`: the id and where its value is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KvmOneReg {
    pub id: u64,
    pub addr: u64,
}

/// `struct kvm_enable_cap`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KvmEnableCap {
    pub cap: u32,
    pub flags: u32,
    pub args: [u64; 4],
    pub pad: [u8; 64],
}

/// `struct kvm_ppc_one_page_size`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KvmPpcOnePageSize {
    pub page_shift: u32,
    pub pte_enc: u32,
}

/// `struct kvm_ppc_one_seg_page_size`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KvmPpcOneSegPageSize {
    pub page_shift: u32,
    pub slb_enc: u32,
    pub enc: [KvmPpcOnePageSize; 8],
}

/// `struct kvm_ppc_smmu_info`: the MMU the host's KVM can give a guest.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KvmPpcSmmuInfo {
    pub flags: u64,
    pub slb_size: u32,
    pub data_keys: u16,
    pub instr_keys: u16,
    pub sps: [KvmPpcOneSegPageSize; 8],
}

/// `struct kvm_get_htab_fd`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KvmGetHtabFd {
    pub flags: u64,
    pub start_index: u64,
    pub reserved: [u64; 2],
}

/// `struct kvm_get_htab_header`: a record of the HTAB fd (host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KvmGetHtabHeader {
    pub index: u32,
    pub n_valid: u16,
    pub n_invalid: u16,
}

/// `struct kvm_ppc_mmuv3_cfg` (radix or hash on POWER9 and later).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KvmPpcMmuv3Cfg {
    pub flags: u64,
    pub process_table: u64,
}

/// `struct kvm_create_device`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KvmCreateDevice {
    pub type_: u32,
    pub fd: u32,
    pub flags: u32,
}

/// `struct kvm_userspace_memory_region`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KvmUserspaceMemoryRegion {
    pub slot: u32,
    pub flags: u32,
    pub guest_phys_addr: u64,
    pub memory_size: u64,
    pub userspace_addr: u64,
}

/// `struct kvm_irq_level`: an interrupt source and its level.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KvmIrqLevel {
    pub irq: u32,
    pub level: i32,
}

/// `struct kvm_dirty_log`: a slot and where its bitmap goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KvmDirtyLog {
    pub slot: u32,
    pub padding1: u32,
    pub dirty_bitmap: u64,
}

/// `struct kvm_irqfd`: an eventfd that raises interrupt source `gsi`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KvmIrqfd {
    pub fd: u32,
    pub gsi: u32,
    pub flags: u32,
    pub resamplefd: u32,
    pub pad: [u8; 16],
}

/// `struct kvm_ioeventfd`: an eventfd guest writes to `addr` signal.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KvmIoeventfd {
    pub datamatch: u64,
    pub addr: u64,
    pub len: u32,
    pub fd: i32,
    pub flags: u32,
    pub pad: [u8; 36],
}

/// `struct kvm_device_attr`: one attribute of an in-kernel device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KvmDeviceAttr {
    pub flags: u32,
    pub group: u32,
    pub attr: u64,
    pub addr: u64,
}

/// `kvm_run`'s `mmio` exit.
pub const KVM_RUN_MMIO_DATA: usize = KVM_RUN_EXIT_OFFSET + 8;
pub const KVM_RUN_MMIO_LEN: usize = KVM_RUN_EXIT_OFFSET + 16;
pub const KVM_RUN_MMIO_IS_WRITE: usize = KVM_RUN_EXIT_OFFSET + 20;

/// `kvm_run`'s `papr_hcall` exit: the hypercall, its arguments, and
/// where the answer goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PaprHcall {
    pub nr: u64,
    pub ret: u64,
    pub args: [u64; 9],
}

/// Every size and number the probe checks, by the probe's names.
pub fn facts() -> Vec<(String, u64)> {
    use std::mem::{offset_of, size_of};
    let mut v: Vec<(String, u64)> = vec![
        ("sizeof kvm_regs".into(), size_of::<KvmRegs>() as u64),
        ("sizeof kvm_sregs".into(), size_of::<KvmSregs>() as u64),
        ("sizeof kvm_one_reg".into(), size_of::<KvmOneReg>() as u64),
        (
            "sizeof kvm_enable_cap".into(),
            size_of::<KvmEnableCap>() as u64,
        ),
        (
            "sizeof kvm_ppc_smmu_info".into(),
            size_of::<KvmPpcSmmuInfo>() as u64,
        ),
        (
            "sizeof kvm_get_htab_fd".into(),
            size_of::<KvmGetHtabFd>() as u64,
        ),
        (
            "sizeof kvm_get_htab_header".into(),
            size_of::<KvmGetHtabHeader>() as u64,
        ),
        (
            "sizeof kvm_ppc_mmuv3_cfg".into(),
            size_of::<KvmPpcMmuv3Cfg>() as u64,
        ),
        (
            "sizeof kvm_create_device".into(),
            size_of::<KvmCreateDevice>() as u64,
        ),
        (
            "sizeof kvm_userspace_memory_region".into(),
            size_of::<KvmUserspaceMemoryRegion>() as u64,
        ),
        (
            "sizeof kvm_dirty_log".into(),
            size_of::<KvmDirtyLog>() as u64,
        ),
        (
            "sizeof kvm_irq_level".into(),
            size_of::<KvmIrqLevel>() as u64,
        ),
        (
            "KVM_INTERRUPT_SET".into(),
            u64::from(KVM_INTERRUPT_SET as u32),
        ),
        (
            "KVM_INTERRUPT_UNSET".into(),
            u64::from(KVM_INTERRUPT_UNSET as u32),
        ),
        (
            "KVM_INTERRUPT_SET_LEVEL".into(),
            u64::from(KVM_INTERRUPT_SET_LEVEL as u32),
        ),
        ("sizeof kvm_irqfd".into(), size_of::<KvmIrqfd>() as u64),
        (
            "sizeof kvm_ioeventfd".into(),
            size_of::<KvmIoeventfd>() as u64,
        ),
        (
            "sizeof kvm_device_attr".into(),
            size_of::<KvmDeviceAttr>() as u64,
        ),
        (
            "offsetof kvm_run.exit_reason".into(),
            KVM_RUN_EXIT_REASON_OFFSET as u64,
        ),
        (
            "offsetof kvm_run.mmio.data".into(),
            KVM_RUN_MMIO_DATA as u64,
        ),
        ("offsetof kvm_run.mmio.len".into(), KVM_RUN_MMIO_LEN as u64),
        (
            "offsetof kvm_run.mmio.is_write".into(),
            KVM_RUN_MMIO_IS_WRITE as u64,
        ),
        (
            "offsetof kvm_regs.gpr".into(),
            offset_of!(KvmRegs, gpr) as u64,
        ),
        (
            "offsetof kvm_sregs.u".into(),
            offset_of!(KvmSregs, u) as u64,
        ),
        (
            "offsetof kvm_ppc_smmu_info.sps".into(),
            offset_of!(KvmPpcSmmuInfo, sps) as u64,
        ),
        (
            "offsetof kvm_run.papr_hcall".into(),
            KVM_RUN_EXIT_OFFSET as u64,
        ),
        (
            "sizeof kvm_run.papr_hcall".into(),
            size_of::<PaprHcall>() as u64,
        ),
        (
            "KVM_CAP_PPC_GET_PVINFO".into(),
            KVM_CAP_PPC_GET_PVINFO.into(),
        ),
        ("KVM_CAP_PPC_PAPR".into(), KVM_CAP_PPC_PAPR.into()),
        ("KVM_CAP_PPC_SMT".into(), KVM_CAP_PPC_SMT.into()),
        (
            "KVM_CAP_PPC_ENABLE_HCALL".into(),
            KVM_CAP_PPC_ENABLE_HCALL.into(),
        ),
        (
            "KVM_CAP_PPC_ALLOC_HTAB".into(),
            KVM_CAP_PPC_ALLOC_HTAB.into(),
        ),
        (
            "KVM_CAP_PPC_GET_SMMU_INFO".into(),
            KVM_CAP_PPC_GET_SMMU_INFO.into(),
        ),
        ("KVM_CAP_PPC_HTAB_FD".into(), KVM_CAP_PPC_HTAB_FD.into()),
        ("KVM_CAP_IRQ_XICS".into(), KVM_CAP_IRQ_XICS.into()),
        ("KVM_CAP_PPC_HTM".into(), KVM_CAP_PPC_HTM.into()),
        ("KVM_CAP_PPC_MMU_RADIX".into(), KVM_CAP_PPC_MMU_RADIX.into()),
        (
            "KVM_CAP_PPC_AIL_MODE_3".into(),
            KVM_CAP_PPC_AIL_MODE_3.into(),
        ),
        (
            "KVM_CAP_PPC_MMU_HASH_V3".into(),
            KVM_CAP_PPC_MMU_HASH_V3.into(),
        ),
        ("KVM_EXIT_PAPR_HCALL".into(), KVM_EXIT_PAPR_HCALL.into()),
        ("KVM_EXIT_MMIO".into(), KVM_EXIT_MMIO.into()),
        ("KVM_EXIT_SHUTDOWN".into(), KVM_EXIT_SHUTDOWN.into()),
        ("KVM_EXIT_FAIL_ENTRY".into(), KVM_EXIT_FAIL_ENTRY.into()),
        ("KVM_EXIT_INTR".into(), KVM_EXIT_INTR.into()),
        (
            "KVM_EXIT_INTERNAL_ERROR".into(),
            KVM_EXIT_INTERNAL_ERROR.into(),
        ),
        ("KVM_EXIT_SYSTEM_EVENT".into(), KVM_EXIT_SYSTEM_EVENT.into()),
        (
            "KVM_MEM_LOG_DIRTY_PAGES".into(),
            KVM_MEM_LOG_DIRTY_PAGES.into(),
        ),
        (
            "KVM_IOEVENTFD_FLAG_DATAMATCH".into(),
            KVM_IOEVENTFD_FLAG_DATAMATCH.into(),
        ),
        (
            "KVM_DEV_XICS_GRP_SOURCES".into(),
            KVM_DEV_XICS_GRP_SOURCES.into(),
        ),
        ("KVM_DEV_XICS_GRP_CTRL".into(), KVM_DEV_XICS_GRP_CTRL.into()),
        ("KVM_DEV_XICS_NR_SERVERS".into(), KVM_DEV_XICS_NR_SERVERS),
        ("KVM_XICS_LEVEL_SENSITIVE".into(), KVM_XICS_LEVEL_SENSITIVE),
        ("KVM_XICS_MASKED".into(), KVM_XICS_MASKED),
        ("KVM_XICS_PENDING".into(), KVM_XICS_PENDING),
        ("KVM_XICS_PRESENTED".into(), KVM_XICS_PRESENTED),
        ("KVM_XICS_QUEUED".into(), KVM_XICS_QUEUED),
        (
            "KVM_REG_PPC_ICP_CPPR_SHIFT".into(),
            KVM_REG_PPC_ICP_CPPR_SHIFT.into(),
        ),
        (
            "KVM_REG_PPC_ICP_XISR_SHIFT".into(),
            KVM_REG_PPC_ICP_XISR_SHIFT.into(),
        ),
        (
            "KVM_REG_PPC_ICP_MFRR_SHIFT".into(),
            KVM_REG_PPC_ICP_MFRR_SHIFT.into(),
        ),
        (
            "KVM_REG_PPC_ICP_PPRI_SHIFT".into(),
            KVM_REG_PPC_ICP_PPRI_SHIFT.into(),
        ),
        ("KVM_REG_PPC_FPSCR".into(), KVM_REG_PPC_FPSCR),
        ("KVM_REG_PPC_VSCR".into(), KVM_REG_PPC_VSCR),
        ("KVM_REG_PPC_ICP_STATE".into(), KVM_REG_PPC_ICP_STATE),
        ("KVM_REG_PPC_ONLINE".into(), KVM_REG_PPC_ONLINE),
        ("KVM_REG_PPC_VSR(31)".into(), vsr(31)),
        ("KVM_REG_PPC_VR(31)".into(), vr(31)),
        ("KVM_DEV_TYPE_XICS".into(), KVM_DEV_TYPE_XICS.into()),
        ("KVM_PPC_PAGE_SIZES_REAL".into(), KVM_PPC_PAGE_SIZES_REAL),
        ("KVM_PPC_1T_SEGMENTS".into(), KVM_PPC_1T_SEGMENTS),
        ("KVM_PPC_NO_HASH".into(), KVM_PPC_NO_HASH),
        ("KVM_GET_HTAB_BOLTED_ONLY".into(), KVM_GET_HTAB_BOLTED_ONLY),
        ("KVM_GET_HTAB_WRITE".into(), KVM_GET_HTAB_WRITE),
    ];
    v.extend(ONE_REGS.iter().map(|(n, id)| (n.to_string(), *id)));
    v.extend(crate::ioctl::ALL.iter().map(|(n, x)| (n.to_string(), *x)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layouts and numbers match the ppc64el uapi headers: what the
    /// probe (probe/uapi.c, built with the cross compiler against them
    /// and run under qemu-user by scripts/ppc64le.sh) printed, in the file
    /// `KVM_PPC_UAPI` names. Only meaningful compiled for powerpc64.
    #[test]
    #[cfg_attr(
        not(target_arch = "powerpc64"),
        ignore = "compares powerpc64 layouts: runs in scripts/ppc64le.sh"
    )]
    fn layouts_and_numbers_are_the_kernels() {
        let path = std::env::var("KVM_PPC_UAPI")
            .expect("KVM_PPC_UAPI: the probe's output (scripts/ppc64le.sh makes it)");
        let text = std::fs::read_to_string(&path).expect("the probe's output");
        let kernel: Vec<(String, u64)> = text
            .lines()
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(k, v)| (k.to_string(), v.parse().expect("a number")))
            .collect();
        let ours = facts();
        assert_eq!(
            kernel.len(),
            ours.len(),
            "the probe and facts() list different things"
        );
        for (name, value) in &ours {
            let theirs = kernel
                .iter()
                .find(|k| &k.0 == name)
                .unwrap_or_else(|| panic!("the probe does not print {name}"));
            assert_eq!(
                theirs.1, *value,
                "{name}: kernel {:#x}, vmm {value:#x}",
                theirs.1
            );
        }
    }

    #[test]
    fn one_reg_ids() {
        assert_eq!(reg64(0x1), 0x1030_0000_0000_0001);
        assert_eq!(reg32(0xd), 0x1020_0000_0000_000d);
    }
}
