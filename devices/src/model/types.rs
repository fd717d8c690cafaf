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

pub(crate) const fn p(
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

/// The abstract types the devices derive from; the devices themselves are
/// in [`crate::registry::DEVICES`]. Parents come before children.
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
];

/// Types the board creates itself, which `-device` cannot: their
/// properties come from the compat arrays and `-global`.
pub static BOARD_TYPES: &[&TypeInfo] =
    &[&crate::pci::host_bridge::TYPE, &crate::pci::spapr_phb::TYPE];

/// Every type: the abstract ones, every device's, the board's.
pub fn all() -> impl Iterator<Item = &'static TypeInfo> {
    TYPES
        .iter()
        .chain(crate::registry::DEVICES.iter().map(|d| &d.info))
        .chain(BOARD_TYPES.iter().copied())
}

pub fn find(name: &str) -> Option<&'static TypeInfo> {
    all().find(|t| t.name == name)
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
    let mut v: Vec<(usize, &str)> = all()
        .filter(|t| !t.abstract_)
        .map(|t| (distance(name, t.name), t.name))
        .filter(|(d, n)| *d <= 4 || n.contains(name) || name.contains(n))
        .collect();
    v.sort();
    v.into_iter().map(|x| x.1).take(3).collect()
}
