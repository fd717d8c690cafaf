//! ioctl numbers as powerpc encodes them (`arch/powerpc/include/uapi/asm/
//! ioctl.h`): direction in the top 3 bits (none 1, read 2, write 4), then
//! 13 bits of size, the type and the number. x86's encoding (2 direction
//! bits, 14 size bits; write 1) gives other numbers for the same ioctl.

use crate::uapi::*;
use std::mem::size_of;

const NRBITS: u32 = 8;
const TYPEBITS: u32 = 8;
const SIZEBITS: u32 = 13;
const TYPESHIFT: u32 = NRBITS;
const SIZESHIFT: u32 = TYPESHIFT + TYPEBITS;
const DIRSHIFT: u32 = SIZESHIFT + SIZEBITS;

const NONE: u32 = 1;
const READ: u32 = 2;
const WRITE: u32 = 4;

/// `_IOC(dir, type, nr, size)`; a size past 13 bits is a compile error.
pub const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u64 {
    assert!(size < 1 << SIZEBITS, "ioctl argument too large for powerpc");
    ((dir << DIRSHIFT) | ((size as u32) << SIZESHIFT) | (ty << TYPESHIFT) | nr) as u64
}

/// KVM's ioctl type.
pub const KVMIO: u32 = 0xae;

const fn io(nr: u32) -> u64 {
    ioc(NONE, KVMIO, nr, 0)
}
const fn ior<T>(nr: u32) -> u64 {
    ioc(READ, KVMIO, nr, size_of::<T>())
}
const fn iow<T>(nr: u32) -> u64 {
    ioc(WRITE, KVMIO, nr, size_of::<T>())
}
const fn iowr<T>(nr: u32) -> u64 {
    ioc(READ | WRITE, KVMIO, nr, size_of::<T>())
}

pub const KVM_GET_API_VERSION: u64 = io(0x00);
pub const KVM_CREATE_VM: u64 = io(0x01);
pub const KVM_CHECK_EXTENSION: u64 = io(0x03);
pub const KVM_GET_VCPU_MMAP_SIZE: u64 = io(0x04);
pub const KVM_CREATE_VCPU: u64 = io(0x41);
pub const KVM_GET_DIRTY_LOG: u64 = iow::<KvmDirtyLog>(0x42);
pub const KVM_SET_USER_MEMORY_REGION: u64 = iow::<KvmUserspaceMemoryRegion>(0x46);
pub const KVM_IRQ_LINE: u64 = iow::<KvmIrqLevel>(0x61);
pub const KVM_IRQFD: u64 = iow::<KvmIrqfd>(0x76);
pub const KVM_IOEVENTFD: u64 = iow::<KvmIoeventfd>(0x79);
pub const KVM_RUN: u64 = io(0x80);
pub const KVM_GET_REGS: u64 = ior::<KvmRegs>(0x81);
pub const KVM_SET_REGS: u64 = iow::<KvmRegs>(0x82);
pub const KVM_GET_SREGS: u64 = ior::<KvmSregs>(0x83);
pub const KVM_SET_SREGS: u64 = iow::<KvmSregs>(0x84);
pub const KVM_ENABLE_CAP: u64 = iow::<KvmEnableCap>(0xa3);
pub const KVM_PPC_GET_SMMU_INFO: u64 = ior::<KvmPpcSmmuInfo>(0xa6);
pub const KVM_PPC_ALLOCATE_HTAB: u64 = iowr::<u32>(0xa7);
pub const KVM_PPC_GET_HTAB_FD: u64 = iow::<KvmGetHtabFd>(0xaa);
pub const KVM_GET_ONE_REG: u64 = iow::<KvmOneReg>(0xab);
pub const KVM_SET_ONE_REG: u64 = iow::<KvmOneReg>(0xac);
pub const KVM_PPC_CONFIGURE_V3_MMU: u64 = iow::<KvmPpcMmuv3Cfg>(0xaf);
pub const KVM_CREATE_DEVICE: u64 = iowr::<KvmCreateDevice>(0xe0);
pub const KVM_SET_DEVICE_ATTR: u64 = iow::<KvmDeviceAttr>(0xe1);
pub const KVM_GET_DEVICE_ATTR: u64 = iow::<KvmDeviceAttr>(0xe2);

/// Every number above by its C name (for the probe's comparison).
pub const ALL: &[(&str, u64)] = &[
    ("KVM_GET_API_VERSION", KVM_GET_API_VERSION),
    ("KVM_CREATE_VM", KVM_CREATE_VM),
    ("KVM_CHECK_EXTENSION", KVM_CHECK_EXTENSION),
    ("KVM_GET_VCPU_MMAP_SIZE", KVM_GET_VCPU_MMAP_SIZE),
    ("KVM_CREATE_VCPU", KVM_CREATE_VCPU),
    ("KVM_GET_DIRTY_LOG", KVM_GET_DIRTY_LOG),
    ("KVM_SET_USER_MEMORY_REGION", KVM_SET_USER_MEMORY_REGION),
    ("KVM_IRQ_LINE", KVM_IRQ_LINE),
    ("KVM_IRQFD", KVM_IRQFD),
    ("KVM_IOEVENTFD", KVM_IOEVENTFD),
    ("KVM_RUN", KVM_RUN),
    ("KVM_GET_REGS", KVM_GET_REGS),
    ("KVM_SET_REGS", KVM_SET_REGS),
    ("KVM_GET_SREGS", KVM_GET_SREGS),
    ("KVM_SET_SREGS", KVM_SET_SREGS),
    ("KVM_ENABLE_CAP", KVM_ENABLE_CAP),
    ("KVM_PPC_GET_SMMU_INFO", KVM_PPC_GET_SMMU_INFO),
    ("KVM_PPC_ALLOCATE_HTAB", KVM_PPC_ALLOCATE_HTAB),
    ("KVM_PPC_GET_HTAB_FD", KVM_PPC_GET_HTAB_FD),
    ("KVM_GET_ONE_REG", KVM_GET_ONE_REG),
    ("KVM_SET_ONE_REG", KVM_SET_ONE_REG),
    ("KVM_PPC_CONFIGURE_V3_MMU", KVM_PPC_CONFIGURE_V3_MMU),
    ("KVM_CREATE_DEVICE", KVM_CREATE_DEVICE),
    ("KVM_SET_DEVICE_ATTR", KVM_SET_DEVICE_ATTR),
    ("KVM_GET_DEVICE_ATTR", KVM_GET_DEVICE_ATTR),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers worked out by hand from powerpc's encoding, on any host.
    #[test]
    fn powerpc_encoding() {
        // _IO(0xae, 0x80): direction "none" is 1 on powerpc (0 on x86).
        assert_eq!(KVM_RUN, 0x2000_ae80);
        // _IOR(0xae, 0xa6, 592 bytes): read 2 << 29, size 592 << 16.
        assert_eq!(KVM_PPC_GET_SMMU_INFO, 0x4250_aea6);
        // _IOWR(0xae, 0xa7, u32): (2|4) << 29.
        assert_eq!(KVM_PPC_ALLOCATE_HTAB, 0xc004_aea7);
        // _IOW(0xae, 0x82, struct kvm_regs): write 4 << 29, 392 bytes.
        assert_eq!(KVM_SET_REGS, 0x8188_ae82);
    }
}
