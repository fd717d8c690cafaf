//! What the device fuzz targets share: every device vmm has, built as the
//! board builds it but with no KVM and no host devices behind it (a VMM
//! that records interrupts, a scratch file for a disk, a datagram socket
//! for a tap, a sink for a console).

use devices::virtio::{self, pci::TransportConfig, Memory, NoVm, VirtioDevice};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, OnceLock};

/// Guest memory of `len` bytes at address 0.
pub fn memory(len: usize) -> Memory {
    Memory::from_ranges(&[(vm_memory::GuestAddress(0), len)]).expect("guest memory")
}

/// The virtio device kinds, in the order the targets pick them by.
pub const VIRTIO: [&str; 4] = ["virtio-blk", "virtio-net", "virtio-rng", "virtio-console"];

/// A 1 MiB scratch disk image, one per process.
fn disk() -> std::path::PathBuf {
    static DISK: OnceLock<std::path::PathBuf> = OnceLock::new();
    DISK.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let p = dir.join(format!("vmm-fuzz-disk-{}", std::process::id()));
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(1 << 20))
            .expect("scratch disk");
        p
    })
    .clone()
}

/// A non-blocking datagram socket pair: the device's "tap" and the wire.
pub fn wire() -> (std::fs::File, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills two descriptors on success.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair");
    // SAFETY: both were just made and are owned by nobody else.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

/// Virtio device `kind` (an index into [`VIRTIO`]) with its migration
/// description as a PCI function; `tap` is the net device's wire.
pub fn virtio_device(
    kind: usize,
    tap: impl FnOnce() -> std::fs::File,
) -> (
    Box<dyn VirtioDevice>,
    &'static migration::vmstate::Description,
) {
    use devices::virtio::{blk, console, net, rng};
    match kind % VIRTIO.len() {
        0 => (
            Box::new(
                blk::Blk::new(blk::BlkConfig {
                    path: disk(),
                    read_only: false,
                    num_queues: 2,
                    queue_size: 256,
                    serial: "fuzz".into(),
                    version_1: true,
                    claim: false,
                })
                .expect("the scratch disk opens"),
            ),
            &blk::PCI_VMSTATE,
        ),
        1 => (
            Box::new(net::Net::new(
                net::Tap::from_file(tap(), "fuzz0"),
                [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                true,
            )),
            &net::PCI_VMSTATE,
        ),
        2 => (Box::new(rng::Rng::new()), &rng::PCI_VMSTATE),
        _ => (
            Box::new(console::Console::new(Box::new(std::io::sink()))),
            &console::PCI_VMSTATE,
        ),
    }
}

/// The same device behind the virtio-pci transport, as `-device
/// virtio-*-pci` makes it on a root bus with MSI-X.
pub fn virtio_pci(kind: usize, mem: &Memory) -> virtio::pci::VirtioPci {
    let (dev, vmstate) = virtio_device(kind, || wire().0);
    let queues = dev.queue_sizes().len() as u16;
    let tc = TransportConfig {
        disable_legacy: None,
        disable_modern: false,
        ignore_backend_features: false,
        on_pcie_port: false,
        vectors: queues + 1,
        page_per_vq: false,
        intx_gsi: 10,
        interrupt_line: 10,
    };
    virtio::pci::VirtioPci::new(
        VIRTIO[kind % VIRTIO.len()].into(),
        dev,
        &tc,
        Arc::new(NoVm),
        mem.clone(),
        vmstate,
    )
    .expect("a default virtio-pci device")
}

/// A root port as `-device pcie-root-port` builds one (default
/// properties), bus 1 behind it.
pub fn root_port() -> devices::pci::root_port::RootPort {
    use devices::pci::root_port::{RootPort, RootPortConfig};
    let props =
        devices::model::resolve("pcie-root-port", &[], &[], &[]).expect("pcie-root-port resolves");
    RootPort::new(&RootPortConfig::from_props(&props, 1))
}
