//! virtio: the device-independent core (status, features, queues, the
//! common migratable state), the interface a device model implements, and
//! the PCI transport in [`pci`].
//!
//! Every guest-memory write a device does goes through [`Memory`], whose
//! per-region [`AtomicBitmap`] records the page as dirty for migration.

#[allow(unsafe_code)]
pub mod blk;
pub mod console;
#[allow(unsafe_code)]
pub mod io;
pub mod msix;
#[allow(unsafe_code)]
pub mod net;
pub mod pci;
#[allow(unsafe_code)]
pub mod rng;
mod worker;

pub use migration::vmstate::LoadError;
use migration::vmstate::{Description, State};
use std::os::fd::RawFd;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::bitmap::AtomicBitmap;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as devices see it: writes are recorded in a dirty bitmap.
pub type Memory = vm_memory::GuestMemoryMmap<AtomicBitmap>;

pub const TYPE_NET: u16 = 1;
pub const TYPE_BLOCK: u16 = 2;
pub const TYPE_CONSOLE: u16 = 3;
pub const TYPE_RNG: u16 = 4;

pub const F_RING_INDIRECT_DESC: u64 = 1 << 28;
pub const F_VERSION_1: u64 = 1 << 32;

pub const S_ACKNOWLEDGE: u8 = 1;
pub const S_DRIVER: u8 = 2;
pub const S_DRIVER_OK: u8 = 4;
pub const S_FEATURES_OK: u8 = 8;
pub const S_NEEDS_RESET: u8 = 0x40;
pub const S_FAILED: u8 = 0x80;

/// A virtio state that does not load, from the virtio core (the transport
/// names the function).
fn bad(what: impl Into<String>) -> LoadError {
    LoadError::new("virtio", what)
}

/// "No MSI-X vector" in the vector registers.
pub const NO_VECTOR: u16 = 0xffff;

/// The largest queue a device may offer (split rings).
pub const QUEUE_MAX: u16 = 1024;

/// What a virtio-pci device's `auto` properties resolve against.
#[derive(Clone, Copy, Debug)]
pub struct Board {
    pub vcpus: u8,
    /// The device sits behind a PCIe root port, not on the root bus.
    pub on_pcie_port: bool,
    /// Which virtio-net device this is on the board, counting from 0.
    pub nic: u8,
}

/// Replaces the `auto` settings of a virtio-pci device (`num-queues`,
/// `vectors`, `disable-legacy`, `mac`) with the values its guest sees, as
/// QEMU's realize does, so that `--print-config` and `qom-get` answer what
/// the guest sees. The board builds the device from these values.
pub fn resolve_auto(props: &mut crate::model::Props, board: &Board) {
    use crate::model::property::{OnOffAuto, Value};
    use crate::registry::Build;
    let Some(Build::Virtio(ty)) = crate::registry::find(props.type_name).map(|d| &d.build) else {
        return;
    };
    (ty.auto)(props, board);
    let queues = (ty.queues)(props);
    if props.uint("vectors") == Some(pci::AUTO_VECTORS) {
        let why = format!("{queues} queue(s) + 1 for configuration changes");
        props.resolve_auto("vectors", Value::Uint(queues + 1), why);
    }
    if props.on_off_auto("disable-legacy") == Some(OnOffAuto::Auto) {
        let (v, why) = if board.on_pcie_port {
            (OnOffAuto::On, "behind a PCIe root port")
        } else {
            (OnOffAuto::Off, "on the root bus")
        };
        props.resolve_auto("disable-legacy", Value::OnOffAuto(v), why.into());
    }
}

/// Where a queue's doorbell lives, for KVM ioeventfds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Doorbell {
    /// A 16-bit port write whose value is the queue index (legacy).
    Pio { port: u16, queue: u16 },
    /// A 16-bit write to this address (modern: one address per queue).
    Mmio { addr: u64 },
}

/// What devices need from the VMM: interrupts and doorbells.
pub trait VmOps: Send + Sync {
    /// Sends a message-signalled interrupt.
    fn signal_msi(&self, addr: u64, data: u32) -> std::io::Result<()>;
    /// Sets the level of an interrupt line (INTx).
    fn set_irq_line(&self, gsi: u32, level: bool) -> std::io::Result<()>;
    /// Makes guest writes to `bell` signal `fd` without a VM exit to us.
    fn add_doorbell(&self, fd: &EventFd, bell: Doorbell) -> std::io::Result<()>;
    fn remove_doorbell(&self, fd: &EventFd, bell: Doorbell) -> std::io::Result<()>;
}

/// A VMM with no guest behind it: interrupts and doorbells go nowhere.
/// What tools build devices on to look at them (`-dump-abi`), and the
/// fuzzers.
pub struct NoVm;

impl VmOps for NoVm {
    fn signal_msi(&self, _: u64, _: u32) -> std::io::Result<()> {
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

/// A guest mistake a device refuses to act on; the device marks itself
/// broken (QEMU's `virtio_error`) until the driver resets it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GuestError(pub String);

/// The queues of a started device and the memory they live in.
pub struct Queues<'a> {
    pub mem: &'a Memory,
    pub queues: &'a mut [Queue],
    /// Set for each queue that returned buffers (and may need an interrupt).
    pub used: &'a mut Vec<u16>,
}

impl Queues<'_> {
    /// Returns a chain of `len` bytes written to the guest on queue `q`.
    pub fn add_used(&mut self, q: usize, head: u16, len: u32) -> Result<(), GuestError> {
        self.queues[q]
            .add_used(self.mem, head, len)
            .map_err(|e| GuestError(format!("queue {q}: cannot return buffer {head}: {e}")))?;
        if !self.used.contains(&(q as u16)) {
            self.used.push(q as u16);
        }
        Ok(())
    }
}

/// A device model behind a transport (blk, net, console, rng).
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u16;
    /// Every feature the device and its backend support. A backend without
    /// `VIRTIO_F_VERSION_1` makes the transport legacy-only.
    fn features(&self) -> u64;
    /// The maximum size of each queue.
    fn queue_sizes(&self) -> Vec<u16>;
    fn config_read(&self, offset: u64, data: &mut [u8]);
    fn config_write(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// The driver finished set-up with `features`.
    fn activate(&mut self, features: u64) {
        let _ = features;
    }
    /// Serves queue `q` after the driver notified it.
    fn process(&mut self, q: usize, queues: &mut Queues) -> Result<(), GuestError>;
    /// A file descriptor whose readiness the worker watches (a tap).
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }
    /// The VM now runs on a new host: tell the network where it is (a
    /// NIC sends QEMU's self-announce RARP from the guest's MAC).
    fn announce(&mut self) {}
    /// The backend fd is readable (only called once activated).
    fn backend_ready(&mut self, queues: &mut Queues) -> Result<(), GuestError> {
        let _ = queues;
        Ok(())
    }
    /// Back to the power-on state (the driver wrote status 0).
    fn reset(&mut self) {}
    /// Takes what only one VM may hold of its backend (a disk image's
    /// lock): at start, or when an incoming migration commits.
    fn claim_backend(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Gives it up: the migration's destination takes it next.
    fn release_backend(&mut self) {}
    /// The device-specific migratable state and its description.
    fn vmstate(&self) -> &'static Description;
    fn state(&self) -> State;
    fn load(&mut self, st: &State) -> Result<(), LoadError>;
}

migration::vmstate! {
    /// One virtqueue: its rings, where the device is in them, its vector.
    static QUEUE = "virtqueue_state", version 1, minimum 1;
    pub struct VirtqueueState {
        size: u16,
        ready: bool,
        desc: u64,
        avail: u64,
        used: u64,
        last_avail_idx: u16,
        used_idx: u16,
        vector: u16,
    }
}

migration::vmstate! {
    /// Queue states, as many as `num_queues` (up to the largest device's).
    static QUEUES = "virtqueues", version 1, minimum 1;
    pub struct VirtqueuesState {
        q: [VirtqueueState; MAX_QUEUES],
    }
}

migration::vmstate! {
    /// The device found a guest error and stopped (until a reset).
    static BROKEN = "virtio/broken", version 1, minimum 1;
    pub struct BrokenState {
        broken: bool,
    }
}

migration::vmstate! {
    /// The device's endianness, when not little-endian.
    static DEVICE_ENDIAN = "virtio/device_endian", version 1, minimum 1;
    pub struct DeviceEndianState {
        device_endian: u8,
    }
}

/// Device endianness values (QEMU's VIRTIO_DEVICE_ENDIAN_*).
pub const ENDIAN_LITTLE: u8 = 1;

migration::vmstate! {
    /// The device-independent state every virtio device migrates (QEMU's
    /// "virtio" section, with its later additions in subsections: a stream
    /// from a device that never broke and is little-endian carries neither,
    /// so an older reader loads it; one that needs them names them).
    pub static VMSTATE = "virtio", version 1, minimum 1;
    pub struct VirtioState {
        status: u8,
        isr: u8,
        queue_sel: u16,
        guest_features: u64,
        /// The modern interface's feature-word selectors: a vCPU may stop
        /// between selecting a word and reading it (QEMU migrates them in
        /// virtio_pci/modern_state).
        device_features_sel: u32,
        driver_features_sel: u32,
        config_vector: u16,
        config_generation: u8,
        num_queues: u16,
        queues: VirtqueuesState,
    }
    subsections {
        /// Only from a device that broke.
        broken: Option<BrokenState>,
        /// Only from a device that is not little-endian (none of vmm's).
        device_endian: Option<DeviceEndianState>,
    }
}

/// Queues a device may have (virtio-blk with one per vCPU, up to 64).
pub const MAX_QUEUES: usize = 64;

/// The device-independent runtime state.
pub struct Common {
    pub status: u8,
    pub isr: u8,
    pub queue_sel: u16,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub config_vector: u16,
    pub config_generation: u8,
    pub queues: Vec<Queue>,
    pub vectors: Vec<u16>,
    /// The device found a guest error and stopped (until a reset).
    pub broken: bool,
}

impl Common {
    pub fn new(sizes: &[u16]) -> Common {
        Common {
            status: 0,
            isr: 0,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            config_vector: NO_VECTOR,
            config_generation: 0,
            queues: sizes
                .iter()
                .map(|&s| Queue::new(s).expect("power-of-two queue size"))
                .collect(),
            vectors: vec![NO_VECTOR; sizes.len()],
            broken: false,
        }
    }

    pub fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.vectors.fill(NO_VECTOR);
        self.status = 0;
        self.isr = 0;
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.config_vector = NO_VECTOR;
        self.broken = false;
    }

    pub fn running(&self) -> bool {
        self.status & S_DRIVER_OK != 0 && self.status & S_FAILED == 0 && !self.broken
    }

    pub fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// The migratable state ([`VMSTATE`]).
    pub fn state(&self) -> VirtioState {
        let mut queues = VirtqueuesState::default();
        for ((q, &vector), saved) in self.queues.iter().zip(&self.vectors).zip(&mut queues.q) {
            let qs = q.state();
            *saved = VirtqueueState {
                size: qs.size,
                ready: qs.ready,
                desc: qs.desc_table,
                avail: qs.avail_ring,
                used: qs.used_ring,
                last_avail_idx: qs.next_avail,
                used_idx: qs.next_used,
                vector,
            };
        }
        VirtioState {
            status: self.status,
            isr: self.isr,
            queue_sel: self.queue_sel,
            guest_features: self.driver_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            config_vector: self.config_vector,
            config_generation: self.config_generation,
            num_queues: self.queues.len() as u16,
            queues,
            broken: self.broken.then_some(BrokenState { broken: true }),
            // vmm's devices are little-endian: nothing to send.
            device_endian: None,
        }
    }

    /// Loads [`VMSTATE`]; the queue count must match this device's.
    pub fn load(&mut self, st: &VirtioState) -> Result<(), LoadError> {
        let n = st.num_queues as usize;
        if n != self.queues.len() {
            return Err(bad(format!(
                "the stream's device has {n} queues, this one {} (num-queues differs between source and destination)",
                self.queues.len()
            )));
        }
        if let Some(e) = &st.device_endian {
            if e.device_endian != ENDIAN_LITTLE {
                return Err(bad(format!(
                    "the stream's device is big-endian ({}); vmm devices are little-endian",
                    e.device_endian
                )));
            }
        }
        for (i, (q, vector)) in self.queues.iter_mut().zip(&mut self.vectors).enumerate() {
            let Some(s) = st.queues.q.get(i) else {
                return Err(bad(format!("virtio state lacks queue {i}")));
            };
            let qs = QueueState {
                max_size: q.max_size(),
                next_avail: s.last_avail_idx,
                next_used: s.used_idx,
                event_idx_enabled: false,
                size: s.size,
                ready: s.ready,
                desc_table: s.desc,
                avail_ring: s.avail,
                used_ring: s.used,
            };
            *q = Queue::try_from(qs).map_err(|e| bad(format!("queue {i}: {e}")))?;
            *vector = s.vector;
        }
        self.status = st.status;
        self.isr = st.isr;
        self.queue_sel = st.queue_sel;
        self.driver_features = st.guest_features;
        self.device_features_sel = st.device_features_sel;
        self.driver_features_sel = st.driver_features_sel;
        self.config_vector = st.config_vector;
        self.config_generation = st.config_generation;
        self.broken = st.broken.as_ref().is_some_and(|b| b.broken);
        Ok(())
    }
}

/// Reads a little-endian config structure: `data.len()` bytes at `offset`
/// of `bytes`, zeros beyond its end.
pub fn read_config_bytes(bytes: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = bytes.get(offset as usize + i).copied().unwrap_or(0);
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use migration::stream::{Reader, Record, Writer};
    use migration::vmstate::{Description, State};

    /// Writes `st` as one section described by `desc`, reads it back with
    /// `reader_desc` (an older or newer reader), as a migration would.
    pub(crate) fn roundtrip(
        desc: &'static Description,
        st: &State,
        reader_desc: &'static Description,
    ) -> Result<State, String> {
        let mut w = Writer::new(Vec::new(), "pc-q35-10.0").unwrap();
        w.section("0000:00:03.0/virtio-rng", 0, desc, st).unwrap();
        let bytes = w.finish().unwrap();
        let mut r = Reader::new(&bytes[..], "pc-q35-10.0").unwrap();
        struct NoRam;
        impl migration::stream::RamSink for NoRam {
            fn block_len(&self, _: &str) -> Option<u64> {
                None
            }
            fn page(&mut self, _: &str, _: u64, _: &[u8]) {}
        }
        match r.next_record(&|_, _| Some(reader_desc), &mut NoRam) {
            Ok(Record::Section { state, .. }) => Ok(state),
            Ok(_) => Err("no section".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::roundtrip;
    use super::*;
    use migration::vmstate::Vmstate;

    /// The description a reader had before the broken flag existed.
    static OLD: Description = Description {
        name: "virtio",
        version_id: 1,
        minimum_version_id: 1,
        fields: VMSTATE.fields,
        subsections: &[],
    };

    #[test]
    fn broken_flag_travels_in_a_subsection_old_readers_name() {
        let mut c = Common::new(&[256]);
        c.status = S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;
        c.device_features_sel = 1;
        // A healthy device: no subsection, an old reader loads it.
        let load = |back: &mut Common, st: &State| {
            back.load(&VirtioState::from_state(st, "virtio").unwrap())
        };
        let st = roundtrip(&VMSTATE, &c.state().to_state(), &OLD)
            .expect("old reader loads a healthy device");
        let mut back = Common::new(&[256]);
        load(&mut back, &st).unwrap();
        assert!(!back.broken);
        assert_eq!(back.status, c.status);
        assert_eq!(back.device_features_sel, 1, "the selector latch travels");
        // A broken device: the new reader restores the flag ...
        c.broken = true;
        let st = roundtrip(&VMSTATE, &c.state().to_state(), &VMSTATE).unwrap();
        load(&mut back, &st).unwrap();
        assert!(back.broken, "the broken flag survives migration");
        // ... and an old one fails naming the subsection, never misparses.
        let err = roundtrip(&VMSTATE, &c.state().to_state(), &OLD).unwrap_err();
        assert!(err.contains("virtio/broken"), "{err}");
    }

    #[test]
    fn queue_count_mismatch_names_num_queues() {
        let c = Common::new(&[256, 256]);
        let mut one = Common::new(&[256]);
        let err = one.load(&c.state()).unwrap_err().to_string();
        assert!(err.contains("num-queues"), "{err}");
    }
}
