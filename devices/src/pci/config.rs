//! A function's configuration space (4 KiB, PCIe-sized) with the masks
//! that say what the guest may change: `wmask` (writable bits) and
//! `w1cmask` (write-one-to-clear bits). Everything else is read-only for
//! the guest; migration compares those bits against the destination's.

pub const CONFIG_SIZE: usize = 4096;

migration::vmstate! {
    /// QEMU's `PCIDevice` state (PCIe-sized config space): the config bytes
    /// and the INTx levels.
    pub static VMSTATE = "PCIDevice", version 2, minimum 1;
    pub struct PciDeviceState {
        version_id: i32,
        config: [u8; CONFIG_SIZE],
        #[since(2)]
        irq_state: [i32; 4],
    }
}

/// A read-only configuration register that differs between the stream and
/// this side (QEMU's "Bad config data").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMismatch {
    /// Dword-aligned offset of the register.
    pub offset: u16,
    pub stream: u32,
    pub local: u32,
    /// The bits compared (read-only for the guest).
    pub mask: u32,
}

pub const VENDOR_ID: u16 = 0x00;
pub const DEVICE_ID: u16 = 0x02;
pub const COMMAND: u16 = 0x04;
pub const STATUS: u16 = 0x06;
pub const CLASS_REVISION: u16 = 0x08;
pub const HEADER_TYPE: u16 = 0x0e;
pub const BAR0: u16 = 0x10;
pub const CAPABILITIES: u16 = 0x34;
pub const INTERRUPT_LINE: u16 = 0x3c;
pub const INTERRUPT_PIN: u16 = 0x3d;
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
pub const SUBSYSTEM_ID: u16 = 0x2e;

#[derive(Clone)]
pub struct ConfigSpace {
    pub data: Box<[u8; CONFIG_SIZE]>,
    pub wmask: Box<[u8; CONFIG_SIZE]>,
    pub w1cmask: Box<[u8; CONFIG_SIZE]>,
}

impl Default for ConfigSpace {
    fn default() -> Self {
        ConfigSpace {
            data: Box::new([0; CONFIG_SIZE]),
            wmask: Box::new([0; CONFIG_SIZE]),
            w1cmask: Box::new([0; CONFIG_SIZE]),
        }
    }
}

impl ConfigSpace {
    /// A type-0 header with the identity registers filled in.
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8) -> ConfigSpace {
        let mut c = ConfigSpace::default();
        c.set_u16(VENDOR_ID, vendor);
        c.set_u16(DEVICE_ID, device);
        c.set_u32(CLASS_REVISION, class << 8 | revision as u32);
        c
    }

    /// Sets a register as the device (not the guest) does.
    pub fn set_u8(&mut self, off: u16, v: u8) {
        self.data[off as usize] = v;
    }
    pub fn set_u16(&mut self, off: u16, v: u16) {
        self.data[off as usize..off as usize + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub fn set_u32(&mut self, off: u16, v: u32) {
        self.data[off as usize..off as usize + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn set_wmask_u16(&mut self, off: u16, v: u16) {
        self.wmask[off as usize..off as usize + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub fn set_wmask_u32(&mut self, off: u16, v: u32) {
        self.wmask[off as usize..off as usize + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn set_w1cmask_u16(&mut self, off: u16, v: u16) {
        self.w1cmask[off as usize..off as usize + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// Declares BAR `index` of `size` bytes (a power of two): the guest
    /// can write the address bits only, so sizing reads back the size.
    pub fn declare_bar(&mut self, index: u8, kind: super::BarKind, size: u64) {
        let off = BAR0 + 4 * index as u16;
        let lo = match kind {
            super::BarKind::Io => 1,
            super::BarKind::Mem32 => 0,
            super::BarKind::Mem64 { prefetch } => 0x4 | if prefetch { 0x8 } else { 0 },
        };
        self.set_u32(off, lo);
        let low_mask = match kind {
            super::BarKind::Io => !(size as u32 - 1) & !0x3,
            _ => !(size.min(1 << 31) as u32 - 1) & !0xf,
        };
        self.set_wmask_u32(off, low_mask);
        if let super::BarKind::Mem64 { .. } = kind {
            self.set_u32(off + 4, 0);
            let hi = if size >> 32 == 0 {
                0xffff_ffff
            } else {
                !((size >> 32) as u32 - 1)
            };
            self.set_wmask_u32(off + 4, hi);
        }
    }

    /// The address BAR `index` holds (0 = unassigned).
    pub fn bar_address(&self, index: u8, kind: super::BarKind) -> u64 {
        let off = BAR0 + 4 * index as u16;
        let lo = self.read(off, 4);
        match kind {
            super::BarKind::Io => (lo & !0x3) as u64,
            super::BarKind::Mem32 => (lo & !0xf) as u64,
            super::BarKind::Mem64 { .. } => {
                (self.read(off + 4, 4) as u64) << 32 | (lo & !0xf) as u64
            }
        }
    }

    /// Places BAR `index` at `addr`, as firmware does.
    pub fn set_bar_address(&mut self, index: u8, kind: super::BarKind, addr: u64) {
        let off = BAR0 + 4 * index as u16;
        let flags = self.read(off, 4) & if kind == super::BarKind::Io { 0x3 } else { 0xf };
        self.set_u32(off, addr as u32 | flags);
        if let super::BarKind::Mem64 { .. } = kind {
            self.set_u32(off + 4, (addr >> 32) as u32);
        }
    }

    fn span(off: u16, size: u8) -> Option<std::ops::Range<usize>> {
        let (o, n) = (off as usize, size as usize);
        (matches!(n, 1 | 2 | 4) && o % n == 0 && o + n <= CONFIG_SIZE).then_some(o..o + n)
    }

    /// A guest read of `size` bytes; misaligned or out-of-range reads
    /// return all ones.
    pub fn read(&self, off: u16, size: u8) -> u32 {
        match Self::span(off, size) {
            Some(r) => r.rev().fold(0u32, |v, i| v << 8 | self.data[i] as u32),
            None => u32::MAX >> (32 - 8 * size.clamp(1, 4) as u32),
        }
    }

    /// Where capability `id` is in the list, if the function has it.
    pub fn capability(&self, id: u8) -> Option<u16> {
        find_capability(&self.data[..], id).map(|at| at as u16)
    }

    /// The migratable state (`irq_state` all 0: a function that raises
    /// INTx derives the line's level again on load, virtio from its ISR).
    pub fn state(&self) -> PciDeviceState {
        PciDeviceState {
            version_id: 2,
            config: *self.data,
            irq_state: [0; 4],
        }
    }

    /// Loads `st` with QEMU's rule: bits the guest cannot write must be
    /// what this side has, else the configurations differ and the load
    /// fails naming the first such register; guest-writable bits come from
    /// the stream.
    pub fn load(&mut self, st: &PciDeviceState) -> Result<(), ConfigMismatch> {
        let incoming = &st.config;
        for i in 0..CONFIG_SIZE {
            let ro = !self.wmask[i] & !self.w1cmask[i];
            if (incoming[i] ^ self.data[i]) & ro != 0 {
                let off = (i & !3) as u16;
                let dword = |b: &[u8]| {
                    u32::from_le_bytes(
                        b[off as usize..off as usize + 4]
                            .try_into()
                            .unwrap_or([0; 4]),
                    )
                };
                let mask = !u32::from_le_bytes(
                    self.wmask[off as usize..off as usize + 4]
                        .try_into()
                        .unwrap_or([0; 4]),
                ) & !u32::from_le_bytes(
                    self.w1cmask[off as usize..off as usize + 4]
                        .try_into()
                        .unwrap_or([0; 4]),
                );
                return Err(ConfigMismatch {
                    offset: off,
                    stream: dword(incoming),
                    local: dword(&self.data[..]),
                    mask,
                });
            }
        }
        for (i, inc) in incoming.iter().enumerate() {
            let w = self.wmask[i] | self.w1cmask[i];
            self.data[i] = (self.data[i] & !w) | (inc & w);
        }
        Ok(())
    }

    /// A guest write: only `wmask` bits change, `w1cmask` bits clear on 1.
    pub fn write(&mut self, off: u16, size: u8, value: u32) {
        let Some(r) = Self::span(off, size) else {
            crate::guest_warn!("pci: ignoring misaligned config write at {off:#x} size {size}");
            return;
        };
        for (k, i) in r.enumerate() {
            let b = (value >> (8 * k)) as u8;
            let (w, c) = (self.wmask[i], self.w1cmask[i]);
            self.data[i] = (self.data[i] & !w) | (b & w);
            self.data[i] &= !(b & c);
        }
    }
}

/// Where capability `id` is in the list of configuration space `config`
/// (a function's, or one a stream carries: a list that leaves the space
/// or points below the header ends the walk).
pub fn find_capability(config: &[u8], id: u8) -> Option<usize> {
    let byte = |i: usize| config.get(i).copied().unwrap_or(0);
    let mut at = (byte(CAPABILITIES as usize) & 0xfc) as usize;
    // A well-formed list visits each of its 48 possible places once.
    for _ in 0..48 {
        if at < 0x40 || at + 1 >= config.len() {
            return None;
        }
        if byte(at) == id {
            return Some(at);
        }
        at = (byte(at + 1) & 0xfc) as usize;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_writes_respect_masks() {
        let mut c = ConfigSpace::new(0x1234, 0x5678, 0x060000, 1);
        c.set_wmask_u16(COMMAND, 0x0007);
        c.set_u16(STATUS, 0x8010);
        c.set_w1cmask_u16(STATUS, 0x8000);
        c.write(COMMAND, 2, 0xffff);
        assert_eq!(c.read(COMMAND, 2), 0x0007);
        c.write(VENDOR_ID, 2, 0);
        assert_eq!(c.read(VENDOR_ID, 2), 0x1234);
        c.write(STATUS, 2, 0x8000);
        assert_eq!(c.read(STATUS, 2), 0x0010);
        assert_eq!(c.read(0, 4), 0x5678_1234);
        assert_eq!(c.read(1, 2), 0xffff); // misaligned
    }

    /// What a guest log line costs the host when a guest misprograms a
    /// device in a loop: ten lines a minute, however many writes.
    #[test]
    fn a_guest_writing_misaligned_in_a_loop_is_logged_ten_times() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static LINES: AtomicUsize = AtomicUsize::new(0);
        struct Count;
        impl log::Log for Count {
            fn enabled(&self, _: &log::Metadata) -> bool {
                true
            }
            fn log(&self, r: &log::Record) {
                if r.args().to_string().contains("misaligned config write") {
                    LINES.fetch_add(1, Ordering::SeqCst);
                }
            }
            fn flush(&self) {}
        }
        let _ = log::set_logger(&Count);
        log::set_max_level(log::LevelFilter::Warn);
        let mut c = ConfigSpace::new(0x1234, 0x5678, 0x060000, 1);
        for _ in 0..100_000 {
            c.write(COMMAND + 1, 2, 0xffff);
        }
        assert_eq!(
            LINES.load(Ordering::SeqCst),
            crate::guest_log::BURST as usize
        );
    }
}
