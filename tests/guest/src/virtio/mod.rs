//! virtio-pci drivers, at CPL3, polling or with MSI-X interrupts.
//!
//! For each virtio function: which transports it offers (legacy I/O BAR,
//! modern capabilities), which one the driver uses (`virtio_mode=` on the
//! command line: auto = modern when offered), feature negotiation, then a
//! device test: blk write/flush/read-back, net echo through a host peer,
//! rng read, console write.

mod blk;
mod console;
mod net;
pub mod queue;
mod rng;
pub mod transport;

use crate::cmdline::Cmdline;
use crate::io::{read32, write32};
use crate::pci::{BdfFmt, Bus, Cfg, Func};
use crate::{clock, println, report, smp};
use queue::Queue;
use transport::{Transport, NO_VECTOR};

pub const F_VERSION_1: u64 = 1 << 32;

const S_ACK: u8 = 1;
const S_DRIVER: u8 = 2;
const S_DRIVER_OK: u8 = 4;
const S_FEATURES_OK: u8 = 8;
const S_FAILED: u8 = 128;

extern "C" {
    static irq_counts: [u64; 256];
}

fn irq_count(vector: u8) -> u64 {
    // SAFETY: boot.S's counters, incremented atomically by the CPL0 stub.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(irq_counts[vector as usize])) }
}

/// A device with its transport, ready for its queues.
pub struct Dev {
    pub bdf: u16,
    pub t: Transport,
    pub features: u64,
    /// MSI-X vector for every queue, when interrupts are on.
    pub vector: Option<u8>,
    pub timeout_ms: u64,
    irq_seen: core::cell::Cell<u64>,
    irq_missing: core::cell::Cell<u32>,
}

impl Dev {
    pub fn queue(&self, index: u16) -> Option<Queue> {
        let max = self.t.queue_max(index);
        if max == 0 {
            return None;
        }
        // Legacy queues have the device's size; modern may shrink it.
        let size = match self.t {
            Transport::Legacy { .. } => max,
            Transport::Modern { .. } => max.min(256),
        };
        let q = Queue::new(index, size)?;
        let vec = if self.vector.is_some() { 0 } else { NO_VECTOR };
        if !self.t.setup_queue(&q, vec) {
            println!(
                "virtio.{}.queue{} msix_vector_refused",
                BdfFmt(self.bdf),
                index
            );
        }
        Some(q)
    }

    /// Notifies queue `q`, remembering the interrupt count at that moment.
    pub fn kick(&self, q: u16) {
        if let Some(v) = self.vector {
            self.irq_seen.set(irq_count(v));
        }
        self.t.notify(q);
    }

    /// Waits for the device to return a used element on `q`. With MSI-X,
    /// an interrupt must also have arrived since the last kick (it may come
    /// before this call: the device can complete during the notify; one
    /// interrupt may cover several queues of the device).
    pub fn wait_used(&self, q: &mut Queue) -> Option<(u32, u32)> {
        self.wait_used_for(q, self.timeout_ms)
    }

    /// [`Dev::wait_used`] with its own timeout.
    pub fn wait_used_for(&self, q: &mut Queue, timeout_ms: u64) -> Option<(u32, u32)> {
        let t0 = clock::now_ns(0);
        let timed_out = || clock::now_ns(0) - t0 > timeout_ms * 1_000_000;
        let used = loop {
            if let Some(u) = q.pop_used() {
                break u;
            }
            if timed_out() {
                return None;
            }
            core::hint::spin_loop();
        };
        if let Some(v) = self.vector {
            while irq_count(v) == self.irq_seen.get() && !timed_out() {
                core::hint::spin_loop();
            }
            if irq_count(v) == self.irq_seen.get() {
                println!("virtio.{}.irq_missing vector={:#x}", BdfFmt(self.bdf), v);
                self.irq_missing.set(self.irq_missing.get() + 1);
            }
        }
        Some(used)
    }

    pub fn driver_ok(&self) {
        self.t
            .set_status(S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    }
}

/// The virtio device type of a function (1 net, 2 blk, 3 console, 4 rng).
fn device_type(cfg: Cfg, f: &Func) -> Option<u16> {
    if f.vendor != 0x1af4 {
        return None;
    }
    match f.device {
        0x1000..=0x103f => Some(cfg.read16(f.bdf, 0x2e)),
        0x1040..=0x107f => Some(f.device - 0x1040),
        _ => None,
    }
}

fn type_name(t: u16) -> &'static str {
    match t {
        1 => "net",
        2 => "blk",
        3 => "console",
        4 => "rng",
        _ => "other",
    }
}

/// Enables MSI-X with table entry 0 aimed at the BSP's vector `vector`.
fn enable_msix(cfg: Cfg, f: &Func, vector: u8) -> bool {
    let Some(cap) = f.cap(0x11) else { return false };
    let cap = cap as u16;
    let table = cfg.read32(f.bdf, cap + 4);
    let bar = &f.bars[(table & 7) as usize];
    if bar.addr == 0 {
        return false;
    }
    let entry = bar.addr + (table & !7) as u64;
    write32(entry, 0xfee0_0000 | smp::apic_id_self() << 12);
    write32(entry + 4, 0);
    write32(entry + 8, vector as u32);
    write32(entry + 12, 0);
    let ctl = cfg.read16(f.bdf, cap + 2);
    println!(
        "virtio.{} msix table_size={}",
        BdfFmt(f.bdf),
        (ctl & 0x7ff) + 1
    );
    cfg.write16(f.bdf, cap + 2, (ctl | 1 << 15) & !(1 << 14));
    read32(entry + 8) == vector as u32
}

/// Finds, initialises and exercises every virtio function.
pub fn run(bus: &Bus, cmd: &Cmdline) {
    let cfg = bus.cfg();
    let mode = cmd.get("virtio_mode").unwrap_or("auto");
    let use_msix = cmd.flag("msix");
    let timeout_ms = cmd.u64("virtio_timeout_ms", 5000);
    let mut count = 0u32;
    for (i, f) in bus.funcs().iter().enumerate() {
        let Some(ty) = device_type(cfg, f) else {
            continue;
        };
        count += 1;
        let name = type_name(ty);
        let offer = transport::offer(cfg, f);
        let offered = match (offer.legacy_io.is_some(), offer.modern.is_some()) {
            (true, true) => "legacy+modern",
            (true, false) => "legacy",
            (false, true) => "modern",
            (false, false) => "none",
        };
        let want_modern = match mode {
            "legacy" => false,
            "modern" => true,
            _ => offer.modern.is_some(),
        };
        let t = match (want_modern, offer.modern, offer.legacy_io) {
            (true, Some((common, notify, notify_mul, isr, device)), _) => Transport::Modern {
                common,
                notify,
                notify_mul,
                isr,
                device,
            },
            (false, _, Some(io)) => Transport::Legacy { io, msix: false },
            _ => {
                println!(
                    "virtio.{} type={} pci_id={:#06x} offered={} used=none",
                    BdfFmt(f.bdf),
                    name,
                    f.device,
                    offered
                );
                report::check("virtio.mode_offered", false);
                continue;
            }
        };
        // Bus master, memory and I/O decoding.
        let cmdreg = cfg.read16(f.bdf, 4);
        cfg.write16(f.bdf, 4, cmdreg | 0x7);

        let vector = if use_msix { Some(0x40 + i as u8) } else { None };
        let msix_on = vector.is_some_and(|v| enable_msix(cfg, f, v));
        let t = match t {
            Transport::Legacy { io, .. } => Transport::Legacy { io, msix: msix_on },
            m => m,
        };
        t.reset();
        t.set_status(S_ACK);
        t.set_status(S_ACK | S_DRIVER);
        let offered_features = t.device_features();
        let wanted = match ty {
            2 => blk::FEATURES,
            1 => net::FEATURES,
            _ => 0,
        } | if matches!(t, Transport::Modern { .. }) {
            F_VERSION_1
        } else {
            0
        };
        let features = offered_features & wanted;
        t.set_driver_features(features);
        if let Transport::Modern { .. } = t {
            t.set_status(S_ACK | S_DRIVER | S_FEATURES_OK);
            if t.status() & S_FEATURES_OK == 0 || features & F_VERSION_1 == 0 {
                t.set_status(S_FAILED);
                println!(
                    "virtio.{} features_rejected offered={:#x}",
                    BdfFmt(f.bdf),
                    offered_features
                );
                report::check("virtio.features", false);
                continue;
            }
        }
        if msix_on {
            t.set_config_vector(NO_VECTOR);
            crate::io::enable_interrupts();
        }
        println!(
            "virtio.{} type={} pci_id={:#06x} offered={} used={} device_features={:#x} driver_features={:#x} irq={}",
            BdfFmt(f.bdf),
            name,
            f.device,
            offered,
            t.name(),
            offered_features,
            features,
            if msix_on { "msix" } else { "poll" }
        );
        let vector = vector.filter(|_| msix_on);
        let irq_seen = core::cell::Cell::new(vector.map(irq_count).unwrap_or(0));
        let dev = Dev {
            bdf: f.bdf,
            t,
            features,
            vector,
            timeout_ms,
            irq_seen,
            irq_missing: Default::default(),
        };
        match ty {
            2 => blk::test(&dev, cmd),
            1 => net::test(&dev, cmd),
            3 => console::test(&dev, cmd),
            4 => rng::test(&dev),
            _ => {}
        }
        if let Some(v) = dev.vector {
            let missing = dev.irq_missing.get();
            println!(
                "virtio.{}.interrupts={} missing={}",
                BdfFmt(f.bdf),
                irq_count(v),
                missing
            );
            report::check("virtio.msix", irq_count(v) > 0 && missing == 0);
        }
        dev.t.reset();
        if msix_on {
            crate::io::disable_interrupts();
        }
    }
    println!("virtio.devices={}", count);
    if let Some(want) = cmd
        .get("virtio_devices")
        .and_then(crate::cmdline::parse_u64)
    {
        report::check("virtio.device_count", want == count as u64);
    }
}
