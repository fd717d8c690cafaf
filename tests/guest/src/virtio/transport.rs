//! The two virtio-pci transports: legacy (I/O BAR 0, 32-bit features, queue
//! PFN) and modern (virtio 1.x vendor capabilities in memory BARs).

use super::queue::Queue;
use crate::io::{inb, inl, inw, outb, outl, outw, read16, read32, read8, write16, write32, write8};
use crate::paging;
use crate::pci::{BarKind, Cfg, Func};

pub enum Transport {
    Legacy {
        io: u16,
        msix: bool,
    },
    Modern {
        common: u64,
        notify: u64,
        notify_mul: u32,
        isr: u64,
        device: u64,
    },
}

/// What the function offers, found from its BARs and capabilities.
pub struct Offer {
    pub legacy_io: Option<u16>,
    pub modern: Option<(u64, u64, u32, u64, u64)>,
}

pub fn offer(cfg: Cfg, f: &Func) -> Offer {
    let legacy_io = (f.device < 0x1040 && f.bars[0].kind == BarKind::Io && f.bars[0].addr != 0)
        .then_some(f.bars[0].addr as u16);
    let (mut common, mut notify, mut mul, mut isr, mut device) = (0, 0, 0, 0, 0);
    for &(id, off) in f.caps() {
        if id != 0x09 {
            continue;
        }
        let off = off as u16;
        let ty = cfg.read8(f.bdf, off + 3);
        let bar = cfg.read8(f.bdf, off + 4) as usize;
        let offset = cfg.read32(f.bdf, off + 8) as u64;
        let length = cfg.read32(f.bdf, off + 12) as u64;
        if bar >= 6 || !matches!(f.bars[bar].kind, BarKind::Mem32 | BarKind::Mem64) {
            continue;
        }
        let addr = f.bars[bar].addr + offset;
        if paging::map(addr, length.max(1)).is_err() {
            continue;
        }
        match ty {
            1 => common = addr,
            2 => {
                notify = addr;
                mul = cfg.read32(f.bdf, off + 16);
            }
            3 => isr = addr,
            4 => device = addr,
            _ => {}
        }
    }
    let modern =
        (common != 0 && notify != 0 && isr != 0).then_some((common, notify, mul, isr, device));
    Offer { legacy_io, modern }
}

// Legacy register offsets.
const L_DEV_FEATURES: u16 = 0;
const L_DRV_FEATURES: u16 = 4;
const L_QUEUE_PFN: u16 = 8;
const L_QUEUE_SIZE: u16 = 12;
const L_QUEUE_SEL: u16 = 14;
const L_QUEUE_NOTIFY: u16 = 16;
const L_STATUS: u16 = 18;
const L_ISR: u16 = 19;
const L_CONFIG_VECTOR: u16 = 20;
const L_QUEUE_VECTOR: u16 = 22;

// Modern common configuration offsets.
const M_DEV_FEAT_SEL: u64 = 0x00;
const M_DEV_FEAT: u64 = 0x04;
const M_DRV_FEAT_SEL: u64 = 0x08;
const M_DRV_FEAT: u64 = 0x0c;
const M_MSIX_CONFIG: u64 = 0x10;
const M_NUM_QUEUES: u64 = 0x12;
const M_STATUS: u64 = 0x14;
const M_QUEUE_SEL: u64 = 0x16;
const M_QUEUE_SIZE: u64 = 0x18;
const M_QUEUE_MSIX: u64 = 0x1a;
const M_QUEUE_ENABLE: u64 = 0x1c;
const M_QUEUE_NOTIFY_OFF: u64 = 0x1e;
const M_QUEUE_DESC: u64 = 0x20;
const M_QUEUE_DRIVER: u64 = 0x28;
const M_QUEUE_DEVICE: u64 = 0x30;

pub const NO_VECTOR: u16 = 0xffff;

impl Transport {
    pub fn name(&self) -> &'static str {
        match self {
            Transport::Legacy { .. } => "legacy",
            Transport::Modern { .. } => "modern",
        }
    }

    pub fn status(&self) -> u8 {
        match *self {
            Transport::Legacy { io, .. } => inb(io + L_STATUS),
            Transport::Modern { common, .. } => read8(common + M_STATUS),
        }
    }

    pub fn set_status(&self, s: u8) {
        match *self {
            Transport::Legacy { io, .. } => outb(io + L_STATUS, s),
            Transport::Modern { common, .. } => write8(common + M_STATUS, s),
        }
    }

    pub fn reset(&self) {
        self.set_status(0);
        for _ in 0..100_000 {
            if self.status() == 0 {
                return;
            }
        }
    }

    pub fn device_features(&self) -> u64 {
        match *self {
            Transport::Legacy { io, .. } => inl(io + L_DEV_FEATURES) as u64,
            Transport::Modern { common, .. } => {
                write32(common + M_DEV_FEAT_SEL, 0);
                let lo = read32(common + M_DEV_FEAT) as u64;
                write32(common + M_DEV_FEAT_SEL, 1);
                let hi = read32(common + M_DEV_FEAT) as u64;
                hi << 32 | lo
            }
        }
    }

    pub fn set_driver_features(&self, f: u64) {
        match *self {
            Transport::Legacy { io, .. } => outl(io + L_DRV_FEATURES, f as u32),
            Transport::Modern { common, .. } => {
                write32(common + M_DRV_FEAT_SEL, 0);
                write32(common + M_DRV_FEAT, f as u32);
                write32(common + M_DRV_FEAT_SEL, 1);
                write32(common + M_DRV_FEAT, (f >> 32) as u32);
            }
        }
    }

    /// Queues the device reports (legacy: those with a non-zero size).
    pub fn num_queues(&self) -> u16 {
        match *self {
            Transport::Legacy { io, .. } => {
                let mut n = 0;
                while n < 64 {
                    outw(io + L_QUEUE_SEL, n);
                    if inw(io + L_QUEUE_SIZE) == 0 {
                        break;
                    }
                    n += 1;
                }
                n
            }
            Transport::Modern { common, .. } => read16(common + M_NUM_QUEUES),
        }
    }

    pub fn queue_max(&self, q: u16) -> u16 {
        match *self {
            Transport::Legacy { io, .. } => {
                outw(io + L_QUEUE_SEL, q);
                inw(io + L_QUEUE_SIZE)
            }
            Transport::Modern { common, .. } => {
                write16(common + M_QUEUE_SEL, q);
                read16(common + M_QUEUE_SIZE)
            }
        }
    }

    /// Programs and enables queue `q.index`, with MSI-X `vector`. Returns
    /// false if the device refused the vector.
    pub fn setup_queue(&self, q: &Queue, vector: u16) -> bool {
        match *self {
            Transport::Legacy { io, msix } => {
                outw(io + L_QUEUE_SEL, q.index);
                let mut ok = true;
                if msix {
                    outw(io + L_QUEUE_VECTOR, vector);
                    ok = inw(io + L_QUEUE_VECTOR) == vector;
                }
                outl(io + L_QUEUE_PFN, (q.desc >> 12) as u32);
                ok
            }
            Transport::Modern { common, .. } => {
                write16(common + M_QUEUE_SEL, q.index);
                write16(common + M_QUEUE_SIZE, q.size);
                write16(common + M_QUEUE_MSIX, vector);
                let ok = read16(common + M_QUEUE_MSIX) == vector;
                // 64-bit fields as two 32-bit halves, as the spec allows.
                for (off, v) in [
                    (M_QUEUE_DESC, q.desc),
                    (M_QUEUE_DRIVER, q.avail),
                    (M_QUEUE_DEVICE, q.used),
                ] {
                    write32(common + off, v as u32);
                    write32(common + off + 4, (v >> 32) as u32);
                }
                write16(common + M_QUEUE_ENABLE, 1);
                ok
            }
        }
    }

    pub fn set_config_vector(&self, vector: u16) {
        match *self {
            Transport::Legacy { io, msix: true } => outw(io + L_CONFIG_VECTOR, vector),
            Transport::Legacy { .. } => {}
            Transport::Modern { common, .. } => write16(common + M_MSIX_CONFIG, vector),
        }
    }

    pub fn notify(&self, q: u16) {
        match *self {
            Transport::Legacy { io, .. } => outw(io + L_QUEUE_NOTIFY, q),
            Transport::Modern {
                common,
                notify,
                notify_mul,
                ..
            } => {
                write16(common + M_QUEUE_SEL, q);
                let off = read16(common + M_QUEUE_NOTIFY_OFF) as u64;
                write16(notify + off * notify_mul as u64, q);
            }
        }
    }

    #[allow(dead_code)] // for INTx mode; the drivers poll or use MSI-X
    pub fn isr(&self) -> u8 {
        match *self {
            Transport::Legacy { io, .. } => inb(io + L_ISR),
            Transport::Modern { isr, .. } => read8(isr),
        }
    }

    fn config_base(&self) -> (bool, u64) {
        match *self {
            Transport::Legacy { io, msix } => (true, io as u64 + if msix { 24 } else { 20 }),
            Transport::Modern { device, .. } => (false, device),
        }
    }

    pub fn config8(&self, off: u64) -> u8 {
        match self.config_base() {
            (true, b) => inb((b + off) as u16),
            (false, b) => read8(b + off),
        }
    }

    pub fn config16(&self, off: u64) -> u16 {
        u16::from_le_bytes([self.config8(off), self.config8(off + 1)])
    }

    pub fn config32(&self, off: u64) -> u32 {
        match self.config_base() {
            (true, b) => inl((b + off) as u16),
            (false, b) => read32(b + off),
        }
    }

    pub fn config64(&self, off: u64) -> u64 {
        (self.config32(off + 4) as u64) << 32 | self.config32(off) as u64
    }
}
