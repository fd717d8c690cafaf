//! The calls (powerpc64 only): a VM of the HV or PR flavour, what its MMU
//! can do, its hash table, vCPU registers, PAPR mode, the in-kernel XICS
//! and the HTAB fd. Thin: each is one ioctl and its error.

use crate::ioctl::*;
use crate::uapi::*;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An ioctl with an integer argument.
fn ioctl_val(fd: &impl AsRawFd, req: u64, arg: u64) -> io::Result<libc::c_int> {
    // SAFETY: the request takes an integer (no memory is passed).
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) })
}

/// An ioctl with a pointer to `T`, which the kernel reads or fills.
fn ioctl_ptr<T>(fd: &impl AsRawFd, req: u64, arg: &mut T) -> io::Result<libc::c_int> {
    // SAFETY: `arg` is a live, writable `T` of the size the request encodes.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) })
}

/// A file descriptor a call returned.
fn owned(fd: libc::c_int) -> File {
    // SAFETY: the kernel just returned this descriptor to us alone.
    File::from(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn open_kvm() -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
}

pub fn check_extension(kvm: &File, cap: u32) -> io::Result<i32> {
    ioctl_val(kvm, KVM_CHECK_EXTENSION, cap.into())
}

/// A VM of type [`KVM_VM_PPC_HV`] or [`KVM_VM_PPC_PR`].
pub fn create_vm(kvm: &File, ty: u64) -> io::Result<File> {
    ioctl_val(kvm, KVM_CREATE_VM, ty).map(owned)
}

pub fn smmu_info(vm: &File) -> io::Result<KvmPpcSmmuInfo> {
    let mut info = KvmPpcSmmuInfo::default();
    ioctl_ptr(vm, KVM_PPC_GET_SMMU_INFO, &mut info)?;
    Ok(info)
}

/// The host's timebase register (`mftb`), which a guest's timebase is
/// offset from (`KVM_REG_PPC_TB_OFFSET`).
pub fn timebase() -> u64 {
    let tb: u64;
    // SAFETY: reads a register; no memory, stack or flags touched.
    unsafe {
        core::arch::asm!("mftb {0}", out(reg) tb, options(nomem, nostack, preserves_flags));
    }
    tb
}

/// Asks for a hash table of 2^`shift` bytes; the order KVM gave.
pub fn allocate_htab(vm: &File, shift: u32) -> io::Result<u32> {
    let mut order = shift;
    ioctl_ptr(vm, KVM_PPC_ALLOCATE_HTAB, &mut order)?;
    Ok(order)
}

/// The HTAB fd, to read the table (or, with [`KVM_GET_HTAB_WRITE`], to
/// write it) from entry `start`.
pub fn htab_fd(vm: &File, flags: u64, start: u64) -> io::Result<File> {
    let mut a = KvmGetHtabFd {
        flags,
        start_index: start,
        reserved: [0; 2],
    };
    ioctl_ptr(vm, KVM_PPC_GET_HTAB_FD, &mut a).map(owned)
}

/// The in-kernel XICS.
pub fn create_xics(vm: &File) -> io::Result<File> {
    let mut d = KvmCreateDevice {
        type_: KVM_DEV_TYPE_XICS,
        fd: 0,
        flags: 0,
    };
    ioctl_ptr(vm, KVM_CREATE_DEVICE, &mut d)?;
    Ok(owned(d.fd as libc::c_int))
}

pub fn create_vcpu(vm: &File, id: u64) -> io::Result<File> {
    ioctl_val(vm, KVM_CREATE_VCPU, id).map(owned)
}

/// Enables capability `cap` of the VM with `args`.
pub fn enable_vm_cap(vm: &File, cap: u32, args: [u64; 4]) -> io::Result<()> {
    let mut c = KvmEnableCap {
        cap,
        flags: 0,
        args,
        pad: [0; 64],
    };
    ioctl_ptr(vm, KVM_ENABLE_CAP, &mut c).map(|_| ())
}

/// PAPR mode: hypercalls KVM does not handle exit to userspace.
pub fn enable_papr(vcpu: &File) -> io::Result<()> {
    let mut c = KvmEnableCap {
        cap: KVM_CAP_PPC_PAPR,
        flags: 0,
        args: [0; 4],
        pad: [0; 64],
    };
    ioctl_ptr(vcpu, KVM_ENABLE_CAP, &mut c).map(|_| ())
}

pub fn get_regs(vcpu: &File) -> io::Result<KvmRegs> {
    let mut r = KvmRegs::default();
    ioctl_ptr(vcpu, KVM_GET_REGS, &mut r)?;
    Ok(r)
}

pub fn set_regs(vcpu: &File, regs: &KvmRegs) -> io::Result<()> {
    let mut r = *regs;
    ioctl_ptr(vcpu, KVM_SET_REGS, &mut r).map(|_| ())
}

pub fn get_sregs(vcpu: &File) -> io::Result<KvmSregs> {
    let mut r = KvmSregs::default();
    ioctl_ptr(vcpu, KVM_GET_SREGS, &mut r)?;
    Ok(r)
}

pub fn set_sregs(vcpu: &File, sregs: &KvmSregs) -> io::Result<()> {
    let mut r = *sregs;
    ioctl_ptr(vcpu, KVM_SET_SREGS, &mut r).map(|_| ())
}

/// The bytes a `ONE_REG` id's value has (its size field); only 4 and 8
/// are taken here (wider ones, VSX and VMX, need a buffer of their own).
fn one_reg_size(id: u64) -> io::Result<usize> {
    match 1usize << ((id >> 52) & 0xf) {
        n @ (4 | 8) => Ok(n),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ONE_REG {id:#x}: only 32- and 64-bit registers"),
        )),
    }
}

/// A 32- or 64-bit `ONE_REG` register, zero-extended.
pub fn get_one_reg(vcpu: &File, id: u64) -> io::Result<u64> {
    let n = one_reg_size(id)?;
    let mut buf = [0u8; 8];
    let mut r = KvmOneReg {
        id,
        addr: buf.as_mut_ptr() as u64,
    };
    ioctl_ptr(vcpu, KVM_GET_ONE_REG, &mut r)?;
    Ok(if n == 4 {
        u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]).into()
    } else {
        u64::from_ne_bytes(buf)
    })
}

pub fn set_one_reg(vcpu: &File, id: u64, value: u64) -> io::Result<()> {
    let n = one_reg_size(id)?;
    let mut buf = [0u8; 8];
    if n == 4 {
        let v = u32::try_from(value).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("ONE_REG {id:#x} is 32 bits: {value:#x} does not fit"),
            )
        })?;
        buf[..4].copy_from_slice(&v.to_ne_bytes());
    } else {
        buf = value.to_ne_bytes();
    }
    let mut r = KvmOneReg {
        id,
        addr: buf.as_mut_ptr() as u64,
    };
    ioctl_ptr(vcpu, KVM_SET_ONE_REG, &mut r).map(|_| ())
}

/// That `id` is a 128-bit register (the kernel copies the size the id
/// says into the buffer).
fn check_128(id: u64) -> io::Result<()> {
    if (id >> 52) & 0xf != 4 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ONE_REG {id:#x} is not a 128-bit register"),
        ));
    }
    Ok(())
}

/// A 128-bit `ONE_REG` register (VSX, VMX), as its 16 bytes in host order.
pub fn get_one_reg128(vcpu: &File, id: u64) -> io::Result<[u8; 16]> {
    check_128(id)?;
    let mut buf = [0u8; 16];
    let mut r = KvmOneReg {
        id,
        addr: buf.as_mut_ptr() as u64,
    };
    ioctl_ptr(vcpu, KVM_GET_ONE_REG, &mut r)?;
    Ok(buf)
}

pub fn set_one_reg128(vcpu: &File, id: u64, value: [u8; 16]) -> io::Result<()> {
    check_128(id)?;
    let mut buf = value;
    let mut r = KvmOneReg {
        id,
        addr: buf.as_mut_ptr() as u64,
    };
    ioctl_ptr(vcpu, KVM_SET_ONE_REG, &mut r).map(|_| ())
}

/// Maps `size` bytes of host memory at `host` to guest address `gpa` in
/// slot `slot`, logging its dirty pages if `flags` says so.
///
/// # Safety
/// The host range must stay mapped for as long as the slot exists.
pub unsafe fn set_memory(
    vm: &File,
    slot: u32,
    flags: u32,
    gpa: u64,
    size: u64,
    host: u64,
) -> io::Result<()> {
    let mut r = KvmUserspaceMemoryRegion {
        slot,
        flags,
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: host,
    };
    ioctl_ptr(vm, KVM_SET_USER_MEMORY_REGION, &mut r).map(|_| ())
}

/// The pages of `slot` (`pages` of them) written since the last call.
///
/// # Safety
/// `pages` must be at least the slot's size in host pages: the kernel
/// writes a bit for each into the bitmap.
pub unsafe fn dirty_log(vm: &File, slot: u32, pages: usize) -> io::Result<Vec<u64>> {
    let mut bitmap = vec![0u64; pages.div_ceil(64)];
    let mut d = KvmDirtyLog {
        slot,
        padding1: 0,
        dirty_bitmap: bitmap.as_mut_ptr() as u64,
    };
    ioctl_ptr(vm, KVM_GET_DIRTY_LOG, &mut d)?;
    Ok(bitmap)
}

/// Sets interrupt source `irq` to `level` (`KVM_INTERRUPT_*`).
pub fn irq_line(vm: &File, irq: u32, level: i32) -> io::Result<()> {
    let mut l = KvmIrqLevel { irq, level };
    ioctl_ptr(vm, KVM_IRQ_LINE, &mut l).map(|_| ())
}

/// Makes `fd` raise interrupt source `gsi`.
pub fn irqfd(vm: &File, fd: i32, gsi: u32) -> io::Result<()> {
    let mut i = KvmIrqfd {
        fd: fd as u32,
        gsi,
        ..Default::default()
    };
    ioctl_ptr(vm, KVM_IRQFD, &mut i).map(|_| ())
}

/// `KVM_IOEVENTFD_FLAG_DEASSIGN`.
const IOEVENTFD_DEASSIGN: u32 = 4;

/// Makes guest writes of `len` bytes to MMIO `addr` (of `value`, if
/// given) signal `fd`; or, `assign` false, stops it.
pub fn ioeventfd(
    vm: &File,
    fd: i32,
    addr: u64,
    len: u32,
    value: Option<u64>,
    assign: bool,
) -> io::Result<()> {
    let mut flags = 0;
    if value.is_some() {
        flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
    }
    if !assign {
        flags |= IOEVENTFD_DEASSIGN;
    }
    let mut e = KvmIoeventfd {
        datamatch: value.unwrap_or(0),
        addr,
        len,
        fd,
        flags,
        pad: [0; 36],
    };
    ioctl_ptr(vm, KVM_IOEVENTFD, &mut e).map(|_| ())
}

/// A 64-bit attribute of an in-kernel device.
pub fn get_device_attr(dev: &File, group: u32, attr: u64) -> io::Result<u64> {
    let mut v = 0u64;
    let mut a = KvmDeviceAttr {
        flags: 0,
        group,
        attr,
        addr: &mut v as *mut u64 as u64,
    };
    ioctl_ptr(dev, KVM_GET_DEVICE_ATTR, &mut a)?;
    Ok(v)
}

pub fn set_device_attr(dev: &File, group: u32, attr: u64, value: u64) -> io::Result<()> {
    let mut v = value;
    let mut a = KvmDeviceAttr {
        flags: 0,
        group,
        attr,
        addr: &mut v as *mut u64 as u64,
    };
    ioctl_ptr(dev, KVM_SET_DEVICE_ATTR, &mut a).map(|_| ())
}

/// Connects the vCPU to the in-kernel XICS as interrupt server `server`.
pub fn connect_xics(vcpu: &File, xics: &File, server: u32) -> io::Result<()> {
    let mut c = KvmEnableCap {
        cap: KVM_CAP_IRQ_XICS,
        flags: 0,
        args: [xics.as_raw_fd() as u64, server.into(), 0, 0],
        pad: [0; 64],
    };
    ioctl_ptr(vcpu, KVM_ENABLE_CAP, &mut c).map(|_| ())
}

/// A vCPU's `kvm_run` page, shared with the kernel.
pub struct RunPage {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value; the kernel writes it only
// while its vCPU is in KVM_RUN, which takes `&mut` of the owner.
unsafe impl Send for RunPage {}

impl RunPage {
    /// Maps `vcpu`'s page (`KVM_GET_VCPU_MMAP_SIZE` bytes, asked of `kvm`).
    pub fn map(kvm: &File, vcpu: &File) -> io::Result<RunPage> {
        let len = ioctl_val(kvm, KVM_GET_VCPU_MMAP_SIZE, 0)? as usize;
        if len < crate::exit::RUN_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("kvm_run is {len} bytes, fewer than the exits need"),
            ));
        }
        // SAFETY: a fresh shared mapping of the vCPU fd, checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(RunPage {
            ptr: ptr as *mut u8,
            len,
        })
    }

    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` maps `len` bytes for this value's life; the kernel
        // does not write them outside KVM_RUN, and `&mut self` excludes
        // KVM_RUN (it takes `&mut self` too).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for RunPage {
    fn drop(&mut self) {
        // SAFETY: unmapping what `map` mapped, once.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// Runs the vCPU until it exits (or a signal interrupts it).
pub fn run(vcpu: &File, _page: &mut RunPage) -> io::Result<()> {
    ioctl_val(vcpu, KVM_RUN, 0).map(|_| ())
}
