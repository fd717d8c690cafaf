//! Writes the seed corpus of the device targets (`fuzz/corpus/`): each
//! device's own state, and a well-formed request on each virtio device's
//! queues. Run once when a device or its state changes:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.

use devices::pci::PciFunction;
use migration::stream::encode_state;
use migration::vmstate::Migratable;
use std::path::Path;
use vmm_fuzz::{memory, root_port, virtio_pci, VIRTIO};

const WRITE: u16 = 2;
const NEXT: u16 = 1;
const INDIRECT: u16 = 4;

/// Descriptor `i` of the table at `table` in `img`.
fn desc(img: &mut [u8], table: usize, i: usize, addr: u64, len: u32, flags: u16, next: u16) {
    let at = table + 16 * i;
    img[at..at + 8].copy_from_slice(&addr.to_le_bytes());
    img[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
    img[at + 12..at + 14].copy_from_slice(&flags.to_le_bytes());
    img[at + 14..at + 16].copy_from_slice(&next.to_le_bytes());
}

/// A buffer of a chain: guest address, length, device-writable.
type Buffer = (u64, u32, bool);

/// A memory image with chain `chain` (addr, len, writable) posted as
/// buffer 0, directly or through an indirect table.
fn posted(chain: &[Buffer], indirect: bool) -> Vec<u8> {
    let mut img = vec![0u8; 0x8000];
    let table = if indirect { 0x6000 } else { 0 };
    if indirect {
        desc(&mut img, 0, 0, 0x6000, 16 * chain.len() as u32, INDIRECT, 0);
    }
    for (i, &(addr, len, w)) in chain.iter().enumerate() {
        let more = if i + 1 < chain.len() { NEXT } else { 0 };
        desc(
            &mut img,
            table,
            i,
            addr,
            len,
            more | if w { WRITE } else { 0 },
            i as u16 + 1,
        );
    }
    img[0x1002..0x1004].copy_from_slice(&1u16.to_le_bytes()); // avail idx
    img
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    // device_state: [kind][version pick][the device's own state].
    let mem = memory(1 << 16);
    let sink: devices::EventSink = std::sync::Arc::new(|_| {});
    let ev = || vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let board: [Box<dyn Migratable>; 3] = [
        Box::new(devices::serial::Serial::new(
            ev(),
            Box::new(std::io::sink()),
        )),
        Box::new(devices::acpi_pm::AcpiPm::new(5, sink.clone(), ev())),
        Box::new(devices::pci::PciConfigIo::new(Default::default(), sink)),
    ];
    let mut states = vec![];
    for d in &board {
        states.push((d.description(), d.state()));
    }
    let mut pci: Vec<Box<dyn PciFunction>> = vec![
        Box::new(devices::pci::host_bridge::HostBridge::new()),
        Box::new(root_port()),
    ];
    for k in 0..VIRTIO.len() {
        pci.push(Box::new(virtio_pci(k, &mem)));
    }
    for f in &mut pci {
        f.pause();
        states.push((f.vmstate(), f.state()));
    }
    for (kind, (desc, st)) in states.iter().enumerate() {
        let mut seed = vec![
            kind as u8,
            (desc.version_id - desc.minimum_version_id) as u8,
        ];
        seed.extend(encode_state(desc, st).unwrap());
        write(
            &top.join("device_state"),
            &format!("{kind}-{}", desc.name),
            &seed,
        );
    }
    // virtqueue: [kind][queue][flags: indirect, version 1][log2 size][image].
    let blk = [(0x3000, 16, false), (0x4000, 512, true), (0x5000, 1, true)];
    let requests: [(usize, u8, &[Buffer]); 5] = [
        (0, 0, &blk),
        (1, 0, &[(0x3000, 1526, true)]),
        (1, 1, &[(0x3000, 72, false)]),
        (2, 0, &[(0x3000, 64, true)]),
        (3, 1, &[(0x3000, 16, false)]),
    ];
    for (kind, q, chain) in requests {
        for indirect in [false, true] {
            let mut seed = vec![kind as u8, q, 1 | 2, 4];
            let mut img = posted(chain, indirect);
            img[0x3000..0x3005].copy_from_slice(b"hello");
            seed.extend(img);
            let name = format!(
                "{}-q{q}{}",
                VIRTIO[kind],
                if indirect { "-indirect" } else { "" }
            );
            write(&top.join("virtqueue"), &name, &seed);
        }
    }
}
