//! The board's side of migration and save/restore: its RAM as the
//! engine's one block (`pc.ram`, the part above 4 GiB following the part
//! below, as in QEMU) with the dirty log, every device's state as sections
//! in stream order (every vCPU, the in-kernel irqchip and PIT, kvm-clock,
//! the UART, the ACPI PM block and every PCI function), and the
//! [`LoadTarget`] a stream loads into. The engine is in the `migration`
//! crate.

use crate::hypervisor::{Blobs, Vcpu, Vm};
use arch::x86_64::layout;
use devices::pci::{Bdf, PciRoot};
use devices::spapr_hpt::Hpt;
use devices::virtio::Memory as GuestMemoryMmap;
use migration::destination::LoadTarget;
use migration::htab::{HtabSource, Pass, IDSTR};
use migration::ram::{Ram, RamRegion};
use migration::source::{Section, SourceVm};
use migration::vmstate::{Description, LoadError, Migratable, State, Val, Vmstate};
use std::sync::{Arc, Mutex};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

migration::vmstate! {
    /// kvm-clock's value at the stop.
    pub static KVMCLOCK = "kvmclock", version 1, minimum 1;
    pub struct KvmClockState {
        clock: u64,
    }
}

migration::vmstate! {
    /// The pseries machine's own section, QEMU's `spapr` (version 3:
    /// the fields of versions 1 and 2 it no longer sends are left out,
    /// and older streams refused). None of its subsections (CAS options,
    /// capabilities set on the command line, the device tree a CAS
    /// updated, ...) is anything vmm's board has.
    pub static SPAPR = "spapr", version 3, minimum 3;
    pub struct SpaprState {
        #[since(2)]
        tb: TimebaseState,
    }
}

migration::vmstate! {
    /// The guest's timebase when it stopped (QEMU's `vmstate_ppc_timebase`),
    /// at 512 MHz.
    pub static TIMEBASE = "timebase", version 1, minimum 1;
    pub struct TimebaseState {
        guest_timebase: u64,
        /// The host's wall clock then (QEMU keeps it "for compatibility").
        time_of_the_day_ns: i64,
    }
}

/// Every description a save of machine type `m` writes besides `ram` and
/// the hypervisor's own (the backend lists those), for -dump-vmstate: the
/// board's, then every PCI function type's from the device registry.
pub fn descriptions(m: &machine::MachineType) -> Vec<&'static Description> {
    let board: Vec<&'static Description> = match m.arch {
        machine::Arch::X86_64 => vec![
            &devices::serial::VMSTATE,
            &devices::acpi_pm::VMSTATE,
            &devices::pci::HOST_VMSTATE,
        ],
        machine::Arch::Ppc64 => {
            // The bridge's layout follows its pre-2.8-migration.
            let compat = machine::compat_props(m);
            let pre_2_8 = devices::model::resolve("spapr-pci-host-bridge", &compat, &[], &[])
                .ok()
                .and_then(|p| p.bool("pre-2.8-migration"))
                .unwrap_or(false);
            vec![
                &SPAPR,
                &devices::xics::VMSTATE,
                devices::pci::spapr_phb::description_for(pre_2_8),
                &devices::spapr_rtc::VMSTATE,
                &devices::spapr_vty::VMSTATE,
                &devices::spapr_nvram::VMSTATE,
                // One a vCPU, where the board's XICS is emulated (qtest).
                &devices::xics::ICP,
                // One a vCPU: stopped or running, its platform LPCR bits.
                &crate::vm::spapr_cpus::VMSTATE,
            ]
        }
    };
    std::iter::once(&KVMCLOCK)
        .chain(board)
        .chain([&devices::pci::config::VMSTATE])
        .chain(devices::registry::pci_descriptions())
        .collect()
}

fn blobs_to_state(desc: &Description, b: &Blobs) -> State {
    let mut st = State::default();
    for f in desc.fields {
        let v = b
            .iter()
            .find(|x| x.0 == f.name)
            .map(|x| x.1.clone())
            .unwrap_or_default();
        st.set(f.name, Val::Bytes(v));
    }
    st
}

fn state_to_blobs(desc: &Description, st: &State) -> Blobs {
    desc.fields
        .iter()
        .filter_map(|f| match st.get(f.name) {
            Some(Val::Bytes(b)) => Some((f.name, b.clone())),
            _ => None,
        })
        .collect()
}

/// The parts of a running board a snapshot touches.
pub struct Parts<'a> {
    pub vm: &'a dyn Vm,
    pub vcpus: &'a [Arc<Mutex<Box<dyn Vcpu>>>],
    /// The board's devices besides the PCI functions, in stream order
    /// (q35: the UART, the ACPI PM block, the CF8 latch).
    pub board: Vec<&'a Mutex<dyn Migratable + Send>>,
    pub pci: &'a Mutex<PciRoot>,
    /// A pseries board (it has the `spapr` section).
    pub spapr: bool,
    /// The sPAPR hash page table, where the board holds it.
    pub hpt: Option<&'a Mutex<Hpt>>,
    pub clock: u64,
}

/// The guest's RAM as the engine's block: each memory region mapped at
/// its block offset (RAM above 4 GiB follows RAM below).
pub fn guest_ram(mem: &GuestMemoryMmap, cfg: &crate::config::VmConfig) -> Ram {
    let ram = cfg.memory;
    let regions = mem
        .iter()
        .map(|r| {
            let offset = if r.start_addr().0 >= layout::HIGH_RAM_START {
                layout::low_ram_size(ram)
            } else {
                0
            };
            let host = r.as_ptr();
            // SAFETY: the region's mapping lives as long as `mem`'s clone
            // that the Ram keeps as its owner.
            unsafe { RamRegion::new(offset, host, r.len() as usize) }
        })
        .collect();
    // SAFETY: the regions are `mem`'s mappings and the Ram owns a clone of
    // `mem`; pages are written only into an incoming VM, before it runs.
    unsafe {
        Ram::new(
            cfg.machine.arch.board().ram_block,
            ram,
            regions,
            Box::new(mem.clone()),
        )
    }
}

/// A running VM as the migration engine sees it: its RAM, and the dirty
/// log of both writers — the vCPUs (KVM's log of every slot) and the
/// devices (the bitmap of their writes through guest memory).
pub struct Dirty {
    pub vm: Arc<dyn Vm>,
    pub mem: GuestMemoryMmap,
    pub ram: Ram,
    /// The sPAPR hash page table (the board's own, or KVM-PPC's).
    pub htab: Option<Box<dyn HtabSource>>,
}

impl SourceVm for Dirty {
    fn ram(&self) -> &Ram {
        &self.ram
    }

    fn start_dirty_log(&self) -> Result<(), String> {
        self.vm.set_dirty_logging(true).map_err(|e| e.to_string())?;
        for r in self.mem.iter() {
            region_bitmap(r).reset();
        }
        Ok(())
    }

    fn stop_dirty_log(&self) {
        let _ = self.vm.set_dirty_logging(false);
    }

    fn htab(&self) -> Option<&dyn HtabSource> {
        self.htab.as_deref()
    }

    fn dirty_pages(&self) -> Result<Vec<Vec<u64>>, String> {
        let mut out = vec![];
        for (slot, r) in self.mem.iter().enumerate() {
            let mut kvm = self.vm.dirty_log(slot as u32).map_err(|e| e.to_string())?;
            let dev = region_bitmap(r).get_and_reset();
            for (i, w) in dev.iter().enumerate() {
                if let Some(k) = kvm.get_mut(i) {
                    *k |= w;
                }
            }
            out.push(kvm);
        }
        Ok(out)
    }
}

/// The bitmap of the writes devices did to region `r`.
fn region_bitmap(
    r: &vm_memory::GuestRegionMmap<vm_memory::bitmap::AtomicBitmap>,
) -> &vm_memory::bitmap::AtomicBitmap {
    let m: &vm_memory::MmapRegion<vm_memory::bitmap::AtomicBitmap> = r;
    m.bitmap()
}

/// Every device's state, in stream order. The VM must be stopped and its
/// devices paused.
pub fn device_sections(p: &Parts) -> Result<Vec<Section>, crate::hypervisor::Error> {
    let mut out: Vec<Section> = vec![];
    for (i, v) in p.vcpus.iter().enumerate() {
        let v = v.lock().expect("vcpu lock");
        let desc = v.state_description();
        out.push((
            desc.name.into(),
            i as u32,
            desc,
            blobs_to_state(desc, &v.save()?),
        ));
    }
    let desc = p.vm.state_description();
    out.push((
        desc.name.into(),
        0,
        desc,
        blobs_to_state(desc, &p.vm.save()?),
    ));
    let clock = KvmClockState { clock: p.clock }.to_state();
    out.push((KVMCLOCK.name.into(), 0, &KVMCLOCK, clock));
    if p.spapr {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let st = SpaprState {
            tb: TimebaseState {
                // The VM's clock, frozen when the guest stopped: KVM-PPC's
                // is the guest's timebase, qtest's the virtual clock.
                guest_timebase: crate::kvm_ppc::ns_to_tb(p.clock),
                time_of_the_day_ns: wall,
            },
        };
        out.push((SPAPR.name.into(), 0, &SPAPR, st.to_state()));
    }
    for dev in &p.board {
        let dev = dev.lock().expect("device lock");
        let desc = dev.description();
        out.push((dev.section(), dev.instance(), desc, dev.state()));
    }
    for (bdf, f) in p.pci.lock().expect("pci lock").functions() {
        let desc = f.vmstate();
        out.push((format!("0000:{bdf}/{}", desc.name), 0, desc, f.state()));
    }
    Ok(out)
}

/// The configuration a stream carries for vmm (its description's `vmm`
/// key): per PCI function, its address, type and every property the
/// guest sees (none that names a host backend, nor the address), as this
/// VM has them; the board's host bridge at 00:00.0 with the machine's
/// properties; and the CPU the guest was given (`-cpu` and the CPUID
/// table). A destination adopts it (`vm/carried.rs`).
pub fn carried(
    cfg: &crate::config::VmConfig,
    cpuid: &[crate::hypervisor::CpuidEntry],
    tsc_khz: Option<u32>,
    msrs: &[u32],
) -> serde_json::Value {
    let entry = |at: Bdf, props: &devices::model::Props| {
        let host = host_side(props.type_name);
        let shown = || props.values.iter().filter(|r| !host.contains(&r.name));
        let values: serde_json::Map<String, serde_json::Value> = shown()
            .map(|r| (r.name.to_string(), serde_json::json!(r.value.to_string())))
            .collect();
        // Those at their type's default: a destination (an older
        // release) that lacks such a property may go without it.
        let defaults: Vec<&str> = shown()
            .filter(|r| r.source == devices::model::Source::Default)
            .map(|r| r.name)
            .collect();
        serde_json::json!({
            "addr": at.to_string(),
            "type": props.type_name,
            "properties": values,
            "defaults": defaults,
        })
    };
    // q35's host bridge is the function at 00:00.0; pseries' PHB is not a
    // function on its bus (its layout travels in its own section).
    let host_bridge =
        (cfg.machine.arch == machine::Arch::X86_64).then(|| entry(HOST_BRIDGE, &cfg.host_bridge));
    let devices: Vec<serde_json::Value> = host_bridge
        .into_iter()
        .chain(cfg.devices.iter().filter_map(|d| {
            let devfn = d.devfn?;
            Some(entry(Bdf::new(d.bus, devfn >> 3, devfn & 7), &d.props))
        }))
        .collect();
    let cpuid = cfg
        .cpu_carried
        .as_ref()
        .map_or(cpuid, |c| c.cpuid.as_slice());
    let topo = cfg.topology();
    // The -cpu this VM was started with (a destination with the same one
    // takes the table, whatever release or host made it).
    let spec = cfg.cpu.to_string();
    let tsc_khz = cfg.cpu_carried.as_ref().and_then(|c| c.tsc_khz).or(tsc_khz);
    let table: Vec<[u32; 7]> = cpuid
        .iter()
        .map(|e| [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx])
        .collect();
    serde_json::json!({
        "devices": devices,
        // The CPU the guest was given: the destination takes it only if it
        // can give it (vm/carried.rs).
        "cpu": {"spec": spec, "cpuid": table, "tsc_khz": tsc_khz, "msrs": msrs,
            "topology": {"cpus": topo.cpus, "maxcpus": topo.maxcpus, "sockets": topo.sockets,
                "dies": topo.dies, "cores": topo.cores, "threads": topo.threads, "full_cpuid": topo.full_cpuid}},
    })
}

/// A carried CPUID table (`carried`'s `cpu.cpuid`).
pub fn cpuid_table(v: &serde_json::Value) -> Option<Vec<crate::hypervisor::CpuidEntry>> {
    v.as_array()?
        .iter()
        .map(|e| {
            let w: Vec<u32> = e
                .as_array()?
                .iter()
                .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
                .collect::<Option<_>>()?;
            (w.len() == 7).then(|| crate::hypervisor::CpuidEntry {
                function: w[0],
                index: w[1],
                flags: w[2],
                eax: w[3],
                ebx: w[4],
                ecx: w[5],
                edx: w[6],
                ..Default::default()
            })
        })
        .collect()
}

/// Where the board puts its host bridge.
pub const HOST_BRIDGE: Bdf = Bdf::new(0, 0, 0);

/// The properties of `type_name` that name something on the host (its
/// backend) or its slot: not the guest's hardware, never carried.
pub fn host_side(type_name: &str) -> Vec<&'static str> {
    use devices::registry::{BackendKind, Build};
    let mut v = vec!["addr"];
    if let Some(Build::Virtio(vt)) = devices::registry::find(type_name).map(|t| &t.build) {
        if let BackendKind::Drive(p) | BackendKind::Netdev(p) = vt.backend {
            v.push(p);
        }
    }
    v
}

/// What a destination makes of the configuration a stream carries, before
/// the parts it concerns take their state (`vm/carried.rs`).
pub trait Adopt: Send {
    /// Gives the PCI function at `bdf` the configuration its source's
    /// guest has, where this VM's differs: the stream's entry for it
    /// (`type`, `properties` in `-device` syntax, `defaults`), or `None`
    /// when the source carried no configuration at all (vmm up to 0.2.0),
    /// then its `state` tells.
    fn function(
        &mut self,
        bdf: Bdf,
        carried: Option<&serde_json::Value>,
        state: &State,
    ) -> Result<(), LoadError>;
    /// Before any vCPU takes its state: the CPU the guest was given (the
    /// stream's `vmm.cpu`: `-cpu` and the CPUID table), or `None` from a
    /// source that says nothing of it. Refuses a CPU this side cannot give.
    fn cpu(&mut self, carried: Option<&serde_json::Value>) -> Result<(), LoadError>;
}

/// A freshly built, stopped board taking a stream; kvm-clock's value
/// once loaded.
pub struct Target<'a> {
    parts: &'a Parts<'a>,
    /// How the vCPUs' sections are described (none without vCPUs: qtest).
    cpu: Option<&'static Description>,
    hv: &'static Description,
    pub clock: Option<u64>,
    cpus: usize,
    /// The vCPUs' states, loaded at the end of the stream once the CPU it
    /// carries (in its description) is found runnable here.
    cpu_states: Vec<(usize, Blobs)>,
    /// The PCI functions' states, loaded at the end of the stream once
    /// the configuration it carries is adopted.
    functions: Vec<(Bdf, State)>,
    adopt: &'a mut dyn Adopt,
}

impl<'a> Target<'a> {
    pub fn new(parts: &'a Parts<'a>, adopt: &'a mut dyn Adopt) -> Result<Target<'a>, LoadError> {
        // The hypervisor's own sections, as its backend describes them.
        let cpu = parts
            .vcpus
            .first()
            .map(|v| v.lock().expect("vcpu lock").state_description());
        Ok(Target {
            parts,
            cpu,
            hv: parts.vm.state_description(),
            clock: None,
            cpus: 0,
            cpu_states: vec![],
            functions: vec![],
            adopt,
        })
    }

    fn board_device(&self, id: &str, instance: u32) -> Option<&'a Mutex<dyn Migratable + Send>> {
        self.parts.board.iter().copied().find(|d| {
            let d = d.lock().expect("device lock");
            d.section() == id && d.instance() == instance
        })
    }
}

impl LoadTarget for Target<'_> {
    fn description(&self, id: &str, instance: u32) -> Option<&'static Description> {
        let p = self.parts;
        if let Some(cpu) = self.cpu.filter(|c| c.name == id) {
            return ((instance as usize) < p.vcpus.len()).then_some(cpu);
        }
        if id == self.hv.name {
            return Some(self.hv);
        }
        if id == KVMCLOCK.name {
            return Some(&KVMCLOCK);
        }
        if id == SPAPR.name && p.spapr {
            return Some(&SPAPR);
        }
        if let Some(dev) = self.board_device(id, instance) {
            return Some(dev.lock().expect("device lock").description());
        }
        // A PCI function: its description decides the section name; a
        // different device at that address is not ours.
        let (bdf, name) = parse_bdf(id)?;
        let root = p.pci.lock().expect("pci lock");
        let (_, f) = root.functions().find(|(b, _)| **b == bdf)?;
        let desc = f.vmstate();
        (desc.name == name).then_some(desc)
    }

    fn load(&mut self, id: &str, instance: u32, state: &State) -> Result<(), LoadError> {
        let p = self.parts;
        let hv_error =
            |e: crate::hypervisor::Error| LoadError::new(id, format!("{e}: {}", e.source));
        if let Some(cpu) = self.cpu.filter(|c| c.name == id) {
            if instance as usize >= p.vcpus.len() {
                return Err(LoadError::new(id, format!("no vCPU {instance}")));
            }
            // Taken at the end, once the CPU is known to run here.
            self.cpu_states
                .push((instance as usize, state_to_blobs(cpu, state)));
            self.cpus += 1;
            return Ok(());
        }
        if id == self.hv.name {
            // Tests kill this side in the middle of the device state.
            crate::fault::delay("VMM_TEST_DELAY_DEVICES_MS");
            return p
                .vm
                .restore(&state_to_blobs(self.hv, state))
                .map_err(hv_error);
        }
        if id == KVMCLOCK.name {
            self.clock = Some(KvmClockState::from_state(state, id)?.clock);
            return Ok(());
        }
        if id == SPAPR.name {
            // The same instant as kvmclock's, which vmm's stream carries
            // too and sets the guest's clock from when it runs.
            SpaprState::from_state(state, id)?;
            return Ok(());
        }
        if let Some(dev) = self.board_device(id, instance) {
            return dev.lock().expect("device lock").load(state);
        }
        let (bdf, _) =
            parse_bdf(id).ok_or_else(|| LoadError::new(id, "not a PCI function's section name"))?;
        if self.functions.iter().any(|(b, _)| *b == bdf) {
            return Err(LoadError::new(
                bdf.to_string(),
                "the stream has this PCI function's state twice",
            ));
        }
        if p.pci.lock().expect("pci lock").function_mut(bdf).is_none() {
            return Err(LoadError::new(
                bdf.to_string(),
                "the stream has a PCI function here that this VM does not",
            ));
        }
        // Loaded at the end, into the function as the source's guest has
        // it (the configuration comes in the stream's description).
        self.functions.push((bdf, state.clone()));
        Ok(())
    }

    fn htab(&mut self, pass: Pass) -> Result<(), LoadError> {
        let Some(hpt) = self.parts.hpt else {
            // KVM-PPC's kernel keeps the table.
            let Some(ppc) = self.parts.vm.ppc64() else {
                return Err(LoadError::new(
                    IDSTR,
                    "the stream has a hash page table, this machine has none",
                ));
            };
            return ppc
                .load_htab(&pass)
                .map_err(|e| LoadError::new(IDSTR, format!("{e}: {}", e.source)));
        };
        let mut t = hpt.lock().expect("hpt lock");
        match pass {
            Pass::Free => Err(LoadError::new(
                IDSTR,
                "the source's guest has no hash page table (radix), this VM's CPU needs one",
            )),
            // No guest here can resize its table: the source's is the one
            // its RAM gives, as this side's is.
            Pass::Order(order) if order != t.order() => Err(LoadError::new(
                IDSTR,
                format!(
                    "the stream's hash page table is 2^{order} bytes, this VM's RAM gives 2^{}",
                    t.order()
                ),
            )
            .hint("start the destination with the source's -m")),
            Pass::Order(order) => {
                t.resize(order);
                Ok(())
            }
            Pass::Chunks(chunks) => {
                for c in &chunks {
                    t.load(c).map_err(|_| {
                        LoadError::new(
                            IDSTR,
                            format!("entries {} to {} are past the table", c.index, c.end()),
                        )
                    })?;
                }
                Ok(())
            }
        }
    }

    fn finish(&mut self, vmdesc: Option<&serde_json::Value>) -> Result<(), LoadError> {
        let have = self.parts.vcpus.len();
        if self.cpus != have {
            return Err(LoadError::new(
                "cpu",
                format!("the stream has {} vCPUs, this VM {have}", self.cpus),
            )
            .hint("start the destination with the same -smp"));
        }
        if self.clock.is_none() {
            return Err(LoadError::new(
                KVMCLOCK.name,
                "the stream has no kvmclock section",
            ));
        }
        let vmm = vmdesc.and_then(|d| d.get("vmm"));
        // A VM without vCPUs (qtest) has no CPU to check or give (a
        // stream with vCPU sections is refused before: none is described).
        if let Some(cpu) = self.cpu {
            self.adopt.cpu(vmm.and_then(|v| v.get("cpu")))?;
            for (i, blobs) in std::mem::take(&mut self.cpu_states) {
                self.parts.vcpus[i]
                    .lock()
                    .expect("vcpu lock")
                    .restore(&blobs)
                    .map_err(|e| LoadError::new(cpu.name, format!("{e}: {}", e.source)))?;
            }
        }
        let carried = vmm.and_then(|v| v["devices"].as_array());
        for (bdf, state) in std::mem::take(&mut self.functions) {
            let at = bdf.to_string();
            match carried {
                Some(carried) => {
                    if let Some(c) = carried.iter().find(|c| c["addr"] == at.as_str()) {
                        self.adopt.function(bdf, Some(c), &state)?;
                    }
                }
                None => self.adopt.function(bdf, None, &state)?,
            }
            let mut root = self.parts.pci.lock().expect("pci lock");
            let f = root.function_mut(bdf).ok_or_else(|| {
                LoadError::new(
                    at.clone(),
                    "the function went away while adopting its configuration",
                )
            })?;
            f.load(&at, &state)?;
        }
        Ok(())
    }
}

/// `0000:BB:DD.F/NAME` -> (address, NAME).
fn parse_bdf(s: &str) -> Option<(Bdf, &str)> {
    let (b, name) = s.strip_prefix("0000:")?.split_once('/')?;
    let (bus, rest) = b.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    Some((
        Bdf::new(
            u8::from_str_radix(bus, 16).ok()?,
            u8::from_str_radix(dev, 16).ok()?,
            func.parse().ok()?,
        ),
        name,
    ))
}
