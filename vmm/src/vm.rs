//! The q35-style board on the hypervisor: guest RAM with the PCI hole, the
//! devices on their buses, the firmware tables, the kernel, the vCPU
//! threads, and the VM's lifecycle (power-off, reset, debug exit, fatal
//! errors).

use crate::config::{SerialBackend, VmConfig};
use crate::hypervisor::{Exit, ExitHandler, Vcpu, Vm, X86BootState};
use crate::qmp::{self, commands::Target as _, QmpError};
use anyhow::{anyhow, bail, Context, Result};
use arch::x86_64::{acpi, layout, pvh};
use devices::bus::{Bus, BusDevice};
use devices::pci::root_port::{RootPort, RootPortConfig};
use devices::pci::{host_bridge::HostBridge, BarWindow, Bdf, PciConfigIo, PciEcam, PciRoot, Space};
use devices::serial::Serial;
use devices::{EventSink, VmEvent};
use serde_json::json;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// Guest RAM, with a dirty bitmap of the writes devices do.
pub type GuestMemoryMmap = devices::virtio::Memory;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// How a VM's run ended.
#[derive(Debug)]
enum Outcome {
    Device(VmEvent),
    Fatal(String),
    /// QMP `quit`.
    Quit,
    /// QMP `system_reset`.
    HostReset,
}

/// The port and MMIO buses: what vCPU exits are served by.
struct Buses {
    io: Bus,
    mmio: Bus,
}

impl ExitHandler for Buses {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if !self.io.read(port as u64, data) {
            log::trace!("read from unassigned port {port:#x}");
        }
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        if !self.io.write(port as u64, data) {
            log::trace!("write to unassigned port {port:#x}");
        }
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if !self.mmio.read(addr, data) {
            log::debug!("read from unassigned MMIO {addr:#x}");
        }
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if !self.mmio.write(addr, data) {
            log::debug!("write to unassigned MMIO {addr:#x}");
        }
    }
}

/// Writes every byte through at once (guest output must not sit in a
/// buffer waiting for a newline).
struct Unbuffered<W: Write>(W);

impl<W: Write> Write for Unbuffered<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(b)?;
        self.0.flush()?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Where stdin's bytes go: the serial port of the current board.
static CONSOLE_INPUT: OnceLock<Mutex<Option<Arc<Mutex<Serial>>>>> = OnceLock::new();

fn console_input() -> &'static Mutex<Option<Arc<Mutex<Serial>>>> {
    CONSOLE_INPUT.get_or_init(|| Mutex::new(None))
}

/// Feeds stdin to the guest's UART, for the life of the process.
fn start_stdin_thread() {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if STARTED.swap(true, Ordering::SeqCst) {
        return;
    }
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(|| {
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin().lock();
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut off = 0;
                while off < n {
                    let serial = console_input().lock().expect("console lock").clone();
                    let took = serial.map_or(n - off, |s| {
                        s.lock().expect("serial lock").input(&buf[off..n])
                    });
                    off += took;
                    if took == 0 {
                        std::thread::sleep(Duration::from_millis(1)); // FIFO full: let the guest drain it
                    }
                }
            }
        })
        .expect("spawn the stdin thread");
}

/// Holds the vCPUs before KVM_RUN while the VM is paused (`-S`, QMP
/// `stop`) and counts how many are held, so `stop` knows when every vCPU
/// has really stopped.
struct RunGate {
    running: Mutex<bool>,
    /// `running`, readable without the lock: every vCPU exit checks it.
    open: AtomicBool,
    cv: Condvar,
    parked: AtomicUsize,
    /// Auto-converge: the share of each 10 ms slice the vCPUs sleep.
    throttle_pct: std::sync::atomic::AtomicU64,
    /// Run by the first vCPU to leave the gate (an incoming migration's
    /// RUNNING: the downtime ends when a vCPU really runs again).
    on_run: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl RunGate {
    fn wait_running(&self, stop: &AtomicBool) {
        if self.open.load(Ordering::Acquire) {
            return;
        }
        let mut r = self.running.lock().expect("gate lock");
        if *r {
            return;
        }
        self.parked.fetch_add(1, Ordering::SeqCst);
        while !*r && !stop.load(Ordering::SeqCst) {
            r = self
                .cv
                .wait_timeout(r, Duration::from_millis(100))
                .expect("gate lock")
                .0;
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
        drop(r);
        let first = self.on_run.lock().expect("gate lock").take();
        if let Some(f) = first {
            f();
        }
    }

    fn set_running(&self, running: bool) {
        let mut r = self.running.lock().expect("gate lock");
        *r = running;
        self.open.store(running, Ordering::Release);
        drop(r);
        self.cv.notify_all();
    }
}

/// One instance of the board: everything a reset throws away.
struct Board {
    vm: Arc<dyn Vm>,
    mem: GuestMemoryMmap,
    vcpus: Vec<JoinHandle<()>>,
    /// The vCPUs themselves; each thread locks its own only around KVM_RUN,
    /// so a parked vCPU's state can be read and written.
    vcpu_objs: Vec<Arc<Mutex<Box<dyn Vcpu>>>>,
    serial: Arc<Mutex<Serial>>,
    /// Host thread id of each vCPU (0 until it has started).
    tids: Arc<Vec<AtomicI64>>,
    stop: Arc<AtomicBool>,
    pci: Arc<Mutex<PciRoot>>,
    pci_io: Arc<Mutex<PciConfigIo>>,
    pm: Arc<Mutex<devices::acpi_pm::AcpiPm>>,
}

/// A loaded kernel and how to enter it.
enum Kernel {
    /// An ELF with a PVH entry note.
    Pvh { entry: u64, end: u64 },
    /// A bzImage: Linux's 32-bit boot protocol.
    Linux {
        entry: u64,
        end: u64,
        hdr: linux_loader::loader::bootparam::setup_header,
    },
}

fn load_kernel(cfg: &VmConfig, mem: &GuestMemoryMmap) -> Result<Kernel> {
    use linux_loader::loader::{bzimage::BzImage, KernelLoader};
    let path = &cfg.kernel;
    let mut f =
        File::open(path).with_context(|| format!("cannot open kernel {}", path.display()))?;
    let mut head = [0u8; 0x210];
    let n = f
        .read(&mut head)
        .with_context(|| format!("cannot read kernel {}", path.display()))?;
    let himem = Some(GuestAddress(layout::HIMEM_START));
    if n >= 4 && &head[..4] == b"\x7fELF" {
        let k = arch::x86_64::elf::load(mem, &mut f, layout::HIMEM_START)
            .with_context(|| format!("cannot load kernel {}", path.display()))?;
        log::info!(
            "kernel {}: {}-bit ELF, PVH entry {:#x}, loaded up to {:#x}",
            path.display(),
            k.bits,
            k.entry,
            k.end
        );
        return Ok(Kernel::Pvh {
            entry: k.entry,
            end: k.end,
        });
    }
    if n >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        let r = BzImage::load(mem, None, &mut f, himem)
            .map_err(|e| anyhow!("cannot load bzImage {}: {e}", path.display()))?;
        let hdr = r
            .setup_header
            .ok_or_else(|| anyhow!("bzImage {} has no setup header", path.display()))?;
        log::info!(
            "kernel {}: bzImage, boot protocol {:#x}, loaded at {:#x}",
            path.display(),
            { hdr.version },
            r.kernel_load.0
        );
        // The kernel needs init_size bytes from its load address, more than
        // the file holds (decompression buffer, bss).
        let end = r.kernel_end.max(r.kernel_load.0 + { hdr.init_size } as u64);
        return Ok(Kernel::Linux {
            entry: r.kernel_load.0,
            end,
            hdr,
        });
    }
    bail!(
        "{} is not a kernel vmm can boot: neither an ELF with a PVH entry note nor a bzImage",
        path.display()
    )
}

/// Places the initrd at the top of low RAM (below `max`, the kernel's
/// `initrd_addr_max` for bzImages).
fn load_initrd(
    cfg: &VmConfig,
    mem: &GuestMemoryMmap,
    kernel_end: u64,
    max: u64,
) -> Result<Option<pvh::Module>> {
    let Some(path) = &cfg.initrd else {
        return Ok(None);
    };
    let mut f =
        File::open(path).with_context(|| format!("cannot open initrd {}", path.display()))?;
    let size = f.seek(SeekFrom::End(0))?;
    f.rewind()?;
    // At the top of low RAM, page aligned.
    let top = layout::low_ram_size(cfg.memory).min(max);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= kernel_end);
    let Some(addr) = addr else {
        bail!(
            "initrd {} ({} bytes) does not fit in guest memory below {:#x}",
            path.display(),
            size,
            top
        );
    };
    let mut buf = Vec::with_capacity(size as usize);
    f.read_to_end(&mut buf)
        .with_context(|| format!("cannot read initrd {}", path.display()))?;
    mem.write_slice(&buf, GuestAddress(addr))
        .map_err(|e| anyhow!("cannot copy initrd into guest memory: {e}"))?;
    Ok(Some(pvh::Module { addr, size }))
}

/// Where firmware would start I/O BARs (above the ISA and chipset ports).
const PCI_IO_START: u64 = 0xc000;

/// Creates every virtio-pci device with its backend and puts it on the
/// root bus.
fn add_virtio_devices(
    cfg: &VmConfig,
    root: &mut PciRoot,
    vm: &Arc<dyn Vm>,
    mem: &GuestMemoryMmap,
) -> Result<()> {
    use devices::model::property::OnOffAuto;
    use devices::virtio::{self, pci::TransportConfig, VirtioDevice};
    let ops: Arc<dyn virtio::VmOps> = vm.clone();
    let consoles: Vec<&crate::config::DeviceConfig> = cfg
        .devices
        .iter()
        .filter(|d| d.props.type_name == "virtconsole")
        .collect();
    let mut serials = 0usize;
    for d in &cfg.devices {
        let ty = d.props.type_name;
        if !devices::model::types::is_a(ty, "virtio-pci") {
            continue;
        }
        let devfn = d
            .devfn
            .ok_or_else(|| anyhow!("{ty} without a PCI address"))?;
        let name = match &d.id {
            Some(id) => format!("{ty} '{id}'"),
            None => format!("{ty} at {:02x}:{:02x}.{}", d.bus, devfn >> 3, devfn & 7),
        };
        let prop = |p: &str| d.props.str(p).unwrap_or_default();
        let (dev, vmstate): (
            Box<dyn VirtioDevice>,
            &'static migration::vmstate::Description,
        ) = match ty {
            "virtio-blk-pci" => {
                let drive = cfg
                    .backends
                    .drives
                    .iter()
                    .find(|x| x.id == prop("drive"))
                    .ok_or_else(|| anyhow!("{name}: drive '{}' not found", prop("drive")))?;
                // Effective values: config::from_args resolved `auto`.
                let nq = d.props.uint("num-queues").unwrap_or(1) as u16;
                let blk = virtio::blk::Blk::new(virtio::blk::BlkConfig {
                    path: drive.path.clone(),
                    read_only: drive.read_only,
                    num_queues: nq,
                    queue_size: d.props.uint("queue-size").unwrap_or(256) as u16,
                    serial: prop("serial"),
                    version_1: drive.version_1,
                })
                .with_context(|| name.clone())?;
                (Box::new(blk), &virtio::blk::PCI_VMSTATE)
            }
            "virtio-net-pci" => {
                let nd = cfg
                    .backends
                    .netdevs
                    .iter()
                    .find(|x| x.id == prop("netdev"))
                    .ok_or_else(|| anyhow!("{name}: netdev '{}' not found", prop("netdev")))?;
                let tap = virtio::net::Tap::open(&nd.ifname).with_context(|| name.clone())?;
                let mac = parse_mac(&prop("mac")).ok_or_else(|| {
                    anyhow!(
                        "{name}: invalid mac '{}': expected six hex bytes like 52:54:00:12:34:56",
                        prop("mac")
                    )
                })?;
                (
                    Box::new(virtio::net::Net::new(tap, mac, nd.version_1)),
                    &virtio::net::PCI_VMSTATE,
                )
            }
            "virtio-rng-pci" => (Box::new(virtio::rng::Rng::new()), &virtio::rng::PCI_VMSTATE),
            "virtio-serial-pci" => {
                let out: Box<dyn Write + Send> = match consoles.get(serials) {
                    Some(c) => {
                        let id = c.props.str("chardev").unwrap_or_default();
                        match cfg
                            .backends
                            .chardevs
                            .iter()
                            .find(|x| x.id == id)
                            .map(|x| &x.kind)
                        {
                            Some(crate::backends::ChardevKind::File(p)) => {
                                Box::new(File::create(p).with_context(|| {
                                    format!("chardev '{id}': cannot create {}", p.display())
                                })?)
                            }
                            _ => Box::new(std::io::sink()),
                        }
                    }
                    None => Box::new(std::io::sink()),
                };
                serials += 1;
                (
                    Box::new(virtio::console::Console::new(out)),
                    &virtio::console::PCI_VMSTATE,
                )
            }
            _ => bail!("{ty} is not implemented"),
        };
        let vectors = d.props.uint("vectors").unwrap_or(virtio::pci::AUTO_VECTORS);
        let tc = TransportConfig {
            disable_legacy: match d.props.on_off_auto("disable-legacy") {
                Some(OnOffAuto::On) => Some(true),
                Some(OnOffAuto::Off) => Some(false),
                _ => None,
            },
            disable_modern: d.props.bool("disable-modern").unwrap_or(false),
            ignore_backend_features: d.props.bool("x-ignore-backend-features").unwrap_or(false),
            on_pcie_port: d.bus != 0,
            vectors: u16::try_from(vectors).unwrap_or(u16::MAX),
            page_per_vq: d.props.bool("page-per-vq").unwrap_or(false),
            // PIRQ E-H style: GSIs 16-23 by slot.
            intx_gsi: 16 + ((devfn >> 3) & 7) as u32,
        };
        let f = virtio::pci::VirtioPci::new(name, dev, &tc, ops.clone(), mem.clone(), vmstate)?;
        root.add(Bdf::new(d.bus, devfn >> 3, devfn & 7), Box::new(f))?;
    }
    Ok(())
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    v.try_into().ok()
}

fn build(cfg: &VmConfig, events: Sender<Control>, gate: Arc<RunGate>, gen: u64) -> Result<Board> {
    let vm: Arc<dyn Vm> = Arc::new(crate::kvm::create_vm()?);

    // Guest RAM: below the PCI hole, the rest from 4 GiB.
    let regions: Vec<(GuestAddress, usize)> = layout::ram_regions(cfg.memory)
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

    // A lifecycle event stops every vCPU: the one that caused it returns
    // from its exit and sees the flag, so no guest code runs after it.
    let stop = Arc::new(AtomicBool::new(false));
    let sink: EventSink = {
        let tx = Mutex::new(events.clone());
        let stop = stop.clone();
        Arc::new(move |e| {
            stop.store(true, Ordering::SeqCst);
            let _ = tx
                .lock()
                .expect("event lock")
                .send(Control::Vm(gen, Outcome::Device(e)));
        })
    };

    // Devices.
    let mut io = Bus::new();
    let mut mmio = Bus::new();
    let serial_out: Box<dyn Write + Send> = match &cfg.serial {
        SerialBackend::Stdio => Box::new(Unbuffered(std::io::stdout())),
        SerialBackend::File(p) => Box::new(
            File::create(p)
                .with_context(|| format!("cannot create serial output file {}", p.display()))?,
        ),
        SerialBackend::None => Box::new(std::io::sink()),
    };
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).context("cannot create an eventfd")?;
    vm.add_irqfd(&serial_irq, 4)?;
    let serial = Arc::new(Mutex::new(Serial::new(serial_irq, serial_out)));
    io.insert(0x3f8, 8, serial.clone())?;
    if matches!(cfg.serial, SerialBackend::Stdio) {
        *console_input().lock().expect("console lock") = Some(serial.clone());
        start_stdin_thread();
    }
    let sci = EventFd::new(libc::EFD_NONBLOCK).context("cannot create an eventfd")?;
    vm.add_irqfd(&sci, layout::SCI_IRQ as u32)?;
    let pm = Arc::new(Mutex::new(devices::acpi_pm::AcpiPm::new(
        layout::S5_SLP_TYP,
        sink.clone(),
        sci,
    )));
    io.insert(layout::PM_BASE as u64, 12, pm.clone())?;
    let mut root = PciRoot::default();
    root.add(Bdf::new(0, 0, 0), Box::new(HostBridge::new()))?;
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
        let port = RootPort::new(&RootPortConfig {
            chassis: d.props.uint("chassis").unwrap_or(0) as u8,
            slot: d.props.uint("slot").unwrap_or(0) as u16,
            port: d.props.uint("port").unwrap_or(0) as u8,
            cap_present: d.props.bits("cap_present"),
            secondary_bus,
        });
        root.add(Bdf::new(0, devfn >> 3, devfn & 7), Box::new(port))?;
    }
    add_virtio_devices(cfg, &mut root, &vm, &mem)?;
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
    let tables = acpi::build(&acpi::AcpiConfig {
        cpus: cfg.vcpus,
        ram: cfg.memory,
    });
    mem.write_slice(&tables.bytes, GuestAddress(tables.base))
        .map_err(|e| anyhow!("cannot write ACPI tables: {e}"))?;
    let memmap = layout::e820(cfg.memory);
    let boot = match load_kernel(cfg, &mem)? {
        Kernel::Pvh { entry, end } => {
            let initrd = load_initrd(cfg, &mem, end, u64::MAX)?;
            let start_info = pvh::write(&mem, &cfg.cmdline, &memmap, tables.rsdp, initrd)?;
            (entry, start_info, 0)
        }
        Kernel::Linux { entry, end, hdr } => {
            let initrd_addr_max = hdr.initrd_addr_max;
            let max = match initrd_addr_max {
                0 => 0x3800_0000, // protocol < 2.03: the documented default
                m => m as u64 + 1,
            };
            let initrd = load_initrd(cfg, &mem, end, max)?.map(|m| (m.addr, m.size));
            let len = pvh::write_cmdline(&mem, &cfg.cmdline)?;
            let zero_page = arch::x86_64::linux::write_boot_params(
                &mem,
                hdr,
                len,
                &memmap,
                tables.rsdp,
                initrd,
            )?;
            (entry, 0, zero_page)
        }
    };

    // vCPUs: the BSP enters the kernel, the APs wait for INIT-SIPI.
    let buses = Arc::new(Buses { io, mmio });
    let mut handles = vec![];
    let mut vcpu_objs = vec![];
    let tids: Arc<Vec<AtomicI64>> = Arc::new((0..cfg.vcpus).map(|_| AtomicI64::new(0)).collect());
    for id in 0..cfg.vcpus {
        let mut vcpu = vm.create_vcpu(id)?;
        vcpu.configure_x86(&X86BootState {
            entry: (id == 0).then_some(boot),
            apic_id: id as u32,
            cpus: cfg.vcpus as u32,
        })?;
        let vcpu = Arc::new(Mutex::new(vcpu));
        vcpu_objs.push(vcpu.clone());
        let (buses, stop, events, gate, tids) = (
            buses.clone(),
            stop.clone(),
            events.clone(),
            gate.clone(),
            tids.clone(),
        );
        let h = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                tids[id as usize].store(unsafe { libc::gettid() } as i64, Ordering::SeqCst);
                vcpu_loop(id, gen, vcpu, &buses, &stop, &events, &gate)
            })
            .context("cannot start a vCPU thread")?;
        handles.push(h);
    }
    // Every vCPU thread is up (and its host tid known) before the board is
    // handed to QMP.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tids.iter().any(|t| t.load(Ordering::SeqCst) == 0) && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(Board {
        vm,
        mem,
        vcpus: handles,
        vcpu_objs,
        serial,
        tids,
        stop,
        pci: root,
        pci_io,
        pm,
    })
}

fn vcpu_loop(
    id: u8,
    gen: u64,
    vcpu: Arc<Mutex<Box<dyn Vcpu>>>,
    buses: &Buses,
    stop: &AtomicBool,
    events: &Sender<Control>,
    gate: &RunGate,
) {
    while !stop.load(Ordering::SeqCst) {
        // Paused (-S, QMP stop): wait here, outside KVM_RUN.
        gate.wait_running(stop);
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let exit = vcpu.lock().expect("vcpu lock").run(buses);
        // Auto-converge: the main loop kicks every 10 ms; sleep our share.
        let pct = gate.throttle_pct.load(Ordering::Relaxed);
        if pct > 0 {
            std::thread::sleep(Duration::from_micros(10_000 * pct / (100 - pct.min(99))));
        }
        let describe = || vcpu.lock().expect("vcpu lock").describe();
        let outcome = match exit {
            Exit::Handled | Exit::Interrupted => continue,
            Exit::Reset => Outcome::Device(VmEvent::Reset),
            Exit::PowerOff => Outcome::Device(VmEvent::PowerOff),
            Exit::Shutdown => Outcome::Fatal(format!(
                "vCPU {id}: triple fault (shutdown); {}",
                describe()
            )),
            Exit::Fatal(why) => Outcome::Fatal(format!("vCPU {id}: {why}; {}", describe())),
        };
        stop.store(true, Ordering::SeqCst);
        let _ = events.send(Control::Vm(gen, outcome));
        return;
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

impl Board {
    /// Interrupts KVM_RUN on every vCPU thread still running.
    fn kick(&self) {
        for h in self.vcpus.iter().filter(|h| !h.is_finished()) {
            let _ = h.kill(SIGRTMIN());
        }
    }

    /// Stops every vCPU thread: signals interrupt KVM_RUN until each has
    /// seen the stop flag.
    fn shutdown(self) {
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

/// What the main loop waits for.
enum Control {
    /// An outcome of board number N (stale ones, from a board a reset
    /// replaced, are dropped).
    Vm(u64, Outcome),
    Qmp(qmp::Request),
    /// From the migration thread of board N.
    Migration(u64, crate::migrate::Msg),
    /// An incoming migration connected (or the listener failed).
    Incoming(Result<crate::migrate::Incoming, String>),
    /// The incoming stream's loader finished (wakes the main loop at once:
    /// the guest is paused on both sides until it answers).
    Loaded,
}

/// Sends [`Control::Loaded`] when dropped: however the loader ends.
struct Wake(Sender<Control>);

impl Drop for Wake {
    fn drop(&mut self) {
        let _ = self.0.send(Control::Loaded);
    }
}

/// Runs the VM until it ends; returns the process exit status.
pub fn run(cfg: &VmConfig) -> Result<i32> {
    register_signal_handler(SIGRTMIN(), kick_handler)
        .map_err(|e| anyhow!("cannot install the vCPU kick signal handler: {e}"))?;
    let gate = Arc::new(RunGate {
        running: Mutex::new(!cfg.paused && cfg.incoming.is_none()),
        open: AtomicBool::new(!cfg.paused && cfg.incoming.is_none()),
        cv: Condvar::new(),
        parked: AtomicUsize::new(0),
        throttle_pct: Default::default(),
        on_run: Mutex::new(None),
    });
    let events = qmp::Events::default();
    let (ctl_tx, ctl_rx) = channel::<Control>();
    let (req_tx, req_rx) = channel::<qmp::Request>();
    // Listening before the monitor answers: a client that sees QMP up can
    // start the source's migrate.
    if let Some(crate::config::Incoming::Listen(uri)) = &cfg.incoming {
        listen_incoming(uri, ctl_tx.clone())?;
    }
    qmp::start(&cfg.qmp, req_tx, events.clone())?;
    {
        let ctl_tx = ctl_tx.clone();
        std::thread::Builder::new()
            .name("qmp-forward".into())
            .spawn(move || {
                for r in req_rx {
                    if ctl_tx.send(Control::Qmp(r)).is_err() {
                        return;
                    }
                }
            })
            .context("cannot start the QMP forwarder")?;
    }
    let name = cfg.name.as_deref().unwrap_or("vm");
    let mut status = match (&cfg.incoming, cfg.paused) {
        (Some(_), _) => "inmigrate",
        (None, true) => "prelaunch",
        (None, false) => "running",
    };
    let mut migration = MigrationInfo::default();
    let mut params = crate::migrate::Params::default();
    let mut named_fds = std::collections::HashMap::new();
    if cfg.paused {
        log::info!("starting paused (-S)");
    }
    let mut gen = 0u64;
    loop {
        gen += 1;
        let board = build(cfg, ctl_tx.clone(), gate.clone(), gen)?;
        log::info!(
            "{name}: {} with {} vCPU(s) and {} MiB started",
            cfg.machine.name,
            cfg.vcpus,
            cfg.memory >> 20
        );
        if gen == 1 && cfg.incoming.is_some() {
            let _ = incoming_memory().set((board.mem.clone(), cfg.memory));
        }
        let mut session = Session {
            cfg,
            board: &board,
            gate: &gate,
            status,
            saved_clock: None,
            ended: None,
            queued: vec![],
            migration: &mut migration,
            params: &mut params,
            progress: None,
            conn: None,
            stopped_for_migration: false,
            ctl: ctl_tx.clone(),
            gen,
            fds: &mut named_fds,
            passed: None,
        };
        if let (1, Some(crate::config::Incoming::File(path))) = (gen, &cfg.incoming) {
            session.restore(path)?;
            for (name, data) in session.queued.drain(..) {
                events.emit(name, data);
            }
        }
        let end = loop {
            // Auto-converge: kick the vCPUs every 10 ms so they sleep their
            // share (they rarely exit on their own).
            let throttle = session
                .progress
                .as_ref()
                .map_or(0, |p| p.throttle_pct.load(Ordering::Relaxed));
            gate.throttle_pct.store(throttle, Ordering::Relaxed);
            let msg = if throttle > 0 {
                match ctl_rx.recv_timeout(Duration::from_millis(10)) {
                    Ok(m) => m,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        board.kick();
                        continue;
                    }
                    Err(_) => bail!("the control channel closed"),
                }
            } else {
                ctl_rx
                    .recv()
                    .map_err(|_| anyhow!("the control channel closed"))?
            };
            match msg {
                Control::Migration(g, m) if g == gen => {
                    session.migration_msg(m);
                    for (name, data) in session.queued.drain(..) {
                        events.emit(name, data);
                    }
                    if let Some(e) = session.ended.take() {
                        break e;
                    }
                }
                Control::Migration(..) | Control::Loaded => {}
                Control::Incoming(conn) => {
                    session.receive(conn, &ctl_rx);
                    for (name, data) in session.queued.drain(..) {
                        events.emit(name, data);
                    }
                    if let Some(e) = session.ended.take() {
                        break e;
                    }
                }
                Control::Qmp(req) => {
                    if req.command == "getfd" {
                        session.passed = req.fds.lock().expect("fds lock").pop();
                    }
                    let r = qmp::commands::dispatch(&mut session, &req.command, &req.args);
                    req.reply(r);
                    for (name, data) in session.queued.drain(..) {
                        events.emit(name, data);
                    }
                    if let Some(e) = session.ended.take() {
                        break e;
                    }
                }
                Control::Vm(g, o) if g == gen => break o,
                Control::Vm(g, o) => log::debug!("dropping {o:?} from replaced board {g}"),
            }
        };
        status = session.status;
        // A migration of this board cannot go on (reset, power-off, quit):
        // it fails, and its thread ends on the closed connection.
        if let Some(p) = session.progress.take() {
            p.cancel.store(true, Ordering::SeqCst);
            if let Some(c) = session.conn.take() {
                c.shutdown();
            }
            session.migration.status = "failed";
            session.migration.live = Some(p);
            session.migration.error =
                Some("the VM was reset or stopped during the migration".into());
            events.emit("MIGRATION", Some(json!({"status": "failed"})));
        }
        board.shutdown();
        match end {
            Outcome::Device(VmEvent::PowerOff) => {
                log::info!("{name}: guest powered off");
                events.emit(
                    "SHUTDOWN",
                    Some(json!({"guest": true, "reason": "guest-shutdown"})),
                );
                events.flush();
                return Ok(0);
            }
            Outcome::Device(VmEvent::Exit(code)) => return Ok(code),
            Outcome::Quit => {
                events.emit(
                    "SHUTDOWN",
                    Some(json!({"guest": false, "reason": "host-qmp-quit"})),
                );
                events.flush();
                return Ok(0);
            }
            Outcome::Device(VmEvent::Reset) if cfg.no_reboot => {
                log::info!("{name}: guest reset, exiting (-no-reboot)");
                events.emit(
                    "SHUTDOWN",
                    Some(json!({"guest": true, "reason": "guest-reset"})),
                );
                events.flush();
                return Ok(0);
            }
            Outcome::Device(VmEvent::Reset) => {
                log::info!("{name}: guest reset");
                events.emit(
                    "RESET",
                    Some(json!({"guest": true, "reason": "guest-reset"})),
                );
            }
            Outcome::HostReset => {
                log::info!("{name}: reset by QMP system_reset");
                events.emit(
                    "RESET",
                    Some(json!({"guest": false, "reason": "host-qmp-system-reset"})),
                );
            }
            Outcome::Fatal(why) => {
                events.flush();
                bail!("{name} stopped: {why}")
            }
        }
    }
}

/// The guest memory (and RAM size) multifd receivers write into, set once
/// the destination's board exists.
fn incoming_memory() -> Arc<OnceLock<(GuestMemoryMmap, u64)>> {
    static MEM: OnceLock<Arc<OnceLock<(GuestMemoryMmap, u64)>>> = OnceLock::new();
    MEM.get_or_init(Default::default).clone()
}

/// What the monitor says while an incoming migration loads.
fn busy_reply(command: &str) -> Result<serde_json::Value, QmpError> {
    match command {
        "qmp_capabilities" => Ok(json!({})),
        "query-status" => Ok(json!({"status": "inmigrate", "running": false, "singlestep": false})),
        "query-migrate" => Ok(json!({"status": "active"})),
        _ => Err(QmpError::generic(format!(
            "{command}: an incoming migration is loading; until it ends the monitor answers query-status and query-migrate"
        ))),
    }
}

/// Listens for one incoming migration; the connection (or the failure)
/// arrives in the main loop as [`Control::Incoming`].
fn listen_incoming(uri: &crate::migrate::Uri, ctl: Sender<Control>) -> Result<()> {
    let l = crate::migrate::Listener::bind(uri)?;
    log::info!("waiting for an incoming migration on {uri:?}");
    std::thread::Builder::new()
        .name("incoming".into())
        .spawn(move || {
            let _ = ctl.send(Control::Incoming(
                l.accept(incoming_memory()).map_err(|e| format!("{e:#}")),
            ));
        })
        .context("cannot start the incoming-migration thread")?;
    Ok(())
}

/// The live VM as QMP commands see it.
struct Session<'a> {
    cfg: &'a VmConfig,
    board: &'a Board,
    gate: &'a RunGate,
    status: &'static str,
    /// kvm-clock at `stop`, restored at `cont` so guest time does not jump.
    saved_clock: Option<u64>,
    /// Set by commands that end this board (quit, system_reset).
    ended: Option<Outcome>,
    /// Events a command caused, sent after its reply (as QEMU orders them).
    queued: Vec<(&'static str, Option<serde_json::Value>)>,
    /// The last (or current) migration, for query-migrate.
    migration: &'a mut MigrationInfo,
    params: &'a mut crate::migrate::Params,
    /// The running migration's counters.
    progress: Option<Arc<crate::migrate::Progress>>,
    /// Its connection (shut down by migrate_cancel).
    conn: Option<crate::migrate::Conn>,
    /// The migration stopped a running VM to finish (resumed on failure).
    stopped_for_migration: bool,
    ctl: Sender<Control>,
    gen: u64,
    /// Descriptors kept by `getfd`, by name.
    fds: &'a mut std::collections::HashMap<String, std::os::fd::OwnedFd>,
    /// The descriptor the client of the current `getfd` passed.
    passed: Option<std::os::fd::OwnedFd>,
}

/// What query-migrate reports.
#[derive(Default, Clone)]
struct MigrationInfo {
    status: &'static str,
    total_ms: u64,
    stats: crate::snapshot::Stats,
    error: Option<String>,
    /// A live migration (not a file): its start, and the final counters.
    started: Option<std::time::Instant>,
    live: Option<Arc<crate::migrate::Progress>>,
}

impl Session<'_> {
    /// Loads a saved VM into this (fresh, held) board, then runs it unless
    /// -S. Nothing of the guest runs before everything is loaded.
    fn restore(&mut self, path: &std::path::Path) -> Result<()> {
        let clock = crate::snapshot::load(&self.parts(0), path, self.cfg.machine.name)
            .with_context(|| format!("cannot restore the VM from {}", path.display()))?;
        self.board.vm.set_clock(clock)?;
        log::info!("restored from {}", path.display());
        self.queued
            .push(("MIGRATION", Some(json!({"status": "completed"}))));
        if self.cfg.paused {
            self.board.pci.lock().expect("pci lock").pause();
            self.status = "paused";
        } else {
            self.gate.set_running(true);
            self.status = "running";
            self.queued.push(("RESUME", None));
        }
        Ok(())
    }

    /// An incoming migration: load the stream, confirm, wait for GO, run.
    /// Any failure ends the process (nothing of the guest ran).
    fn receive(
        &mut self,
        incoming: Result<crate::migrate::Incoming, String>,
        ctl: &std::sync::mpsc::Receiver<Control>,
    ) {
        use crate::migrate::{read_line, refuse};
        use migration::protocol::Line;
        use std::io::{Read as _, Write as _};
        let incoming = match incoming {
            Ok(i) => i,
            Err(e) => {
                self.ended = Some(Outcome::Fatal(format!("incoming migration: {e}")));
                return;
            }
        };
        let head = incoming.head;
        let channels = incoming.channels;
        let mut conn = incoming.main;
        let t0 = std::time::Instant::now();
        // A source that goes silent is given up on.
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let mut sync = match conn.try_clone() {
            Ok(c) => c,
            Err(e) => {
                self.ended = Some(Outcome::Fatal(format!("incoming migration: {e}")));
                return;
            }
        };
        // The load runs on its own thread; meanwhile the monitor answers
        // what a management stack polls (QEMU's stays responsive too).
        let parts = self.parts(0);
        let machine = self.cfg.machine.name;
        let conn2 = conn.try_clone();
        let wake = self.ctl.clone();
        let loaded = std::thread::scope(|scope| {
            let h = scope.spawn(|| {
                let _wake = Wake(wake);
                let c = conn2?;
                let clock =
                    crate::snapshot::load_from(&parts, (&head[..]).chain(c), machine, &mut || {
                        let _ = sync.write_all(&Line::Sync.encode());
                    })?;
                // Every multifd channel delivered all its pages (END).
                for ch in channels {
                    let pages = ch
                        .join()
                        .map_err(|_| anyhow!("a multifd receiver panicked"))?
                        .map_err(|e| anyhow!(e))?;
                    log::debug!("multifd channel done: {pages} pages");
                }
                Ok::<u64, anyhow::Error>(clock)
            });
            // Until the loader says it is done (then join waits only for
            // its thread to exit).
            while !h.is_finished() {
                match ctl.recv_timeout(Duration::from_millis(100)) {
                    Ok(Control::Qmp(req)) => req.reply(busy_reply(&req.command)),
                    Ok(Control::Loaded) => break,
                    Ok(_) => log::debug!("incoming migration: a board message waits"),
                    Err(_) => {}
                }
            }
            h.join()
                .unwrap_or_else(|_| Err(anyhow!("the incoming migration thread panicked")))
        });
        log::debug!(
            "incoming: loaded (wall {} us)",
            migration::protocol::wall_us()
        );
        let clock = match loaded {
            Ok(c) => c,
            Err(e) => {
                let why = format!("{e:#}");
                refuse(&mut conn, &why);
                self.ended = Some(Outcome::Fatal(format!("incoming migration failed: {why}")));
                return;
            }
        };
        // Fault injection for tests: hold the answer while the source sits
        // paused, so a test can kill this side in that window.
        if let Some(ms) = std::env::var("VMM_TEST_DELAY_LOADED_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let go = conn.try_clone().map_err(anyhow::Error::from).and_then(|c| {
            let mut w = c.try_clone()?;
            w.write_all(&Line::Loaded.encode())?;
            log::debug!(
                "incoming: LOADED sent (wall {} us)",
                migration::protocol::wall_us()
            );
            read_line(&mut std::io::BufReader::new(c))
        });
        log::debug!(
            "incoming: GO read (wall {} us)",
            migration::protocol::wall_us()
        );
        match go {
            Ok(l) if Line::parse(&l) == Ok(Line::Go) => {}
            Ok(l) => {
                self.ended = Some(Outcome::Fatal(format!(
                    "incoming migration: the source sent '{l}' instead of GO; the guest was not started"
                )));
                return;
            }
            Err(e) => {
                self.ended = Some(Outcome::Fatal(format!(
                    "incoming migration: the source did not confirm ({e:#}); the guest was not started here"
                )));
                return;
            }
        }
        if let Err(e) = self.board.vm.set_clock(clock) {
            self.ended = Some(Outcome::Fatal(format!("incoming migration: {e}")));
            return;
        }
        if self.cfg.paused {
            self.board.pci.lock().expect("pci lock").pause();
            self.status = "paused";
            let _ = conn.write_all(&Line::Running.encode());
        } else {
            // The first vCPU out of the gate tells the source, just before
            // its KVM_RUN: that ends the downtime the source reports.
            match conn.try_clone() {
                Ok(mut c) => {
                    *self.gate.on_run.lock().expect("gate lock") = Some(Box::new(move || {
                        let _ = c.write_all(&Line::Running.encode());
                        log::debug!(
                            "incoming: vCPU running (wall {} us)",
                            migration::protocol::wall_us()
                        );
                    }))
                }
                Err(_) => {
                    let _ = conn.write_all(&Line::Running.encode());
                }
            }
            self.gate.set_running(true);
            self.status = "running";
        }
        log::debug!(
            "incoming: RUNNING sent after {} us",
            t0.elapsed().as_micros()
        );
        log::info!(
            "incoming migration loaded and running in {} ms",
            t0.elapsed().as_millis()
        );
        // Self-announce, as QEMU: now and twice more, 50 and 150 ms later.
        let pci = self.board.pci.clone();
        let _ = std::thread::Builder::new()
            .name("announce".into())
            .spawn(move || {
                for wait in [0, 50, 100] {
                    std::thread::sleep(Duration::from_millis(wait));
                    pci.lock().expect("pci lock").announce();
                }
            });
        self.migration.status = "completed";
        self.migration.total_ms = t0.elapsed().as_millis() as u64;
        self.queued
            .push(("MIGRATION", Some(json!({"status": "completed"}))));
        if self.status == "running" {
            self.queued.push(("RESUME", None));
        }
    }

    /// Starts a live migration to `uri` (tcp:, unix:, fd:); it runs on its
    /// own thread while the guest runs.
    fn migrate_live(&mut self, uri: &crate::migrate::Uri) -> Result<(), QmpError> {
        if !matches!(self.status, "running" | "paused") {
            return Err(QmpError::generic(format!(
                "cannot migrate a VM in state {}",
                self.status
            )));
        }
        let t0 = std::time::Instant::now();
        // multifd channels first: the destination tells them from the main
        // stream by their header, and has them all when the main one comes.
        let channels = if self.params.multifd && !matches!(uri, crate::migrate::Uri::Fd(_)) {
            crate::migrate::connect_channels(uri, self.params.multifd_channels)
                .map_err(|e| QmpError::generic(format!("{e:#}")))?
        } else {
            vec![]
        };
        // fd:NAME takes the descriptor getfd kept (QEMU consumes it too).
        let named = match uri {
            crate::migrate::Uri::Fd(name) => self.fds.remove(name),
            _ => None,
        };
        let conn = match named {
            Some(fd) => crate::migrate::conn_from_fd(fd),
            None => {
                crate::migrate::connect(uri).map_err(|e| QmpError::generic(format!("{e:#}")))?
            }
        };
        let progress = Arc::new(crate::migrate::Progress::default());
        *self.migration = MigrationInfo {
            status: "setup",
            started: Some(t0),
            ..Default::default()
        };
        self.queued
            .push(("MIGRATION", Some(json!({"status": "setup"}))));
        let ctl = Mutex::new(self.ctl.clone());
        let gen = self.gen;
        let src = crate::migrate::Source {
            channels,
            conn: conn
                .try_clone()
                .map_err(|e| QmpError::generic(e.to_string()))?,
            mem: self.board.mem.clone(),
            vm: self.board.vm.clone(),
            ram: self.cfg.memory,
            machine: self.cfg.machine.name,
            params: self.params.clone(),
            progress: progress.clone(),
            ctl: Box::new(move |m| {
                let _ = ctl
                    .lock()
                    .expect("ctl lock")
                    .send(Control::Migration(gen, m));
            }),
        };
        std::thread::Builder::new()
            .name("migration".into())
            .spawn(move || src.run())
            .map_err(|e| QmpError::generic(format!("cannot start the migration thread: {e}")))?;
        self.progress = Some(progress);
        self.conn = Some(conn);
        Ok(())
    }

    /// A message from the migration thread.
    fn migration_msg(&mut self, m: crate::migrate::Msg) {
        use crate::migrate::Msg;
        match m {
            Msg::Event(name, data) => {
                if name == "MIGRATION" {
                    if let Some(s) = data["status"].as_str() {
                        self.migration.status = if s == "active" {
                            "active"
                        } else {
                            self.migration.status
                        };
                    }
                }
                self.queued.push((name, Some(data)));
            }
            Msg::Converged(reply) => {
                let paused_at = std::time::Instant::now();
                let was_running = self.status == "running";
                let r = self.stop().map_err(|e| e.desc).and_then(|_| {
                    log::debug!(
                        "downtime: vCPUs stopped at +{} us",
                        paused_at.elapsed().as_micros()
                    );
                    self.stopped_for_migration = was_running;
                    self.status = "finish-migrate";
                    let clock = self.saved_clock.unwrap_or_default();
                    crate::snapshot::device_sections(&self.parts(clock))
                        .map_err(|e| format!("{e:#}"))
                });
                let _ = reply.send(r.map(|sections| crate::migrate::DeviceState {
                    sections,
                    paused_at,
                }));
            }
            Msg::Done(r) => {
                let p = self.progress.take();
                self.conn = None;
                let total_ms = self
                    .migration
                    .started
                    .map_or(0, |t| t.elapsed().as_millis() as u64);
                self.migration.total_ms = total_ms;
                self.migration.live = p.clone();
                match r {
                    Ok(()) => {
                        self.migration.status = "completed";
                        self.status = "postmigrate";
                        self.stopped_for_migration = false;
                        self.queued
                            .push(("MIGRATION", Some(json!({"status": "completed"}))));
                    }
                    Err(why) => {
                        let cancelled = p.as_ref().is_some_and(|p| p.cancel.load(Ordering::SeqCst));
                        self.migration.status = if cancelled { "cancelled" } else { "failed" };
                        self.migration.error = (!cancelled).then_some(why);
                        if self.status == "finish-migrate" {
                            self.status = "paused";
                        }
                        // The source keeps the guest: nothing was lost.
                        if std::mem::take(&mut self.stopped_for_migration) {
                            if let Err(e) = self.cont() {
                                log::error!("cannot resume after the failed migration: {}", e.desc);
                            }
                        }
                        self.queued
                            .push(("MIGRATION", Some(json!({"status": self.migration.status}))));
                    }
                }
            }
        }
    }

    fn parts(&self, clock: u64) -> crate::snapshot::Parts<'_> {
        crate::snapshot::Parts {
            vm: &*self.board.vm,
            mem: &self.board.mem,
            ram: self.cfg.memory,
            vcpus: &self.board.vcpu_objs,
            serial: &self.board.serial,
            pm: &self.board.pm,
            pci: &self.board.pci,
            pci_io: &self.board.pci_io,
            clock,
        }
    }
}

impl qmp::commands::Target for Session<'_> {
    fn status(&self) -> &'static str {
        self.status
    }

    fn stop(&mut self) -> Result<(), QmpError> {
        if self.status != "running" {
            return Ok(());
        }
        self.gate.set_running(false);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let live = |b: &Board| b.vcpus.iter().filter(|h| !h.is_finished()).count();
        while self.gate.parked.load(Ordering::SeqCst) < live(self.board) {
            if std::time::Instant::now() > deadline {
                self.gate.set_running(true);
                return Err(QmpError::generic("the vCPUs did not stop within 5 s"));
            }
            self.board.kick();
            std::thread::sleep(Duration::from_micros(50));
        }
        // Devices stop touching guest memory too (in-flight work ends).
        self.board.pci.lock().expect("pci lock").pause();
        // As QEMU: freeze kvm-clock with the vCPUs.
        self.saved_clock = self.board.vm.clock().ok();
        self.status = "paused";
        self.queued.push(("STOP", None));
        Ok(())
    }

    fn cont(&mut self) -> Result<(), QmpError> {
        match self.status {
            "running" => return Ok(()),
            // The guest must not run while its last state is on the way,
            // nor before an incoming one has arrived.
            "finish-migrate" => {
                return Err(QmpError::generic(
                    "a migration is finishing: the VM resumes here only if it fails",
                ))
            }
            "inmigrate" => {
                return Err(QmpError::generic(
                    "the VM waits for an incoming migration: it starts when that completes",
                ))
            }
            _ => {}
        }
        if let Some(c) = self.saved_clock.take() {
            self.board
                .vm
                .set_clock(c)
                .map_err(|e| QmpError::generic(format!("cannot restore kvm-clock: {e}")))?;
        }
        self.board.pci.lock().expect("pci lock").resume();
        self.gate.set_running(true);
        self.status = "running";
        self.queued.push(("RESUME", None));
        Ok(())
    }

    fn powerdown(&mut self) -> Result<(), QmpError> {
        self.board.pm.lock().expect("pm lock").power_button();
        self.queued.push(("POWERDOWN", None));
        Ok(())
    }

    fn reset(&mut self) -> Result<(), QmpError> {
        self.ended = Some(Outcome::HostReset);
        Ok(())
    }

    fn quit(&mut self) {
        self.ended = Some(Outcome::Quit);
    }

    fn name(&self) -> Option<String> {
        self.cfg.name.clone()
    }

    fn cpus(&self) -> Vec<(u32, i64)> {
        self.board
            .tids
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u32, t.load(Ordering::SeqCst)))
            .collect()
    }

    fn machine(&self) -> &'static machine::MachineType {
        self.cfg.machine
    }

    fn devices(&self) -> &[crate::config::DeviceConfig] {
        &self.cfg.devices
    }

    fn migrate(&mut self, uri: &str) -> Result<(), QmpError> {
        if self.progress.is_some() {
            return Err(QmpError::generic("There's a migration process in progress"));
        }
        let target = uri
            .parse::<crate::migrate::Uri>()
            .map_err(|e| QmpError::generic(format!("{e:#}")))?;
        let path = match target {
            crate::migrate::Uri::File(p) => p,
            live => return self.migrate_live(&live),
        };
        let path = path.to_string_lossy().into_owned();
        let path = path.as_str();
        let was_running = self.status == "running";
        let t0 = std::time::Instant::now();
        *self.migration = MigrationInfo {
            status: "active",
            started: Some(t0),
            ..Default::default()
        };
        self.queued
            .push(("MIGRATION", Some(json!({"status": "setup"}))));
        self.stop()?;
        self.queued
            .push(("MIGRATION", Some(json!({"status": "active"}))));
        let clock = self.saved_clock.unwrap_or_default();
        match crate::snapshot::save(
            &self.parts(clock),
            std::path::Path::new(path),
            self.cfg.machine.name,
        ) {
            Ok(stats) => {
                *self.migration = MigrationInfo {
                    status: "completed",
                    total_ms: t0.elapsed().as_millis() as u64,
                    stats,
                    ..Default::default()
                };
                self.status = "postmigrate";
                self.queued
                    .push(("MIGRATION", Some(json!({"status": "completed"}))));
                Ok(())
            }
            Err(e) => {
                let why = format!("{e:#}");
                log::error!("migration to {uri} failed: {why}");
                *self.migration = MigrationInfo {
                    status: "failed",
                    total_ms: t0.elapsed().as_millis() as u64,
                    error: Some(why),
                    ..Default::default()
                };
                self.queued
                    .push(("MIGRATION", Some(json!({"status": "failed"}))));
                // The source keeps running, nothing lost.
                if was_running {
                    self.cont()?;
                }
                Ok(())
            }
        }
    }

    fn migrate_incoming(&mut self, uri: &str) -> Result<(), QmpError> {
        if self.cfg.incoming != Some(crate::config::Incoming::Defer)
            || self.status != "inmigrate"
            || !self.migration.status.is_empty()
        {
            return Err(QmpError::generic(
                "migrate-incoming is only possible once, after -incoming defer",
            ));
        }
        let path = match uri
            .parse::<crate::migrate::Uri>()
            .map_err(|e| QmpError::generic(format!("{e:#}")))?
        {
            crate::migrate::Uri::File(p) => p,
            l @ (crate::migrate::Uri::Tcp(_) | crate::migrate::Uri::Unix(_)) => {
                listen_incoming(&l, self.ctl.clone())
                    .map_err(|e| QmpError::generic(format!("{e:#}")))?;
                // Once: a second migrate-incoming is refused.
                self.migration.status = "active";
                return Ok(());
            }
            crate::migrate::Uri::Fd(_) => {
                return Err(QmpError::generic(
                    "migrate-incoming takes tcp:, unix: or file:",
                ))
            }
        };
        // A stream that does not load leaves a half-written board: the
        // process ends (as QEMU's destination does), nothing of it runs.
        if let Err(e) = self.restore(&path) {
            self.ended = Some(Outcome::Fatal(format!("{e:#}")));
            return Err(QmpError::generic(format!("{e:#}")));
        }
        Ok(())
    }

    fn query_migrate(&self) -> serde_json::Value {
        let m = &self.migration;
        if m.status.is_empty() {
            return json!({});
        }
        let live = self.progress.as_ref().or(m.live.as_ref());
        let total_ms = match (&self.progress, m.started) {
            (Some(_), Some(t)) => t.elapsed().as_millis() as u64,
            _ => m.total_ms,
        };
        let mut v = json!({"status": m.status, "total-time": total_ms});
        if let Some(p) = live {
            let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::SeqCst);
            let normal = get(&p.normal);
            v["setup-time"] = get(&p.setup_ms).into();
            v["expected-downtime"] = get(&p.expected_downtime_ms).into();
            v["multifd-channels-used"] = get(&p.channels).into();
            if m.status == "completed" {
                v["downtime"] = get(&p.downtime_ms).into();
            }
            v["ram"] = json!({
                "transferred": get(&p.transferred),
                "total": self.cfg.memory,
                "remaining": get(&p.remaining),
                "duplicate": get(&p.duplicate),
                "normal": normal,
                "normal-bytes": normal * 4096,
                "page-size": 4096,
                "pages-per-second": get(&p.pages_per_second),
                "dirty-pages-rate": get(&p.dirty_pages_rate),
                "dirty-sync-count": get(&p.passes),
                "mbps": get(&p.mbps_x100) as f64 / 100.0,
            });
            let t = get(&p.throttle_pct);
            if t > 0 {
                v["cpu-throttle-percentage"] = t.into();
            }
            if let Some(why) = p.not_converging.lock().expect("progress lock").as_ref() {
                if m.status == "active" {
                    v["not-converging"] = why.clone().into();
                }
            }
        } else if m.status == "completed" && m.stats.pages > 0 {
            v["ram"] = json!({
                "transferred": m.stats.bytes,
                "total": self.cfg.memory,
                "remaining": 0,
                "normal": m.stats.pages - m.stats.zero_pages,
                "normal-bytes": (m.stats.pages - m.stats.zero_pages) * 4096,
                "duplicate": m.stats.zero_pages,
                "page-size": 4096,
            });
        }
        if let Some(e) = &m.error {
            v["error-desc"] = e.clone().into();
        }
        v
    }

    fn migrate_cancel(&mut self) -> Result<(), QmpError> {
        if let Some(p) = &self.progress {
            p.cancel.store(true, Ordering::SeqCst);
            if let Some(c) = &self.conn {
                c.shutdown();
            }
        }
        Ok(())
    }

    fn migrate_set_parameters(
        &mut self,
        args: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), QmpError> {
        self.params.set(args).map_err(QmpError::generic)
    }

    fn migrate_parameters(&self) -> serde_json::Value {
        self.params.to_json()
    }

    fn migrate_set_capabilities(&mut self, caps: &[(String, bool)]) -> Result<(), QmpError> {
        if self.progress.is_some() {
            return Err(QmpError::generic("There's a migration process in progress"));
        }
        let mut next = self.params.clone();
        for (name, on) in caps {
            match name.as_str() {
                "auto-converge" => next.auto_converge = *on,
                "multifd" => next.multifd = *on,
                "events" | "return-path" => {}
                _ => {
                    return Err(QmpError::generic(format!(
                        "Capability '{name}' is not supported by vmm"
                    )))
                }
            }
        }
        *self.params = next;
        Ok(())
    }

    fn getfd(&mut self, name: &str) -> Result<(), QmpError> {
        let fd = self.passed.take().ok_or_else(|| {
            QmpError::generic("getfd: no file descriptor was passed with the command (SCM_RIGHTS)")
        })?;
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(QmpError::generic(format!(
                "getfd: invalid name '{name}': it must not be empty or start with a digit"
            )));
        }
        self.fds.insert(name.to_string(), fd);
        Ok(())
    }

    fn closefd(&mut self, name: &str) -> Result<(), QmpError> {
        self.fds
            .remove(name)
            .map(drop)
            .ok_or_else(|| QmpError::generic(format!("File descriptor named '{name}' not found")))
    }

    fn migrate_capabilities(&self) -> serde_json::Value {
        json!([
            {"capability": "auto-converge", "state": self.params.auto_converge},
            {"capability": "multifd", "state": self.params.multifd},
            {"capability": "events", "state": true},
            {"capability": "return-path", "state": true},
        ])
    }

    fn pci(&self) -> Vec<qmp::commands::PciInfo> {
        let root = self.board.pci.lock().expect("pci lock");
        root.functions()
            .map(|(bdf, f)| {
                let c = f.config();
                let devfn = (bdf.0 & 0xff) as u8;
                let id = self
                    .cfg
                    .devices
                    .iter()
                    .find(|d| d.devfn == Some(devfn) && d.bus == (bdf.0 >> 8) as u8)
                    .and_then(|d| d.id.clone());
                let (bus, slot, func) = ((bdf.0 >> 8) as u8, devfn >> 3, devfn & 7);
                qmp::commands::PciInfo {
                    bus,
                    slot,
                    function: func,
                    vendor: c.read(0, 2) as u16,
                    device: c.read(2, 2) as u16,
                    class: c.read(8, 4) >> 8,
                    qdev_id: id,
                }
            })
            .collect()
    }
}
