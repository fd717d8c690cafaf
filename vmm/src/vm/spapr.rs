//! The pseries (sPAPR) board: RAM from address 0, PHB 0 with its I/O,
//! 32-bit and 64-bit windows and the PCI functions behind it, and the
//! RTAS calls that reach them. Its vCPUs need KVM-PPC on a POWER host
//! (issue 19's backend, not here yet): on this host it runs under
//! `-accel qtest`, whose client makes RTAS calls with qtest's `rtas`.

use super::board::{console_output, event_sink, guest_memory, Board, Platform, PCI_IO_START};
use super::console::{console_input, start_stdin_thread};
use super::spapr_cpus::{self, CpuSection, Entry, SpaprCpus};
use super::vcpu::{spawn_vcpus, Buses, RunGate};
use super::virtio::add_virtio_devices;
use super::Control;
use crate::config::{SerialBackend, VmConfig};
use crate::hypervisor::{ExitHandler, Hypervisor, Vcpu};
use anyhow::{bail, Context, Result};
use arch::ppc64::boot::hpt_shift_for_ram;
use devices::bus::Bus;
use devices::pci::spapr_phb::{PhbConfig, SpaprPhb, MEM_WIN_BUS_OFFSET};
use devices::pci::{BarWindow, PciRoot, Space};
use devices::rtas::{HW_ERROR as RTAS_HW_ERROR, PARAM_ERROR as RTAS_PARAM_ERROR};
use devices::spapr_hpt::{Hpt, HptError};
use devices::spapr_nvram::SpaprNvram;
use devices::spapr_rtc::{DateTime, SpaprRtc};
use devices::spapr_vio::VioAddr;
use devices::spapr_vty::SpaprVty;
use devices::xics::{IcpSection, Ics};
use devices::VmEvent;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

pub(super) fn build(
    hypervisor: &dyn Hypervisor,
    cfg: &VmConfig,
    events: Sender<Control>,
    gate: Arc<RunGate>,
    gen: u64,
) -> Result<Board> {
    let vm = hypervisor.create_vm()?;
    let kvm = vm.qtest().is_none();
    if kvm && !cfg!(target_arch = "powerpc64") {
        bail!(
            "{}: pseries vCPUs need KVM-PPC on a POWER host: on this host run it under -accel qtest",
            cfg.machine.name
        );
    }
    // The hash page table, sized for the RAM as QEMU's: KVM-PPC's on a
    // host that keeps one, the board's own under qtest (QEMU's TCG and
    // qtest table, which the MMU hypercalls edit). The order granted is
    // what the vCPU nodes' ibm,pft-size say.
    let mut hpt_order = hpt_shift_for_ram(cfg.memory);
    if let Some(ppc) = vm.ppc64() {
        ppc.set_smt(vsmt(cfg.machine, &cfg.smp), cfg.smp.threads)?;
        if let Some(order) = ppc.allocate_hpt(hpt_order)? {
            log::info!("KVM-PPC: hash page table of 2^{order} bytes (2^{hpt_order} asked)");
            hpt_order = order;
        }
    }
    let hpt = (!kvm).then(|| {
        let max_page = arch::ppc64::cpu::max_page_shift(cfg.machine.version);
        let large = arch::ppc64::cpu::large_page_encodings(max_page);
        Arc::new(Mutex::new(Hpt::new(hpt_order, cfg.memory, large)))
    });
    let mem = guest_memory(cfg, &*vm, vec![(0, cfg.memory)])?;
    if let Some(q) = vm.qtest() {
        q.attach(&mem);
    }
    let entry = match cfg.kernel {
        Some(_) => Some(load_kernel(cfg, &mem, hpt_order)?.0),
        None => None,
    };
    if let Some(e) = &entry {
        log::info!(
            "pseries boot: entry {:#x}, r3 (device tree) {:#x}, r4 {:#x}, r5 {:#x}, MSR {:#x}",
            e.pc,
            e.fdt,
            e.kernel_base,
            e.client_interface,
            e.msr
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sink = event_sink(&events, gen, &stop);

    let irqs = Irqs::of(&cfg.host_bridge, has_console(cfg));
    let phb = PhbConfig::from_props(&cfg.host_bridge, 0, cfg.memory, irqs.lsi_base);
    // The interrupt controller: emulated under qtest, with a presentation
    // controller per vCPU; on KVM-PPC the kernel's presents (its state
    // travels with each vCPU) and this one keeps the sources' routing,
    // mirrored into the kernel's as it changes.
    let mut ics = Ics::new(
        xics_sources(&cfg.host_bridge),
        xics_servers(cfg.machine, &cfg.smp),
        &phb.lsi,
        &irqs.claimed,
    );
    if kvm {
        // The kernel's XICS presents: it gets every routing change.
        let vm = vm.clone();
        ics = ics.with_mirror(devices::xics::Mirror(Box::new(move |nr, route| {
            if let Err(e) = vm.route_source(nr, route) {
                log::error!("interrupt source {nr:#x}: {e}");
            }
        })));
    } else {
        ics = ics.with_icps(&vcpu_servers(cfg.machine, &cfg.smp));
    }
    let ics = Arc::new(Mutex::new(ics));
    if let Some(q) = vm.qtest() {
        // A function's MSI to the window raises the source its data names
        // (QEMU's `spapr_msi_write`; KVM-PPC's signal_msi does the same).
        let msi_ics = ics.clone();
        q.route_msi(Box::new(move |addr, data| {
            let window = devices::pci::spapr_phb::MSI_WINDOW;
            let hit = (window..window + 0x1_0000).contains(&addr);
            if hit {
                msi_ics.lock().expect("xics lock").pulse(data);
            }
            hit
        }));
        // A function's INTx is the bridge pin's level-triggered source,
        // up while any function on the pin holds it.
        let line_ics = ics.clone();
        let pins = devices::pci::intx::SharedLines::default();
        q.route_lines(Box::new(move |nr, level| {
            if let Some(level) = pins.set(nr, level) {
                line_ics.lock().expect("xics lock").set_level(nr, level)
            }
        }));
    }
    let vty = irqs
        .vty
        .map(|at| -> Result<_> {
            // The vty's input raises its source.
            let raise: devices::spapr_vty::Raise = if kvm {
                let vm = vm.clone();
                Box::new(move || {
                    if let Err(e) = vm.signal_msi(0, at.irq) {
                        log::warn!("spapr-vty: cannot raise interrupt {:#x}: {e}", at.irq);
                    }
                })
            } else {
                let ics = ics.clone();
                Box::new(move || ics.lock().expect("xics lock").pulse(at.irq))
            };
            let vty = Arc::new(Mutex::new(SpaprVty::new(at, console_output(cfg)?, raise)));
            if matches!(cfg.serial, SerialBackend::Stdio) {
                *console_input().lock().expect("console lock") = Some(vty.clone());
                start_stdin_thread();
            }
            Ok(vty)
        })
        .transpose()?;
    let mut root = PciRoot::default();
    let claim = !(gen == 1 && cfg.incoming.is_some());
    add_virtio_devices(cfg, &mut root, &vm, &mem, claim)?;
    root.assign_bars(PCI_IO_START, MEM_WIN_BUS_OFFSET);
    let root = Arc::new(Mutex::new(root));
    let window =
        |space, pci_base| Arc::new(Mutex::new(BarWindow::new(root.clone(), space, pci_base)));
    let mut mmio = Bus::new();
    mmio.insert(phb.io_win_addr, phb.io_win_size, window(Space::Io, 0))?;
    mmio.insert(
        phb.mem_win_addr,
        phb.mem_win_size,
        window(Space::Mem, MEM_WIN_BUS_OFFSET),
    )?;
    if phb.mem64_win_size != 0 {
        mmio.insert(
            phb.mem64_win_addr,
            phb.mem64_win_size,
            window(Space::Mem, phb.mem64_win_pciaddr),
        )?;
    }
    log::info!(
        "{}: PHB 0 (BUID {:#x}): I/O {:#x}+{:#x}, 32-bit {:#x}+{:#x}, 64-bit {:#x}+{:#x}",
        cfg.machine.name,
        phb.buid,
        phb.io_win_addr,
        phb.io_win_size,
        phb.mem_win_addr,
        phb.mem_win_size,
        phb.mem64_win_addr,
        phb.mem64_win_size
    );
    let icps = ics
        .lock()
        .expect("xics lock")
        .icp_servers()
        .into_iter()
        .enumerate()
        .map(|(vcpu, server)| {
            Arc::new(Mutex::new(IcpSection {
                xics: ics.clone(),
                server,
                vcpu: vcpu as u32,
            }))
        })
        .collect();
    let servers = vcpu_servers(cfg.machine, &cfg.smp);
    let cpus = Arc::new(SpaprCpus::new(&servers));
    let cpu_sections = (0..cfg.smp.cpus as usize)
        .map(|vcpu| {
            Arc::new(Mutex::new(CpuSection {
                cpus: cpus.clone(),
                vcpu,
            }))
        })
        .collect();
    let papr = Papr {
        msi_base: irqs.msi_base,
        phb: Arc::new(Mutex::new(SpaprPhb::new(phb))),
        rtc: Arc::new(Mutex::new(SpaprRtc::default())),
        ics,
        icps,
        events: sink,
        vty,
        nvram: Arc::new(Mutex::new(SpaprNvram::new(irqs.nvram))),
        cpus_and_max: (cfg.smp.cpus, cfg.smp.maxcpus),
        mem_size: cfg.memory,
        pci: root.clone(),
        mem: mem.clone(),
        cpus,
        cpu_sections,
        hpt,
        // QEMU turns the capability off for CPUs before POWER8 (its
        // pseries-2.7 and older run POWER7).
        ail_mode_3: cfg.machine.version >= (2, 8) && vm.ppc64().is_none_or(|p| p.ail_mode_3()),
    };
    let buses = Arc::new(Buses {
        io: Bus::new(),
        mmio,
    });
    // Under qtest the client is the only CPU; on KVM-PPC the boot vCPU
    // enters the kernel and the others wait for the guest's start-cpu.
    let mut vcpu_objs = vec![];
    if kvm {
        let entry = entry.ok_or_else(|| anyhow::anyhow!("no kernel given: use -kernel FILE"))?;
        // KVM knows each vCPU by its interrupt server number, as QEMU's.
        for (i, &server) in servers.iter().enumerate() {
            let id = u8::try_from(server).map_err(|_| {
                anyhow::anyhow!(
                    "-smp {}: vCPU {i}'s interrupt server {server} is above the 255 vmm's KVM-PPC vCPUs can have",
                    cfg.smp.cpus
                )
            })?;
            let mut vcpu = vm.create_vcpu(id)?;
            if i == 0 {
                vcpu.ppc64()
                    .ok_or_else(|| anyhow::anyhow!("the pseries board needs ppc64 vCPUs"))?
                    .set_entry(&entry)?;
            }
            vcpu_objs.push(Arc::new(Mutex::new(vcpu)));
        }
    }
    let exits = Arc::new(SpaprExits {
        buses: buses.clone(),
        papr: papr.clone(),
    });
    let (vcpus, tids) = spawn_vcpus(&vcpu_objs, exits, gen, &stop, &events, &gate)
        .context("cannot start a vCPU thread")?;
    Ok(Board {
        vm,
        mem,
        buses,
        vcpus,
        vcpu_objs,
        cpuid: Arc::new(vec![]),
        tsc_khz: None,
        tids,
        stop,
        pci: root,
        platform: Platform::Spapr(papr),
    })
}

/// What RTAS calls and hypercalls reach: the board's sPAPR devices, its
/// PCI functions and its RAM (each shared: a clone is cheap).
#[derive(Clone)]
pub(super) struct Papr {
    /// Where `ibm,change-msi` takes sources from.
    pub(super) msi_base: u32,
    pub(super) phb: Arc<Mutex<SpaprPhb>>,
    pub(super) rtc: Arc<Mutex<SpaprRtc>>,
    pub(super) ics: Arc<Mutex<Ics>>,
    /// The emulated presentation controllers' sections (none on KVM-PPC).
    pub(super) icps: Vec<Arc<Mutex<IcpSection>>>,
    /// Where RTAS power-off and system-reboot go.
    pub(super) events: devices::EventSink,
    /// The console (`-serial`), unless it is `none`.
    pub(super) vty: Option<Arc<Mutex<SpaprVty>>>,
    /// The NVRAM (RTAS `nvram-fetch`, `nvram-store`).
    pub(super) nvram: Arc<Mutex<SpaprNvram>>,
    /// `-smp`'s CPUs and maximum, and `-m` (what the partition is told
    /// of itself: `ibm,get-system-parameter`).
    pub(super) cpus_and_max: (u32, u32),
    pub(super) mem_size: u64,
    pub(super) pci: Arc<Mutex<PciRoot>>,
    pub(super) mem: super::GuestMemoryMmap,
    /// The vCPUs' platform state (stopped or running, LPCR bits).
    pub(super) cpus: Arc<SpaprCpus>,
    /// Each vCPU's as its own section.
    pub(super) cpu_sections: Vec<Arc<Mutex<CpuSection>>>,
    /// The hash page table the MMU hypercalls edit, where the board holds
    /// it (qtest; KVM-PPC's kernel keeps and serves its own).
    pub(super) hpt: Option<Arc<Mutex<Hpt>>>,
    /// QEMU's `cap-ail-mode-3`: interrupts may be taken relocated at
    /// 0xc000000000004000 (the machine's CPU is POWER8 or later, and a
    /// KVM-PPC host can do it).
    pub(super) ail_mode_3: bool,
}

/// A pseries vCPU's exits: MMIO on the buses (the PHB's windows), the
/// hypercalls KVM-PPC leaves to userspace to the board.
struct SpaprExits {
    buses: Arc<Buses>,
    papr: Papr,
}

impl ExitHandler for SpaprExits {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.buses.pio_read(port, data)
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        self.buses.pio_write(port, data)
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.buses.mmio_read(addr, data)
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.buses.mmio_write(addr, data)
    }
    /// `vcpu` is the KVM vCPU id: its interrupt server number.
    fn papr_hcall(&self, vcpu: u8, opcode: u64, args: &mut [u64; 9]) -> i64 {
        let Some(caller) = self.papr.cpus.index_of(vcpu.into()) else {
            log::error!("hypercall {opcode:#x} from vCPU id {vcpu}, which the board does not have");
            return hcall::H_PARAMETER;
        };
        hcall(&self.papr, caller, opcode, args)
    }
    fn before_entry(&self, id: u8, vcpu: &Mutex<Box<dyn Vcpu>>) -> Result<bool, String> {
        // A stopped vCPU's thread waits here a while, then goes back by
        // its run gate (a pause must find it there).
        let (start, lpcr, online) = match self
            .papr
            .cpus
            .before_entry(id.into(), std::time::Duration::from_millis(50))
        {
            Entry::Stopped { now: false } => return Ok(false),
            Entry::Stopped { now: true } => {
                // stop-self (or came stopped with a migration): offline
                // until started again (QEMU's kvmppc_set_reg_ppc_online).
                let mut vcpu = vcpu.lock().expect("vcpu lock");
                if let Some(ppc) = vcpu.ppc64() {
                    ppc.set_online(false)
                        .map_err(|e| format!("stop-self: {e}"))?;
                }
                return Ok(false);
            }
            Entry::Run {
                start,
                lpcr,
                online,
            } => (start, lpcr, online),
        };
        if start.is_none() && lpcr.is_none() && !online {
            return Ok(true);
        }
        let mut vcpu = vcpu.lock().expect("vcpu lock");
        let ppc = vcpu
            .ppc64()
            .ok_or_else(|| "the pseries board needs ppc64 vCPUs".to_string())?;
        if online {
            ppc.set_online(true)
                .map_err(|e| format!("cannot mark the vCPU online: {e}"))?;
        }
        if let Some(s) = start {
            ppc.start_cpu(s.nip, s.r3)
                .map_err(|e| format!("start-cpu at {:#x}: {e}", s.nip))?;
        }
        if let Some(bits) = lpcr {
            let mask = spapr_cpus::LPCR_ILE | spapr_cpus::LPCR_AIL;
            ppc.set_lpcr(bits, mask)
                .map_err(|e| format!("cannot set LPCR bits {bits:#x}: {e}"))?;
        }
        Ok(true)
    }
}

/// QEMU's virtual SMT mode: threads a virtual core has (up to
/// pseries-4.1 at least 8, then the threads per core).
fn vsmt(machine: &machine::MachineType, smp: &arch::x86_64::topology::Topology) -> u32 {
    if machine.version <= (4, 1) {
        smp.threads.max(8)
    } else {
        smp.threads
    }
}

/// The interrupt servers QEMU's XICS has: max CPUs x the virtual SMT mode
/// over the threads per core, rounded up.
fn xics_servers(machine: &machine::MachineType, smp: &arch::x86_64::topology::Topology) -> u32 {
    (smp.maxcpus * vsmt(machine, smp)).div_ceil(smp.threads)
}

/// Loads `-kernel` (and `-initrd`) as a pseries guest boots without
/// firmware (arch::ppc64::boot): the kernel, the initrd after it, the
/// RTAS blob and the device tree that tells the kernel where they are;
/// how the boot vCPU enters it.
fn load_kernel(
    cfg: &VmConfig,
    mem: &super::GuestMemoryMmap,
    hpt_order: u32,
) -> Result<(arch::ppc64::boot::Entry, Vec<u8>)> {
    use arch::ppc64::boot;
    use vm_memory::{Bytes, GuestAddress};
    let path = cfg.kernel.as_ref().expect("a kernel");
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("cannot open kernel {}", path.display()))?;
    let kernel = boot::load_kernel(mem, &mut f)
        .with_context(|| format!("cannot load kernel {}", path.display()))?;
    let layout = boot::layout(cfg.memory, arch::ppc64::fdt::rtas_size(cfg.smp.maxcpus));
    if kernel.end > layout.rtas {
        bail!(
            "kernel {} ends at {:#x}, above the firmware area at {:#x}: give the guest more memory",
            path.display(),
            kernel.end,
            layout.rtas
        );
    }
    log::info!(
        "kernel {}: {:?}-endian ppc64 ELF at {:#x}-{:#x}, entry {:#x}",
        path.display(),
        kernel.endian,
        kernel.start,
        kernel.end,
        kernel.entry
    );
    let mut reserved = vec![(kernel.start, kernel.end - kernel.start)];
    let initrd = match &cfg.initrd {
        None => None,
        Some(p) => {
            let data =
                std::fs::read(p).with_context(|| format!("cannot read initrd {}", p.display()))?;
            let start = boot::initrd_addr(kernel.end);
            let end = start + data.len() as u64;
            if end > layout.rtas {
                bail!(
                    "initrd {} ({} bytes) does not fit between the kernel and the firmware area at {:#x}",
                    p.display(),
                    data.len(),
                    layout.rtas
                );
            }
            mem.write_slice(&data, GuestAddress(start))
                .map_err(|e| anyhow::anyhow!("cannot copy the initrd into guest memory: {e}"))?;
            reserved.push((start, end - start));
            Some((start, end))
        }
    };
    mem.write_slice(&boot::rtas_blob(), GuestAddress(layout.rtas))
        .map_err(|e| anyhow::anyhow!("cannot copy RTAS into guest memory: {e}"))?;
    reserved.push((layout.rtas, layout.rtas_size));
    let dtb = tree(&Shown::of(
        cfg,
        hpt_order,
        Some(arch::ppc64::fdt::Boot {
            rtas: layout.rtas,
            initrd,
            reserved,
        }),
    ))?;
    if dtb.len() as u64 > boot::FDT_MAX_SIZE {
        bail!(
            "the device tree is {} bytes, more than the {} it has room for",
            dtb.len(),
            boot::FDT_MAX_SIZE
        );
    }
    mem.write_slice(&dtb, GuestAddress(layout.fdt))
        .map_err(|e| anyhow::anyhow!("cannot copy the device tree into guest memory: {e}"))?;
    Ok((boot::entry(&kernel, &layout), dtb))
}

/// The interrupt source a function in `slot` of PHB 0 raises on its INTA
/// pin: the tree's `interrupt-map` swizzle (slot + pin) over the bridge's
/// four pins.
pub(super) fn intx_source(cfg: &VmConfig, slot: u8) -> u32 {
    let irqs = Irqs::of(&cfg.host_bridge, has_console(cfg));
    let phb = PhbConfig::from_props(&cfg.host_bridge, 0, cfg.memory, irqs.lsi_base);
    phb.lsi[usize::from(slot) % 4]
}

/// Whether the board has a console (QEMU's pseries makes `-serial`'s
/// character device a spapr-vty; `-serial none` has none).
fn has_console(cfg: &VmConfig) -> bool {
    !matches!(cfg.serial, SerialBackend::None)
}

/// Where the board's devices sit on the VIO bus and which interrupt
/// sources they and the bridge's pins take, as QEMU's pseries gives them.
/// QEMU's machine creates, in order, the console's vty (at the first VIO
/// address), the NVRAM (the next),
/// then PHB 0. From pseries-3.1 VIO sources follow the address and the
/// pins start at 0x1200. Up to 3.0 (`x-legacy-irq-allocation`) every
/// device took the first free source in that order, after the EPOW event
/// source and the hot-plug one (where modern hot-plug events are on): so
/// a console moves the bridge's pins.
#[derive(Debug, PartialEq, Eq)]
struct Irqs {
    vty: Option<VioAddr>,
    nvram: VioAddr,
    lsi_base: u32,
    /// The message-signalled sources the board's own devices hold: the
    /// event sources, the vty's, the NVRAM's (none left for MSIs).
    claimed: Vec<u32>,
    /// Where MSIs are taken from: the MSI range from pseries-3.1, any free
    /// source before.
    msi_base: u32,
}

impl Irqs {
    fn of(host_bridge: &devices::model::Props, console: bool) -> Irqs {
        use devices::spapr_vio::{reg_to_irq, REG_BASE};
        use devices::xics::IRQ_BASE;
        let (vty_reg, nvram_reg) = (REG_BASE, REG_BASE + u32::from(console));
        let hotplug = host_bridge.bool("x-modern-hotplug-events").unwrap_or(true);
        // EPOW, then the hot-plug source where modern events are on.
        let events = if hotplug { 2 } else { 1 };
        if !host_bridge.bool("x-legacy-irq-allocation").unwrap_or(false) {
            let vty = console.then(|| VioAddr {
                reg: vty_reg,
                irq: reg_to_irq(vty_reg),
            });
            let nvram = VioAddr {
                reg: nvram_reg,
                irq: reg_to_irq(nvram_reg),
            };
            let mut claimed: Vec<u32> = (IRQ_BASE..IRQ_BASE + events).collect();
            claimed.extend(vty.map(|v| v.irq));
            claimed.push(nvram.irq);
            return Irqs {
                vty,
                nvram,
                lsi_base: devices::pci::spapr_phb::IRQ_PCI_LSI,
                claimed,
                msi_base: devices::pci::spapr_phb::IRQ_MSI,
            };
        }
        // In creation order: the events, the vty, the NVRAM, the bridge.
        let vty = console.then(|| VioAddr {
            reg: vty_reg,
            irq: IRQ_BASE + events,
        });
        let nvram = VioAddr {
            reg: nvram_reg,
            irq: IRQ_BASE + events + u32::from(console),
        };
        let lsi_base = nvram.irq + 1;
        Irqs {
            vty,
            nvram,
            lsi_base,
            claimed: (IRQ_BASE..lsi_base).collect(),
            msi_base: IRQ_BASE,
        }
    }
}

/// The interrupt server of each vCPU, as QEMU numbers them
/// (`spapr_vcpu_id`): the core's first thread at a multiple of the
/// virtual SMT mode.
fn vcpu_servers(
    machine: &machine::MachineType,
    smp: &arch::x86_64::topology::Topology,
) -> Vec<u32> {
    let (threads, vsmt) = (smp.threads, vsmt(machine, smp));
    (0..smp.cpus)
        .map(|i| (i / threads) * vsmt + i % threads)
        .collect()
}

/// The interrupt sources of the board's XICS: 0x1000, or 0x400 where QEMU
/// 3.0 and older allocated them the legacy way.
fn xics_sources(host_bridge: &devices::model::Props) -> u32 {
    if host_bridge.bool("x-legacy-irq-allocation").unwrap_or(false) {
        0x400
    } else {
        0x1000
    }
}

/// The device tree a guest of `cfg` is given (arch::ppc64::fdt): with
/// `-kernel`, the one it finds in memory (where the kernel, initrd and
/// RTAS went), as QEMU's dumpdtb after its reset.
pub(super) fn device_tree(cfg: &VmConfig) -> Result<Vec<u8>> {
    if cfg.kernel.is_none() {
        return tree(&Shown::of(cfg, hpt_shift_for_ram(cfg.memory), None));
    }
    // Where the images go decides the tree: place them in scratch memory
    // (mapped, only the images' pages touched).
    let mem =
        super::GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), cfg.memory as usize)])
            .map_err(|e| {
            anyhow::anyhow!(
                "cannot map {} MiB for the device tree's images: {e}",
                cfg.memory >> 20
            )
        })?;
    Ok(load_kernel(cfg, &mem, hpt_shift_for_ram(cfg.memory))?.1)
}

/// What of a guest its device tree shows.
pub(crate) struct Shown<'a> {
    pub(crate) machine: &'a machine::MachineType,
    /// The PHB's properties.
    pub(crate) host_bridge: &'a devices::model::Props,
    pub(crate) ram: u64,
    /// The kernel command line.
    pub(crate) cmdline: &'a str,
    pub(crate) smp: &'a arch::x86_64::topology::Topology,
    pub(crate) console: bool,
    /// log2 of the hash page table's bytes (`ibm,pft-size`): what QEMU
    /// sizes for the RAM, or what KVM-PPC granted.
    pub(crate) hpt_order: u32,
    pub(crate) boot: Option<arch::ppc64::fdt::Boot>,
}

impl<'a> Shown<'a> {
    fn of(cfg: &'a VmConfig, hpt_order: u32, boot: Option<arch::ppc64::fdt::Boot>) -> Shown<'a> {
        Shown {
            hpt_order,
            machine: cfg.machine,
            host_bridge: &cfg.host_bridge,
            ram: cfg.memory,
            cmdline: &cfg.cmdline,
            smp: &cfg.smp,
            console: has_console(cfg),
            boot,
        }
    }
}

/// `/cpus`: the machine type's default CPU (QEMU's outside KVM), a node
/// a core with its threads' interrupt servers, in its socket; the hash
/// page table's order.
fn cpus(
    machine: &machine::MachineType,
    smp: &arch::x86_64::topology::Topology,
    hpt_order: u32,
) -> arch::ppc64::fdt::Cpus {
    use arch::ppc64::{cpu, fdt};
    let servers = vcpu_servers(machine, smp);
    let threads = smp.threads as usize;
    let per_socket = smp.threads * smp.cores;
    let cores = servers
        .chunks(threads)
        .enumerate()
        .map(|(core, s)| fdt::Core {
            servers: s.to_vec(),
            chip: (core * threads) as u32 / per_socket,
        })
        .collect();
    fdt::Cpus {
        model: cpu::default_for(machine.version),
        cores,
        page_sizes: cpu::segment_page_sizes(cpu::max_page_shift(machine.version)),
        hpt_order,
    }
}

/// The device tree `g` describes (also what `-dump-abi` records).
pub(crate) fn tree(g: &Shown) -> Result<Vec<u8>> {
    let Shown {
        machine,
        host_bridge,
        ram,
        cmdline,
        smp,
        console,
        ..
    } = *g;
    use arch::ppc64::fdt;
    let irqs = Irqs::of(host_bridge, console);
    let phb = PhbConfig::from_props(host_bridge, 0, ram, irqs.lsi_base);
    let legacy = host_bridge.bool("x-legacy-irq-allocation").unwrap_or(false);
    let tree = fdt::Spapr {
        ram,
        cmdline: cmdline.to_string(),
        // QEMU's pseries-4.2 and later tell Linux to assign BARs itself.
        pci_probe: machine.version >= (4, 2),
        max_cpus: xics_servers(machine, smp),
        cpus: cpus(machine, smp, g.hpt_order),
        rtas_size: fdt::rtas_size(smp.maxcpus),
        vty: irqs.vty.map(|v| (v.reg, v.irq)),
        nvram: (
            irqs.nvram.reg,
            irqs.nvram.irq,
            devices::spapr_nvram::DEFAULT_SIZE,
        ),
        boot: g.boot.clone(),
        phb: fdt::Phb {
            buid: phb.buid,
            io_win_addr: phb.io_win_addr,
            io_win_size: phb.io_win_size,
            mem_win_addr: phb.mem_win_addr,
            mem_win_size: phb.mem_win_size,
            mem_win_pciaddr: MEM_WIN_BUS_OFFSET,
            mem64_win_addr: phb.mem64_win_addr,
            mem64_win_size: phb.mem64_win_size,
            mem64_win_pciaddr: phb.mem64_win_pciaddr,
            lsi: phb.lsi,
            dma_liobn: phb.dma_liobn,
            dma_win_addr: 0,
            dma_win_size: 0x4000_0000,
            // The MSI sources: what is left of the sources above the
            // first 0x300 (legacy: all of them).
            total_msi: if legacy {
                xics_sources(host_bridge)
            } else {
                xics_sources(host_bridge) - 0x300
            },
        },
    };
    fdt::build(&tree).map_err(|e| anyhow::anyhow!("cannot build the device tree: {e}"))
}

/// `ibm,get-system-parameter`'s parameters QEMU answers.
const SYSPARM_SPLPAR_CHARACTERISTICS: u32 = 20;
const SYSPARM_DIAGNOSTICS_RUN_MODE: u32 = 42;
const SYSPARM_UUID: u32 = 48;
/// RTAS statuses beside devices::rtas's.
const RTAS_NOT_SUPPORTED: i32 = -3;
const RTAS_NOT_AUTHORIZED: i32 = -9002;
const RTAS_SYSPARM_PARAM_ERROR: i32 = -9999;
const RTAS_NO_ERRORS_FOUND: u32 = 1;

/// An RTAS call by name, its arguments and how many results the caller
/// has room for: the results (status first), or `None` for a call this
/// board does not have.
pub(super) fn rtas(
    papr: &Papr,
    caller: usize,
    name: &str,
    args: &[u32],
    nret: usize,
) -> Option<Vec<u32>> {
    let Papr {
        phb,
        rtc,
        ics,
        events,
        vty,
        cpus,
        ..
    } = papr;
    let status = |r: i32| r as u32;
    // Calls that take the wrong number of arguments or results get
    // QEMU's parameter error (PCI configuration: its hardware error).
    let param_error = || Some(vec![status(RTAS_PARAM_ERROR)]);
    match name {
        "display-character" => {
            // To the console's vty, as QEMU's; none with -serial none.
            let (Some(&c), Some(vty)) = (args.first(), vty) else {
                return Some(vec![status(RTAS_HW_ERROR)]);
            };
            vty.lock().expect("vty lock").put_chars(&[c as u8]);
            return Some(vec![0]);
        }
        "get-time-of-day" => {
            if !args.is_empty() || nret != 8 {
                return param_error();
            }
            let t = rtc.lock().expect("rtc lock").read();
            return Some(vec![
                0, t.year, t.month, t.day, t.hour, t.minute, t.second, t.ns,
            ]);
        }
        "set-time-of-day" => {
            let &[year, month, day, hour, minute, second, ns] = args else {
                return param_error();
            };
            if nret != 1 {
                return param_error();
            }
            let t = DateTime {
                year,
                month,
                day,
                hour,
                minute,
                second,
                ns,
            };
            return Some(match rtc.lock().expect("rtc lock").set(t) {
                Some(()) => vec![0],
                None => vec![status(RTAS_PARAM_ERROR)],
            });
        }
        "power-off" | "system-reboot" => {
            let want = if name == "power-off" { 2 } else { 0 };
            if args.len() != want || nret != 1 {
                return param_error();
            }
            events(if name == "power-off" {
                VmEvent::PowerOff
            } else {
                VmEvent::Reset
            });
            return Some(vec![0]);
        }
        "query-cpu-stopped-state" => {
            let (&[id], 2) = (args, nret) else {
                return param_error();
            };
            return Some(match cpus.query(id) {
                Some(state) => vec![0, state],
                None => vec![status(RTAS_PARAM_ERROR)],
            });
        }
        "start-cpu" => {
            let (&[id, start, r3], 1) = (args, nret) else {
                return param_error();
            };
            return Some(match cpus.start(caller, id, start.into(), r3.into()) {
                Ok(()) => vec![0],
                Err(e) => vec![status(e)],
            });
        }
        // (offset, guest buffer, length), as QEMU's: the range inside the
        // NVRAM, or RTAS's parameter error.
        "nvram-fetch" | "nvram-store" => {
            use devices::spapr_nvram::NvramError;
            use vm_memory::{Bytes, GuestAddress};
            let (&[offset, buffer, len], 2) = (args, nret) else {
                return param_error();
            };
            let (offset, at) = (u64::from(offset), GuestAddress(buffer.into()));
            let mut nvram = papr.nvram.lock().expect("nvram lock");
            return Some(if name == "nvram-fetch" {
                match nvram.fetch(offset, len.into()) {
                    Err(NvramError::OutOfRange) => vec![status(RTAS_PARAM_ERROR), 0],
                    Ok(bytes) => match papr.mem.write_slice(bytes, at) {
                        Ok(()) => vec![0, len],
                        Err(_) => vec![status(RTAS_HW_ERROR), 0],
                    },
                }
            } else {
                // The range first: only then is guest memory read.
                match nvram.range(offset, len.into()) {
                    Err(NvramError::OutOfRange) => vec![status(RTAS_PARAM_ERROR)],
                    Ok(r) => {
                        let mut data = vec![0; r.len()];
                        match papr.mem.read_slice(&mut data, at) {
                            Ok(()) => match nvram.store(offset, &data) {
                                Ok(()) => vec![0, len],
                                Err(NvramError::OutOfRange) => vec![status(RTAS_PARAM_ERROR)],
                            },
                            Err(_) => vec![status(RTAS_HW_ERROR), 0],
                        }
                    }
                }
            });
        }
        // QEMU's three parameters, each stored as a be16 length and then
        // as much of the value as the buffer holds.
        "ibm,get-system-parameter" => {
            use vm_memory::{Bytes, GuestAddress};
            let &[parameter, buffer, length] = args else {
                return param_error();
            };
            let value: Vec<u8> = match parameter {
                SYSPARM_SPLPAR_CHARACTERISTICS => {
                    let (cpus, max) = papr.cpus_and_max;
                    format!(
                        "MaxEntCap={max},DesMem={},DesProcs={cpus},MaxPlatProcs={max}\0",
                        papr.mem_size >> 20
                    )
                    .into_bytes()
                }
                SYSPARM_DIAGNOSTICS_RUN_MODE => vec![0], // disabled
                SYSPARM_UUID => vec![],                  // no -uuid
                _ => return Some(vec![status(RTAS_NOT_SUPPORTED)]),
            };
            if length < 2 {
                return Some(vec![status(RTAS_SYSPARM_PARAM_ERROR)]);
            }
            let n = value.len().min(length as usize - 2);
            let mut out = (value.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&value[..n]);
            return Some(
                match papr.mem.write_slice(&out, GuestAddress(buffer.into())) {
                    Ok(()) => vec![0],
                    Err(_) => vec![status(RTAS_HW_ERROR)],
                },
            );
        }
        "ibm,set-system-parameter" => {
            let Some(&parameter) = args.first() else {
                return param_error();
            };
            let known = [
                SYSPARM_SPLPAR_CHARACTERISTICS,
                SYSPARM_DIAGNOSTICS_RUN_MODE,
                SYSPARM_UUID,
            ];
            return Some(vec![status(if known.contains(&parameter) {
                RTAS_NOT_AUTHORIZED
            } else {
                RTAS_NOT_SUPPORTED
            })]);
        }
        // The board raises no EPOW, hot-plug or error events: none are
        // ever found (QEMU's answer with an empty event queue).
        "event-scan" | "check-exception" => {
            let counts_fit = if name == "event-scan" {
                args.len() == 4
            } else {
                matches!(args.len(), 6 | 7)
            };
            if !counts_fit || nret != 1 {
                return param_error();
            }
            return Some(vec![RTAS_NO_ERRORS_FOUND]);
        }
        // The guest's last words (its buffer, up to 511 bytes), then
        // QEMU's guest panic.
        "ibm,os-term" => {
            use vm_memory::{Bytes, GuestAddress};
            let Some(&at) = args.first() else {
                return param_error();
            };
            let mut msg = vec![0u8; 511];
            let n = papr
                .mem
                .read(&mut msg, GuestAddress(at.into()))
                .unwrap_or(0);
            msg.truncate(n);
            let end = msg.iter().position(|&b| b == 0).unwrap_or(msg.len());
            log::error!("OS terminated: {}", String::from_utf8_lossy(&msg[..end]));
            events(VmEvent::Panicked);
            return Some(vec![0]);
        }
        // The caller stops; nothing is returned (it may be started again).
        "stop-self" => {
            cpus.stop_self(caller);
            return Some(vec![]);
        }
        "ibm,set-xive" | "ibm,get-xive" | "ibm,int-off" | "ibm,int-on" => {
            let mut ics = ics.lock().expect("ics lock");
            let result = match (name, args, nret) {
                ("ibm,set-xive", &[nr, server, priority], 1) => {
                    ics.set_xive(nr, server, priority).map(|()| vec![0])
                }
                ("ibm,get-xive", &[nr], 3) => ics
                    .get_xive(nr)
                    .map(|(server, priority)| vec![0, server, priority]),
                ("ibm,int-off", &[nr], 1) => ics.int_off(nr).map(|()| vec![0]),
                ("ibm,int-on", &[nr], 1) => ics.int_on(nr).map(|()| vec![0]),
                _ => return param_error(),
            };
            return Some(result.unwrap_or_else(|e| vec![status(e)]));
        }
        _ => {}
    }
    if name == "ibm,change-msi" || name == "ibm,query-interrupt-source-number" {
        return Some(msi_call(papr, name, args, nret).unwrap_or_else(|e| vec![status(e)]));
    }
    let phb = phb.lock().expect("phb lock");
    let mut root = papr.pci.lock().expect("pci lock");
    let rets = match name {
        "ibm,read-pci-config" | "read-pci-config" => {
            let (buid, addr, size) = match (name, args) {
                ("ibm,read-pci-config", &[addr, hi, lo, size]) if nret == 2 => {
                    (u64::from(hi) << 32 | u64::from(lo), addr, size)
                }
                // The BUID-less call reaches no bridge (QEMU's takes 0).
                ("read-pci-config", &[addr, size]) if nret == 2 => (0, addr, size),
                _ => return Some(vec![status(RTAS_HW_ERROR)]),
            };
            match phb.read_config(&mut root, buid, addr, size) {
                Ok(v) => vec![0, v],
                Err(e) => vec![status(e)],
            }
        }
        "ibm,write-pci-config" | "write-pci-config" => {
            let (buid, addr, size, value) = match (name, args) {
                ("ibm,write-pci-config", &[addr, hi, lo, size, value]) if nret == 1 => {
                    (u64::from(hi) << 32 | u64::from(lo), addr, size, value)
                }
                ("write-pci-config", &[addr, size, value]) if nret == 1 => (0, addr, size, value),
                _ => return Some(vec![status(RTAS_HW_ERROR)]),
            };
            match phb.write_config(&mut root, buid, addr, size, value) {
                Ok(()) => vec![0],
                Err(e) => vec![status(e)],
            }
        }
        _ => return None,
    };
    Some(rets)
}

/// `ibm,change-msi` and `ibm,query-interrupt-source-number` (QEMU's
/// `rtas_ibm_change_msi`): interrupt sources for a function's MSI-X
/// vectors, taken from the XICS, its table pointed at the MSI window
/// (vector i's data: the source), kept in the bridge's MSI map (which
/// migrates); or given back; or which source a vector has. The results,
/// or an RTAS status.
fn msi_call(papr: &Papr, name: &str, args: &[u32], nret: usize) -> Result<Vec<u32>, i32> {
    use devices::pci::spapr_phb::{msix_table, set_msix_messages};
    let buid = |hi: u32, lo: u32| u64::from(hi) << 32 | u64::from(lo);
    let mut phb = papr.phb.lock().expect("phb lock");
    let mut root = papr.pci.lock().expect("pci lock");
    if name == "ibm,query-interrupt-source-number" {
        let &[addr, hi, lo, vector] = args else {
            return Err(RTAS_PARAM_ERROR);
        };
        phb.msi_function(&root, buid(hi, lo), addr)?;
        let source = phb
            .msi_of(addr)
            .filter(|m| m.first_irq != 0 && vector < m.num)
            .and_then(|m| m.first_irq.checked_add(vector))
            .ok_or(RTAS_HW_ERROR)?;
        // Edge-triggered.
        return Ok(vec![0, source, 1]);
    }
    let &[addr, hi, lo, func, req_num, seq] = args else {
        return Err(RTAS_PARAM_ERROR);
    };
    if nret < 3 {
        return Err(RTAS_PARAM_ERROR);
    }
    let bdf = phb.msi_function(&root, buid(hi, lo), addr)?;
    let f = root.function_mut(bdf).ok_or(RTAS_PARAM_ERROR)?;
    // vmm's functions have MSI-X and no MSI: the "change" and MSI-X
    // functions reach it, the MSI one is refused, as QEMU's for a
    // function without MSI.
    const CHANGE_FN: u32 = 1;
    const CHANGE_MSIX_FN: u32 = 4;
    const TYPE_MSIX: u32 = 2;
    let table = msix_table(&**f);
    if !matches!(func, CHANGE_FN | CHANGE_MSIX_FN) || table.is_none() {
        return Err(RTAS_PARAM_ERROR);
    }
    // The XICS is not held while the function's table is written: writing
    // it may send a pending vector, which takes the XICS.
    let xics = || papr.ics.lock().expect("xics lock");
    if req_num == 0 {
        let m = phb.remove_msi(addr).ok_or(RTAS_HW_ERROR)?;
        xics().free(m.first_irq, m.num);
        return Ok(vec![0, 0]);
    }
    let (vectors, _, _) = table.expect("checked");
    let mut rets = if req_num > vectors {
        // Fewer than asked: the guest asks again.
        vec![0, vectors, seq.wrapping_add(1)]
    } else {
        let first = xics()
            .claim_msis(papr.msi_base, req_num)
            .ok_or(RTAS_HW_ERROR)?;
        if let Some(old) = phb.remove_msi(addr) {
            xics().free(old.first_irq, old.num);
        }
        set_msix_messages(&mut **f, first, req_num);
        phb.set_msi(addr, first, req_num);
        vec![0, req_num, seq.wrapping_add(1)]
    };
    if nret > 3 {
        rets.push(TYPE_MSIX);
    }
    Ok(rets)
}

/// An RTAS call as a guest makes it: `nargs` arguments at `args` and room
/// for `nret` results at `ret`, big-endian 32-bit cells in guest memory
/// (addresses wrap, as QEMU's do). False for a call this board does not
/// have (nothing is written then).
pub(super) fn rtas_in_memory(
    papr: &Papr,
    caller: usize,
    name: &str,
    nargs: u32,
    args: u64,
    nret: u32,
    ret: u64,
) -> bool {
    use vm_memory::{Bytes, GuestAddress};
    let cell = |base: u64, i: u64| GuestAddress(base.wrapping_add(4 * i));
    // Cells outside RAM read as zeros and take no writes, as QEMU's
    // unassigned memory. No call takes more than a few arguments: a
    // count past a page of them is read as a page (every call that
    // checks its count refuses it then, as QEMU's).
    let argv: Vec<u32> = (0..u64::from(nargs.min(arch::ppc64::rtas::MAX_CELLS)))
        .map(|i| {
            papr.mem
                .read_obj::<[u8; 4]>(cell(args, i))
                .map_or(0, u32::from_be_bytes)
        })
        .collect();
    let Some(rets) = rtas(papr, caller, name, &argv, nret as usize) else {
        log::debug!("no RTAS call '{name}'");
        return false;
    };
    // A refused call's status is written even with no room for it, as
    // QEMU's `rtas_st(rets, 0, ...)`.
    let room = (nret as usize).max(1);
    for (i, r) in rets.iter().take(room).enumerate() {
        let _ = papr.mem.write_obj(r.to_be_bytes(), cell(ret, i as u64));
    }
    true
}

/// PAPR hypercalls the board serves (`hcall` numbers as in QEMU's
/// `hw/ppc/spapr.h`): the console's, and `H_RTAS`, through which a guest
/// enters RTAS (KVM-PPC leaves these to userspace); under qtest also the
/// MMU's and the XICS's, which KVM-PPC's kernel serves itself.
pub(super) mod hcall {
    pub const H_REMOVE: u64 = 0x04;
    pub const H_ENTER: u64 = 0x08;
    pub const H_READ: u64 = 0x0c;
    pub const H_PROTECT: u64 = 0x18;
    pub const H_BULK_REMOVE: u64 = 0x24;
    pub const H_EOI: u64 = 0x64;
    pub const H_CPPR: u64 = 0x68;
    pub const H_IPI: u64 = 0x6c;
    pub const H_IPOLL: u64 = 0x70;
    pub const H_XIRR: u64 = 0x74;
    pub const H_GET_TERM_CHAR: u64 = 0x54;
    pub const H_PUT_TERM_CHAR: u64 = 0x58;
    /// `KVMPPC_H_RTAS`: the RTAS blob's one instruction hands its
    /// argument buffer to the hypervisor.
    pub const H_RTAS: u64 = 0xf000;
    pub const H_SET_MODE: u64 = 0x31c;

    /// `H_SET_MODE`'s resources vmm serves, and the endianness flags.
    pub const H_SET_MODE_RESOURCE_ADDR_TRANS_MODE: u64 = 3;
    pub const H_SET_MODE_RESOURCE_LE: u64 = 4;
    pub const H_SET_MODE_ENDIAN_BIG: u64 = 0;
    pub const H_SET_MODE_ENDIAN_LITTLE: u64 = 1;

    pub const H_SUCCESS: i64 = 0;
    pub const H_FUNCTION: i64 = -2;
    pub const H_PARAMETER: i64 = -4;
    pub const H_PTEG_FULL: i64 = -6;
    pub const H_NOT_FOUND: i64 = -7;
    pub const H_P2: i64 = -55;
    pub const H_P3: i64 = -56;
    pub const H_P4: i64 = -57;
    pub const H_UNSUPPORTED_FLAG: i64 = -256;
}

/// Hypercall `opcode` made by vCPU `caller` with its arguments in `args`
/// (r4 to r12): its return code (r3); what it returns beside goes into
/// `args`, as KVM's `papr_hcall` exit takes them back into r4 on.
pub(super) fn hcall(papr: &Papr, caller: usize, opcode: u64, args: &mut [u64; 9]) -> i64 {
    use hcall::*;
    let vty = &papr.vty;
    match opcode {
        H_PUT_TERM_CHAR => {
            let (reg, len) = (args[0], args[1]);
            let Some(vty) = vty_at(vty, reg) else {
                return H_PARAMETER;
            };
            if len > 16 {
                return H_PARAMETER;
            }
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&args[2].to_be_bytes());
            bytes[8..].copy_from_slice(&args[3].to_be_bytes());
            vty.lock()
                .expect("vty lock")
                .put_chars(&bytes[..len as usize]);
            H_SUCCESS
        }
        H_GET_TERM_CHAR => {
            let Some(vty) = vty_at(vty, args[0]) else {
                return H_PARAMETER;
            };
            let got = vty.lock().expect("vty lock").get_chars(16);
            let mut bytes = [0u8; 16];
            bytes[..got.len()].copy_from_slice(&got);
            args[0] = got.len() as u64;
            args[1] = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
            args[2] = u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"));
            H_SUCCESS
        }
        H_RTAS => {
            use vm_memory::{Bytes, GuestAddress};
            let at = args[0];
            let cell = |i: u64| {
                papr.mem
                    .read_obj::<[u8; 4]>(GuestAddress(at.wrapping_add(4 * i)))
                    .map_or(0, u32::from_be_bytes)
            };
            let (token, nargs, nret) = (cell(0), cell(1), cell(2));
            let args_at = at.wrapping_add(12);
            let ret_at = args_at.wrapping_add(4 * u64::from(nargs));
            // Linux's early debug output calls display-character as token
            // 0xa without reading the device tree; QEMU takes it too.
            let name = if token == 0xa {
                Some("display-character")
            } else {
                arch::ppc64::rtas::CALLS
                    .iter()
                    .find(|c| c.1 == token)
                    .map(|c| c.0)
            };
            match name {
                Some(name) if rtas_in_memory(papr, caller, name, nargs, args_at, nret, ret_at) => {
                    H_SUCCESS
                }
                _ => {
                    log::debug!("H_RTAS: no RTAS call has token {token:#x}");
                    let _ = papr.mem.write_obj(
                        (RTAS_PARAM_ERROR as u32).to_be_bytes(),
                        GuestAddress(ret_at),
                    );
                    H_PARAMETER
                }
            }
        }
        H_SET_MODE => set_mode(papr, args[0], args[1], args[2], args[3]),
        H_ENTER | H_REMOVE | H_READ | H_PROTECT | H_BULK_REMOVE => {
            let Some(hpt) = &papr.hpt else {
                return H_FUNCTION;
            };
            let mut t = hpt.lock().expect("hpt lock");
            let done = match opcode {
                H_ENTER => t
                    .enter(args[0], args[1], args[2], args[3])
                    .map(|slot| args[0] = slot),
                H_REMOVE => t.remove(args[0], args[1], args[2]).map(|(v, r)| {
                    args[0] = v;
                    args[1] = r;
                }),
                H_PROTECT => t.protect(args[0], args[1], args[2]),
                H_READ => t.read(args[0], args[1]).map(|es| {
                    for (i, (v, r)) in es.into_iter().enumerate() {
                        args[2 * i] = v;
                        args[2 * i + 1] = r;
                    }
                }),
                _ => t.bulk_remove(&mut args[..8]),
            };
            match done {
                Ok(()) => H_SUCCESS,
                Err(HptError::Parameter) => H_PARAMETER,
                Err(HptError::PtegFull) => H_PTEG_FULL,
                Err(HptError::NotFound) => H_NOT_FOUND,
            }
        }
        H_XIRR | H_IPOLL | H_CPPR | H_EOI | H_IPI => {
            // The emulated XICS's (qtest); KVM-PPC's kernel serves these.
            // The caller is vCPU 0: qtest's client is the board's one CPU.
            let mut ics = papr.ics.lock().expect("xics lock");
            let Some(&me) = ics.icp_servers().first() else {
                return H_FUNCTION;
            };
            let done = match opcode {
                H_XIRR => ics.accept(me).map(|x| args[0] = x.into()),
                H_IPOLL => ics.poll(me).map(|(x, mfrr)| {
                    args[0] = x.into();
                    args[1] = mfrr.into();
                }),
                H_CPPR => ics.set_cppr(me, args[0] as u8),
                H_EOI => ics.eoi(me, args[0] as u32),
                _ => u32::try_from(args[0])
                    .ok()
                    .and_then(|server| ics.set_mfrr(server, args[1] as u8)),
            };
            if done.is_some() {
                H_SUCCESS
            } else {
                H_PARAMETER
            }
        }
        _ => {
            log::debug!("hypercall {opcode:#x}: not served");
            H_FUNCTION
        }
    }
}

/// `H_SET_MODE(mflags, resource, value1, value2)`: interrupts' endianness
/// (LPCR[ILE]) or where relocated interrupts go (LPCR[AIL]), on every
/// vCPU, as QEMU 7.2's `h_set_mode`: AIL 0, or 3 where the machine has
/// `cap-ail-mode-3` (AIL 1 is not architected, AIL 2 not offered on
/// pseries). Other resources (the breakpoint registers) are not the
/// platform's: `H_P2`.
fn set_mode(papr: &Papr, mflags: u64, resource: u64, value1: u64, value2: u64) -> i64 {
    use hcall::*;
    use spapr_cpus::{LPCR_AIL, LPCR_AIL_SHIFT, LPCR_ILE};
    let cpus = &papr.cpus;
    if resource != H_SET_MODE_RESOURCE_LE && resource != H_SET_MODE_RESOURCE_ADDR_TRANS_MODE {
        return H_P2;
    }
    if value1 != 0 {
        return H_P3;
    }
    if value2 != 0 {
        return H_P4;
    }
    match (resource, mflags) {
        (H_SET_MODE_RESOURCE_LE, H_SET_MODE_ENDIAN_BIG) => cpus.set_all_lpcrs(0, LPCR_ILE),
        (H_SET_MODE_RESOURCE_LE, H_SET_MODE_ENDIAN_LITTLE) => {
            cpus.set_all_lpcrs(LPCR_ILE, LPCR_ILE)
        }
        (H_SET_MODE_RESOURCE_ADDR_TRANS_MODE, 0) => cpus.set_all_lpcrs(0, LPCR_AIL),
        (H_SET_MODE_RESOURCE_ADDR_TRANS_MODE, 3) if papr.ail_mode_3 => {
            cpus.set_all_lpcrs(3 << LPCR_AIL_SHIFT, LPCR_AIL)
        }
        _ => return H_UNSUPPORTED_FLAG,
    }
    H_SUCCESS
}

/// The vty at VIO address `reg`; 0 means the console, as QEMU takes it
/// (Linux's early debug output asks for 0).
fn vty_at(vty: &Option<Arc<Mutex<SpaprVty>>>, reg: u64) -> Option<&Arc<Mutex<SpaprVty>>> {
    vty.as_ref()
        .filter(|v| reg == 0 || reg == u64::from(v.lock().expect("vty lock").addr().reg))
}
