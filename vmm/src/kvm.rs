//! The KVM backend of the hypervisor interface (x86_64).

use crate::hypervisor::{Error, Exit, ExitHandler, Vcpu, Vm, X86BootState};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;

fn err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |e| Error {
        what,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

pub struct KvmVm {
    vm: VmFd,
    cpuid: CpuId,
}

/// Opens /dev/kvm and creates a VM with the in-kernel irqchip and PIT.
pub fn create_vm() -> Result<KvmVm, Error> {
    let kvm = Kvm::new().map_err(err("cannot open /dev/kvm"))?;
    let vm = kvm.create_vm().map_err(err("KVM_CREATE_VM failed"))?;
    vm.set_tss_address(arch::x86_64::layout::KVM_TSS as usize)
        .map_err(err("KVM_SET_TSS_ADDR failed"))?;
    vm.set_identity_map_address(arch::x86_64::layout::KVM_IDENTITY_MAP)
        .map_err(err("KVM_SET_IDENTITY_MAP_ADDR failed"))?;
    vm.create_irq_chip()
        .map_err(err("KVM_CREATE_IRQCHIP failed"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(err("KVM_CREATE_PIT2 failed"))?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(err("KVM_GET_SUPPORTED_CPUID failed"))?;
    Ok(KvmVm { vm, cpuid })
}

impl Vm for KvmVm {
    unsafe fn add_memory(
        &self,
        slot: u32,
        gpa: u64,
        size: u64,
        host: *mut u8,
    ) -> Result<(), Error> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host as u64,
        };
        // SAFETY: the caller keeps the host mapping alive for the VM's lifetime.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(err("KVM_SET_USER_MEMORY_REGION failed"))
    }

    fn add_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), Error> {
        self.vm
            .register_irqfd(evt, gsi)
            .map_err(err("KVM_IRQFD failed"))
    }

    fn clock(&self) -> Result<u64, Error> {
        self.vm
            .get_clock()
            .map(|c| c.clock)
            .map_err(err("KVM_GET_CLOCK failed"))
    }

    fn set_clock(&self, ns: u64) -> Result<(), Error> {
        let data = kvm_bindings::kvm_clock_data {
            clock: ns,
            ..Default::default()
        };
        self.vm
            .set_clock(&data)
            .map_err(err("KVM_SET_CLOCK failed"))
    }

    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>, Error> {
        let fd = self
            .vm
            .create_vcpu(id as u64)
            .map_err(err("KVM_CREATE_VCPU failed"))?;
        Ok(Box::new(KvmVcpu {
            fd,
            cpuid: self.cpuid.clone(),
        }))
    }
}

pub struct KvmVcpu {
    fd: VcpuFd,
    cpuid: CpuId,
}

// LVT registers in the local APIC page, and their delivery modes.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7 << 8;
const APIC_MODE_NMI: u32 = 0x4 << 8;

impl Vcpu for KvmVcpu {
    fn configure_x86(&mut self, boot: &X86BootState) -> Result<(), Error> {
        let mut cpuid = self.cpuid.clone();
        arch::x86_64::cpuid::patch(cpuid.as_mut_slice(), boot.apic_id, boot.cpus);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(err("KVM_SET_CPUID2 failed"))?;
        // LINT0 delivers the 8259's ExtINT, LINT1 NMIs, as firmware would.
        let mut lapic = self.fd.get_lapic().map_err(err("KVM_GET_LAPIC failed"))?;
        for (off, mode) in [
            (APIC_LVT_LINT0, APIC_MODE_EXTINT),
            (APIC_LVT_LINT1, APIC_MODE_NMI),
        ] {
            let mut b = [0u8; 4];
            for (i, x) in b.iter_mut().enumerate() {
                *x = lapic.regs[off + i] as u8;
            }
            let v = (u32::from_le_bytes(b) & !0x700) | mode;
            for (i, x) in v.to_le_bytes().iter().enumerate() {
                lapic.regs[off + i] = *x as _;
            }
        }
        self.fd
            .set_lapic(&lapic)
            .map_err(err("KVM_SET_LAPIC failed"))?;
        if let Some((rip, rbx, rsi)) = boot.entry {
            let sregs = self.fd.get_sregs().map_err(err("KVM_GET_SREGS failed"))?;
            self.fd
                .set_sregs(&arch::x86_64::regs::boot_sregs(sregs))
                .map_err(err("KVM_SET_SREGS failed"))?;
            self.fd
                .set_regs(&arch::x86_64::regs::boot_regs(rip, rbx, rsi))
                .map_err(err("KVM_SET_REGS failed"))?;
            self.fd
                .set_fpu(&arch::x86_64::regs::fpu())
                .map_err(err("KVM_SET_FPU failed"))?;
        }
        Ok(())
    }

    fn run(&mut self, h: &dyn ExitHandler) -> Exit {
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                h.pio_read(port, data);
                Exit::Handled
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                h.pio_write(port, data);
                Exit::Handled
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                h.mmio_read(addr, data);
                Exit::Handled
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                h.mmio_write(addr, data);
                Exit::Handled
            }
            Ok(VcpuExit::Hlt) | Ok(VcpuExit::IrqWindowOpen) => Exit::Handled,
            Ok(VcpuExit::Intr) => Exit::Interrupted,
            Ok(VcpuExit::Shutdown) => Exit::Shutdown,
            Ok(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _)) => Exit::Reset,
            Ok(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _)) => Exit::PowerOff,
            Ok(VcpuExit::SystemEvent(t, _)) => Exit::Fatal(format!("KVM system event {t}")),
            Ok(VcpuExit::InternalError) => Exit::Fatal("KVM internal error".to_string()),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Exit::Fatal(format!(
                "KVM entry failure: hardware reason {reason:#x} on cpu {cpu}"
            )),
            Ok(other) => Exit::Fatal(format!("unexpected KVM exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
            Err(e) => Exit::Fatal(format!("KVM_RUN failed: {e}")),
        }
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        if let Ok(r) = self.fd.get_regs() {
            s += &format!(
                "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}",
                r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp
            );
        }
        if let Ok(sr) = self.fd.get_sregs() {
            s += &format!(
                " cs={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
                sr.cs.selector, sr.cr0, sr.cr2, sr.cr3, sr.cr4, sr.efer
            );
        }
        s
    }
}
