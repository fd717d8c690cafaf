//! The virtio-pci transport: legacy (I/O BAR 0), modern (virtio 1.x
//! vendor capabilities in memory BAR 4) or both (transitional), MSI-X in
//! BAR 1, in QEMU's layout.
//!
//! Which transports a device exposes follows QEMU: `disable-legacy`
//! (`auto` = legacy unless the device sits behind a PCIe port),
//! `disable-modern`, and the backend: one without `VIRTIO_F_VERSION_1` gets
//! no modern interface unless `x-ignore-backend-features=on` (what
//! `hw_compat_2_7` sets, keeping 2.7's behaviour).

use super::msix::{self, Msix, MsixState};
use super::worker::{Served, Worker};
use super::*;
use crate::pci::config::{self, ConfigSpace, PciDeviceState};
use crate::pci::{BarDecl, BarKind, PciFunction};
use migration::vmstate::Vmstate;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const BAR_LEGACY: u8 = 0;
const BAR_MSIX: u8 = 1;
const BAR_MODERN: u8 = 4;
/// The MSI-X capability's ID.
const MSIX_CAP_ID: u8 = 0x11;

// Regions of the modern BAR (QEMU's layout).
const COMMON: u64 = 0x0000;
const ISR: u64 = 0x1000;
const DEVICE: u64 = 0x2000;
const NOTIFY: u64 = 0x3000;
const COMMON_LEN: u32 = 0x38;

// Vendor capability types.
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;

// Capability offsets in config space.
const CAP_OFF_COMMON: u16 = 0x40;
const CAP_OFF_ISR: u16 = 0x50;
const CAP_OFF_DEVICE: u16 = 0x60;
const CAP_OFF_NOTIFY: u16 = 0x70;
const CAP_OFF_PCI_CFG: u16 = 0x84;
const CAP_OFF_MSIX: u16 = 0x98;

/// `vectors` left at its default: one per queue plus one for
/// configuration changes.
pub const AUTO_VECTORS: u64 = u32::MAX as u64;

/// Transport properties of a virtio-pci device.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// `disable-legacy`: `None` = auto.
    pub disable_legacy: Option<bool>,
    pub disable_modern: bool,
    pub ignore_backend_features: bool,
    /// The device sits behind a PCIe port (decides `disable-legacy=auto`).
    pub on_pcie_port: bool,
    /// MSI-X vectors (0 = no MSI-X).
    pub vectors: u16,
    /// One notify page per queue (QEMU's `page-per-vq`, on for 2.7).
    pub page_per_vq: bool,
    /// The INTx line (GSI) when MSI-X is off.
    pub intx_gsi: u32,
    /// The configuration space's interrupt line register at reset (what
    /// firmware would have written there).
    pub interrupt_line: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{device}: disable-legacy=on, but the backend does not support VIRTIO_F_VERSION_1, so the device would have no interface left (use disable-legacy=off, or x-ignore-backend-features=on to expose modern anyway)")]
    ModernOnlyWithoutVersion1 { device: String },
    #[error(
        "{device}: disable-legacy=on and disable-modern=on leave the device without an interface"
    )]
    NoTransport { device: String },
    #[error("{device}: vectors={vectors} is more than the {max} MSI-X vectors vmm supports")]
    TooManyVectors {
        device: String,
        vectors: u16,
        max: u16,
    },
    #[error("{device}: cannot start the device thread: {err}")]
    Worker { device: String, err: String },
}

/// Which interfaces a device exposes: (legacy, modern).
pub fn transports(
    device: &str,
    tc: &TransportConfig,
    backend_version_1: bool,
) -> Result<(bool, bool), Error> {
    let legacy = match tc.disable_legacy {
        Some(d) => !d,
        None => !tc.on_pcie_port,
    };
    let mut modern = !tc.disable_modern;
    if modern && !backend_version_1 && !tc.ignore_backend_features {
        if !legacy {
            return Err(Error::ModernOnlyWithoutVersion1 {
                device: device.into(),
            });
        }
        log::info!("{device}: the backend lacks VIRTIO_F_VERSION_1: legacy interface only");
        modern = false;
    }
    if !legacy && !modern {
        return Err(Error::NoTransport {
            device: device.into(),
        });
    }
    Ok((legacy, modern))
}

struct Inner {
    common: Common,
    dev: Box<dyn VirtioDevice>,
}

/// What the vCPU side and the device thread share.
pub struct Shared {
    inner: Mutex<Inner>,
    msix: Mutex<Msix>,
    vm: Arc<dyn VmOps>,
    mem: Memory,
    intx_gsi: u32,
    /// Whether this function holds its INTx line up: the line is told
    /// only of changes, so a board can combine the functions that share
    /// a pin (QEMU's irq_count).
    intx: AtomicBool,
    /// The VM is stopped: the device thread leaves guest memory alone.
    paused: AtomicBool,
    name: String,
}

impl Served for Shared {
    /// Serves queue `q` after a doorbell.
    fn process(&self, q: usize) {
        let mut inner = self.inner.lock().expect("virtio lock");
        // Checked under the lock: `pause` sets the flag, then takes the
        // lock, so once it returns no thread is past this check.
        if self.paused.load(Ordering::SeqCst) {
            return;
        }
        let Inner { common, dev } = &mut *inner;
        if !common.running() || !common.queues.get(q).is_some_and(|q| q.ready()) {
            return;
        }
        let mut used = vec![];
        let r = dev.process(
            q,
            &mut Queues {
                mem: &self.mem,
                queues: &mut common.queues,
                used: &mut used,
            },
        );
        self.finish(common, r, &used);
    }

    /// The backend has input (a tap frame).
    fn backend_ready(&self) {
        let mut inner = self.inner.lock().expect("virtio lock");
        // Under the lock, as in `process`.
        if self.paused.load(Ordering::SeqCst) {
            return;
        }
        let Inner { common, dev } = &mut *inner;
        if !common.running() {
            return;
        }
        let mut used = vec![];
        let r = dev.backend_ready(&mut Queues {
            mem: &self.mem,
            queues: &mut common.queues,
            used: &mut used,
        });
        self.finish(common, r, &used);
    }
}

impl Shared {
    fn finish(&self, common: &mut Common, r: Result<(), GuestError>, used: &[u16]) {
        for &q in used {
            let needed = common.queues[q as usize]
                .needs_notification(&self.mem)
                .unwrap_or(true);
            if needed {
                self.interrupt(common, common.vectors[q as usize], 1);
            }
        }
        if let Err(e) = r {
            // QEMU's virtio_error: stop, tell the driver, keep the VM.
            crate::guest_warn!(
                "{}: {e}; the device stops until the driver resets it",
                self.name
            );
            common.broken = true;
            common.status |= S_NEEDS_RESET;
            common.config_generation = common.config_generation.wrapping_add(1);
            self.interrupt(common, common.config_vector, 2);
        }
    }

    /// Raises `vector` (MSI-X on) or the ISR bit `isr` + INTx.
    fn interrupt(&self, common: &mut Common, vector: u16, isr: u8) {
        let mut msix = self.msix.lock().expect("msix lock");
        if msix.enabled {
            if vector != NO_VECTOR {
                msix.notify(&*self.vm, vector);
            }
            return;
        }
        drop(msix);
        common.isr |= isr;
        self.set_intx(true);
    }

    /// Raises or lowers this function's INTx line, telling the VM of a
    /// change only.
    fn set_intx(&self, level: bool) {
        if self.intx.swap(level, Ordering::SeqCst) == level {
            return;
        }
        if let Err(e) = self.vm.set_irq_line(self.intx_gsi, level) {
            log::warn!("{}: INTx on GSI {}: {e}", self.name, self.intx_gsi);
        }
    }

    fn read_isr(&self, common: &mut Common) -> u8 {
        let v = std::mem::take(&mut common.isr);
        if v != 0 {
            self.set_intx(false);
        }
        v
    }
}

/// A virtio device on PCI.
pub struct VirtioPci {
    name: String,
    cfg: ConfigSpace,
    bars: Vec<BarDecl>,
    legacy: bool,
    modern: bool,
    notify_mul: u32,
    vectors: u16,
    offered: u64,
    queue_count: usize,
    shared: Arc<Shared>,
    kicks: Vec<EventFd>,
    doorbells: Vec<(usize, Doorbell)>,
    vmstate: &'static Description,
    _worker: Worker,
}

fn class_of(device_type: u16) -> u32 {
    match device_type {
        TYPE_NET => 0x02_00_00,
        TYPE_BLOCK => 0x01_00_00,
        TYPE_CONSOLE => 0x07_80_00,
        _ => 0x00_ff_00,
    }
}

impl VirtioPci {
    /// `name` is for messages (the device's id or type and address).
    pub fn new(
        name: String,
        dev: Box<dyn VirtioDevice>,
        tc: &TransportConfig,
        vm: Arc<dyn VmOps>,
        mem: Memory,
        vmstate: &'static Description,
    ) -> Result<VirtioPci, Error> {
        let features = dev.features();
        let (legacy, modern) = transports(&name, tc, features & F_VERSION_1 != 0)?;
        if tc.vectors > msix::MAX_VECTORS {
            return Err(Error::TooManyVectors {
                device: name,
                vectors: tc.vectors,
                max: msix::MAX_VECTORS,
            });
        }
        let ty = dev.device_type();
        let sizes = dev.queue_sizes();
        let queue_count = sizes.len();
        // Transitional devices use the 0x1000 range with the type in the
        // subsystem ID; modern-only ones 0x1040 + type, revision 1.
        let (device_id, revision) = if legacy {
            let id = match ty {
                TYPE_NET => 0x1000,
                TYPE_BLOCK => 0x1001,
                TYPE_CONSOLE => 0x1003,
                TYPE_RNG => 0x1005,
                t => 0x1040 + t,
            };
            (id, 0)
        } else {
            (0x1040 + ty, 1)
        };
        let mut cfg = ConfigSpace::new(0x1af4, device_id, class_of(ty), revision);
        cfg.set_wmask_u16(config::COMMAND, 0x0407);
        cfg.set_u16(config::STATUS, 0x0010); // capability list
        cfg.set_u16(config::SUBSYSTEM_VENDOR_ID, 0x1af4);
        cfg.set_u16(config::SUBSYSTEM_ID, if legacy { ty } else { 0x1100 });
        cfg.set_u8(config::INTERRUPT_PIN, 1);
        cfg.set_u8(config::INTERRUPT_LINE, tc.interrupt_line);
        cfg.wmask[config::INTERRUPT_LINE as usize] = 0xff;

        let mut bars = vec![];
        let config_len = {
            let mut probe = [0u8; 1];
            // The device config size: what the device answers, up to 256.
            (0..256u64)
                .rev()
                .find(|&o| {
                    dev.config_read(o, &mut probe);
                    probe[0] != 0
                })
                .map_or(0, |o| o + 1)
                .max(dev_config_len(ty))
        };
        if legacy {
            let size = (24 + config_len).next_power_of_two().max(64);
            bars.push(BarDecl {
                index: BAR_LEGACY,
                kind: BarKind::Io,
                size,
            });
        }
        if tc.vectors > 0 {
            bars.push(BarDecl {
                index: BAR_MSIX,
                kind: BarKind::Mem32,
                size: msix::BAR_SIZE,
            });
        }
        let notify_mul = if tc.page_per_vq { 0x1000 } else { 4 };
        if modern {
            let notify_len = notify_mul as u64 * QUEUE_MAX as u64;
            let size = (NOTIFY + notify_len).next_power_of_two();
            bars.push(BarDecl {
                index: BAR_MODERN,
                kind: BarKind::Mem64 { prefetch: true },
                size,
            });
        }
        for b in &bars {
            cfg.declare_bar(b.index, b.kind, b.size);
        }

        // Capabilities: the virtio vendor ones (modern), then MSI-X.
        let mut caps: Vec<u16> = vec![];
        if modern {
            let vendor = |cfg: &mut ConfigSpace, at: u16, ty: u8, off: u64, len: u32, extra: u8| {
                cfg.set_u8(at, 0x09);
                cfg.set_u8(at + 2, 16 + extra);
                cfg.set_u8(at + 3, ty);
                cfg.set_u8(at + 4, BAR_MODERN);
                cfg.set_u32(at + 8, off as u32);
                cfg.set_u32(at + 12, len);
            };
            vendor(&mut cfg, CAP_OFF_COMMON, CAP_COMMON, COMMON, 0x1000, 0);
            vendor(&mut cfg, CAP_OFF_ISR, CAP_ISR, ISR, 0x1000, 0);
            vendor(&mut cfg, CAP_OFF_DEVICE, CAP_DEVICE, DEVICE, 0x1000, 0);
            vendor(
                &mut cfg,
                CAP_OFF_NOTIFY,
                CAP_NOTIFY,
                NOTIFY,
                notify_mul * QUEUE_MAX as u32,
                4,
            );
            cfg.set_u32(CAP_OFF_NOTIFY + 16, notify_mul);
            // The PCI configuration access window: the driver picks bar,
            // offset and length, then reads or writes the data word.
            cfg.set_u8(CAP_OFF_PCI_CFG, 0x09);
            cfg.set_u8(CAP_OFF_PCI_CFG + 2, 20);
            cfg.set_u8(CAP_OFF_PCI_CFG + 3, CAP_PCI_CFG);
            cfg.wmask[CAP_OFF_PCI_CFG as usize + 4] = 0xff;
            cfg.set_wmask_u32(CAP_OFF_PCI_CFG + 8, 0xffff_ffff);
            cfg.set_wmask_u32(CAP_OFF_PCI_CFG + 12, 0xffff_ffff);
            cfg.set_wmask_u32(CAP_OFF_PCI_CFG + 16, 0xffff_ffff);
            caps.extend([
                CAP_OFF_COMMON,
                CAP_OFF_ISR,
                CAP_OFF_DEVICE,
                CAP_OFF_NOTIFY,
                CAP_OFF_PCI_CFG,
            ]);
        }
        if tc.vectors > 0 {
            cfg.set_u8(CAP_OFF_MSIX, MSIX_CAP_ID);
            cfg.set_u16(CAP_OFF_MSIX + 2, tc.vectors - 1);
            cfg.set_wmask_u16(CAP_OFF_MSIX + 2, 0xc000);
            cfg.set_u32(
                CAP_OFF_MSIX + 4,
                msix::TABLE_OFFSET as u32 | BAR_MSIX as u32,
            );
            cfg.set_u32(CAP_OFF_MSIX + 8, msix::PBA_OFFSET as u32 | BAR_MSIX as u32);
            caps.push(CAP_OFF_MSIX);
        }
        if let Some(&first) = caps.first() {
            cfg.set_u8(config::CAPABILITIES, first as u8);
            for w in caps.windows(2) {
                cfg.set_u8(w[0] + 1, w[1] as u8);
            }
        }

        let offered = features | if modern { F_VERSION_1 } else { 0 };
        let backend = dev.backend_fd();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                common: Common::new(&sizes),
                dev,
            }),
            msix: Mutex::new(Msix::new(tc.vectors)),
            vm,
            mem,
            intx_gsi: tc.intx_gsi,
            intx: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            name: name.clone(),
        });
        let err = |e: std::io::Error| Error::Worker {
            device: name.clone(),
            err: e.to_string(),
        };
        let kicks: Vec<EventFd> = (0..queue_count)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
            .collect::<Result<_, _>>()
            .map_err(err)?;
        let worker_kicks = kicks
            .iter()
            .map(|k| k.try_clone())
            .collect::<Result<_, _>>()
            .map_err(err)?;
        let short: String = name.chars().take(15).collect();
        let worker = Worker::spawn(short, shared.clone(), worker_kicks, backend).map_err(err)?;
        Ok(VirtioPci {
            name,
            cfg,
            bars,
            legacy,
            modern,
            notify_mul,
            vectors: tc.vectors,
            offered,
            queue_count,
            shared,
            kicks,
            doorbells: vec![],
            vmstate,
            _worker: worker,
        })
    }

    fn kick(&self, q: usize) {
        if let Some(k) = self.kicks.get(q) {
            let _ = k.write(1);
        }
    }

    fn kick_all(&self) {
        (0..self.queue_count).for_each(|q| self.kick(q));
    }

    /// Registers the doorbells KVM should handle for the BARs as they are
    /// decoded now, dropping stale ones.
    fn update_doorbells(&mut self) {
        let cmd = self.cfg.read(config::COMMAND, 2);
        let mut want = vec![];
        if self.legacy && cmd & 1 != 0 {
            let base = self.cfg.bar_address(BAR_LEGACY, BarKind::Io);
            if base != 0 {
                want.extend((0..self.queue_count).map(|q| {
                    (
                        q,
                        Doorbell::Pio {
                            port: base as u16 + 16,
                            queue: q as u16,
                        },
                    )
                }));
            }
        }
        if self.modern && cmd & 2 != 0 {
            let base = self
                .cfg
                .bar_address(BAR_MODERN, BarKind::Mem64 { prefetch: true });
            if base != 0 {
                want.extend((0..self.queue_count).map(|q| {
                    (
                        q,
                        Doorbell::Mmio {
                            addr: base + NOTIFY + q as u64 * self.notify_mul as u64,
                        },
                    )
                }));
            }
        }
        if want == self.doorbells {
            return;
        }
        for (q, bell) in std::mem::take(&mut self.doorbells) {
            if let Err(e) = self.shared.vm.remove_doorbell(&self.kicks[q], bell) {
                log::warn!("{}: cannot remove doorbell {bell:?}: {e}", self.name);
            }
        }
        for (q, bell) in want {
            match self.shared.vm.add_doorbell(&self.kicks[q], bell) {
                Ok(()) => self.doorbells.push((q, bell)),
                // The exit path still works, only slower.
                Err(e) => log::warn!("{}: doorbell {bell:?} through exits only: {e}", self.name),
            }
        }
    }

    fn msix_control(&self) -> (bool, bool) {
        if self.vectors == 0 {
            return (false, false);
        }
        let ctl = self.cfg.read(CAP_OFF_MSIX + 2, 2);
        (ctl & 0x8000 != 0, ctl & 0x4000 != 0)
    }

    /// A status write; `modern` says which interface it came through (a
    /// modern driver must accept VERSION_1, or FEATURES_OK is refused).
    fn set_status(&self, inner: &mut Inner, status: u8, modern: bool) {
        let c = &mut inner.common;
        if status == 0 {
            c.reset();
            inner.dev.reset();
            self.shared.set_intx(false);
            return;
        }
        let mut status = status;
        if status & S_FEATURES_OK != 0 && c.status & S_FEATURES_OK == 0 {
            let ok = c.driver_features & !self.offered == 0
                && (!modern || c.driver_features & F_VERSION_1 != 0);
            if !ok {
                log::info!(
                    "{}: driver features {:#x} refused (offered {:#x})",
                    self.name,
                    c.driver_features,
                    self.offered
                );
                status &= !S_FEATURES_OK;
            }
        }
        let starting = status & S_DRIVER_OK != 0 && c.status & S_DRIVER_OK == 0;
        c.status = status | (c.status & S_NEEDS_RESET);
        if starting {
            inner.dev.activate(c.driver_features);
            // Buffers made available before DRIVER_OK are served now.
            self.kick_all();
        }
    }

    fn legacy_config_base(&self) -> u64 {
        if self.msix_control().0 {
            24
        } else {
            20
        }
    }

    fn legacy_read(&self, off: u64, data: &mut [u8]) {
        let mut inner = self.shared.inner.lock().expect("virtio lock");
        let base = self.legacy_config_base();
        if off >= base {
            inner.dev.config_read(off - base, data);
            return;
        }
        let c = &mut inner.common;
        let v: u32 = match off {
            0 => self.offered as u32,
            4 => c.driver_features as u32,
            8 => c.selected().map_or(0, |q| (q.desc_table() >> 12) as u32),
            12 => c.selected().map_or(0, |q| q.max_size() as u32),
            14 => c.queue_sel as u32,
            18 => c.status as u32,
            19 => self.shared.read_isr(c) as u32,
            20 => c.config_vector as u32,
            22 => {
                let sel = c.queue_sel as usize;
                c.vectors.get(sel).copied().unwrap_or(NO_VECTOR) as u32
            }
            _ => 0,
        };
        put(data, v);
    }

    fn legacy_write(&self, off: u64, data: &[u8]) {
        let mut inner = self.shared.inner.lock().expect("virtio lock");
        let base = self.legacy_config_base();
        if off >= base {
            inner.dev.config_write(off - base, data);
            return;
        }
        let v = get(data);
        match off {
            4 => inner.common.driver_features = v as u64,
            8 => {
                let c = &mut inner.common;
                if let Some(q) = c.selected() {
                    if v == 0 {
                        q.reset();
                    } else {
                        // The legacy layout: descriptors, available ring,
                        // used ring on the next 4 KiB boundary.
                        let size = q.max_size() as u64;
                        let desc = (v as u64) << 12;
                        let avail = desc + 16 * size;
                        let used = (avail + 6 + 2 * size).next_multiple_of(4096);
                        q.set_size(size as u16);
                        q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
                        q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
                        q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
                        q.set_ready(true);
                    }
                }
            }
            14 => inner.common.queue_sel = v as u16,
            16 => {
                drop(inner);
                self.kick(v as usize);
            }
            18 => self.set_status(&mut inner, v as u8, false),
            20 => inner.common.config_vector = self.valid_vector(v as u16),
            22 => {
                let vec = self.valid_vector(v as u16);
                let sel = inner.common.queue_sel as usize;
                if let Some(slot) = inner.common.vectors.get_mut(sel) {
                    *slot = vec;
                }
            }
            _ => log::debug!("{}: legacy write to {off:#x} ignored", self.name),
        }
    }

    fn valid_vector(&self, v: u16) -> u16 {
        if v < self.vectors {
            v
        } else {
            NO_VECTOR
        }
    }

    fn common_read(&self, off: u64, data: &mut [u8]) {
        let mut inner = self.shared.inner.lock().expect("virtio lock");
        let c = &mut inner.common;
        let sel = c.queue_sel as usize;
        let q = c.queues.get(sel);
        let feat = |s: u32| match s {
            0 => self.offered as u32,
            1 => (self.offered >> 32) as u32,
            _ => 0,
        };
        let v: u64 = match off {
            0x00 => c.device_features_sel as u64,
            0x04 => feat(c.device_features_sel) as u64,
            0x08 => c.driver_features_sel as u64,
            0x0c => match c.driver_features_sel {
                0 => c.driver_features & 0xffff_ffff,
                1 => c.driver_features >> 32,
                _ => 0,
            },
            0x10 => c.config_vector as u64,
            0x12 => c.queues.len() as u64,
            0x14 => c.status as u64,
            0x15 => c.config_generation as u64,
            0x16 => c.queue_sel as u64,
            0x18 => q.map_or(0, |q| q.size() as u64),
            0x1a => c.vectors.get(sel).copied().unwrap_or(NO_VECTOR) as u64,
            0x1c => q.is_some_and(|q| q.ready()) as u64,
            0x1e => sel as u64,
            0x20 => q.map_or(0, |q| q.desc_table()),
            0x24 => q.map_or(0, |q| q.desc_table() >> 32),
            0x28 => q.map_or(0, |q| q.avail_ring()),
            0x2c => q.map_or(0, |q| q.avail_ring() >> 32),
            0x30 => q.map_or(0, |q| q.used_ring()),
            0x34 => q.map_or(0, |q| q.used_ring() >> 32),
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes()[..data.len().min(8)]);
    }

    fn common_write(&self, off: u64, data: &[u8]) {
        let mut inner = self.shared.inner.lock().expect("virtio lock");
        let v = get(data);
        let wide = if data.len() == 8 {
            u64::from_le_bytes(data.try_into().unwrap_or([0; 8]))
        } else {
            v as u64
        };
        let c = &mut inner.common;
        let sel = c.queue_sel as usize;
        match off {
            0x00 => c.device_features_sel = v,
            0x08 => c.driver_features_sel = v,
            0x0c => {
                if c.status & S_FEATURES_OK == 0 {
                    match c.driver_features_sel {
                        0 => c.driver_features = (c.driver_features & !0xffff_ffff) | v as u64,
                        1 => {
                            c.driver_features = (c.driver_features & 0xffff_ffff) | (v as u64) << 32
                        }
                        _ => {}
                    }
                }
            }
            0x10 => c.config_vector = self.valid_vector(v as u16),
            0x14 => self.set_status(&mut inner, v as u8, true),
            0x16 => c.queue_sel = v as u16,
            0x18 => {
                if let Some(q) = c.queues.get_mut(sel) {
                    // A size the ring cannot have is ignored (spec: a power
                    // of two up to the maximum).
                    if q.try_set_size(v as u16).is_err() {
                        crate::guest_warn!("{}: queue {sel}: size {v} refused", self.name);
                    }
                }
            }
            0x1a => {
                let vec = self.valid_vector(v as u16);
                if let Some(slot) = c.vectors.get_mut(sel) {
                    *slot = vec;
                }
            }
            0x1c => {
                if let Some(q) = c.queues.get_mut(sel) {
                    q.set_ready(v & 1 != 0);
                }
            }
            0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34 => {
                if let Some(q) = c.queues.get_mut(sel) {
                    let (lo, hi) = if data.len() == 8 {
                        (Some(wide as u32), Some((wide >> 32) as u32))
                    } else if off & 4 == 0 {
                        (Some(v), None)
                    } else {
                        (None, Some(v))
                    };
                    match off & !7 {
                        0x20 => q.set_desc_table_address(lo, hi),
                        0x28 => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => log::debug!("{}: common config write to {off:#x} ignored", self.name),
        }
    }

    fn modern_read(&self, off: u64, data: &mut [u8]) {
        match off {
            COMMON..ISR if off < COMMON + COMMON_LEN as u64 => self.common_read(off, data),
            ISR..DEVICE => {
                let mut inner = self.shared.inner.lock().expect("virtio lock");
                let v = if off == ISR {
                    self.shared.read_isr(&mut inner.common)
                } else {
                    0
                };
                data.fill(0);
                data[0] = v;
            }
            DEVICE..NOTIFY => self
                .shared
                .inner
                .lock()
                .expect("virtio lock")
                .dev
                .config_read(off - DEVICE, data),
            _ => data.fill(0),
        }
    }

    fn modern_write(&self, off: u64, data: &[u8]) {
        match off {
            COMMON..ISR => self.common_write(off, data),
            ISR..DEVICE => {}
            DEVICE..NOTIFY => self
                .shared
                .inner
                .lock()
                .expect("virtio lock")
                .dev
                .config_write(off - DEVICE, data),
            _ => self.kick(((off - NOTIFY) / self.notify_mul as u64) as usize),
        }
    }

    /// The PCI configuration access capability's data word.
    fn pci_cfg_access(&mut self, write: Option<u32>) -> u32 {
        let bar = self.cfg.data[CAP_OFF_PCI_CFG as usize + 4];
        let off = self.cfg.read(CAP_OFF_PCI_CFG + 8, 4) as u64;
        let len = self.cfg.read(CAP_OFF_PCI_CFG + 12, 4) as usize;
        if !matches!(len, 1 | 2 | 4) {
            return 0;
        }
        match write {
            Some(v) => {
                self.bar_write(bar, off, &v.to_le_bytes()[..len]);
                0
            }
            None => {
                let mut b = [0u8; 4];
                self.bar_read(bar, off, &mut b[..len]);
                u32::from_le_bytes(b)
            }
        }
    }
}

/// The device config size per type (what the driver may read).
fn dev_config_len(ty: u16) -> u64 {
    match ty {
        TYPE_BLOCK => 60,
        TYPE_NET => 12,
        TYPE_CONSOLE => 12,
        _ => 0,
    }
}

fn get(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

fn put(data: &mut [u8], v: u32) {
    let n = data.len().min(4);
    data[..n].copy_from_slice(&v.to_le_bytes()[..n]);
}

/// The `vectors` a saved virtio-pci state shows: the MSI-X table size in
/// its configuration space (0 without the capability); `None` for a state
/// that is not a virtio-pci function's. What a source that carries no
/// configuration (up to vmm 0.2.0) says of it.
pub fn vectors_in_state(st: &State) -> Option<u64> {
    st.get("msix")?;
    let Some(migration::vmstate::Val::Struct(pci)) = st.get("pci") else {
        return None;
    };
    let Some(migration::vmstate::Val::Bytes(config)) = pci.get("config") else {
        return None;
    };
    let at = |i: usize| config.get(i).copied().unwrap_or(0) as u64;
    Some(
        config::find_capability(config, MSIX_CAP_ID)
            .map_or(0, |cap| ((at(cap + 2) | at(cap + 3) << 8) & 0x7ff) + 1),
    )
}

/// What a guest sees of a virtio-pci function beyond its configuration
/// space (`-dump-abi`).
pub struct GuestView {
    pub device_type: u16,
    /// The features offered (what the driver reads from the device).
    pub features: u64,
    pub queue_sizes: Vec<u16>,
    pub vectors: u16,
    pub legacy: bool,
    pub modern: bool,
    /// Bytes between two queues' doorbells.
    pub notify_mul: u32,
    /// The device-specific configuration's first 64 bytes at reset.
    pub device_config: Vec<u8>,
}

impl VirtioPci {
    pub fn guest_view(&self) -> GuestView {
        let inner = self.shared.inner.lock().expect("virtio lock");
        let mut device_config = vec![0u8; 64];
        inner.dev.config_read(0, &mut device_config);
        GuestView {
            device_type: inner.dev.device_type(),
            features: self.offered,
            queue_sizes: inner.dev.queue_sizes(),
            vectors: self.vectors,
            legacy: self.legacy,
            modern: self.modern,
            notify_mul: self.notify_mul,
            device_config,
        }
    }
}

impl VirtioPci {
    /// Takes each part of a saved state in turn (configuration space,
    /// MSI-X, the virtio core, the device), stopping at the first that
    /// refuses.
    fn take(&mut self, device: &str, s: &VirtioPciState<State>) -> Result<(), LoadError> {
        // A part's refusal, under this function's name.
        let part = |e: LoadError| LoadError {
            device: device.to_string(),
            what: format!("{}: {}", e.device, e.what),
            hint: e.hint,
        };
        self.config_mut().load(&s.pci).map_err(|m| {
            crate::pci::config_load_error(device, Some(m), register_name, |o, _| {
                hint_for(o, self.legacy, self.modern)
            })
        })?;
        self.shared.msix.lock().expect("msix lock").load(&s.msix);
        let mut inner = self.shared.inner.lock().expect("virtio lock");
        inner.common.load(&s.virtio).map_err(part)?;
        inner.dev.load(&s.device).map_err(part)
    }
}

impl PciFunction for VirtioPci {
    fn config(&self) -> &ConfigSpace {
        &self.cfg
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.cfg
    }

    fn config_read(&mut self, offset: u16, size: u8) -> u32 {
        if self.modern && offset == CAP_OFF_PCI_CFG + 16 {
            return self.pci_cfg_access(None);
        }
        self.cfg.read(offset, size)
    }

    fn config_write(&mut self, offset: u16, size: u8, value: u32) {
        if self.modern && offset == CAP_OFF_PCI_CFG + 16 {
            self.pci_cfg_access(Some(value));
            return;
        }
        let before = self.msix_control();
        self.cfg.write(offset, size, value);
        let after = self.msix_control();
        if before != after {
            self.shared.msix.lock().expect("msix lock").set_control(
                &*self.shared.vm,
                after.0,
                after.1,
            );
        }
        if offset < 0x28 {
            self.update_doorbells();
        }
    }

    fn bars(&self) -> &[BarDecl] {
        &self.bars
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        match bar {
            BAR_LEGACY if self.legacy => self.legacy_read(offset, data),
            BAR_MSIX if self.vectors > 0 => self
                .shared
                .msix
                .lock()
                .expect("msix lock")
                .read(offset, data),
            BAR_MODERN if self.modern => self.modern_read(offset, data),
            _ => data.fill(0xff),
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        match bar {
            BAR_LEGACY if self.legacy => self.legacy_write(offset, data),
            BAR_MSIX if self.vectors > 0 => {
                let vm = self.shared.vm.clone();
                self.shared
                    .msix
                    .lock()
                    .expect("msix lock")
                    .write(&*vm, offset, data)
            }
            BAR_MODERN if self.modern => self.modern_write(offset, data),
            _ => {}
        }
    }

    fn vmstate(&self) -> &'static Description {
        self.vmstate
    }

    fn state(&self) -> State {
        let inner = self.shared.inner.lock().expect("virtio lock");
        VirtioPciState {
            pci: self.cfg.state(),
            msix: self.shared.msix.lock().expect("msix lock").state(),
            virtio: inner.common.state(),
            device: inner.dev.state(),
        }
        .to_state()
    }

    fn load(&mut self, device: &str, st: &State) -> Result<(), crate::pci::LoadError> {
        let saved = VirtioPciState::<State>::from_state(st, device)?;
        // All or nothing: what the first parts took goes back if a later
        // one refuses (the function's own state always loads).
        let before = VirtioPciState::<State>::from_state(&self.state(), device)?;
        if let Err(e) = self.take(device, &saved) {
            if let Err(again) = self.take(device, &before) {
                log::error!("{device}: its own state does not load back: {again}");
            }
            return Err(e);
        }
        {
            let mut inner = self.shared.inner.lock().expect("virtio lock");
            if inner.common.running() {
                let f = inner.common.driver_features;
                inner.dev.activate(f);
            }
            if inner.common.isr != 0 && !self.msix_control().0 {
                self.shared.set_intx(true);
            }
        }
        let (en, masked) = self.msix_control();
        self.shared
            .msix
            .lock()
            .expect("msix lock")
            .set_control(&*self.shared.vm, en, masked);
        self.update_doorbells();
        // Buffers the source had not yet seen are served here — once the
        // function runs: a destination's stay paused until the migration
        // commits (`resume` kicks them again).
        self.kick_all();
        Ok(())
    }

    fn announce(&mut self) {
        self.shared
            .inner
            .lock()
            .expect("virtio lock")
            .dev
            .announce();
    }

    fn pause(&mut self) {
        self.shared.paused.store(true, Ordering::SeqCst);
        // Wait for the device thread to finish what it is doing.
        drop(self.shared.inner.lock().expect("virtio lock"));
    }

    fn claim(&mut self) -> Result<(), String> {
        self.shared
            .inner
            .lock()
            .expect("virtio lock")
            .dev
            .claim_backend()
    }

    fn release(&mut self) {
        self.shared
            .inner
            .lock()
            .expect("virtio lock")
            .dev
            .release_backend();
    }

    fn resume(&mut self) {
        self.shared.paused.store(false, Ordering::SeqCst);
        // Doorbells rung while paused, and backend input, are served now.
        self.kick_all();
    }
}

/// The register at a config offset, for load errors.
fn register_name(offset: u16) -> Option<&'static str> {
    Some(match offset {
        0x00 => "Vendor/Device ID",
        0x08 => "Class Code/Revision ID",
        0x10..=0x24 => "a Base Address Register",
        0x2c => "Subsystem ID",
        0x34 => "Capabilities Pointer",
        CAP_OFF_MSIX => "MSI-X Message Control (table size)",
        CAP_OFF_COMMON..CAP_OFF_MSIX => "a virtio capability",
        _ => return None,
    })
}

/// Advice for a config mismatch on a virtio device.
fn hint_for(offset: u16, legacy: bool, modern: bool) -> Option<String> {
    // BAR1 holds the MSI-X table: a function without MSI-X has none.
    let msix_bar = config::BAR0 + 4 * BAR_MSIX as u16;
    if offset == CAP_OFF_MSIX || (msix_bar..msix_bar + 4).contains(&offset) {
        return Some(
            "the MSI-X vector counts differ: vectors= (by default one per queue plus one, so num-queues too) must agree with the source".into(),
        );
    }
    Some(format!(
        "this side exposes {} (disable-legacy, disable-modern, x-ignore-backend-features and the backend's VIRTIO_F_VERSION_1 decide that; they must agree with the source)",
        match (legacy, modern) {
            (true, true) => "legacy and modern interfaces",
            (true, false) => "the legacy interface only",
            _ => "the modern interface only",
        }
    ))
}

migration::vmstate! {
    /// A virtio-pci function's state: its PCI config, MSI-X, the virtio core
    /// and the device's own state (`D`: the device's declared state for a
    /// description, a [`State`] the device reads for the transport).
    pub struct VirtioPciState<D> {
        pci: PciDeviceState,
        msix: MsixState,
        virtio: VirtioState,
        device: D,
    }
}

/// Declares the migration description of a virtio-pci device, `$device`
/// its own declared state ([`VirtioPciState`] with it, named `$section`).
#[macro_export]
macro_rules! virtio_pci_vmstate {
    ($name:ident, $section:literal, $device:ty) => {
        pub static $name: migration::vmstate::Description = migration::vmstate::Description {
            name: $section,
            version_id: 1,
            minimum_version_id: 1,
            fields: $crate::virtio::pci::VirtioPciState::<$device>::FIELDS,
            subsections: $crate::virtio::pci::VirtioPciState::<$device>::SUBSECTIONS,
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use migration::vmstate::Val;

    fn tc() -> TransportConfig {
        TransportConfig {
            disable_legacy: None,
            disable_modern: false,
            ignore_backend_features: false,
            on_pcie_port: false,
            vectors: 2,
            page_per_vq: false,
            intx_gsi: 16,
            interrupt_line: 16,
        }
    }

    #[test]
    fn backend_without_version_1_gets_legacy_only_unless_ignored() {
        assert_eq!(transports("d", &tc(), true), Ok((true, true)));
        assert_eq!(transports("d", &tc(), false), Ok((true, false)));
        let ignore = TransportConfig {
            ignore_backend_features: true,
            ..tc()
        };
        assert_eq!(transports("d", &ignore, false), Ok((true, true)));
        let modern_only = TransportConfig {
            disable_legacy: Some(true),
            ..tc()
        };
        assert!(matches!(
            transports("d", &modern_only, false),
            Err(Error::ModernOnlyWithoutVersion1 { .. })
        ));
        assert_eq!(transports("d", &modern_only, true), Ok((false, true)));
        let pcie = TransportConfig {
            on_pcie_port: true,
            ..tc()
        };
        assert_eq!(
            transports("d", &pcie, true),
            Ok((false, true)),
            "auto: modern only behind a PCIe port"
        );
        let none = TransportConfig {
            disable_legacy: Some(true),
            disable_modern: true,
            ..tc()
        };
        assert!(matches!(
            transports("d", &none, true),
            Err(Error::NoTransport { .. })
        ));
    }

    /// A VMM without KVM: MSIs are recorded, doorbells accepted.
    #[derive(Default)]
    struct FakeVm {
        msis: Mutex<Vec<(u64, u32)>>,
    }

    impl VmOps for FakeVm {
        fn signal_msi(&self, addr: u64, data: u32) -> std::io::Result<()> {
            self.msis.lock().unwrap().push((addr, data));
            Ok(())
        }
        fn set_irq_line(&self, _: u32, _: bool) -> std::io::Result<()> {
            Ok(())
        }
        fn add_doorbell(&self, _: &EventFd, _: Doorbell) -> std::io::Result<()> {
            Ok(())
        }
        fn remove_doorbell(&self, _: &EventFd, _: Doorbell) -> std::io::Result<()> {
            Ok(())
        }
    }

    const BAR4: u64 = 0x1000_0000;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const BUF: u64 = 0x8000;

    fn rng(vm: &Arc<FakeVm>, mem: &Memory) -> VirtioPci {
        let mut d = VirtioPci::new(
            "rng".into(),
            Box::new(super::super::rng::Rng::new()),
            &tc(),
            vm.clone(),
            mem.clone(),
            &super::super::rng::PCI_VMSTATE,
        )
        .unwrap();
        d.config_mut()
            .set_bar_address(BAR_MODERN, BarKind::Mem64 { prefetch: true }, BAR4);
        d.config_write(config::COMMAND, 2, 0x6);
        d
    }

    fn w(d: &mut VirtioPci, bar: u8, off: u64, v: u64, len: usize) {
        d.bar_write(bar, off, &v.to_le_bytes()[..len]);
    }

    /// Posts buffer number `n` (64 device-writable bytes) and rings.
    fn post(mem: &Memory, d: &mut VirtioPci, n: u16) {
        use vm_memory::{Bytes, GuestAddress};
        let slot = n % 16;
        mem.write_obj(
            BUF + 64 * slot as u64,
            GuestAddress(DESC + 16 * slot as u64),
        )
        .unwrap();
        mem.write_obj(64u32, GuestAddress(DESC + 16 * slot as u64 + 8))
            .unwrap();
        mem.write_obj(2u16, GuestAddress(DESC + 16 * slot as u64 + 12))
            .unwrap();
        mem.write_obj(slot, GuestAddress(AVAIL + 4 + 2 * slot as u64))
            .unwrap();
        mem.write_obj(n + 1, GuestAddress(AVAIL + 2)).unwrap();
        w(d, BAR_MODERN, NOTIFY, 0, 2);
    }

    /// Whether the MSIs `vm` was sent satisfy `pred` within 5 s.
    fn msi_soon(vm: &FakeVm, pred: impl Fn(&[(u64, u32)]) -> bool) -> bool {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < std::time::Duration::from_secs(5) {
            if pred(&vm.msis.lock().unwrap()) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        false
    }

    fn used_idx(mem: &Memory, want: u16) -> u16 {
        use vm_memory::{Bytes, GuestAddress};
        let t0 = std::time::Instant::now();
        loop {
            let i: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
            if i >= want || t0.elapsed() > std::time::Duration::from_secs(5) {
                return i;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// The MSI-X table size a saved state shows is the function's
    /// `vectors`, whatever it was built with; a state that is not a
    /// virtio-pci function's says nothing.
    #[test]
    fn a_saved_state_tells_its_vectors() {
        let mem = Memory::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        for vectors in [0u16, 2, 5] {
            let tc = TransportConfig { vectors, ..tc() };
            let mut d = VirtioPci::new(
                "rng".into(),
                Box::new(super::super::rng::Rng::new()),
                &tc,
                Arc::new(FakeVm::default()),
                mem.clone(),
                &super::super::rng::PCI_VMSTATE,
            )
            .unwrap();
            d.pause();
            assert_eq!(vectors_in_state(&d.state()), Some(vectors as u64));
        }
        let port = crate::pci::host_bridge::HostBridge::new();
        assert_eq!(
            vectors_in_state(&crate::pci::PciFunction::state(&port)),
            None
        );
    }

    /// A refused BAR1 (the MSI-X table's: a function without MSI-X has
    /// none) names `vectors`, not the interfaces.
    #[test]
    fn a_refused_msix_bar_names_vectors() {
        assert!(hint_for(0x14, true, true).unwrap().contains("vectors="));
        assert!(hint_for(CAP_OFF_MSIX, true, true)
            .unwrap()
            .contains("vectors="));
        assert!(hint_for(0x10, true, true)
            .unwrap()
            .contains("legacy and modern"));
    }

    /// A state refused by a later part (here the virtio core: the source
    /// had another queue count) leaves what earlier parts took (MSI-X,
    /// the configuration space) as it was. Found by the device_state
    /// fuzzer: the old load kept the first parts of a refused state.
    #[test]
    fn a_refused_state_leaves_the_function_as_it_was() {
        let mem = Memory::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        let vm = Arc::new(FakeVm::default());
        let mut d = rng(&vm, &mem);
        start_modern(&mut d);
        d.pause();
        let before = d.state();
        // Another device's state: MSI-X on, and two queues.
        let mut other = rng(&Arc::new(FakeVm::default()), &mem);
        other.config_write(CAP_OFF_MSIX + 2, 2, 0x8000);
        w(&mut other, BAR_MSIX, 0, 0xfee0_0000, 4);
        other.pause();
        let mut bad = other.state();
        let Some(Val::Struct(virtio)) = bad
            .fields
            .iter_mut()
            .find(|f| f.0 == "virtio")
            .map(|f| &mut f.1)
        else {
            panic!("no virtio part in {bad:?}");
        };
        virtio.set("num_queues", Val::Uint(2));
        let e = d.load("00:03.0", &bad).unwrap_err();
        assert!(e.to_string().contains("queues"), "{e}");
        assert!(d.state() == before, "a refused state changed the function");
    }

    /// Firecracker's persist test for a device: build, drive it as a
    /// modern driver with MSI-X, save, encode, decode, restore into a new
    /// device, compare, and the restored device goes on where it stopped.
    #[test]
    fn virtio_rng_round_trips_through_the_stream() {
        let mem = Memory::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        let vm = Arc::new(FakeVm::default());
        let mut d = rng(&vm, &mem);
        // MSI-X on, table entry 0 -> (0xfee00000, 0x41).
        d.config_write(CAP_OFF_MSIX + 2, 2, 0x8000);
        w(&mut d, BAR_MSIX, 0, 0xfee0_0000, 4);
        w(&mut d, BAR_MSIX, 8, 0x41, 4);
        w(&mut d, BAR_MSIX, 12, 0, 4);
        start_modern(&mut d);
        post(&mem, &mut d, 0);
        assert_eq!(used_idx(&mem, 1), 1, "the device served the buffer");
        // The device thread publishes the used index, then signals: the
        // interrupt may come a moment after the index moved (seen under
        // qemu-user emulation), so wait for it as a driver would.
        assert!(
            msi_soon(&vm, |m| m.contains(&(0xfee0_0000, 0x41))),
            "and signalled MSI-X vector 0"
        );

        d.pause();
        let st = d.state();
        let state = crate::virtio::testing::roundtrip(d.vmstate(), &st, d.vmstate()).unwrap();
        drop(d);

        let vm2 = Arc::new(FakeVm::default());
        let mut d2 = rng(&vm2, &mem);
        d2.load("00:03.0", &state).unwrap();
        d2.pause();
        assert_eq!(d2.state(), st, "the restored device has the saved state");
        d2.resume();
        post(&mem, &mut d2, 1);
        assert_eq!(used_idx(&mem, 2), 2, "the restored device goes on");
        assert!(
            msi_soon(&vm2, |m| !m.is_empty()),
            "with MSI-X as programmed before the save"
        );
    }

    #[test]
    fn a_modern_driver_must_accept_version_1() {
        let mem = Memory::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        let vm = Arc::new(FakeVm::default());
        let mut d = rng(&vm, &mem);
        // From reset: ACKNOWLEDGE | DRIVER, the two driver feature words,
        // FEATURES_OK; whether the device kept FEATURES_OK.
        let mut negotiate = |low: u64, high: u64| {
            let driver = (S_ACKNOWLEDGE | S_DRIVER) as u64;
            w(&mut d, BAR_MODERN, 0x14, 0, 1);
            w(&mut d, BAR_MODERN, 0x14, driver, 1);
            for (select, word) in [(0, low), (1, high)] {
                w(&mut d, BAR_MODERN, 0x08, select, 4);
                w(&mut d, BAR_MODERN, 0x0c, word, 4);
            }
            w(&mut d, BAR_MODERN, 0x14, driver | S_FEATURES_OK as u64, 1);
            let mut b = [0u8];
            d.bar_read(BAR_MODERN, 0x14, &mut b);
            b[0] & S_FEATURES_OK != 0
        };
        assert!(!negotiate(0, 0), "no VERSION_1: refused");
        assert!(negotiate(0, 1), "with VERSION_1: accepted");
        assert!(
            !negotiate(1 << 6, 1),
            "a feature the device does not offer: refused"
        );
    }

    /// Sets up queue 0 of `d` as a modern driver does and starts it.
    fn start_modern(d: &mut VirtioPci) {
        w(d, BAR_MODERN, 0x14, (S_ACKNOWLEDGE | S_DRIVER) as u64, 1);
        w(d, BAR_MODERN, 0x08, 1, 4);
        w(d, BAR_MODERN, 0x0c, 1, 4);
        w(
            d,
            BAR_MODERN,
            0x14,
            (S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK) as u64,
            1,
        );
        w(d, BAR_MODERN, 0x16, 0, 2);
        w(d, BAR_MODERN, 0x18, 16, 2);
        w(d, BAR_MODERN, 0x1a, 0, 2); // MSI-X vector 0
        w(d, BAR_MODERN, 0x20, DESC, 8);
        w(d, BAR_MODERN, 0x28, AVAIL, 8);
        w(d, BAR_MODERN, 0x30, USED, 8);
        w(d, BAR_MODERN, 0x1c, 1, 2);
        w(
            d,
            BAR_MODERN,
            0x14,
            (S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK) as u64,
            1,
        );
    }

    /// A guest that hands the device a buffer outside RAM: the device
    /// stops with NEEDS_RESET (the VMM goes on), the broken flag travels in
    /// its subsection through a migration, and a driver reset revives it.
    #[test]
    fn a_misprogrammed_device_breaks_migrates_broken_and_recovers_on_reset() {
        use vm_memory::{Bytes, GuestAddress};
        let mem = Memory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let vm = Arc::new(FakeVm::default());
        let mut d = rng(&vm, &mem);
        start_modern(&mut d);
        // Descriptor 0 points far beyond the 1 MiB of RAM.
        mem.write_obj(0x4000_0000u64, GuestAddress(DESC)).unwrap();
        mem.write_obj(64u32, GuestAddress(DESC + 8)).unwrap();
        mem.write_obj(2u16, GuestAddress(DESC + 12)).unwrap();
        mem.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap();
        mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
        w(&mut d, BAR_MODERN, NOTIFY, 0, 2);
        let status = |d: &mut VirtioPci| {
            let mut b = [0u8];
            d.bar_read(BAR_MODERN, 0x14, &mut b);
            b[0]
        };
        let t0 = std::time::Instant::now();
        while status(&mut d) & S_NEEDS_RESET == 0 {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(5),
                "never marked broken"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        d.pause();
        let st = d.state();
        let saved = VirtioPciState::<State>::from_state(&st, "rng").unwrap();
        assert_eq!(
            saved.virtio.broken,
            Some(BrokenState { broken: true }),
            "the broken flag is in its subsection"
        );
        let state = crate::virtio::testing::roundtrip(d.vmstate(), &st, d.vmstate()).unwrap();
        drop(d);
        let vm2 = Arc::new(FakeVm::default());
        let mut d2 = rng(&vm2, &mem);
        d2.load("00:03.0", &state).unwrap();
        assert_ne!(
            status(&mut d2) & S_NEEDS_RESET,
            0,
            "still broken after the move"
        );
        // The driver resets and starts over with a good buffer.
        w(&mut d2, BAR_MODERN, 0x14, 0, 1);
        assert_eq!(status(&mut d2), 0);
        mem.write_obj(0u16, GuestAddress(USED + 2)).unwrap();
        mem.write_obj(0u16, GuestAddress(AVAIL + 2)).unwrap();
        start_modern(&mut d2);
        post(&mem, &mut d2, 0);
        assert_eq!(used_idx(&mem, 1), 1, "served again after the reset");
    }
}
