//! PCI: configuration space with guest write masks, the bus of functions,
//! and the two ways to reach it: the 0xCF8/0xCFC ports and ECAM.

pub mod config;
pub mod host_bridge;
pub mod intx;
pub mod root_port;
pub mod spapr_phb;

use crate::bus::BusDevice;
use crate::{EventSink, VmEvent};
pub use config::ConfigSpace;
pub use migration::vmstate::LoadError;
use migration::vmstate::Vmstate;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What a base address register decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    Mem64 { prefetch: bool },
}

/// A BAR a function implements: its index and size (a power of two).
#[derive(Clone, Copy, Debug)]
pub struct BarDecl {
    pub index: u8,
    pub kind: BarKind,
    pub size: u64,
}

/// The address space a BAR access came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Io,
    Mem,
}

/// A PCI function as the bus sees it.
pub trait PciFunction: Send {
    /// The BARs the function has (none by default).
    fn bars(&self) -> &[BarDecl] {
        &[]
    }
    /// A guest access inside BAR `bar`, at `offset` from its base.
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        let _ = (bar, offset);
        data.fill(0xff);
    }
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        let _ = (bar, offset, data);
    }
    /// The description of the function's migration section, and the
    /// section's name after the address (QEMU: `0000:00:03.0/virtio-blk`).
    fn vmstate(&self) -> &'static migration::vmstate::Description {
        &config::VMSTATE
    }
    /// The VM stops: no device activity may touch guest memory after this
    /// returns (in-flight work completes first).
    fn pause(&mut self) {}
    /// After an incoming migration: announce the device's new location.
    fn announce(&mut self) {}
    /// The VM runs again.
    fn resume(&mut self) {}
    /// Takes what only one VM may hold of its backend (see
    /// `VirtioDevice::claim_backend`).
    fn claim(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Gives it up, for a migration's destination.
    fn release(&mut self) {}
    fn config(&self) -> &ConfigSpace;
    fn config_mut(&mut self) -> &mut ConfigSpace;
    /// Config read; the default reads the (masked) register file.
    fn config_read(&mut self, offset: u16, size: u8) -> u32 {
        self.config().read(offset, size)
    }
    fn config_write(&mut self, offset: u16, size: u8, value: u32) {
        self.config_mut().write(offset, size, value)
    }
    /// The migratable state (QEMU's PCIDevice layout).
    fn state(&self) -> migration::vmstate::State {
        self.config().state().to_state()
    }
    /// The name of the register at `offset`, for errors.
    fn register_name(&self, offset: u16) -> Option<&'static str> {
        let _ = offset;
        None
    }
    /// The property that decides the read-only register at `offset`, as
    /// advice for a mismatch (`stream` is the source's value).
    fn reconcile_hint(&self, offset: u16, stream: u32) -> Option<String> {
        let _ = (offset, stream);
        None
    }
    /// Loads a saved state with QEMU's rule: read-only bits must match.
    /// `device` names the function in the error.
    fn load(&mut self, device: &str, st: &migration::vmstate::State) -> Result<(), LoadError> {
        let error = |f: &Self, m| {
            config_load_error(
                device,
                m,
                |o| f.register_name(o),
                |o, v| f.reconcile_hint(o, v),
            )
        };
        let saved =
            config::PciDeviceState::from_state(st, device).map_err(|_| error(self, None))?;
        let r = self.config_mut().load(&saved);
        r.map_err(|m| error(self, Some(m)))
    }
}

/// The [`LoadError`] for a config space that did not load (`None`: the
/// state had the wrong shape).
pub fn config_load_error(
    device: &str,
    m: Option<config::ConfigMismatch>,
    register_name: impl Fn(u16) -> Option<&'static str>,
    hint: impl Fn(u16, u32) -> Option<String>,
) -> LoadError {
    let Some(m) = m else {
        return LoadError::new(
            device,
            "the stream's state does not have the PCIDevice layout",
        );
    };
    let register =
        register_name(m.offset).map_or_else(|| format!("at {:#x}", m.offset), str::to_string);
    let e = LoadError::new(
        device,
        format!(
            "config register {register} (offset {:#x}) is {:#010x} in the stream but {:#010x} here, in bits the guest cannot change (mask {:#010x})",
            m.offset, m.stream, m.local, m.mask
        ),
    );
    match hint(m.offset, m.stream) {
        Some(h) => e.hint(h),
        None => e,
    }
}

/// Bus/device/function packed as in a CF8 address: bus << 8 | dev << 3 | fn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bdf(pub u16);

impl Bdf {
    pub const fn new(bus: u8, dev: u8, func: u8) -> Bdf {
        Bdf((bus as u16) << 8 | ((dev as u16) & 0x1f) << 3 | (func as u16 & 7))
    }
}

impl std::fmt::Display for Bdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{}",
            self.0 >> 8,
            (self.0 >> 3) & 0x1f,
            self.0 & 7
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("PCI address {0} is already taken")]
    SlotTaken(Bdf),
}

/// The functions of PCI segment 0.
#[derive(Default)]
pub struct PciRoot {
    funcs: BTreeMap<Bdf, Box<dyn PciFunction>>,
}

impl PciRoot {
    pub fn add(&mut self, bdf: Bdf, f: Box<dyn PciFunction>) -> Result<(), Error> {
        if self.funcs.contains_key(&bdf) {
            return Err(Error::SlotTaken(bdf));
        }
        self.funcs.insert(bdf, f);
        Ok(())
    }

    /// A config read; all ones where no function answers.
    pub fn read(&mut self, bdf: Bdf, offset: u16, size: u8) -> u32 {
        match self.funcs.get_mut(&bdf) {
            Some(f) => f.config_read(offset, size),
            None => mask(size),
        }
    }

    pub fn write(&mut self, bdf: Bdf, offset: u16, size: u8, value: u32) {
        if let Some(f) = self.funcs.get_mut(&bdf) {
            f.config_write(offset, size, value);
        }
    }

    pub fn functions(&self) -> impl Iterator<Item = (&Bdf, &Box<dyn PciFunction>)> {
        self.funcs.iter()
    }

    /// Takes the function at `bdf` off the bus (to build it anew).
    pub fn remove(&mut self, bdf: Bdf) -> Option<Box<dyn PciFunction>> {
        self.funcs.remove(&bdf)
    }

    pub fn function_mut(&mut self, bdf: Bdf) -> Option<&mut Box<dyn PciFunction>> {
        self.funcs.get_mut(&bdf)
    }

    /// Gives every BAR an address, as firmware would: I/O BARs from
    /// `io`, memory BARs from `mem`, each naturally aligned; decoding stays
    /// off until the guest enables it in the command register.
    pub fn assign_bars(&mut self, mut io: u64, mut mem: u64) {
        for f in self.funcs.values_mut() {
            let bars: Vec<BarDecl> = f.bars().to_vec();
            for b in bars {
                let next = match b.kind {
                    BarKind::Io => &mut io,
                    _ => &mut mem,
                };
                let addr = next.next_multiple_of(b.size);
                *next = addr + b.size;
                f.config_mut().set_bar_address(b.index, b.kind, addr);
            }
        }
    }

    /// The function and BAR that decode `addr` in `space`.
    fn decode(&mut self, space: Space, addr: u64) -> Option<(&mut Box<dyn PciFunction>, u8, u64)> {
        self.funcs.values_mut().find_map(|f| {
            let c = f.config();
            let cmd = c.read(config::COMMAND, 2);
            let hit = f.bars().iter().find_map(|b| {
                let on = match b.kind {
                    BarKind::Io => space == Space::Io && cmd & 1 != 0,
                    _ => space == Space::Mem && cmd & 2 != 0,
                };
                let base = c.bar_address(b.index, b.kind);
                (on && base != 0 && addr >= base && addr - base < b.size)
                    .then_some((b.index, addr - base))
            });
            hit.map(|(i, off)| (f, i, off))
        })
    }

    /// A guest access to a BAR; false if no BAR decodes `addr`.
    pub fn bar_read(&mut self, space: Space, addr: u64, data: &mut [u8]) -> bool {
        match self.decode(space, addr) {
            Some((f, bar, off)) => {
                f.bar_read(bar, off, data);
                true
            }
            None => false,
        }
    }

    pub fn bar_write(&mut self, space: Space, addr: u64, data: &[u8]) -> bool {
        match self.decode(space, addr) {
            Some((f, bar, off)) => {
                f.bar_write(bar, off, data);
                true
            }
            None => false,
        }
    }

    pub fn pause(&mut self) {
        self.funcs.values_mut().for_each(|f| f.pause());
    }

    pub fn resume(&mut self) {
        self.funcs.values_mut().for_each(|f| f.resume());
    }

    /// Every function claims its backend; the first refusal, by address.
    pub fn claim(&mut self) -> Result<(), String> {
        for (bdf, f) in self.funcs.iter_mut() {
            f.claim().map_err(|e| format!("{bdf}: {e}"))?;
        }
        Ok(())
    }

    /// Every function gives its backend up.
    pub fn release(&mut self) {
        self.funcs.values_mut().for_each(|f| f.release());
    }

    pub fn announce(&mut self) {
        self.funcs.values_mut().for_each(|f| f.announce());
    }
}

/// The windows BARs live in: every access is routed to the function whose
/// BAR decodes it at that moment (so a guest that moves a BAR is followed).
pub struct BarWindow {
    root: Arc<Mutex<PciRoot>>,
    space: Space,
    base: u64,
}

impl BarWindow {
    pub fn new(root: Arc<Mutex<PciRoot>>, space: Space, base: u64) -> BarWindow {
        BarWindow { root, space, base }
    }
}

impl BusDevice for BarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let addr = self.base + offset;
        if !self
            .root
            .lock()
            .expect("pci lock")
            .bar_read(self.space, addr, data)
        {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let addr = self.base + offset;
        if !self
            .root
            .lock()
            .expect("pci lock")
            .bar_write(self.space, addr, data)
        {
            log::debug!("write to {:?} {addr:#x}: no BAR there", self.space);
        }
    }
}

fn mask(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

fn le(data: &[u8]) -> u32 {
    let mut v = [0u8; 4];
    let n = data.len().min(4);
    v[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(v)
}

fn put(data: &mut [u8], v: u32) {
    let n = data.len().min(4);
    data[..n].copy_from_slice(&v.to_le_bytes()[..n]);
}

migration::vmstate! {
    /// The host bridge's guest-visible state: the CF8 address latch (a guest
    /// may be stopped between writing CF8 and reading CFC).
    pub static HOST_VMSTATE = "pci-host", version 1, minimum 1;
    pub struct PciHostState {
        config_address: u32,
    }
}

/// The legacy configuration mechanism at 0xCF8..0xCFF, plus q35's reset
/// control register at 0xCF9 (byte access).
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
    events: EventSink,
}

impl PciConfigIo {
    pub fn new(root: Arc<Mutex<PciRoot>>, events: EventSink) -> PciConfigIo {
        PciConfigIo {
            root,
            address: 0,
            events,
        }
    }

    fn target(&self, data_offset: u64) -> Option<(Bdf, u16)> {
        if self.address & 0x8000_0000 == 0 {
            return None;
        }
        let bdf = Bdf(((self.address >> 8) & 0xffff) as u16);
        Some((bdf, (self.address & 0xfc) as u16 + data_offset as u16))
    }
}

/// The 0xCF8 address latch ([`HOST_VMSTATE`]).
impl migration::vmstate::Migratable for PciConfigIo {
    fn description(&self) -> &'static migration::vmstate::Description {
        &HOST_VMSTATE
    }

    fn state(&self) -> migration::vmstate::State {
        PciHostState {
            config_address: self.address,
        }
        .to_state()
    }

    fn load(
        &mut self,
        st: &migration::vmstate::State,
    ) -> Result<(), migration::vmstate::LoadError> {
        self.address = PciHostState::from_state(st, "pci-host")?.config_address;
        Ok(())
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => put(data, self.address),
            4..=7 => {
                let v = match self.target(offset - 4) {
                    Some((bdf, reg)) => {
                        self.root
                            .lock()
                            .expect("pci lock")
                            .read(bdf, reg, data.len() as u8)
                    }
                    None => 0xffff_ffff,
                };
                put(data, v);
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => self.address = le(data),
            // Reset control: bit 2 starts the reset (SYS_RST, bit 1, picks
            // hard or soft; both mean a full reset here).
            1 if data.len() == 1 && data[0] & 0x04 != 0 => {
                log::info!("guest requested a reset through port 0xcf9");
                (self.events)(VmEvent::Reset);
            }
            4..=7 => {
                if let Some((bdf, reg)) = self.target(offset - 4) {
                    self.root
                        .lock()
                        .expect("pci lock")
                        .write(bdf, reg, data.len() as u8, le(data));
                }
            }
            _ => {}
        }
    }
}

/// ECAM (MMCONFIG): offset = bus << 20 | dev << 15 | fn << 12 | register.
pub struct PciEcam {
    root: Arc<Mutex<PciRoot>>,
}

impl PciEcam {
    pub fn new(root: Arc<Mutex<PciRoot>>) -> PciEcam {
        PciEcam { root }
    }
}

impl BusDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (bdf, reg) = (Bdf((offset >> 12) as u16), (offset & 0xfff) as u16);
        let v = self
            .root
            .lock()
            .expect("pci lock")
            .read(bdf, reg, data.len() as u8);
        put(data, v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (bdf, reg) = (Bdf((offset >> 12) as u16), (offset & 0xfff) as u16);
        self.root
            .lock()
            .expect("pci lock")
            .write(bdf, reg, data.len() as u8, le(data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use migration::vmstate::Migratable;

    fn root() -> Arc<Mutex<PciRoot>> {
        let mut r = PciRoot::default();
        r.add(Bdf::new(0, 0, 0), Box::new(host_bridge::HostBridge::new()))
            .unwrap();
        Arc::new(Mutex::new(r))
    }

    #[test]
    fn cf8_and_ecam_see_the_same_registers() {
        let r = root();
        let mut io = PciConfigIo::new(r.clone(), Arc::new(|_| {}));
        let mut ecam = PciEcam::new(r);
        for reg in (0..256u64).step_by(4) {
            io.write(0, &(0x8000_0000u32 | reg as u32).to_le_bytes());
            let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
            io.read(4, &mut a);
            ecam.read(reg, &mut b);
            assert_eq!(a, b, "register {reg:#x}");
        }
        // Vendor 8086, device 29c0.
        let mut id = [0u8; 4];
        ecam.read(0, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x29c0_8086);
        // Nothing at 00:01.0.
        ecam.read(1 << 15, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0xffff_ffff);
        // Sub-dword access through 0xCFE.
        io.write(0, &0x8000_0000u32.to_le_bytes());
        let mut w = [0u8; 2];
        io.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x29c0);
    }

    #[test]
    fn config_address_latch_round_trips() {
        let mut io = PciConfigIo::new(root(), Arc::new(|_| {}));
        io.write(0, &0x8000_0008u32.to_le_bytes());
        let mut other = PciConfigIo::new(root(), Arc::new(|_| {}));
        other.load(&io.state()).unwrap();
        let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
        io.read(4, &mut a);
        other.read(4, &mut b);
        assert_eq!(a, b, "CFC reads the register the restored latch selects");
        assert_eq!(
            u32::from_le_bytes(b) >> 8,
            0x06_00_00,
            "class code of 00:00.0"
        );
    }

    #[test]
    fn reset_control_raises_reset() {
        let seen = Arc::new(Mutex::new(vec![]));
        let s = seen.clone();
        let mut io = PciConfigIo::new(root(), Arc::new(move |e| s.lock().unwrap().push(e)));
        io.write(1, &[0x02]);
        assert!(seen.lock().unwrap().is_empty());
        io.write(1, &[0x06]);
        assert_eq!(*seen.lock().unwrap(), vec![VmEvent::Reset]);
    }
}
