//! Device state as a migration peer or a saved file sends it: a section
//! body for one of vmm's devices, decoded through the device's own
//! description and handed to its `load`, as the destination does. A load
//! either refuses and leaves the device as it was, or takes the state; a
//! device that took a state saves one that a fresh device takes back
//! unchanged, and still answers its guest (every config register read).
//! Input: [device][version pick][section body...].

#![no_main]

use devices::pci::PciFunction;
use libfuzzer_sys::fuzz_target;
use migration::stream::{decode_state, encode_state};
use migration::vmstate::{Description, Migratable, State, Val};
use std::sync::{Arc, Mutex, OnceLock};
use vmm_fuzz::{memory, root_port, virtio_pci, VIRTIO};
use vmm_sys_util::eventfd::EventFd;

/// The board devices and the PCI functions, loaded the way the board
/// loads each.
enum Dev {
    Board(Box<dyn Migratable>),
    Pci(Box<dyn PciFunction>),
}

const BOARD: usize = 3;
const PCI: usize = 2;
const KINDS: usize = BOARD + PCI + VIRTIO.len();

fn build(kind: usize) -> Dev {
    use devices::pci::{host_bridge::HostBridge, PciConfigIo, PciRoot};
    static MEM: OnceLock<devices::virtio::Memory> = OnceLock::new();
    let mem = MEM.get_or_init(|| memory(1 << 16));
    let event = || EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let sink: devices::EventSink = Arc::new(|_| {});
    match kind % KINDS {
        0 => Dev::Board(Box::new(devices::serial::Serial::new(
            event(),
            Box::new(std::io::sink()),
        ))),
        1 => Dev::Board(Box::new(devices::acpi_pm::AcpiPm::new(5, sink, event()))),
        2 => Dev::Board(Box::new(PciConfigIo::new(
            Arc::new(Mutex::new(PciRoot::default())),
            sink,
        ))),
        3 => Dev::Pci(Box::new(HostBridge::new())),
        4 => Dev::Pci(Box::new(root_port())),
        k => Dev::Pci(Box::new(virtio_pci(k - BOARD - PCI, mem))),
    }
}

impl Dev {
    fn description(&self) -> &'static Description {
        match self {
            Dev::Board(d) => d.description(),
            Dev::Pci(f) => f.vmstate(),
        }
    }
    fn state(&mut self) -> State {
        match self {
            Dev::Board(d) => d.state(),
            Dev::Pci(f) => {
                f.pause();
                f.state()
            }
        }
    }
    fn load(&mut self, st: &State) -> Result<(), String> {
        match self {
            Dev::Board(d) => d.load(st).map_err(|e| e.to_string()),
            Dev::Pci(f) => f.load("00:03.0", st).map_err(|e| e.to_string()),
        }
    }
    /// The guest reads every config register.
    fn answer(&mut self) {
        if let Dev::Pci(f) = self {
            for off in (0..4096u16).step_by(4) {
                f.config_read(off, 4);
            }
        }
    }
}

/// `st` without what is a clock (it moves on between two saves).
fn settled(desc: &Description, st: &State) -> State {
    let mut st = st.clone();
    if desc.name == "acpi-pm" {
        st.set("pm_timer", Val::Uint(0));
    }
    st
}

fuzz_target!(|data: &[u8]| {
    let [kind, pick, body @ ..] = data else {
        return;
    };
    let kind = *kind as usize % KINDS;
    let mut dev = build(kind);
    let desc = dev.description();
    let span = desc.version_id - desc.minimum_version_id + 1;
    let version = desc.minimum_version_id + u32::from(*pick) % span;
    let Ok(st) = decode_state(desc, version, body) else {
        return;
    };
    let before = dev.state();
    if let Err(e) = dev.load(&st) {
        assert!(
            settled(desc, &dev.state()) == settled(desc, &before),
            "{}: a refused state ({e}) changed the device",
            desc.name
        );
        return;
    }
    let saved = dev.state();
    let bytes = encode_state(desc, &saved).expect("a loaded device's state encodes");
    let again = decode_state(desc, desc.version_id, &bytes).expect("and decodes");
    let mut fresh = build(kind);
    if let Err(e) = fresh.load(&again) {
        panic!(
            "{}: a fresh device refuses the state a loaded one saved: {e}",
            desc.name
        );
    }
    assert!(
        settled(desc, &fresh.state()) == settled(desc, &saved),
        "{}: the state changed on its way through a fresh device",
        desc.name
    );
    dev.answer();
});
