//! The qtest accelerator as a hypervisor backend: a VM with RAM, doorbells
//! and a virtual clock, and no vCPUs. The qtest client is its only CPU:
//! its accesses reach RAM through the board's guest memory (volatile, and
//! in the devices' dirty bitmap, which the migration reads with the
//! hypervisor's log); a message-signalled interrupt is the memory write
//! it is on the bus (QEMU's qtest sees MSI the same way), unless the
//! board's interrupt controller takes it (pseries' MSI window); doorbells
//! take the writes KVM's ioeventfds would.

use crate::hypervisor::{Blobs, Error, Hypervisor, Vcpu, Vm};
use devices::virtio::{Doorbell, Memory, VmOps};
use migration::vmstate::Description;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

migration::vmstate! {
    /// What the qtest accelerator holds besides RAM: nothing (its clock
    /// travels as every VM's does, in `kvmclock`).
    pub static QTEST = "qtest", version 1, minimum 1;
    pub struct QtestState {}
}

const PAGE: u64 = 4096;

/// Creates [`QtestVm`]s.
pub struct QtestHypervisor;

impl Hypervisor for QtestHypervisor {
    fn create_vm(&self) -> Result<std::sync::Arc<dyn Vm>, Error> {
        Ok(std::sync::Arc::new(QtestVm::default()))
    }
}

/// A VM run by a qtest client instead of vCPUs.
#[derive(Default)]
pub struct QtestVm {
    /// The board's guest memory, once it has some ([`QtestVm::attach`]).
    mem: OnceLock<Memory>,
    /// Each memory slot's size (the dirty log's length).
    slots: Mutex<Vec<u64>>,
    doorbells: Mutex<Vec<(EventFd, Doorbell)>>,
    /// QEMU_CLOCK_VIRTUAL: moved only by `clock_step`/`clock_set`.
    clock: AtomicU64,
    /// The board's interrupt controller, for the MSIs it takes.
    msi_route: OnceLock<MsiRoute>,
    /// And for its interrupt lines.
    line_route: OnceLock<LineRoute>,
}

/// Sets an interrupt line's level at the board's interrupt controller.
pub type LineRoute = Box<dyn Fn(u32, bool) + Send + Sync>;

/// Takes an MSI (address, data) the board's interrupt controller serves;
/// false for one that is a plain memory write.
pub type MsiRoute = Box<dyn Fn(u64, u32) -> bool + Send + Sync>;

impl QtestVm {
    /// Gives the VM the board's guest memory (the same mappings its slots
    /// were added from).
    pub fn attach(&self, mem: &Memory) {
        let _ = self.mem.set(mem.clone());
    }

    /// Gives the VM the board's interrupt controller (pseries: writes to
    /// the MSI window raise the source their data names).
    pub fn route_msi(&self, route: MsiRoute) {
        let _ = self.msi_route.set(route);
    }

    /// Gives the VM the board's interrupt controller's lines (pseries:
    /// the PCI bridge's pins are its sources).
    pub fn route_lines(&self, route: LineRoute) {
        let _ = self.line_route.set(route);
    }

    /// Reads guest RAM at `gpa`; false unless all of it is RAM.
    pub fn read_ram(&self, gpa: u64, data: &mut [u8]) -> bool {
        self.mem
            .get()
            .is_some_and(|m| m.read_slice(data, GuestAddress(gpa)).is_ok())
    }

    /// Writes guest RAM at `gpa` (logged dirty); false unless all of it
    /// is RAM.
    pub fn write_ram(&self, gpa: u64, data: &[u8]) -> bool {
        self.mem
            .get()
            .is_some_and(|m| m.write_slice(data, GuestAddress(gpa)).is_ok())
    }

    /// A port write of `data`: whether a doorbell took it (as a KVM
    /// ioeventfd with its queue index as data match).
    pub fn ring_pio(&self, port: u16, data: &[u8]) -> bool {
        let value = match *data {
            [a, b] => u16::from_le_bytes([a, b]),
            _ => return false,
        };
        self.ring(
            |b| matches!(b, Doorbell::Pio { port: p, queue } if *p == port && *queue == value),
        )
    }

    /// A memory write at `addr`: whether a doorbell at that address took
    /// it (any value, as KVM's ioeventfd without data match).
    pub fn ring_mmio(&self, addr: u64) -> bool {
        self.ring(|b| matches!(b, Doorbell::Mmio { addr: a } if *a == addr))
    }

    fn ring(&self, hit: impl Fn(&Doorbell) -> bool) -> bool {
        let bells = self.doorbells.lock().expect("doorbells lock");
        let Some((fd, _)) = bells.iter().find(|(_, b)| hit(b)) else {
            return false;
        };
        if let Err(e) = fd.write(1) {
            log::warn!("qtest: a doorbell's eventfd refused a write: {e}");
        }
        true
    }
}

impl VmOps for QtestVm {
    fn signal_msi(&self, addr: u64, data: u32) -> std::io::Result<()> {
        if self.msi_route.get().is_some_and(|route| route(addr, data)) {
            return Ok(());
        }
        // On the bus an MSI is a 32-bit write; without an interrupt
        // controller it lands where it points (the client polls there).
        if !self.write_ram(addr, &data.to_le_bytes()) {
            log::debug!("qtest: MSI {data:#x} to {addr:#x}, outside RAM, dropped");
        }
        Ok(())
    }

    fn set_irq_line(&self, gsi: u32, level: bool) -> std::io::Result<()> {
        log::trace!(
            "qtest: line {gsi} {}",
            if level { "raised" } else { "lowered" }
        );
        if let Some(route) = self.line_route.get() {
            route(gsi, level);
        }
        Ok(())
    }

    fn add_doorbell(&self, fd: &EventFd, bell: Doorbell) -> std::io::Result<()> {
        self.doorbells
            .lock()
            .expect("doorbells lock")
            .push((fd.try_clone()?, bell));
        Ok(())
    }

    /// Removes the doorbell at `bell` (one device's queue has one; the
    /// eventfd is not compared: every eventfd is the same anonymous file).
    fn remove_doorbell(&self, _: &EventFd, bell: Doorbell) -> std::io::Result<()> {
        self.doorbells
            .lock()
            .expect("doorbells lock")
            .retain(|(_, b)| *b != bell);
        Ok(())
    }
}

impl Vm for QtestVm {
    /// Records the slot's size; the memory itself is reached through the
    /// board's guest memory ([`QtestVm::attach`]), never this pointer.
    unsafe fn add_memory(
        &self,
        slot: u32,
        _gpa: u64,
        size: u64,
        _host: *mut u8,
    ) -> Result<(), Error> {
        let mut slots = self.slots.lock().expect("slots lock");
        if slot as usize != slots.len() {
            return Err(Error {
                what: "qtest: memory slots must be added in order",
                source: std::io::ErrorKind::InvalidInput.into(),
            });
        }
        slots.push(size);
        Ok(())
    }

    fn set_dirty_logging(&self, _: bool) -> Result<(), Error> {
        Ok(())
    }

    /// No vCPU writes: every write is in the devices' bitmap.
    fn dirty_log(&self, slot: u32) -> Result<Vec<u64>, Error> {
        let slots = self.slots.lock().expect("slots lock");
        let size = slots.get(slot as usize).ok_or(Error {
            what: "qtest: no such memory slot",
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        Ok(vec![0; size.div_ceil(PAGE).div_ceil(64) as usize])
    }

    fn add_irqfd(&self, _: &EventFd, gsi: u32) -> Result<(), Error> {
        log::debug!("qtest: line {gsi} has no interrupt controller behind it");
        Ok(())
    }

    fn create_vcpu(&self, _: u8) -> Result<Box<dyn Vcpu>, Error> {
        Err(Error {
            what: "the qtest accelerator has no vCPUs",
            source: std::io::ErrorKind::Unsupported.into(),
        })
    }

    fn clock(&self) -> Result<u64, Error> {
        Ok(self.clock.load(Ordering::SeqCst))
    }

    fn set_clock(&self, ns: u64) -> Result<(), Error> {
        self.clock.store(ns, Ordering::SeqCst);
        Ok(())
    }

    fn state_description(&self) -> &'static Description {
        &QTEST
    }

    fn save(&self) -> Result<Blobs, Error> {
        Ok(vec![])
    }

    fn restore(&self, _: &Blobs) -> Result<(), Error> {
        Ok(())
    }

    fn qtest(&self) -> Option<&QtestVm> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_writes_and_msi_land_in_guest_memory_and_its_dirty_bitmap() {
        let mem = Memory::from_ranges(&[(GuestAddress(0x10000), 8 * PAGE as usize)]).unwrap();
        let vm = QtestVm::default();
        assert!(!vm.write_ram(0x10000, &[1]), "no memory yet");
        vm.attach(&mem);
        assert!(vm.write_ram(0x10000 + PAGE - 2, &[1, 2, 3, 4]));
        assert!(
            !vm.write_ram(0x10000 + 8 * PAGE - 2, &[1, 2, 3, 4]),
            "past RAM"
        );
        vm.signal_msi(0x10000 + 5 * PAGE, 0xfeed).unwrap();
        let mut b = [0u8; 4];
        assert!(vm.read_ram(0x10000 + 5 * PAGE, &mut b));
        assert_eq!(u32::from_le_bytes(b), 0xfeed);
        use vm_memory::GuestMemoryBackend;
        let region = mem.iter().next().unwrap();
        let bitmap: &vm_memory::MmapRegion<vm_memory::bitmap::AtomicBitmap> = region;
        let dirty = bitmap.bitmap().get_and_reset();
        assert_eq!(dirty[0] & 0b100011, 0b100011, "{dirty:?}");
    }

    #[test]
    fn doorbells_take_matching_writes_until_removed() {
        let vm = QtestVm::default();
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        vm.add_doorbell(
            &fd,
            Doorbell::Pio {
                port: 0xc010,
                queue: 1,
            },
        )
        .unwrap();
        vm.add_doorbell(&fd, Doorbell::Mmio { addr: 0xfe00_3000 })
            .unwrap();
        assert!(!vm.ring_pio(0xc010, &[0, 0]), "queue 0 is not ours");
        assert!(vm.ring_pio(0xc010, &[1, 0]));
        assert!(vm.ring_mmio(0xfe00_3000));
        assert_eq!(fd.read().unwrap(), 2);
        vm.remove_doorbell(&fd, Doorbell::Mmio { addr: 0xfe00_3000 })
            .unwrap();
        assert!(!vm.ring_mmio(0xfe00_3000));
        assert!(vm.ring_pio(0xc010, &[1, 0]));
    }
}
