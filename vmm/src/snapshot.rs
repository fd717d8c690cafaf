//! Whole-VM save and restore in QEMU's savevm stream: guest RAM as the
//! `ram` section (one block, `pc.ram`, of the `-m` size; the part above
//! 4 GiB follows the part below, as in QEMU), then FULL sections for every
//! vCPU, the in-kernel irqchip and PIT, kvm-clock, the UART, the ACPI PM
//! block and every PCI function. The VM must be stopped.

use crate::hypervisor::{Blobs, Vcpu, Vm};
use anyhow::{anyhow, bail, Context, Result};
use arch::x86_64::layout;
use devices::pci::{Bdf, PciRoot};
use devices::virtio::Memory as GuestMemoryMmap;
use migration::stream::{RamSink, Reader, Record, Writer, PAGE_SIZE};
use migration::vmstate::{Description, Field, Kind, Migratable, State, Val};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// kvm-clock's value at the stop.
pub static KVMCLOCK: Description = Description {
    name: "kvmclock",
    version_id: 1,
    minimum_version_id: 1,
    fields: &[Field {
        name: "clock",
        kind: Kind::U64,
        since: 0,
    }],
    subsections: &[],
};

pub const RAM_BLOCK: &str = "pc.ram";

/// Every description a save writes besides `ram` and the hypervisor's own
/// (the backend lists those), for -dump-vmstate.
pub static DESCRIPTIONS: &[&Description] = &[
    &KVMCLOCK,
    &devices::serial::VMSTATE,
    &devices::acpi_pm::VMSTATE,
    &devices::pci::HOST_VMSTATE,
    &devices::pci::config::VMSTATE,
    &devices::virtio::blk::PCI_VMSTATE,
    &devices::virtio::net::PCI_VMSTATE,
    &devices::virtio::console::PCI_VMSTATE,
    &devices::virtio::rng::PCI_VMSTATE,
];

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

/// What a save moved.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub bytes: u64,
    pub pages: u64,
    pub zero_pages: u64,
}

/// The parts of a running board a snapshot touches.
pub struct Parts<'a> {
    pub vm: &'a dyn Vm,
    pub mem: &'a GuestMemoryMmap,
    pub ram: u64,
    pub vcpus: &'a [Arc<Mutex<Box<dyn Vcpu>>>],
    pub serial: &'a Mutex<devices::serial::Serial>,
    pub pm: &'a Mutex<devices::acpi_pm::AcpiPm>,
    pub pci: &'a Mutex<PciRoot>,
    pub pci_io: &'a Mutex<devices::pci::PciConfigIo>,
    pub clock: u64,
}

/// The parts of a board a save holds while it runs off the main loop (the
/// board may be replaced meanwhile: a reset; the save then finishes on the
/// old one, and its result is dropped).
pub struct Held {
    pub vm: Arc<dyn Vm>,
    pub mem: GuestMemoryMmap,
    pub ram: u64,
    pub vcpus: Vec<Arc<Mutex<Box<dyn Vcpu>>>>,
    pub serial: Arc<Mutex<devices::serial::Serial>>,
    pub pm: Arc<Mutex<devices::acpi_pm::AcpiPm>>,
    pub pci: Arc<Mutex<PciRoot>>,
    pub pci_io: Arc<Mutex<devices::pci::PciConfigIo>>,
    pub clock: u64,
}

impl Held {
    pub fn parts(&self) -> Parts<'_> {
        Parts {
            vm: &*self.vm,
            mem: &self.mem,
            ram: self.ram,
            vcpus: &self.vcpus,
            serial: &self.serial,
            pm: &self.pm,
            pci: &self.pci,
            pci_io: &self.pci_io,
            clock: self.clock,
        }
    }
}

/// Block offset -> guest physical address.
pub fn gpa(ram: u64, offset: u64) -> u64 {
    let low = layout::low_ram_size(ram);
    if offset < low {
        offset
    } else {
        layout::HIGH_RAM_START + (offset - low)
    }
}

/// Writes the whole (stopped) VM to `path`, counting the bytes written in
/// `bytes`; `cancel` stops it after the RAM region it is in.
pub fn save(
    p: &Parts,
    path: &std::path::Path,
    machine: &str,
    bytes: &AtomicU64,
    cancel: &AtomicBool,
) -> Result<Stats> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let counter = Counter {
        w: std::io::BufWriter::with_capacity(1 << 20, file),
        n: bytes,
    };
    let mut w = Writer::new(counter, machine)?;
    let id = w.ram_start(&[(RAM_BLOCK, p.ram)])?;
    let mut stats = Stats::default();
    // All of RAM in one pass (the VM is stopped), straight from the guest
    // mapping. Pages never touched by anyone (neither present nor swapped,
    // per /proc/self/pagemap) are zero and need not be read, let alone
    // sent: the destination's memory is fresh. Reading them would fault in
    // the zero page for each.
    for region in p.mem.iter() {
        let start = region.start_addr().0;
        let host = p
            .mem
            .get_host_address(region.start_addr())
            .map_err(|e| anyhow!("guest memory: {e}"))?;
        // SAFETY: the region is mapped for the VM's lifetime and nothing writes
        // guest RAM while the VM is stopped (vCPUs parked, devices idle).
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, region.len() as usize) };
        let touched = touched_pages(host as usize, bytes.len());
        let block_base = if start >= layout::HIGH_RAM_START {
            layout::low_ram_size(p.ram)
        } else {
            0
        };
        let total = bytes.len() / PAGE_SIZE;
        let pages = bytes.chunks(PAGE_SIZE).enumerate().filter_map(|(i, d)| {
            touched.as_ref().is_none_or(|t| t[i]).then_some((
                RAM_BLOCK,
                block_base + (i * PAGE_SIZE) as u64,
                d,
            ))
        });
        let (sent, zeros) = w.ram_pages(id, false, pages)?;
        if cancel.load(Ordering::Relaxed) {
            bail!("cancelled");
        }
        // Never-touched pages count as zero pages too.
        stats.pages += total as u64;
        stats.zero_pages += zeros + (total as u64 - sent);
    }
    w.ram_pages(id, true, [])?;
    write_devices(&mut w, p)?;
    w.finish()?;
    stats.bytes = bytes.load(Ordering::Relaxed);
    Ok(stats)
}

/// Every device's state, as FULL sections (after the RAM). The VM must be
/// stopped and its devices paused.
pub fn write_devices<W: std::io::Write>(w: &mut Writer<W>, p: &Parts) -> Result<()> {
    for s in device_sections(p)? {
        w.section(&s.0, s.1, s.2, &s.3)?;
    }
    Ok(())
}

/// One device section: id, instance, description, state.
pub type Section = (String, u32, &'static Description, State);

/// The board's devices besides the PCI functions, in stream order: each
/// named by its description, saved and loaded through [`Migratable`].
fn board_devices<'a>(p: &Parts<'a>) -> [&'a Mutex<dyn Migratable + Send>; 3] {
    [p.serial, p.pm, p.pci_io]
}

/// Every device's state, in stream order. The VM must be stopped and its
/// devices paused.
pub fn device_sections(p: &Parts) -> Result<Vec<Section>> {
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
    let mut clock = State::default();
    clock.set("clock", Val::Uint(p.clock));
    out.push(("kvmclock".into(), 0, &KVMCLOCK, clock));
    for dev in board_devices(p) {
        let dev = dev.lock().expect("device lock");
        let desc = dev.description();
        out.push((desc.name.into(), 0, desc, dev.state()));
    }
    for (bdf, f) in p.pci.lock().expect("pci lock").functions() {
        let desc = f.vmstate();
        out.push((format!("0000:{bdf}/{}", desc.name), 0, desc, f.state()));
    }
    Ok(out)
}

/// Which pages of [addr, addr+len) were ever touched (present in memory or
/// swapped out), from /proc/self/pagemap; `None` if it cannot be read, and
/// then every page counts as touched.
pub fn touched_pages(addr: usize, len: usize) -> Option<Vec<bool>> {
    use std::io::{Read, Seek, SeekFrom};
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    let mut f = std::fs::File::open("/proc/self/pagemap").ok()?;
    f.seek(SeekFrom::Start((addr / PAGE_SIZE * 8) as u64))
        .ok()?;
    let n = len / PAGE_SIZE;
    let mut raw = vec![0u8; n * 8];
    f.read_exact(&mut raw).ok()?;
    Some(
        raw.chunks_exact(8)
            .map(|e| {
                u64::from_le_bytes(e.try_into().unwrap_or([0xff; 8])) & (PRESENT | SWAPPED) != 0
            })
            .collect(),
    )
}

/// Whether a page is all zero (word at a time).
pub fn is_zero(page: &[u8]) -> bool {
    migration::stream::is_zero(page)
}

struct Counter<'a, W> {
    w: W,
    n: &'a AtomicU64,
}

impl<W: std::io::Write> std::io::Write for Counter<'_, W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.w.write(b)?;
        self.n.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

/// Writes incoming pages into guest memory.
pub struct GuestRam<'a> {
    mem: &'a GuestMemoryMmap,
    ram: u64,
    pub error: Option<String>,
}

impl<'a> GuestRam<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, ram: u64) -> GuestRam<'a> {
        GuestRam {
            mem,
            ram,
            error: None,
        }
    }
}

impl RamSink for GuestRam<'_> {
    fn block_len(&self, name: &str) -> Option<u64> {
        (name == RAM_BLOCK).then_some(self.ram)
    }
    fn page(&mut self, _block: &str, offset: u64, data: &[u8]) {
        // A zero page onto a page that already reads as zero (fresh memory)
        // is skipped: writing it would allocate the page for nothing.
        if is_zero(data) {
            let mut cur = [0u8; PAGE_SIZE];
            if self
                .mem
                .read_slice(&mut cur, GuestAddress(gpa(self.ram, offset)))
                .is_ok()
                && is_zero(&cur)
            {
                return;
            }
        }
        if let Err(e) = self
            .mem
            .write_slice(data, GuestAddress(gpa(self.ram, offset)))
        {
            self.error
                .get_or_insert(format!("cannot write guest RAM at {offset:#x}: {e}"));
        }
    }
    fn page_target(&mut self, _block: &str, offset: u64) -> Option<&mut [u8]> {
        self.page_mut(offset)
    }
}

impl GuestRam<'_> {
    /// The guest page at block offset `offset` (page aligned, below the
    /// RAM size), to be read into directly.
    pub fn page_mut(&mut self, offset: u64) -> Option<&mut [u8]> {
        if offset & (PAGE_SIZE as u64 - 1) != 0 || offset >= self.ram {
            return None;
        }
        let at = GuestAddress(gpa(self.ram, offset));
        let r = self.mem.find_region(at)?;
        if at.0 + PAGE_SIZE as u64 > r.start_addr().0 + r.len() {
            return None;
        }
        let host = self.mem.get_host_address(at).ok()?;
        // SAFETY: the page lies inside one region, mapped for the VM's
        // lifetime. The destination's vCPUs and devices do not run while
        // RAM loads, and each page arrives on one connection only, so
        // nothing else accesses it while this borrow lives.
        Some(unsafe { std::slice::from_raw_parts_mut(host, PAGE_SIZE) })
    }
}

/// Loads `path` into a freshly built, stopped board. Returns kvm-clock.
pub fn load(p: &Parts, path: &std::path::Path, machine: &str) -> Result<u64> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    load_from(p, file, machine, &mut || {})
}

/// Loads a stream (a file, or a migration connection: RAM may come in
/// several passes) into a freshly built, stopped board. Returns kvm-clock.
///
/// `on_sync` runs at each empty `ram` PART: a live migration's sync point,
/// which the destination acknowledges.
pub fn load_from<R: std::io::Read>(
    p: &Parts,
    from: R,
    machine: &str,
    on_sync: &mut dyn FnMut(),
) -> Result<u64> {
    let t0 = std::time::Instant::now();
    let mut ram_started = false;
    let mut r = Reader::new(std::io::BufReader::with_capacity(256 << 10, from), machine)?;
    let mut sink = GuestRam {
        mem: p.mem,
        ram: p.ram,
        error: None,
    };
    // The hypervisor's own sections, as its backend describes them.
    let cpu = p
        .vcpus
        .first()
        .ok_or_else(|| anyhow!("a VM without vCPUs"))?
        .lock()
        .expect("vcpu lock")
        .state_description();
    let hv = p.vm.state_description();
    let board: Vec<(&str, &Mutex<dyn Migratable + Send>)> = board_devices(p)
        .into_iter()
        .map(|d| (d.lock().expect("device lock").description().name, d))
        .collect();
    let board_device = |id: &str| board.iter().find(|(name, _)| *name == id).map(|(_, d)| *d);
    let lookup = |id: &str, inst: u32| -> Option<&'static Description> {
        match id {
            _ if id == cpu.name => ((inst as usize) < p.vcpus.len()).then_some(cpu),
            _ if id == hv.name => Some(hv),
            "kvmclock" => Some(&KVMCLOCK),
            _ if board_device(id).is_some() => {
                board_device(id).map(|d| d.lock().expect("device lock").description())
            }
            s => {
                // A PCI function: its description decides the section
                // name; a different device at that address is not ours.
                let (bdf, name) = parse_bdf(s)?;
                let root = p.pci.lock().expect("pci lock");
                let (_, f) = root.functions().find(|(b, _)| **b == bdf)?;
                let desc = f.vmstate();
                (desc.name == name).then_some(desc)
            }
        }
    };
    let mut clock = None;
    let mut cpus = 0;
    loop {
        match r.next_record(&lookup, &mut sink)? {
            Record::Ram { pages, last } => {
                log::trace!(
                    "load: ram pages={pages} last={last} at wall {} us",
                    migration::protocol::wall_us()
                );
                if let Some(e) = sink.error.take() {
                    bail!(e);
                }
                // The first is the START record (the block list), not a
                // sync point.
                if pages == 0 && !last && std::mem::replace(&mut ram_started, true) {
                    on_sync();
                }
            }
            Record::Eof { .. } => break,
            Record::Section {
                idstr,
                instance,
                state,
                ..
            } => {
                log::trace!(
                    "load: section {idstr} {instance} at +{} us",
                    t0.elapsed().as_micros()
                );
                // Tests kill this side in the middle of the device state.
                if idstr == hv.name {
                    crate::fault::delay("VMM_TEST_DELAY_DEVICES_MS");
                }
                match idstr.as_str() {
                    id if id == cpu.name => {
                        p.vcpus[instance as usize]
                            .lock()
                            .expect("vcpu lock")
                            .restore(&state_to_blobs(cpu, &state))?;
                        cpus += 1;
                    }
                    id if id == hv.name => p.vm.restore(&state_to_blobs(hv, &state))?,
                    "kvmclock" => clock = state.uint("clock"),
                    id if board_device(id).is_some() => {
                        if let Some(dev) = board_device(id) {
                            dev.lock().expect("device lock").load(&state)?;
                        }
                    }
                    s => {
                        let (bdf, _) =
                            parse_bdf(s).ok_or_else(|| anyhow!("bad PCI section name '{s}'"))?;
                        let mut root = p.pci.lock().expect("pci lock");
                        let f = root.function_mut(bdf).ok_or_else(|| {
                            anyhow!("the stream has a PCI function at {bdf} that this VM does not")
                        })?;
                        f.load(&bdf.to_string(), &state)?;
                    }
                }
            }
        }
    }
    log::trace!("load: EOF at +{} us", t0.elapsed().as_micros());
    if cpus != p.vcpus.len() {
        bail!(
            "the stream has {cpus} vCPUs, this VM {}: start the destination with the same -smp",
            p.vcpus.len()
        );
    }
    clock.ok_or_else(|| anyhow!("the stream has no kvmclock section"))
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
