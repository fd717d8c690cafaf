//! Every device type `-device` can create, each declared in its own file
//! (its `DEVICE` static): the type and its properties with their defaults,
//! and how the board builds it. Adding a device is its file plus one line
//! in [`DEVICES`]; everything else — `-device help`, property resolution
//! and `--print-config`, `qom-get`, `-dump-vmstate`, the board — reads it
//! from here.

use crate::model::types::TypeInfo;
use crate::model::Props;
use crate::virtio::VirtioDevice;
use migration::vmstate::Description;
use std::io::Write;
use std::path::PathBuf;

/// Every creatable device type, in `-device help` order.
pub static DEVICES: &[&DeviceType] = &[
    &crate::pci::root_port::DEVICE,
    &crate::virtio::blk::DEVICE,
    &crate::virtio::net::DEVICE,
    &crate::virtio::rng::DEVICE,
    &crate::virtio::console::DEVICE,
    &crate::virtio::console::PORT,
    &crate::debug_exit::DEVICE,
];

/// A device type: what `-device` knows of it, and how it is built.
pub struct DeviceType {
    pub info: TypeInfo,
    pub build: Build,
}

/// How the board builds a device of a type.
pub enum Build {
    /// A virtio device on the board's virtio-pci transport.
    Virtio(VirtioType),
    /// Wired by the board itself (a root port takes the next bus number, a
    /// debug-exit port its I/O range, a console port its virtio-serial).
    Board,
}

/// A virtio device type: its queues, what it migrates, its backend, and
/// how to create it from its resolved properties.
pub struct VirtioType {
    /// The whole PCI function's section (transport and device).
    pub vmstate: &'static Description,
    /// How many queues a device with these (resolved) properties has.
    pub queues: fn(&Props) -> u64,
    /// Resolves its own `auto` properties against the board (the virtio
    /// transport's are resolved for every type: [`crate::virtio::resolve_auto`]).
    pub auto: fn(&mut Props, &crate::virtio::Board),
    /// The property naming its backend, and which kind.
    pub backend: BackendKind,
    pub create: Create,
}

/// Creates a virtio device from its resolved properties and its backend.
pub type Create = fn(&Props, Backend) -> Result<Box<dyn VirtioDevice>, CreateError>;

/// The backend a device type takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    None,
    /// `-drive`/`-blockdev`, named by this property.
    Drive(&'static str),
    /// `-netdev tap`, named by this property.
    Netdev(&'static str),
    /// Where its console port writes (the virtconsole's `-chardev`).
    Console,
}

/// A backend the VMM opened for a device, as its [`BackendKind`] says.
pub enum Backend {
    None,
    /// A raw image.
    Drive {
        path: PathBuf,
        read_only: bool,
        /// The backend offers VIRTIO_F_VERSION_1.
        version_1: bool,
        /// Lock the image at once; an incoming VM claims it only when the
        /// migration commits ([`crate::virtio::VirtioDevice::claim_backend`]).
        claim: bool,
    },
    /// A tap interface.
    Tap {
        ifname: String,
        version_1: bool,
    },
    /// A descriptor already open that carries whole frames: a tap someone
    /// else opened, or a socket (what `-dump-abi` builds a NIC on).
    Frames {
        file: std::fs::File,
        version_1: bool,
    },
    /// A console's output.
    Output(Box<dyn Write + Send>),
}

/// Why a device could not be created: its own error, whatever its type.
pub type CreateError = Box<dyn std::error::Error + Send + Sync>;

/// The device type called `name`.
pub fn find(name: &str) -> Option<&'static DeviceType> {
    DEVICES.iter().copied().find(|d| d.info.name == name)
}

/// What every device type migrates as a PCI function, for -dump-vmstate.
pub fn pci_descriptions() -> impl Iterator<Item = &'static Description> {
    DEVICES.iter().filter_map(|d| match &d.build {
        Build::Virtio(v) => Some(v.vmstate),
        Build::Board => None,
    })
}
