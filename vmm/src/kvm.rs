//! The KVM backend of the hypervisor interface (x86_64), with the
//! descriptions of the state it migrates: the kernel's own structs, as KVM
//! hands them out.

use crate::hypervisor::{
    Blobs, CpuidEntry, Error, Exit, ExitHandler, Hypervisor, Vcpu, VcpuX86_64, Vm, VmX86_64,
    X86BootState,
};
use devices::virtio::Doorbell;
use kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;
use kvm_bindings::{
    kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_pit_state2,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use migration::vmstate::{Described, Description, State, Val, Vmstate};
use std::mem::size_of;
use std::sync::Arc;
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
    /// KVM_CAP_TSC_CONTROL.
    tsc_control: bool,
    /// What KVM_GET_SUPPORTED_CPUID says.
    cpuid: Vec<CpuidEntry>,
    /// The MSRs KVM can save and restore.
    msrs: Vec<u32>,
    /// The memory slots, to turn dirty logging on and off.
    slots: std::sync::Mutex<Vec<kvm_userspace_memory_region>>,
}

/// MSRs in the cpu section itself.
pub const MAX_MSRS: usize = 128;
/// MSRs in its `cpu/msrs` subsection, sent only by a host whose KVM saves
/// more than [`MAX_MSRS`] (none of the hosts vmm has run on yet: 40 here),
/// so streams stay what releases up to 0.2.0 take. Together they hold
/// what one KVM_GET_MSRS call can (kvm-bindings' 256).
pub const MORE_MSRS: usize = 128;

migration::vmstate! {
    /// One vCPU: the kernel's own state structs, as KVM hands them out.
    pub static CPU = "cpu", version 1, minimum 1;
    pub struct CpuState {
        regs: [u8; size_of::<kvm_regs>()],
        sregs: [u8; size_of::<kvm_sregs>()],
        xsave: [u8; size_of::<kvm_xsave>()],
        xcrs: [u8; size_of::<kvm_xcrs>()],
        lapic: [u8; size_of::<kvm_lapic_state>()],
        mp_state: [u8; size_of::<kvm_mp_state>()],
        events: [u8; size_of::<kvm_vcpu_events>()],
        debugregs: [u8; size_of::<kvm_debugregs>()],
        /// How many entries of `msrs` hold an MSR (a little-endian u32).
        msr_count: [u8; 4],
        /// 16 bytes an MSR: its index (little-endian u32), 4 reserved,
        /// its value (little-endian u64).
        msrs: [u8; MAX_MSRS * 16],
    }
    subsections {
        /// The MSRs past the first [`MAX_MSRS`].
        more_msrs: Option<MoreMsrs>,
    }
}

migration::vmstate! {
    /// A vCPU's MSRs past the first [`MAX_MSRS`], laid out as those.
    pub static CPU_MSRS = "cpu/msrs", version 1, minimum 1;
    pub struct MoreMsrs {
        msr_count: [u8; 4],
        msrs: [u8; MORE_MSRS * 16],
    }
}

/// MSRs as the cpu section carries them: a count and 16 bytes each.
fn put_msrs(entries: &[kvm_msr_entry], count: &mut [u8; 4], bytes: &mut [u8]) {
    let n = entries.len().min(bytes.len() / 16);
    *count = (n as u32).to_le_bytes();
    for (e, b) in entries.iter().zip(bytes.chunks_exact_mut(16)) {
        b[..4].copy_from_slice(&e.index.to_le_bytes());
        b[8..].copy_from_slice(&e.data.to_le_bytes());
    }
}

/// The MSRs [`put_msrs`] wrote (a count beyond the room means all of it).
fn get_msrs(count: [u8; 4], bytes: &[u8]) -> impl Iterator<Item = kvm_msr_entry> + use<'_> {
    bytes
        .chunks_exact(16)
        .take(u32::from_le_bytes(count) as usize)
        .map(|e| kvm_msr_entry {
            index: u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
            data: u64::from_le_bytes([e[8], e[9], e[10], e[11], e[12], e[13], e[14], e[15]]),
            ..Default::default()
        })
}

migration::vmstate! {
    /// The in-kernel PIC pair, IOAPIC and PIT.
    pub static IRQCHIP = "kvm-irqchip", version 1, minimum 1;
    pub struct IrqchipState {
        pic_master: [u8; size_of::<kvm_irqchip>()],
        pic_slave: [u8; size_of::<kvm_irqchip>()],
        ioapic: [u8; size_of::<kvm_irqchip>()],
        pit: [u8; size_of::<kvm_pit_state2>()],
    }
}

/// Every description of KVM state, for -dump-vmstate.
pub static DESCRIPTIONS: &[&Description] = &[&CPU, &IRQCHIP];

/// The KVM hypervisor (`/dev/kvm`).
pub struct KvmHypervisor;

impl Hypervisor for KvmHypervisor {
    fn create_vm(&self) -> Result<Arc<dyn Vm>, Error> {
        Ok(Arc::new(create_vm()?))
    }
}

/// A kernel ABI struct that is plain bytes both ways: no pointers, no
/// padding the kernel reads, no Drop, and every byte pattern a valid value.
///
/// # Safety
/// Implement it only for such structs (kvm-bindings' generated ones listed
/// below): [`blob`] reads their bytes and [`unblob`] makes one from any
/// bytes.
unsafe trait KernelPod {}

// SAFETY: each is a #[repr(C)] struct of integers and integer arrays
// (kvm-bindings, generated from the kernel's uapi headers), which KVM
// itself copies to and from user memory byte for byte.
unsafe impl KernelPod for kvm_regs {}
// SAFETY: as above.
unsafe impl KernelPod for kvm_sregs {}
// SAFETY: as above.
unsafe impl KernelPod for kvm_xsave {}
// SAFETY: as above.
unsafe impl KernelPod for kvm_xcrs {}
// SAFETY: as above.
unsafe impl KernelPod for kvm_lapic_state {}
// SAFETY: as above.
unsafe impl KernelPod for kvm_mp_state {}
// SAFETY: as above.
unsafe impl KernelPod for kvm_vcpu_events {}
// SAFETY: as above.
unsafe impl KernelPod for kvm_debugregs {}
// SAFETY: as above (a union of integer arrays, the largest covering it).
unsafe impl KernelPod for kvm_irqchip {}
// SAFETY: as above.
unsafe impl KernelPod for kvm_pit_state2 {}

/// The bytes of a kernel ABI struct of `N` bytes.
fn blob<T: KernelPod, const N: usize>(v: &T) -> [u8; N] {
    const { assert!(size_of::<T>() == N) };
    let mut b = [0u8; N];
    // SAFETY: T is plain bytes (KernelPod) of exactly N bytes (checked at
    // compile time above); reading them is sound.
    unsafe { std::ptr::copy_nonoverlapping(v as *const T as *const u8, b.as_mut_ptr(), N) };
    b
}

/// A kernel ABI struct from its `N` bytes.
fn unblob<T: KernelPod, const N: usize>(b: &[u8; N]) -> T {
    const { assert!(size_of::<T>() == N) };
    // SAFETY: every byte pattern is a valid T (KernelPod), and the source
    // holds exactly size_of::<T>() bytes (checked above).
    unsafe { std::ptr::read_unaligned(b.as_ptr() as *const T) }
}

/// A declared state of buffers as the hypervisor interface's blobs.
fn to_blobs(st: State) -> Blobs {
    st.fields
        .into_iter()
        .filter_map(|(name, v)| match v {
            Val::Bytes(b) => Some((name, b)),
            _ => None,
        })
        .collect()
}

/// The hypervisor interface's blobs as the state `S` declares; `what`
/// says whose state was refused.
fn from_blobs<S: Described>(b: &Blobs, what: &'static str) -> Result<S, Error> {
    let st = State {
        fields: b.iter().map(|(n, v)| (*n, Val::Bytes(v.clone()))).collect(),
        subsections: vec![],
    };
    S::from_state(&st, S::DESCRIPTION.name).map_err(|e| Error {
        what,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// What KVM_GET_SUPPORTED_CPUID says on this host (for `-cpu help`).
pub fn supported_cpuid() -> Result<Vec<CpuidEntry>, Error> {
    supported(&Kvm::new().map_err(err("cannot open /dev/kvm"))?)
}

/// KVM_GET_SUPPORTED_CPUID, less what the test switch takes this host to
/// lack (`fault::host_lacks`).
fn supported(kvm: &Kvm) -> Result<Vec<CpuidEntry>, Error> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(err("KVM_GET_SUPPORTED_CPUID failed"))?
        .as_slice()
        .to_vec();
    for f in crate::fault::host_lacks() {
        arch::x86_64::cpu::clear(&mut cpuid, f);
    }
    Ok(cpuid)
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
    let cpuid = supported(&kvm)?;
    let mut msrs = kvm
        .get_msr_index_list()
        .map_err(err("KVM_GET_MSR_INDEX_LIST failed"))?
        .as_slice()
        .to_vec();
    let lack = crate::fault::msrs_lack();
    msrs.retain(|m| !lack.contains(m));
    let room = MAX_MSRS + MORE_MSRS;
    if msrs.len() > room {
        log::warn!(
            "this host's KVM saves {} MSRs; a migration carries the first {room}, not {:x?}",
            msrs.len(),
            &msrs[room..]
        );
    }
    log::debug!("migrating {} MSRs per vCPU", msrs.len().min(room));
    msrs.truncate(room);
    let tsc_control = kvm.check_extension(kvm_ioctls::Cap::TscControl);
    Ok(KvmVm {
        vm,
        tsc_control,
        cpuid,
        msrs,
        slots: Default::default(),
    })
}

impl devices::virtio::VmOps for KvmVm {
    fn signal_msi(&self, addr: u64, data: u32) -> std::io::Result<()> {
        let msi = kvm_bindings::kvm_msi {
            address_lo: addr as u32,
            address_hi: (addr >> 32) as u32,
            data,
            ..Default::default()
        };
        self.vm
            .signal_msi(msi)
            .map(|_| ())
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn set_irq_line(&self, gsi: u32, level: bool) -> std::io::Result<()> {
        self.vm
            .set_irq_line(gsi, level)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn add_doorbell(&self, fd: &EventFd, bell: Doorbell) -> std::io::Result<()> {
        match bell {
            Doorbell::Pio { port, queue } => {
                self.vm
                    .register_ioevent(fd, &IoEventAddress::Pio(port as u64), queue)
            }
            Doorbell::Mmio { addr } => {
                self.vm
                    .register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            }
        }
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }

    fn remove_doorbell(&self, fd: &EventFd, bell: Doorbell) -> std::io::Result<()> {
        match bell {
            Doorbell::Pio { port, queue } => {
                self.vm
                    .unregister_ioevent(fd, &IoEventAddress::Pio(port as u64), queue)
            }
            Doorbell::Mmio { addr } => {
                self.vm
                    .unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            }
        }
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

impl VmX86_64 for KvmVm {
    fn supported_cpuid(&self) -> &[CpuidEntry] {
        &self.cpuid
    }

    fn tsc_scaling(&self) -> bool {
        self.tsc_control
    }

    fn msrs(&self) -> &[u32] {
        &self.msrs
    }
}

impl Vm for KvmVm {
    fn x86_64(&self) -> Option<&dyn VmX86_64> {
        Some(self)
    }

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
            .map_err(err("KVM_SET_USER_MEMORY_REGION failed"))?;
        self.slots.lock().expect("slots lock").push(region);
        Ok(())
    }

    fn set_dirty_logging(&self, on: bool) -> Result<(), Error> {
        for r in self.slots.lock().expect("slots lock").iter_mut() {
            r.flags = if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 };
            // SAFETY: the same mapping as registered; only the flag changes.
            unsafe { self.vm.set_user_memory_region(*r) }
                .map_err(err("KVM_SET_USER_MEMORY_REGION (dirty logging) failed"))?;
        }
        Ok(())
    }

    fn dirty_log(&self, slot: u32) -> Result<Vec<u64>, Error> {
        let size = self
            .slots
            .lock()
            .expect("slots lock")
            .iter()
            .find(|r| r.slot == slot)
            .map(|r| r.memory_size)
            .unwrap_or(0);
        self.vm
            .get_dirty_log(slot, size as usize)
            .map_err(err("KVM_GET_DIRTY_LOG failed"))
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

    fn state_description(&self) -> &'static Description {
        &IRQCHIP
    }

    fn save(&self) -> Result<Blobs, Error> {
        let chip = |chip_id| {
            let mut c = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.vm
                .get_irqchip(&mut c)
                .map_err(err("KVM_GET_IRQCHIP failed"))?;
            Ok(blob(&c))
        };
        let st = IrqchipState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: blob(&self.vm.get_pit2().map_err(err("KVM_GET_PIT2 failed"))?),
        };
        Ok(to_blobs(st.to_state()))
    }

    fn restore(&self, state: &Blobs) -> Result<(), Error> {
        let st: IrqchipState = from_blobs(state, "saved irqchip state refused")?;
        for chip in [&st.pic_master, &st.pic_slave, &st.ioapic] {
            self.vm
                .set_irqchip(&unblob(chip))
                .map_err(err("KVM_SET_IRQCHIP failed"))?;
        }
        self.vm
            .set_pit2(&unblob(&st.pit))
            .map_err(err("KVM_SET_PIT2 failed"))
    }

    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>, Error> {
        let fd = self
            .vm
            .create_vcpu(id as u64)
            .map_err(err("KVM_CREATE_VCPU failed"))?;
        Ok(Box::new(KvmVcpu {
            fd,
            msrs: self.msrs.clone(),
        }))
    }
}

pub struct KvmVcpu {
    fd: VcpuFd,
    msrs: Vec<u32>,
}

// LVT registers in the local APIC page, and their delivery modes.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7 << 8;
const APIC_MODE_NMI: u32 = 0x4 << 8;

impl VcpuX86_64 for KvmVcpu {
    fn set_cpuid(
        &mut self,
        cpuid: &[CpuidEntry],
        apic_id: u32,
        topology: &arch::x86_64::topology::Topology,
    ) -> Result<(), Error> {
        let mut table = cpuid.to_vec();
        arch::x86_64::cpuid::patch(&mut table, apic_id, topology);
        let table = CpuId::from_entries(&table).map_err(|_| Error {
            what: "KVM_SET_CPUID2 failed",
            source: std::io::Error::other(format!("{} CPUID entries are too many", table.len())),
        })?;
        self.fd
            .set_cpuid2(&table)
            .map_err(err("KVM_SET_CPUID2 failed"))
    }

    fn tsc_khz(&self) -> Result<u32, Error> {
        if let Some(khz) = crate::fault::tsc_khz() {
            return Ok(khz);
        }
        self.fd.get_tsc_khz().map_err(err("KVM_GET_TSC_KHZ failed"))
    }

    fn set_tsc_khz(&mut self, khz: u32) -> Result<(), Error> {
        self.fd
            .set_tsc_khz(khz)
            .map_err(err("KVM_SET_TSC_KHZ failed"))
    }

    fn configure(&mut self, boot: &X86BootState) -> Result<(), Error> {
        self.set_cpuid(boot.cpuid, boot.apic_id, boot.topology)?;
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
}

/// A cpu state holding only `msrs`: the first [`MAX_MSRS`] in the
/// section, the rest in its `cpu/msrs` subsection.
fn save_msrs(msrs: &[kvm_msr_entry]) -> CpuState {
    let mut st = CpuState::default();
    let (first, rest) = msrs.split_at(msrs.len().min(MAX_MSRS));
    put_msrs(first, &mut st.msr_count, &mut st.msrs);
    if !rest.is_empty() {
        let mut more = MoreMsrs::default();
        put_msrs(rest, &mut more.msr_count, &mut more.msrs);
        st.more_msrs = Some(more);
    }
    st
}

/// XCR0 components whose state lies past the legacy 4 KiB XSAVE area
/// (AMX: XTILECFG, bit 17, and XTILEDATA, bit 18), which only
/// `KVM_GET_XSAVE2` returns.
const XSAVE2_ONLY: u64 = 3 << 17;

/// Fails when the guest has enabled state the saved XSAVE area cannot
/// hold: a save that carried on would lose it without a word.
fn beyond_legacy_xsave(xcrs: &kvm_xcrs) -> Result<(), Error> {
    let n = (xcrs.nr_xcrs as usize).min(xcrs.xcrs.len());
    let xcr0 = xcrs.xcrs[..n]
        .iter()
        .find(|x| x.xcr == 0)
        .map_or(0, |x| x.value);
    if xcr0 & XSAVE2_ONLY == 0 {
        return Ok(());
    }
    Err(Error {
        what: "the guest's CPU state cannot be saved",
        source: std::io::Error::other(format!(
            "it has AMX tile state enabled (XCR0 {xcr0:#x}), which lies past the 4 KiB XSAVE area vmm saves; KVM_GET_XSAVE2 is not supported yet"
        )),
    })
}

/// Every MSR a cpu state holds, the section's and its subsection's.
fn saved_msrs(st: &CpuState) -> Vec<kvm_msr_entry> {
    let more = st.more_msrs.as_ref();
    get_msrs(st.msr_count, &st.msrs)
        .chain(
            more.into_iter()
                .flat_map(|m| get_msrs(m.msr_count, &m.msrs)),
        )
        .collect()
}

impl Vcpu for KvmVcpu {
    fn x86_64(&mut self) -> Option<&mut dyn VcpuX86_64> {
        Some(self)
    }

    fn state_description(&self) -> &'static Description {
        &CPU
    }

    fn save(&self) -> Result<Blobs, Error> {
        let f = &self.fd;
        let mut msrs = Msrs::from_entries(
            &self
                .msrs
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect::<Vec<_>>(),
        )
        .map_err(|_| Error {
            what: "too many MSRs",
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        let n = f.get_msrs(&mut msrs).map_err(err("KVM_GET_MSRS failed"))?;
        let msrs = save_msrs(&msrs.as_slice()[..n]);
        let xcrs = f.get_xcrs().map_err(err("KVM_GET_XCRS failed"))?;
        beyond_legacy_xsave(&xcrs)?;
        let st = CpuState {
            regs: blob(&f.get_regs().map_err(err("KVM_GET_REGS failed"))?),
            sregs: blob(&f.get_sregs().map_err(err("KVM_GET_SREGS failed"))?),
            xsave: blob(&f.get_xsave().map_err(err("KVM_GET_XSAVE failed"))?),
            xcrs: blob(&xcrs),
            lapic: blob(&f.get_lapic().map_err(err("KVM_GET_LAPIC failed"))?),
            mp_state: blob(&f.get_mp_state().map_err(err("KVM_GET_MP_STATE failed"))?),
            events: blob(
                &f.get_vcpu_events()
                    .map_err(err("KVM_GET_VCPU_EVENTS failed"))?,
            ),
            debugregs: blob(
                &f.get_debug_regs()
                    .map_err(err("KVM_GET_DEBUGREGS failed"))?,
            ),
            ..msrs
        };
        Ok(to_blobs(st.to_state()))
    }

    fn restore(&mut self, st: &Blobs) -> Result<(), Error> {
        let st: CpuState = from_blobs(st, "saved vCPU state refused")?;
        let f = &self.fd;
        // Order as QEMU's kvm_arch_put_registers: registers, then MSRs, then
        // the local APIC and events, MP state last.
        f.set_sregs(&unblob(&st.sregs))
            .map_err(err("KVM_SET_SREGS failed"))?;
        f.set_regs(&unblob(&st.regs))
            .map_err(err("KVM_SET_REGS failed"))?;
        let xsave: kvm_xsave = unblob(&st.xsave);
        // SAFETY: a kvm_xsave of exactly the legacy 4 KiB size, as KVM_GET_XSAVE returned it.
        unsafe { f.set_xsave(&xsave) }.map_err(err("KVM_SET_XSAVE failed"))?;
        f.set_xcrs(&unblob(&st.xcrs))
            .map_err(err("KVM_SET_XCRS failed"))?;
        let entries = saved_msrs(&st);
        let msrs = Msrs::from_entries(&entries).map_err(|_| Error {
            what: "too many MSRs",
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        let set = f.set_msrs(&msrs).map_err(err("KVM_SET_MSRS failed"))?;
        // KVM stops at the first MSR it refuses: every one after it would
        // be lost too. A guest whose state this host cannot hold is not run.
        if let Some(refused) = entries.get(set) {
            return Err(Error {
                what: "KVM_SET_MSRS refused an MSR",
                source: std::io::Error::other(format!(
                    "MSR {:#x} (value {:#x}) is refused by this host's KVM; {set} of the {} saved MSRs were restored",
                    refused.index,
                    refused.data,
                    entries.len()
                )),
            });
        }
        f.set_lapic(&unblob(&st.lapic))
            .map_err(err("KVM_SET_LAPIC failed"))?;
        f.set_vcpu_events(&unblob(&st.events))
            .map_err(err("KVM_SET_VCPU_EVENTS failed"))?;
        f.set_debug_regs(&unblob(&st.debugregs))
            .map_err(err("KVM_SET_DEBUGREGS failed"))?;
        f.set_mp_state(unblob(&st.mp_state))
            .map_err(err("KVM_SET_MP_STATE failed"))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn msrs(n: u32) -> Vec<kvm_msr_entry> {
        (0..n)
            .map(|i| kvm_msr_entry {
                index: 0xc000_0000 + i,
                data: u64::from(i) << 32 | 0xabc,
                ..Default::default()
            })
            .collect()
    }

    fn same(a: &[kvm_msr_entry], b: &[kvm_msr_entry]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.index == y.index && x.data == y.data)
    }

    #[test]
    fn a_guest_with_amx_enabled_is_not_saved_without_its_tiles() {
        let mut xcrs = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0].value = 0x7; // x87, SSE, AVX
        assert!(beyond_legacy_xsave(&xcrs).is_ok());
        xcrs.xcrs[0].value = 0x6_0007;
        let e = beyond_legacy_xsave(&xcrs).unwrap_err();
        let why = e.source.to_string();
        assert!(why.contains("AMX") && why.contains("0x60007"), "{why}");
    }

    #[test]
    fn msrs_past_128_travel_in_a_subsection_and_come_back() {
        // What every host so far has: the section alone, as 0.2.0 sends.
        let few = msrs(40);
        let st = save_msrs(&few).to_state();
        assert!(st.subsections.is_empty());
        assert!(same(
            &saved_msrs(&CpuState::from_state(&st, "cpu").unwrap()),
            &few
        ));
        // A host that saves more: the rest in cpu/msrs, none lost.
        let many = msrs(200);
        let st = save_msrs(&many).to_state();
        assert_eq!(st.subsections.len(), 1);
        assert_eq!(st.subsections[0].0, "cpu/msrs");
        let back = CpuState::from_state(&st, "cpu").unwrap();
        assert_eq!(u32::from_le_bytes(back.msr_count), 128);
        assert!(same(&saved_msrs(&back), &many));
        // A count larger than the room reads what is there, no more.
        let mut odd = save_msrs(&many);
        odd.msr_count = u32::MAX.to_le_bytes();
        assert_eq!(saved_msrs(&odd).len(), 200);
    }
}
