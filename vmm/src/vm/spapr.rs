//! The pseries (sPAPR) board: RAM from address 0, PHB 0 with its I/O,
//! 32-bit and 64-bit windows and the PCI functions behind it, and the
//! RTAS calls that reach them. Its vCPUs need KVM-PPC on a POWER host
//! (issue 19's backend, not here yet): on this host it runs under
//! `-accel qtest`, whose client makes RTAS calls with qtest's `rtas`.

use super::board::{console_output, event_sink, guest_memory, Board, Platform, PCI_IO_START};
use super::vcpu::Buses;
use super::virtio::add_virtio_devices;
use super::Control;
use crate::config::VmConfig;
use crate::hypervisor::Hypervisor;
use anyhow::{bail, Result};
use devices::bus::Bus;
use devices::pci::spapr_phb::{PhbConfig, SpaprPhb, MEM_WIN_BUS_OFFSET};
use devices::pci::{BarWindow, PciRoot, Space};
use devices::rtas::{HW_ERROR as RTAS_HW_ERROR, PARAM_ERROR as RTAS_PARAM_ERROR};
use devices::spapr_rtc::{DateTime, SpaprRtc};
use devices::xics::Ics;
use devices::VmEvent;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

pub(super) fn build(
    hypervisor: &dyn Hypervisor,
    cfg: &VmConfig,
    events: Sender<Control>,
    gen: u64,
) -> Result<Board> {
    let vm = hypervisor.create_vm()?;
    if vm.qtest().is_none() {
        bail!(
            "{}: pseries vCPUs need KVM-PPC, which vmm does not have yet: run it under -accel qtest",
            cfg.machine.name
        );
    }
    let mem = guest_memory(cfg, &*vm, vec![(0, cfg.memory)])?;
    if let Some(q) = vm.qtest() {
        q.attach(&mem);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sink = event_sink(&events, gen, &stop);

    let phb = PhbConfig::from_props(&cfg.host_bridge, 0, cfg.memory);
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
    Ok(Board {
        vm,
        mem,
        buses: Arc::new(Buses {
            io: Bus::new(),
            mmio,
        }),
        vcpus: vec![],
        vcpu_objs: vec![],
        cpuid: Arc::new(vec![]),
        tsc_khz: None,
        tids: Arc::new(vec![]),
        stop,
        pci: root,
        platform: Platform::Spapr {
            phb: Arc::new(Mutex::new(SpaprPhb::new(phb))),
            rtc: Arc::new(Mutex::new(SpaprRtc::default())),
            ics: Arc::new(Mutex::new(Ics::new(
                xics_sources(&cfg.host_bridge),
                xics_servers(cfg.machine, &cfg.smp),
                &phb.lsi,
            ))),
            events: sink,
            console: Arc::new(Mutex::new(console_output(cfg)?)),
        },
    })
}

/// The interrupt servers QEMU's XICS has: max CPUs x the virtual SMT mode
/// (up to pseries-4.1 at least 8, then the threads per core) over the
/// threads per core, rounded up.
fn xics_servers(machine: &machine::MachineType, smp: &arch::x86_64::topology::Topology) -> u32 {
    let threads = smp.threads;
    let vsmt = if machine.version <= (4, 1) {
        threads.max(8)
    } else {
        threads
    };
    (smp.maxcpus * vsmt).div_ceil(threads)
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

/// The device tree a guest of `cfg` is given (arch::ppc64::fdt).
pub(super) fn device_tree(cfg: &VmConfig) -> Result<Vec<u8>> {
    tree(
        cfg.machine,
        &cfg.host_bridge,
        cfg.memory,
        &cfg.cmdline,
        &cfg.smp,
    )
}

/// The device tree of machine type `machine` with PHB properties
/// `host_bridge`, `ram` bytes of RAM, kernel command line `cmdline` and
/// CPUs `smp` (also what `-dump-abi` records).
pub(crate) fn tree(
    machine: &machine::MachineType,
    host_bridge: &devices::model::Props,
    ram: u64,
    cmdline: &str,
    smp: &arch::x86_64::topology::Topology,
) -> Result<Vec<u8>> {
    use arch::ppc64::fdt;
    let phb = PhbConfig::from_props(host_bridge, 0, ram);
    let legacy = host_bridge.bool("x-legacy-irq-allocation").unwrap_or(false);
    let tree = fdt::Spapr {
        ram,
        cmdline: cmdline.to_string(),
        // QEMU's pseries-4.2 and later tell Linux to assign BARs itself.
        pci_probe: machine.version >= (4, 2),
        max_cpus: xics_servers(machine, smp),
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

/// An RTAS call by name, its arguments and how many results the caller
/// has room for: the results (status first), or `None` for a call this
/// board does not have.
pub(super) fn rtas(board: &Board, name: &str, args: &[u32], nret: usize) -> Option<Vec<u32>> {
    let Platform::Spapr {
        phb,
        rtc,
        ics,
        events,
        console,
    } = &board.platform
    else {
        return None;
    };
    let status = |r: i32| r as u32;
    // Calls that take the wrong number of arguments or results get
    // QEMU's parameter error (PCI configuration: its hardware error).
    let param_error = || Some(vec![status(RTAS_PARAM_ERROR)]);
    match name {
        "display-character" => {
            // QEMU writes it to the spapr-vty console; vmm's is -serial.
            let Some(&c) = args.first() else {
                return Some(vec![status(RTAS_HW_ERROR)]);
            };
            let mut out = console.lock().expect("console lock");
            let _ = out.write_all(&[c as u8]).and_then(|_| out.flush());
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
    let phb = phb.lock().expect("phb lock");
    let mut root = board.pci.lock().expect("pci lock");
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
