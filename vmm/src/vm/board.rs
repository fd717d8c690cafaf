//! One instance of the board: guest RAM, the buses and devices, the
//! firmware tables, the kernel and the vCPU threads; a reset builds a new one.

use super::boot::{load_initrd, load_kernel, Kernel};
use super::console::{console_input, start_stdin_thread, Unbuffered};
use super::vcpu::{spawn_vcpus, Buses, RunGate};
use super::virtio::add_virtio_devices;
use super::{Control, GuestMemoryMmap, Outcome};
use crate::config::{SerialBackend, VmConfig};
use crate::hypervisor::{CpuidEntry, Hypervisor, Vcpu, Vm, X86BootState};
use anyhow::{anyhow, Context, Result};
use arch::x86_64::{acpi, layout, pvh};
use devices::bus::{Bus, BusDevice};
use devices::pci::root_port::{RootPort, RootPortConfig};
use devices::pci::{host_bridge::HostBridge, BarWindow, Bdf, PciConfigIo, PciEcam, PciRoot, Space};
use devices::serial::Serial;
use devices::EventSink;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{Killable, SIGRTMIN};

/// One instance of the board: everything a reset throws away.
pub(super) struct Board {
    pub(super) vm: Arc<dyn Vm>,
    pub(super) mem: GuestMemoryMmap,
    /// The port and MMIO buses (what vCPU exits and qtest requests reach).
    pub(super) buses: Arc<Buses>,
    pub(super) vcpus: Vec<JoinHandle<()>>,
    /// The vCPUs themselves; each thread locks its own only around KVM_RUN,
    /// so a parked vCPU's state can be read and written.
    pub(super) vcpu_objs: Vec<Arc<Mutex<Box<dyn Vcpu>>>>,
    /// The CPUID table its vCPUs got (before each one's topology).
    pub(super) cpuid: Arc<Vec<CpuidEntry>>,
    /// The guest's TSC frequency in kHz (its vCPUs' first), when KVM says.
    pub(super) tsc_khz: Option<u32>,
    /// The board's own devices besides the PCI functions.
    pub(super) platform: Platform,
    /// Host thread id of each vCPU (0 until it has started).
    pub(super) tids: Arc<Vec<AtomicI64>>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) pci: Arc<Mutex<PciRoot>>,
}

/// The devices a board type has of its own (besides the PCI functions).
pub(super) enum Platform {
    Q35 {
        serial: Arc<Mutex<Serial>>,
        pm: Arc<Mutex<devices::acpi_pm::AcpiPm>>,
        /// The CF8 address latch.
        pci_io: Arc<Mutex<PciConfigIo>>,
    },
    Spapr(super::spapr::Papr),
}

impl Platform {
    /// The sPAPR hash page table, where the board holds it (pseries under
    /// qtest; KVM-PPC keeps its own).
    pub(super) fn hpt(&self) -> Option<&Arc<Mutex<devices::spapr_hpt::Hpt>>> {
        match self {
            Platform::Q35 { .. } => None,
            Platform::Spapr(p) => p.hpt.as_ref(),
        }
    }

    /// Those with migrated state, in stream order.
    pub(super) fn migratable(&self) -> Vec<&Mutex<dyn migration::vmstate::Migratable + Send>> {
        match self {
            Platform::Q35 { serial, pm, pci_io } => vec![&**serial, &**pm, &**pci_io],
            Platform::Spapr(p) => {
                let mut v: Vec<&Mutex<dyn migration::vmstate::Migratable + Send>> =
                    vec![&*p.ics, &*p.phb, &*p.rtc];
                if let Some(vty) = &p.vty {
                    v.push(&**vty);
                }
                v.push(&*p.nvram);
                v.extend(
                    p.icps
                        .iter()
                        .map(|i| &**i as &Mutex<dyn migration::vmstate::Migratable + Send>),
                );
                v.extend(
                    p.cpu_sections
                        .iter()
                        .map(|c| &**c as &Mutex<dyn migration::vmstate::Migratable + Send>),
                );
                v
            }
        }
    }
}

/// Where the guest's console output goes (`-serial`).
pub(super) fn console_output(cfg: &VmConfig) -> Result<Box<dyn Write + Send>> {
    Ok(match &cfg.serial {
        SerialBackend::Stdio => Box::new(Unbuffered(std::io::stdout())),
        SerialBackend::File(p) => Box::new(
            File::create(p)
                .with_context(|| format!("cannot create serial output file {}", p.display()))?,
        ),
        SerialBackend::None => Box::new(std::io::sink()),
    })
}

/// Where firmware would start I/O BARs (above the ISA and chipset ports).
pub(super) const PCI_IO_START: u64 = 0xc000;

/// Builds the board `cfg`'s machine type names.
pub(super) fn build(
    hypervisor: &dyn Hypervisor,
    cfg: &VmConfig,
    events: Sender<Control>,
    gate: Arc<RunGate>,
    gen: u64,
) -> Result<Board> {
    match cfg.machine.arch {
        machine::Arch::X86_64 => q35(hypervisor, cfg, events, gate, gen),
        machine::Arch::Ppc64 => super::spapr::build(hypervisor, cfg, events, gate, gen),
    }
}

/// Guest RAM in `regions` (address, size), given to the VM slot by slot.
pub(super) fn guest_memory(
    cfg: &VmConfig,
    vm: &dyn Vm,
    regions: Vec<(u64, u64)>,
) -> Result<GuestMemoryMmap> {
    let regions: Vec<(GuestAddress, usize)> = regions
        .into_iter()
        .map(|(a, s)| (GuestAddress(a), s as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&regions).map_err(|e| {
        anyhow!(
            "cannot allocate {} MiB of guest memory: {e}",
            cfg.memory >> 20
        )
    })?;
    for (slot, r) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(r.start_addr())
            .map_err(|e| anyhow!("guest memory: {e}"))?;
        // Transparent huge pages where the host allows them (as QEMU does):
        // fewer faults and TLB misses for the guest and for device copies.
        // SAFETY: advice on a mapping `mem` owns; no memory is changed.
        if unsafe {
            libc::madvise(
                host as *mut libc::c_void,
                r.len() as usize,
                libc::MADV_HUGEPAGE,
            )
        } != 0
        {
            log::debug!(
                "guest memory: MADV_HUGEPAGE refused: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: `mem` owns the mapping and lives in the Board as long as the VM.
        unsafe { vm.add_memory(slot as u32, r.start_addr().0, r.len(), host) }?;
    }
    Ok(mem)
}

/// Where the board's devices report lifecycle events: the main loop, as
/// board `gen`'s; the first stops every vCPU (the one that caused it
/// returns from its exit and sees the flag, so no guest code runs after).
pub(super) fn event_sink(events: &Sender<Control>, gen: u64, stop: &Arc<AtomicBool>) -> EventSink {
    let tx = Mutex::new(events.clone());
    let stop = stop.clone();
    Arc::new(move |e| {
        stop.store(true, Ordering::SeqCst);
        let _ = tx
            .lock()
            .expect("event lock")
            .send(Control::Vm(gen, Outcome::Device(e)));
    })
}

fn q35(
    hypervisor: &dyn Hypervisor,
    cfg: &VmConfig,
    events: Sender<Control>,
    gate: Arc<RunGate>,
    gen: u64,
) -> Result<Board> {
    let vm = hypervisor.create_vm()?;
    // The qtest accelerator has no vCPUs: its client is the guest's CPU.
    let vcpu_count = if vm.qtest().is_some() { 0 } else { cfg.vcpus };
    let cpuid = if vcpu_count == 0 {
        Arc::new(vec![])
    } else {
        guest_cpuid(cfg, &*vm)?
    };
    let topology = cfg.topology();

    // Guest RAM: below the PCI hole, the rest from 4 GiB.
    let mem = guest_memory(cfg, &*vm, layout::ram_regions(cfg.memory))?;
    if let Some(q) = vm.qtest() {
        q.attach(&mem);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sink = event_sink(&events, gen, &stop);

    // Devices.
    let mut io = Bus::new();
    let mut mmio = Bus::new();
    let serial_out = console_output(cfg)?;
    let serial_irq =
        EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).context("cannot create an eventfd")?;
    vm.add_irqfd(&serial_irq, 4)?;
    let serial = Arc::new(Mutex::new(Serial::new(serial_irq, serial_out)));
    io.insert(0x3f8, 8, serial.clone())?;
    if matches!(cfg.serial, SerialBackend::Stdio) {
        *console_input().lock().expect("console lock") = Some(serial.clone());
        start_stdin_thread();
    }
    let sci =
        EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).context("cannot create an eventfd")?;
    vm.add_irqfd(&sci, layout::SCI_IRQ as u32)?;
    let pm = Arc::new(Mutex::new(devices::acpi_pm::AcpiPm::new(
        layout::S5_SLP_TYP,
        sink.clone(),
        sci,
    )));
    io.insert(layout::PM_BASE as u64, 12, pm.clone())?;
    let mut root = PciRoot::default();
    root.add(crate::snapshot::HOST_BRIDGE, Box::new(HostBridge::new()))?;
    // Root ports get bus numbers 1, 2, ... behind them, as firmware would.
    for (d, secondary_bus) in cfg
        .devices
        .iter()
        .filter(|d| d.props.type_name == "pcie-root-port")
        .zip(1u8..)
    {
        let devfn = d
            .devfn
            .ok_or_else(|| anyhow!("pcie-root-port without a PCI address"))?;
        let port = RootPort::new(&RootPortConfig::from_props(&d.props, secondary_bus));
        root.add(Bdf::new(0, devfn >> 3, devfn & 7), Box::new(port))?;
    }
    // The first board of an incoming VM takes the disk images only when
    // the migration commits: its source holds them until then.
    let claim = !(gen == 1 && cfg.incoming.is_some());
    add_virtio_devices(cfg, &mut root, &vm, &mem, claim)?;
    root.assign_bars(PCI_IO_START, layout::PCI_MMIO32_START);
    let root = Arc::new(Mutex::new(root));
    io.insert(
        PCI_IO_START,
        0x1_0000 - PCI_IO_START,
        Arc::new(Mutex::new(BarWindow::new(
            root.clone(),
            Space::Io,
            PCI_IO_START,
        ))),
    )?;
    mmio.insert(
        layout::PCI_MMIO32_START,
        layout::PCI_MMIO32_END - layout::PCI_MMIO32_START,
        Arc::new(Mutex::new(BarWindow::new(
            root.clone(),
            Space::Mem,
            layout::PCI_MMIO32_START,
        ))),
    )?;
    let pci_io = Arc::new(Mutex::new(PciConfigIo::new(root.clone(), sink.clone())));
    io.insert(0xcf8, 8, pci_io.clone())?;
    mmio.insert(
        layout::ECAM_START,
        layout::ECAM_SIZE,
        Arc::new(Mutex::new(PciEcam::new(root.clone()))),
    )?;
    if let Some(d) = cfg.debug_exit {
        let dev: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(
            devices::debug_exit::DebugExit::new(sink.clone()),
        ));
        io.insert(d.iobase as u64, d.iosize as u64, dev)
            .with_context(|| {
                format!(
                    "isa-debug-exit at {:#x} collides with another device",
                    d.iobase
                )
            })?;
    }

    // Firmware tables and the kernel.
    let tables = acpi::build(&crate::config::acpi_config(
        &cfg.host_bridge,
        topology,
        cfg.memory,
    ));
    mem.write_slice(&tables.bytes, GuestAddress(tables.base))
        .map_err(|e| anyhow!("cannot write ACPI tables: {e}"))?;
    let memmap = layout::e820(cfg.memory);
    let boot = match &cfg.kernel {
        Some(path) => Some(boot(cfg, path, &mem, &memmap, tables.rsdp)?),
        None => None,
    };

    // vCPUs: the BSP enters the kernel, the APs wait for INIT-SIPI.
    let buses = Arc::new(Buses { io, mmio });
    let mut vcpu_objs = vec![];
    let mut tsc_khz = None;
    for id in 0..vcpu_count {
        // KVM's vCPU id is the APIC ID the topology gives it.
        let apic_id = topology.apic_id(id as u32);
        let mut vcpu = vm.create_vcpu(apic_id as u8)?;
        vcpu.x86_64()
            .ok_or_else(|| anyhow!("the q35 board needs x86_64 vCPUs"))?
            .configure(&X86BootState {
                entry: boot.filter(|_| id == 0),
                apic_id,
                topology: &topology,
                cpuid: &cpuid,
            })?;
        // A guest that came scaled to its source's TSC rate keeps it.
        if let Some(khz) = cfg.cpu_carried.as_ref().and_then(|c| c.tsc_khz) {
            vcpu.x86_64()
                .ok_or_else(|| anyhow!("the q35 board needs x86_64 vCPUs"))?
                .set_tsc_khz(khz)?;
        }
        if id == 0 {
            tsc_khz = vcpu.x86_64().and_then(|v| v.tsc_khz().ok());
        }
        vcpu_objs.push(Arc::new(Mutex::new(vcpu)));
    }
    let (handles, tids) = spawn_vcpus(&vcpu_objs, buses.clone(), gen, &stop, &events, &gate)
        .context("cannot start a vCPU thread")?;
    Ok(Board {
        vm,
        mem,
        buses,
        vcpus: handles,
        vcpu_objs,
        cpuid,
        tsc_khz,
        platform: Platform::Q35 { serial, pm, pci_io },
        tids,
        stop,
        pci: root,
    })
}

/// Loads the kernel (and initrd and command line) and says how the BSP
/// enters it: (rip, rbx, rsi).
fn boot(
    cfg: &VmConfig,
    path: &std::path::Path,
    mem: &GuestMemoryMmap,
    memmap: &[arch::x86_64::E820Entry],
    rsdp: u64,
) -> Result<(u64, u64, u64)> {
    Ok(match load_kernel(path, mem)? {
        Kernel::Pvh { entry, end } => {
            let initrd = load_initrd(cfg, mem, end, u64::MAX)?;
            let start_info = pvh::write(mem, &cfg.cmdline, memmap, rsdp, initrd)?;
            (entry, start_info, 0)
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Linux { entry, end, hdr } => {
            let initrd_addr_max = hdr.initrd_addr_max;
            let max = match initrd_addr_max {
                0 => 0x3800_0000, // protocol < 2.03: the documented default
                m => m as u64 + 1,
            };
            let initrd = load_initrd(cfg, mem, end, max)?.map(|m| (m.addr, m.size));
            let len = pvh::write_cmdline(mem, &cfg.cmdline)?;
            let zero_page =
                arch::x86_64::linux::write_boot_params(mem, hdr, len, memmap, rsdp, initrd)?;
            (entry, 0, zero_page)
        }
    })
}

/// The CPUID table the guest's vCPUs get: the one a migration's source
/// gave it, or else what `-cpu` asks of this host.
fn guest_cpuid(cfg: &VmConfig, vm: &dyn crate::hypervisor::Vm) -> Result<Arc<Vec<CpuidEntry>>> {
    if let Some(t) = &cfg.cpu_carried {
        return Ok(t.cpuid.clone());
    }
    let host = vm
        .x86_64()
        .ok_or_else(|| anyhow!("the q35 board needs an x86_64 VM"))?
        .supported_cpuid();
    let (table, dropped) = arch::x86_64::cpu::build(&cfg.cpu, host)?;
    if !dropped.is_empty() {
        log::warn!(
            "-cpu {}: this host lacks {}; the guest goes without (check=on)",
            cfg.cpu,
            arch::x86_64::cpu::describe(&dropped)
        );
    }
    Ok(Arc::new(table))
}

impl Board {
    /// Interrupts KVM_RUN on every vCPU thread still running.
    pub(super) fn kick(&self) {
        for h in self.vcpus.iter().filter(|h| !h.is_finished()) {
            let _ = h.kill(SIGRTMIN());
        }
        // pseries vCPUs the guest has not started wait outside KVM_RUN.
        if let Platform::Spapr(p) = &self.platform {
            p.cpus.wake();
        }
    }

    /// The sPAPR hash page table as a migration reads it: the board's own
    /// (qtest), or the kernel's (KVM-PPC, through its HTAB fd); `None`
    /// where there is none (q35, a radix-only host).
    pub(super) fn htab_source(
        &self,
    ) -> Result<Option<Box<dyn migration::htab::HtabSource>>, crate::hypervisor::Error> {
        if let Some(hpt) = self.platform.hpt() {
            return Ok(Some(Box::new(devices::spapr_hpt::Migrated(hpt.clone()))));
        }
        match self.vm.ppc64() {
            Some(ppc) => ppc.htab_source(),
            None => Ok(None),
        }
    }

    /// What a guest reset keeps, which the next board takes back
    /// ([`Board::restore_kept`]): the pseries NVRAM's contents (QEMU's has
    /// no reset handler).
    pub(super) fn kept(&self) -> Option<Vec<u8>> {
        match &self.platform {
            Platform::Spapr(p) => Some(p.nvram.lock().expect("nvram lock").contents().to_vec()),
            Platform::Q35 { .. } => None,
        }
    }

    pub(super) fn restore_kept(&self, kept: Option<Vec<u8>>) {
        if let (Some(bytes), Platform::Spapr(p)) = (kept, &self.platform) {
            p.nvram.lock().expect("nvram lock").set_contents(bytes);
        }
    }

    /// Stops every vCPU thread: signals interrupt KVM_RUN until each has
    /// seen the stop flag.
    pub(super) fn shutdown(self) {
        self.stop.store(true, Ordering::SeqCst);
        while self.vcpus.iter().any(|h| !h.is_finished()) {
            self.kick();
            std::thread::sleep(Duration::from_millis(2));
        }
        for h in self.vcpus {
            let _ = h.join();
        }
    }
}
