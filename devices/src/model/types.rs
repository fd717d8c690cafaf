//! The device types vmm knows, with single inheritance and their
//! properties: the analogue of QEMU's TypeInfo + Property arrays.

use super::property::PropKind;

/// A property declaration.
pub struct PropDecl {
    pub name: &'static str,
    pub kind: PropKind,
    pub default: &'static str,
    pub help: &'static str,
}

/// A device type.
pub struct TypeInfo {
    pub name: &'static str,
    pub parent: Option<&'static str>,
    /// Abstract types cannot be instantiated with -device.
    pub abstract_: bool,
    pub bus: Option<&'static str>,
    pub description: &'static str,
    pub props: &'static [PropDecl],
}

const fn p(
    name: &'static str,
    kind: PropKind,
    default: &'static str,
    help: &'static str,
) -> PropDecl {
    PropDecl {
        name,
        kind,
        default,
        help,
    }
}

/// Every type. Parents come before children.
pub static TYPES: &[TypeInfo] = &[
    TypeInfo { name: "device", parent: None, abstract_: true, bus: None, description: "the root of all devices", props: &[] },
    TypeInfo {
        name: "pci-device",
        parent: Some("device"),
        abstract_: true,
        bus: Some("PCI"),
        description: "any PCI function",
        props: &[
            p("addr", PropKind::PciDevfn, "auto", "slot and function on the bus (slot[.fn]); first free slot when unset"),
            p(
                "x-pcie-err-unc-mask",
                PropKind::Bit { word: "cap_present", bit: 4 },
                "on",
                "initialise AER PCI_ERR_UNCOR_MASK and make it writable, as QEMU 8.0 (off: 7.2's read-only zero)",
            ),
        ],
    },
    TypeInfo {
        name: "pcie-root-port",
        parent: Some("pci-device"),
        abstract_: false,
        bus: Some("PCI"),
        description: "PCI Express root port, with the AER capability",
        props: &[
            p("chassis", PropKind::U8, "0", "chassis number (with slot, unique on the board)"),
            p("slot", PropKind::U16, "0", "physical slot number in the Slot Capabilities"),
            p("port", PropKind::U8, "0", "port number in the Link Capabilities"),
        ],
    },
    TypeInfo {
        name: "virtio-pci",
        parent: Some("pci-device"),
        abstract_: true,
        bus: Some("PCI"),
        description: "a virtio device on PCI (legacy, modern or transitional)",
        props: &[
            p("disable-legacy", PropKind::OnOffAuto, "auto", "no legacy I/O BAR (auto: legacy unless behind a PCIe port)"),
            p("disable-modern", PropKind::Bool, "off", "no virtio 1.x capabilities"),
            p("vectors", PropKind::U32, "4294967295", "MSI-X vectors (4294967295: one per queue plus one for config; 0: no MSI-X)"),
            p(
                "x-ignore-backend-features",
                PropKind::Bool,
                "off",
                "expose the modern interface even when the backend lacks VIRTIO_F_VERSION_1 (2.7's behaviour)",
            ),
            p("page-per-vq", PropKind::Bool, "off", "one 4 KiB notify page per queue (2.7's layout)"),
        ],
    },
    TypeInfo {
        name: "virtio-blk-pci",
        parent: Some("virtio-pci"),
        abstract_: false,
        bus: Some("PCI"),
        description: "virtio block device",
        props: &[
            p("drive", PropKind::Str, "", "the -drive (or -blockdev) id of the backing image"),
            p("num-queues", PropKind::U16, "65535", "request queues (65535: one per vCPU)"),
            p("queue-size", PropKind::U16, "256", "descriptors per queue (a power of two)"),
            p("serial", PropKind::Str, "", "serial number the guest reads (GET_ID)"),
        ],
    },
    TypeInfo {
        name: "virtio-net-pci",
        parent: Some("virtio-pci"),
        abstract_: false,
        bus: Some("PCI"),
        description: "virtio network device",
        props: &[
            p("netdev", PropKind::Str, "", "the -netdev id of the backend"),
            p("mac", PropKind::Str, "", "MAC address (default 52:54:00:12:34:NN)"),
        ],
    },
    TypeInfo {
        name: "virtio-rng-pci",
        parent: Some("virtio-pci"),
        abstract_: false,
        bus: Some("PCI"),
        description: "virtio entropy source (the host's getrandom)",
        props: &[],
    },
    TypeInfo {
        name: "virtio-serial-pci",
        parent: Some("virtio-pci"),
        abstract_: false,
        bus: Some("PCI"),
        description: "virtio serial device with one console port (attach a virtconsole)",
        props: &[],
    },
    TypeInfo {
        name: "virtconsole",
        parent: Some("device"),
        abstract_: false,
        bus: Some("virtio-serial-bus"),
        description: "the console port of a virtio-serial-pci",
        props: &[p("chardev", PropKind::Str, "", "the -chardev id the port writes to")],
    },
    TypeInfo {
        name: "isa-debug-exit",
        parent: Some("device"),
        abstract_: false,
        bus: Some("ISA"),
        description: "exit the VMM with status (value << 1) | 1 on a port write, as QEMU's",
        props: &[
            p("iobase", PropKind::U32, "0x501", "I/O port"),
            p("iosize", PropKind::U32, "2", "port width in bytes"),
        ],
    },
];

pub fn find(name: &str) -> Option<&'static TypeInfo> {
    TYPES.iter().find(|t| t.name == name)
}

/// `name` and its ancestors, the type itself first.
pub fn ancestry(name: &str) -> Vec<&'static TypeInfo> {
    let mut v = vec![];
    let mut cur = find(name);
    while let Some(t) = cur {
        v.push(t);
        cur = t.parent.and_then(find);
    }
    v
}

/// Whether `ty` is `ancestor` or one of its subtypes.
pub fn is_a(ty: &str, ancestor: &str) -> bool {
    ancestry(ty).iter().any(|t| t.name == ancestor)
}

/// Every property of `ty`, inherited ones first (as QEMU lists them).
pub fn properties(ty: &str) -> Vec<&'static PropDecl> {
    ancestry(ty)
        .iter()
        .rev()
        .flat_map(|t| t.props.iter())
        .collect()
}

/// Names close to `name`, for "did you mean" in errors.
pub fn nearest(name: &str) -> Vec<&'static str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                cur.push(
                    (prev[j] + (ca != *cb) as usize)
                        .min(prev[j + 1] + 1)
                        .min(cur[j] + 1),
                );
            }
            prev = cur;
        }
        prev[b.len()]
    }
    let mut v: Vec<(usize, &str)> = TYPES
        .iter()
        .filter(|t| !t.abstract_)
        .map(|t| (distance(name, t.name), t.name))
        .filter(|(d, n)| *d <= 4 || n.contains(name) || name.contains(n))
        .collect();
    v.sort();
    v.into_iter().map(|x| x.1).take(3).collect()
}
