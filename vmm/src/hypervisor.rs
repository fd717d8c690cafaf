//! The small hypervisor interface the board is built on: create a VM, give
//! it memory and interrupt lines, create vCPUs, run them, save and restore
//! what the hypervisor holds. Nothing here names a backend or its structs:
//! each backend describes its own migrated state. Per-architecture vCPU
//! set-up is an extension trait ([`VcpuX86_64`], [`VcpuPpc64`]), reached
//! through [`Vcpu::x86_64`] and [`Vcpu::ppc64`]. The backends: KVM on
//! x86_64 (`kvm.rs`), KVM-PPC on powerpc64 (`kvm_ppc.rs`), and the qtest
//! accelerator (`qtest/`), which has no vCPUs.

use migration::vmstate::Description;
use std::fmt;
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// Why a vCPU stopped running guest code and came back to the VMM.
pub enum Exit {
    /// A port or MMIO access was served; keep running.
    Handled,
    /// A signal interrupted KVM_RUN (the VMM wants the vCPU's attention).
    Interrupted,
    /// The guest shut the CPU down (triple fault).
    Shutdown,
    /// The hypervisor reports a guest reset request.
    Reset,
    /// The hypervisor reports a guest power-off.
    PowerOff,
    /// Anything the VMM cannot continue from.
    Fatal(String),
}

/// Serves the exits of a vCPU.
pub trait ExitHandler: Sync {
    fn pio_read(&self, port: u16, data: &mut [u8]);
    fn pio_write(&self, port: u16, data: &[u8]);
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    fn mmio_write(&self, addr: u64, data: &[u8]);
    /// A PAPR hypercall (ppc64) made by vCPU `vcpu`: r3 is `opcode`,
    /// `args` r4 to r12, which the call may change (they go back to the
    /// guest); its return code. A board without hypercalls answers
    /// `H_FUNCTION`.
    fn papr_hcall(&self, vcpu: u8, opcode: u64, args: &mut [u64; 9]) -> i64 {
        let _ = (vcpu, opcode, args);
        -2
    }
    /// On vCPU `id`'s thread before each entry into the guest (the vCPU
    /// not locked): loads what the board changed in it, or false to keep
    /// it out of the guest for now (a pseries CPU nobody has started; the
    /// thread comes back after passing its run gate). An error ends the VM.
    fn before_entry(&self, id: u8, vcpu: &std::sync::Mutex<Box<dyn Vcpu>>) -> Result<bool, String> {
        let _ = (id, vcpu);
        Ok(true)
    }
}

/// How an x86_64 vCPU starts.
pub struct X86BootState<'a> {
    /// The BSP's entry: (rip, rbx, rsi) in 32-bit protected mode; APs have
    /// none and wait for INIT-SIPI.
    pub entry: Option<(u64, u64, u64)>,
    pub apic_id: u32,
    pub topology: &'a arch::x86_64::topology::Topology,
    /// The guest's CPUID table (`-cpu`), before this vCPU's topology.
    pub cpuid: &'a [CpuidEntry],
}

/// One CPUID leaf as x86 KVM takes it (also what `arch` builds).
pub type CpuidEntry = arch::x86_64::kvm_cpuid_entry2;

/// Hypervisor state as named raw blobs (the kernel's ABI structs), for
/// migration. Names are stable: they become field names in the stream.
pub type Blobs = Vec<(&'static str, Vec<u8>)>;

/// What creates VMs.
pub trait Hypervisor {
    fn create_vm(&self) -> Result<Arc<dyn Vm>, Error>;
}

/// The x86_64 side of a vCPU.
pub trait VcpuX86_64 {
    /// CPUID, the local APIC's wiring, and for the BSP the entry state.
    fn configure(&mut self, boot: &X86BootState) -> Result<(), Error>;
    /// Gives the vCPU (which has not run) the CPUID table `cpuid`, as
    /// the vCPU with APIC ID `apic_id` in `topology`.
    fn set_cpuid(
        &mut self,
        cpuid: &[CpuidEntry],
        apic_id: u32,
        topology: &arch::x86_64::topology::Topology,
    ) -> Result<(), Error>;
    /// The guest's TSC frequency, in kHz.
    fn tsc_khz(&self) -> Result<u32, Error>;
    /// Runs the guest's TSC at `khz` (needs [`VmX86_64::tsc_scaling`]).
    fn set_tsc_khz(&mut self, khz: u32) -> Result<(), Error>;
}

/// The x86_64 side of a VM.
pub trait VmX86_64 {
    /// The CPUID this host's hypervisor can give a guest.
    fn supported_cpuid(&self) -> &[CpuidEntry];
    /// Whether a guest's TSC can run at another rate than this host's.
    fn tsc_scaling(&self) -> bool;
    /// The MSRs a vCPU's state holds (what KVM can save and restore here).
    fn msrs(&self) -> &[u32];
}

/// The ppc64 side of a VM.
pub trait VmPpc64 {
    /// Gives the guest a hash page table of 2^`shift` bytes, where the
    /// host's MMU needs one (not on a radix-only host: `None`); the order
    /// the kernel granted.
    fn allocate_hpt(&self, shift: u32) -> Result<Option<u32>, Error>;
    /// Whether a guest may take its interrupts relocated with LPCR[AIL]
    /// 3 (`KVM_CAP_PPC_AIL_MODE_3`).
    fn ail_mode_3(&self) -> bool;
    /// Gives virtual cores `vsmt` threads (QEMU's virtual SMT mode) for a
    /// guest of `threads` threads a core, before any vCPU exists.
    fn set_smt(&self, vsmt: u32, threads: u32) -> Result<(), Error>;
    /// The kernel's hash page table as a migration reads it (its HTAB
    /// fd), where the kernel keeps one (`None` on a radix-only host).
    fn htab_source(&self) -> Result<Option<Box<dyn migration::htab::HtabSource>>, Error>;
    /// One `spapr/htab` section of an incoming migration, into the
    /// kernel's table: a new (empty) table of the stream's order, or
    /// entries written through the HTAB fd.
    fn load_htab(&self, pass: &migration::htab::Pass) -> Result<(), Error>;
}

/// The ppc64 side of a vCPU.
pub trait VcpuPpc64 {
    /// Starts this vCPU at a kernel's entry (arch::ppc64::boot).
    fn set_entry(&mut self, entry: &arch::ppc64::boot::Entry) -> Result<(), Error>;
    /// Starts this (stopped) vCPU as RTAS `start-cpu` does: at `nip` with
    /// `r3`, MSR SF|ME, r1, r4 and r5 zero, marked online.
    fn start_cpu(&mut self, nip: u64, r3: u64) -> Result<(), Error>;
    /// Marks this vCPU online or offline (RTAS `stop-self`; a vCPU that
    /// came with a migration).
    fn set_online(&mut self, online: bool) -> Result<(), Error>;
    /// Sets the LPCR bits under `mask` to `bits`.
    fn set_lpcr(&mut self, bits: u64, mask: u64) -> Result<(), Error>;
}

pub trait Vcpu: Send {
    /// This vCPU's x86_64 extension, on an x86_64 backend.
    fn x86_64(&mut self) -> Option<&mut dyn VcpuX86_64> {
        None
    }
    /// This vCPU's ppc64 extension, on a ppc64 backend.
    fn ppc64(&mut self) -> Option<&mut dyn VcpuPpc64> {
        None
    }
    /// How [`Vcpu::save`]'s blobs travel in the stream (section `cpu`).
    fn state_description(&self) -> &'static Description;
    /// Everything needed to continue this vCPU elsewhere (it must not be running).
    fn save(&self) -> Result<Blobs, Error>;
    fn restore(&mut self, state: &Blobs) -> Result<(), Error>;
    fn run(&mut self, h: &dyn ExitHandler) -> Exit;
    /// Registers and control state, for the log when something went wrong.
    fn describe(&self) -> String;
}

/// Also what devices need of it ([`devices::virtio::VmOps`]).
pub trait Vm: devices::virtio::VmOps + Send + Sync {
    fn x86_64(&self) -> Option<&dyn VmX86_64> {
        None
    }
    /// The ppc64 side of the VM, on a ppc64 backend.
    fn ppc64(&self) -> Option<&dyn VmPpc64> {
        None
    }
    /// The qtest accelerator's VM (no vCPUs; its client reaches RAM and
    /// doorbells through it).
    fn qtest(&self) -> Option<&crate::qtest::QtestVm> {
        None
    }
    /// Maps `size` bytes of host memory at `host` to guest address `gpa`.
    ///
    /// # Safety
    /// The host range must stay mapped and valid for the VM's lifetime.
    unsafe fn add_memory(&self, slot: u32, gpa: u64, size: u64, host: *mut u8)
        -> Result<(), Error>;
    /// Turns KVM's dirty page logging on or off for every memory slot.
    fn set_dirty_logging(&self, on: bool) -> Result<(), Error>;
    /// The pages of `slot` written since the last call (a bit per page),
    /// clearing them.
    fn dirty_log(&self, slot: u32) -> Result<Vec<u64>, Error>;
    /// Makes `evt` raise interrupt line `gsi`.
    fn add_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), Error>;
    /// Routes interrupt source `nr` of the hypervisor's own interrupt
    /// controller, where it presents the interrupts (KVM-PPC's XICS); the
    /// others have nothing to route.
    fn route_source(&self, nr: u32, route: devices::xics::Route) -> Result<(), Error> {
        let _ = (nr, route);
        Ok(())
    }
    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>, Error>;
    /// The guest's clock (kvm-clock's base), in nanoseconds.
    fn clock(&self) -> Result<u64, Error>;
    fn set_clock(&self, ns: u64) -> Result<(), Error>;
    /// How [`Vm::save`]'s blobs travel in the stream.
    fn state_description(&self) -> &'static Description;
    /// The hypervisor's interrupt controllers and timers (KVM x86: PIC,
    /// IOAPIC, PIT).
    fn save(&self) -> Result<Blobs, Error>;
    fn restore(&self, state: &Blobs) -> Result<(), Error>;
}

#[derive(Debug)]
pub struct Error {
    pub what: &'static str,
    pub source: std::io::Error,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.what)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
