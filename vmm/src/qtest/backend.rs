//! The qtest accelerator as a hypervisor backend: a VM with RAM, doorbells
//! and a virtual clock, and no vCPUs. The qtest client is its only CPU:
//! its memory writes go through here, into this backend's dirty log, as a
//! vCPU's go into KVM's; a message-signalled interrupt is the memory write
//! it is on the bus (QEMU's qtest sees MSI the same way); doorbells take
//! the writes KVM's ioeventfds would.

use crate::hypervisor::{Blobs, Error, Hypervisor, Vcpu, Vm};
use devices::virtio::{Doorbell, VmOps};
use migration::vmstate::Description;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    fn create_vm(&self) -> Result<Arc<dyn Vm>, Error> {
        Ok(Arc::new(QtestVm::default()))
    }
}

/// One RAM slot: where the host has it, and the pages qtest wrote.
struct Slot {
    gpa: u64,
    size: u64,
    host: *mut u8,
    dirty: Vec<AtomicU64>,
}

// SAFETY: `host` is a mapping the board owns for the VM's lifetime (the
// contract of `Vm::add_memory`); every access goes through `copy` below,
// which stays inside the slot.
unsafe impl Send for Slot {}
// SAFETY: as above; the dirty bitmap is atomic.
unsafe impl Sync for Slot {}

/// A VM run by a qtest client instead of vCPUs.
#[derive(Default)]
pub struct QtestVm {
    slots: Mutex<Vec<Arc<Slot>>>,
    doorbells: Mutex<Vec<(EventFd, Doorbell)>>,
    /// QEMU_CLOCK_VIRTUAL: moved only by `clock_step`/`clock_set`.
    clock: AtomicU64,
    logging: AtomicBool,
}

/// What a qtest access on the port or memory bus became.
pub enum Rang {
    /// A doorbell took the write.
    Doorbell,
    /// Nobody: it goes to the bus.
    No,
}

impl QtestVm {
    fn slot(&self, gpa: u64, len: usize) -> Option<Arc<Slot>> {
        let end = gpa.checked_add(len as u64)?;
        self.slots
            .lock()
            .expect("slots lock")
            .iter()
            .find(|s| gpa >= s.gpa && end <= s.gpa + s.size)
            .cloned()
    }

    /// Reads guest RAM at `gpa`; false if the range is not all in one RAM slot.
    pub fn read_ram(&self, gpa: u64, data: &mut [u8]) -> bool {
        let Some(s) = self.slot(gpa, data.len()) else {
            return false;
        };
        // SAFETY: the range is inside the slot's mapping (checked above),
        // which lives as long as the VM.
        unsafe {
            std::ptr::copy_nonoverlapping(
                s.host.add((gpa - s.gpa) as usize),
                data.as_mut_ptr(),
                data.len(),
            )
        };
        true
    }

    /// Writes guest RAM at `gpa` and logs the pages dirty; false if the
    /// range is not all in one RAM slot.
    pub fn write_ram(&self, gpa: u64, data: &[u8]) -> bool {
        let Some(s) = self.slot(gpa, data.len()) else {
            return false;
        };
        // SAFETY: as in read_ram.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                s.host.add((gpa - s.gpa) as usize),
                data.len(),
            )
        };
        if !data.is_empty() {
            let first = (gpa - s.gpa) / PAGE;
            let last = (gpa - s.gpa + data.len() as u64 - 1) / PAGE;
            for p in first..=last {
                s.dirty[(p / 64) as usize].fetch_or(1 << (p % 64), Ordering::SeqCst);
            }
        }
        true
    }

    /// A port write of `data`: a doorbell registered for it takes it (as
    /// a KVM ioeventfd with its queue index as data match).
    pub fn ring_pio(&self, port: u16, data: &[u8]) -> Rang {
        let value = match *data {
            [a, b] => u16::from_le_bytes([a, b]),
            _ => return Rang::No,
        };
        self.ring(
            |b| matches!(b, Doorbell::Pio { port: p, queue } if *p == port && *queue == value),
        )
    }

    /// A memory write at `addr`: a doorbell at that address takes it (any
    /// value, as KVM's ioeventfd without data match).
    pub fn ring_mmio(&self, addr: u64) -> Rang {
        self.ring(|b| matches!(b, Doorbell::Mmio { addr: a } if *a == addr))
    }

    fn ring(&self, hit: impl Fn(&Doorbell) -> bool) -> Rang {
        let bells = self.doorbells.lock().expect("doorbells lock");
        match bells.iter().find(|(_, b)| hit(b)) {
            Some((fd, _)) => {
                if let Err(e) = fd.write(1) {
                    log::warn!("qtest: a doorbell's eventfd refused a write: {e}");
                }
                Rang::Doorbell
            }
            None => Rang::No,
        }
    }
}

fn same_bell(a: &Doorbell, b: &Doorbell) -> bool {
    match (a, b) {
        (Doorbell::Pio { port: p, queue: q }, Doorbell::Pio { port, queue }) => {
            p == port && q == queue
        }
        (Doorbell::Mmio { addr: x }, Doorbell::Mmio { addr }) => x == addr,
        _ => false,
    }
}

fn io_error(what: &'static str, kind: std::io::ErrorKind) -> Error {
    Error {
        what,
        source: std::io::Error::from(kind),
    }
}

impl VmOps for QtestVm {
    fn signal_msi(&self, addr: u64, data: u32) -> std::io::Result<()> {
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
        Ok(())
    }

    fn add_doorbell(&self, fd: &EventFd, bell: Doorbell) -> std::io::Result<()> {
        self.doorbells
            .lock()
            .expect("doorbells lock")
            .push((fd.try_clone()?, bell));
        Ok(())
    }

    fn remove_doorbell(&self, fd: &EventFd, bell: Doorbell) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut bells = self.doorbells.lock().expect("doorbells lock");
        // The same eventfd (its clone here is another descriptor of it).
        let same_file = |a: &EventFd| {
            let st = |f: i32| {
                // SAFETY: fstat on a descriptor we hold, into a zeroed struct.
                let mut s: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: as above.
                (unsafe { libc::fstat(f, &mut s) } == 0).then_some((s.st_dev, s.st_ino))
            };
            st(a.as_raw_fd()).is_some() && st(a.as_raw_fd()) == st(fd.as_raw_fd())
        };
        bells.retain(|(f, b)| !(same_bell(b, &bell) && same_file(f)));
        Ok(())
    }
}

impl Vm for QtestVm {
    unsafe fn add_memory(
        &self,
        slot: u32,
        gpa: u64,
        size: u64,
        host: *mut u8,
    ) -> Result<(), Error> {
        let pages = size.div_ceil(PAGE);
        let mut slots = self.slots.lock().expect("slots lock");
        if slot as usize != slots.len() {
            return Err(io_error(
                "qtest: memory slots must be added in order",
                std::io::ErrorKind::InvalidInput,
            ));
        }
        slots.push(Arc::new(Slot {
            gpa,
            size,
            host,
            dirty: (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        }));
        Ok(())
    }

    fn set_dirty_logging(&self, on: bool) -> Result<(), Error> {
        if on && !self.logging.swap(true, Ordering::SeqCst) {
            for s in self.slots.lock().expect("slots lock").iter() {
                for w in &s.dirty {
                    w.store(0, Ordering::SeqCst);
                }
            }
        }
        self.logging.store(on, Ordering::SeqCst);
        Ok(())
    }

    fn dirty_log(&self, slot: u32) -> Result<Vec<u64>, Error> {
        let slots = self.slots.lock().expect("slots lock");
        let s = slots
            .get(slot as usize)
            .ok_or_else(|| io_error("qtest: no such memory slot", std::io::ErrorKind::NotFound))?;
        Ok(s.dirty
            .iter()
            .map(|w| w.swap(0, Ordering::SeqCst))
            .collect())
    }

    fn add_irqfd(&self, _: &EventFd, gsi: u32) -> Result<(), Error> {
        log::debug!("qtest: line {gsi} has no interrupt controller behind it");
        Ok(())
    }

    fn create_vcpu(&self, _: u8) -> Result<Box<dyn Vcpu>, Error> {
        Err(io_error(
            "the qtest accelerator has no vCPUs",
            std::io::ErrorKind::Unsupported,
        ))
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
    fn writes_are_logged_dirty_and_msi_lands_in_ram() {
        let mut ram = vec![0u8; 8 * PAGE as usize];
        let vm = QtestVm::default();
        // SAFETY: `ram` outlives `vm` in this test.
        unsafe { vm.add_memory(0, 0x10000, ram.len() as u64, ram.as_mut_ptr()) }.unwrap();
        vm.set_dirty_logging(true).unwrap();
        assert!(vm.write_ram(0x10000 + PAGE - 2, &[1, 2, 3, 4]));
        assert!(
            !vm.write_ram(0x10000 + 8 * PAGE - 2, &[1, 2, 3, 4]),
            "past the slot"
        );
        vm.signal_msi(0x10000 + 5 * PAGE, 0xfeed).unwrap();
        assert_eq!(vm.dirty_log(0).unwrap(), vec![0b100011]);
        assert_eq!(vm.dirty_log(0).unwrap(), vec![0], "the log clears");
        let mut b = [0u8; 4];
        assert!(vm.read_ram(0x10000 + 5 * PAGE, &mut b));
        assert_eq!(u32::from_le_bytes(b), 0xfeed);
        drop(vm);
        assert_eq!(ram[PAGE as usize - 2..PAGE as usize + 2], [1, 2, 3, 4]);
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
        assert!(
            matches!(vm.ring_pio(0xc010, &[0, 0]), Rang::No),
            "queue 0 is not ours"
        );
        assert!(matches!(vm.ring_pio(0xc010, &[1, 0]), Rang::Doorbell));
        assert!(matches!(vm.ring_mmio(0xfe00_3000), Rang::Doorbell));
        assert_eq!(fd.read().unwrap(), 2);
        vm.remove_doorbell(&fd, Doorbell::Mmio { addr: 0xfe00_3000 })
            .unwrap();
        assert!(matches!(vm.ring_mmio(0xfe00_3000), Rang::No));
        assert!(matches!(vm.ring_pio(0xc010, &[1, 0]), Rang::Doorbell));
    }
}
