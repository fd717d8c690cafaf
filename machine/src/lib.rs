//! Versioned machine types. A machine type pins the hardware ABI a guest
//! sees; its name and compat history mirror QEMU's for the devices vmm
//! implements, so management stacks that say `pc-q35-5.1` work unchanged.
//!
//! Each version X.Y owns an array `hw_compat_X_Y` of (type, property,
//! value): the values that restore X.Y's behaviour where a later release
//! changed it. Machine type X.Y applies the arrays of its own version and
//! every newer one, newest first, so the entries closest to X.Y win, as in
//! QEMU. The arrays are data, in one table, below.

#![forbid(unsafe_code)]

use devices::model::CompatEntry;

/// One `hw_compat_X_Y`: its name, its version, and its (type, property,
/// value) entries.
pub type CompatArray = (
    &'static str,
    (u32, u32),
    &'static [(&'static str, &'static str, &'static str)],
);

/// `hw_compat_X_Y` (and `pc_compat_X_Y`, the board's), newest first,
/// mirroring QEMU's entries for the devices vmm implements. An array may be empty: the version still exists as a
/// machine type, and later issues add entries (virtio's, for instance).
pub const HW_COMPAT: &[CompatArray] = &[
    // QEMU 8.2 made a PCI Express bridge's Secondary Latency Timer
    // read-only zero; 8.1 and older let the guest write it. vmm up to
    // 0.2.0 had it read-only on every machine type: guests started there
    // keep that through migrations (vmm/src/vm/carried.rs).
    (
        "hw_compat_8_1",
        (8, 1),
        &[("pcie-root-port", "x-pci-express-writeable-slt-bug", "true")],
    ),
    ("hw_compat_8_0", (8, 0), &[]),
    // QEMU 8.0 started initialising AER's PCI_ERR_UNCOR_MASK (and made it
    // writable); 7.2 left it zero and read-only. QEMU 8.0.1's fix.
    (
        "hw_compat_7_2",
        (7, 2),
        &[("pci-device", "x-pcie-err-unc-mask", "off")],
    ),
    // QEMU 7.2 gave virtio-rng-pci MSI-X; 7.1 and older have none. vmm up
    // to 0.2.0 gave it MSI-X on every machine type: guests started there
    // keep it through migrations (carried configuration, vmm/src/vm/
    // carried.rs), a fresh start gets QEMU's.
    (
        "hw_compat_7_1",
        (7, 1),
        &[("virtio-rng-pci", "vectors", "0")],
    ),
    // QEMU 6.1 made qemu64 look like a recent AMD part. (Entries for
    // MODEL-x86_64-cpu and x86_64-cpu reach -cpu:
    // arch::x86_64::cpu::CpuSpec::apply_compat.)
    (
        "pc_compat_6_0",
        (6, 0),
        &[
            ("qemu64-x86_64-cpu", "family", "6"),
            ("qemu64-x86_64-cpu", "model", "6"),
            ("qemu64-x86_64-cpu", "stepping", "3"),
        ],
    ),
    ("hw_compat_5_2", (5, 2), &[]),
    // QEMU 5.2 gave PCI0 the _UID 0; 5.1 and older say 1 (QEMU sets it
    // in pc_q35_machine_5_1_options, a machine class field rather than a
    // compat property; here it is the board's host bridge's). vmm up to
    // 0.2.0 said 0 on every machine type: guests started there keep it.
    (
        "pc_q35_machine_5_1_options",
        (5, 1),
        &[("q35-pcihost", "x-pci-root-uid", "1")],
    ),
    // QEMU 5.2 gave virtio-blk one queue per vCPU (QEMU sets this on
    // virtio-blk-device, the device inside virtio-blk-pci).
    (
        "hw_compat_5_1",
        (5, 1),
        &[("virtio-blk-pci", "num-queues", "1")],
    ),
    // QEMU 5.0 raised virtio-blk's queue size from 128 to 256.
    (
        "hw_compat_4_2",
        (4, 2),
        &[("virtio-blk-pci", "queue-size", "128")],
    ),
    // QEMU 4.0 took MPX out of the Skylake and later models and raised
    // Cascadelake-Server's stepping.
    (
        "pc_compat_3_1",
        (3, 1),
        &[
            ("Skylake-Client-x86_64-cpu", "mpx", "on"),
            ("Skylake-Client-IBRS-x86_64-cpu", "mpx", "on"),
            ("Skylake-Server-x86_64-cpu", "mpx", "on"),
            ("Skylake-Server-IBRS-x86_64-cpu", "mpx", "on"),
            ("Cascadelake-Server-x86_64-cpu", "mpx", "on"),
            ("Icelake-Server-x86_64-cpu", "mpx", "on"),
            ("Cascadelake-Server-x86_64-cpu", "stepping", "5"),
        ],
    ),
    // QEMU 4.0 gave the root port a 16 GT/s x32 link; 3.1 and older
    // x1 at 2.5 GT/s. vmm up to 0.2.0 had x1 at 2.5 GT/s on every machine
    // type: guests started there keep it.
    (
        "hw_compat_3_1",
        (3, 1),
        &[
            ("pcie-root-port", "x-speed", "2_5"),
            ("pcie-root-port", "x-width", "1"),
        ],
    ),
    // QEMU 3.1 gave the PHBs' LSIs fixed numbers (from 0x1200); 3.0 and
    // older took the first free interrupt sources, after the event
    // sources and the NVRAM (a machine class field there).
    (
        "spapr_machine_3_0_class_options",
        (3, 0),
        &[("spapr-pci-host-bridge", "x-legacy-irq-allocation", "on")],
    ),
    // QEMU 3.1 gave Skylake-Server PKU.
    (
        "pc_compat_3_0",
        (3, 0),
        &[
            ("Skylake-Server-x86_64-cpu", "pku", "off"),
            ("Skylake-Server-IBRS-x86_64-cpu", "pku", "off"),
        ],
    ),
    // QEMU 3.0 gave EPYC the extended leaves up to 0x8000001e and every
    // CPU the AMD topology extensions.
    (
        "pc_compat_2_12",
        (2, 12),
        &[
            ("EPYC-x86_64-cpu", "xlevel", "0x8000000a"),
            ("EPYC-IBPB-x86_64-cpu", "xlevel", "0x8000000a"),
            ("x86_64-cpu", "topoext", "off"),
        ],
    ),
    // QEMU 2.12 gave Skylake-Server CLFLUSHOPT.
    (
        "pc_compat_2_11",
        (2, 11),
        &[("Skylake-Server-x86_64-cpu", "clflushopt", "off")],
    ),
    // QEMU 2.11 declared the whole 64-bit PCI window in ACPI; 2.10 and
    // older only the range firmware gave 64-bit BARs (a pc_compat entry:
    // the board's host bridge). vmm up to 0.2.0 declared the window on
    // every machine type: guests started there keep it.
    (
        "pc_compat_2_10",
        (2, 10),
        &[("q35-pcihost", "x-pci-hole64-fix", "off")],
    ),
    // QEMU 2.9 gave Haswell stepping 4.
    (
        "pc_compat_2_8",
        (2, 8),
        &[("Haswell-x86_64-cpu", "stepping", "1")],
    ),
    ("hw_compat_2_8", (2, 8), &[]),
    // QEMU 2.8 split the PHB's MMIO window in two (32-bit and 64-bit),
    // placed the bridges from 32 TiB, and changed the bridge's stream
    // (the seed, devices/src/pci/spapr_phb.rs); pseries-2.7 keeps one
    // window above RAM and sends 2.7's layout. QEMU 9.2 dropped
    // pseries-2.x; these are QEMU 9.1's spapr_machine_2_7_class_options
    // (the placement a machine class field there).
    (
        "spapr_machine_2_7_class_options",
        (2, 7),
        &[
            ("spapr-pci-host-bridge", "mem_win_size", "0xf80000000"),
            ("spapr-pci-host-bridge", "mem64_win_size", "0"),
            ("spapr-pci-host-bridge", "pre-2.8-migration", "on"),
            ("spapr-pci-host-bridge", "x-placement-2-7", "on"),
            ("spapr-pci-host-bridge", "x-modern-hotplug-events", "off"),
        ],
    ),
    // QEMU 2.8 stopped exposing modern virtio when the backend lacks
    // VIRTIO_F_VERSION_1, and shrank the notify area to 4 bytes per queue.
    (
        "hw_compat_2_7",
        (2, 7),
        &[
            ("virtio-pci", "x-ignore-backend-features", "on"),
            ("virtio-pci", "page-per-vq", "on"),
        ],
    ),
];

/// The board an array is for, by QEMU's naming: `pc_*` arrays (and the
/// q35 machine class options) are x86's, `spapr_*` pseries', `hw_*`
/// every board's.
fn array_arch(array: &str) -> Option<Arch> {
    if array.starts_with("pc_") {
        Some(Arch::X86_64)
    } else if array.starts_with("spapr_") {
        Some(Arch::Ppc64)
    } else {
        None
    }
}

/// The compat entries `m` applies, in application order.
pub fn compat_props(m: &MachineType) -> Vec<CompatEntry> {
    let mut v = vec![];
    for (array, version, entries) in HW_COMPAT {
        if array_arch(array).is_some_and(|a| a != m.arch) {
            continue;
        }
        if *version >= m.version && m.version != newest_of(m.arch).version {
            for (t, p, val) in entries.iter() {
                v.push(CompatEntry {
                    array,
                    type_name: t,
                    property: p,
                    value: val,
                });
            }
        }
    }
    v
}

/// The guest architecture a machine type's board is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    /// sPAPR (pseries): big-endian as QEMU's target, whatever the guest runs.
    Ppc64,
}

/// What a board is, for the code outside it that asks.
#[derive(Debug, PartialEq, Eq)]
pub struct BoardInfo {
    /// The root PCI bus's name (`bus=` on `-device`), as QEMU's.
    pub root_bus: &'static str,
    /// The board's PCI host bridge type (`-global TYPE.PROP=V`).
    pub host_bridge: &'static str,
    /// Whether the host bridge is a function on the root bus (00:00.0).
    pub host_bridge_is_function: bool,
    /// The RAM block's name in the stream, as QEMU names it.
    pub ram_block: &'static str,
    /// The CPU's byte order as QEMU's target has it (qtest's accesses).
    pub big_endian: bool,
    /// Whether guests read ACPI tables (else a device tree).
    pub acpi: bool,
    /// `-device` types this board has no bus for.
    pub refuses: &'static [&'static str],
}

impl Arch {
    pub fn board(self) -> &'static BoardInfo {
        match self {
            Arch::X86_64 => &BoardInfo {
                root_bus: "pcie.0",
                host_bridge: "q35-pcihost",
                host_bridge_is_function: true,
                ram_block: "pc.ram",
                big_endian: false,
                acpi: true,
                refuses: &[],
            },
            Arch::Ppc64 => &BoardInfo {
                root_bus: "pci.0",
                host_bridge: "spapr-pci-host-bridge",
                host_bridge_is_function: false,
                ram_block: "ppc_spapr.ram",
                big_endian: true,
                acpi: false,
                // No ISA bus; a conventional PCI host bridge.
                refuses: &["pcie-root-port", "isa-debug-exit"],
            },
        }
    }
}

/// One machine type.
#[derive(Debug, PartialEq, Eq)]
pub struct MachineType {
    pub name: &'static str,
    pub version: (u32, u32),
    pub arch: Arch,
    pub description: &'static str,
}

impl MachineType {
    /// `-smp N` without a split fills sockets first (QEMU's
    /// `smp_props.prefer_sockets`, set by pc_q35_machine_6_1_options and
    /// older), cores first on later machine types.
    pub fn prefer_sockets(&self) -> bool {
        self.version < (6, 2)
    }
}

/// Every x86_64 machine type, oldest first; the last is the newest and
/// the default.
pub const PC_Q35: &[MachineType] = &[
    MachineType {
        name: "pc-q35-2.7",
        version: (2, 7),
        arch: Arch::X86_64,
        description: "Standard PC (Q35 + ICH9, 2009), ABI of QEMU 2.7",
    },
    MachineType {
        name: "pc-q35-2.8",
        version: (2, 8),
        arch: Arch::X86_64,
        description: "Standard PC (Q35 + ICH9, 2009), ABI of QEMU 2.8",
    },
    MachineType {
        name: "pc-q35-5.1",
        version: (5, 1),
        arch: Arch::X86_64,
        description: "Standard PC (Q35 + ICH9, 2009), ABI of QEMU 5.1",
    },
    MachineType {
        name: "pc-q35-5.2",
        version: (5, 2),
        arch: Arch::X86_64,
        description: "Standard PC (Q35 + ICH9, 2009), ABI of QEMU 5.2",
    },
    MachineType {
        name: "pc-q35-7.2",
        version: (7, 2),
        arch: Arch::X86_64,
        description: "Standard PC (Q35 + ICH9, 2009), ABI of QEMU 7.2",
    },
    MachineType {
        name: "pc-q35-8.0",
        version: (8, 0),
        arch: Arch::X86_64,
        description: "Standard PC (Q35 + ICH9, 2009), ABI of QEMU 8.0",
    },
    MachineType {
        name: "pc-q35-10.0",
        version: (10, 0),
        arch: Arch::X86_64,
        description: "Standard PC (Q35 + ICH9, 2009), ABI of QEMU 10.0",
    },
];

/// Every pseries (sPAPR) machine type, oldest first: the versions whose
/// settings change something vmm models, and the newest (the `pseries`
/// alias). On an x86_64 host they run under `-accel qtest`.
pub const PSERIES: &[MachineType] = &[
    MachineType {
        name: "pseries-2.7",
        version: (2, 7),
        arch: Arch::Ppc64,
        description: "pSeries Logical Partition (PAPR compliant), ABI of QEMU 2.7",
    },
    MachineType {
        name: "pseries-2.8",
        version: (2, 8),
        arch: Arch::Ppc64,
        description: "pSeries Logical Partition (PAPR compliant), ABI of QEMU 2.8",
    },
    MachineType {
        name: "pseries-7.2",
        version: (7, 2),
        arch: Arch::Ppc64,
        description: "pSeries Logical Partition (PAPR compliant), ABI of QEMU 7.2",
    },
    MachineType {
        name: "pseries-8.0",
        version: (8, 0),
        arch: Arch::Ppc64,
        description: "pSeries Logical Partition (PAPR compliant), ABI of QEMU 8.0",
    },
    MachineType {
        name: "pseries-10.0",
        version: (10, 0),
        arch: Arch::Ppc64,
        description: "pSeries Logical Partition (PAPR compliant), ABI of QEMU 10.0",
    },
];

/// Names that mean "the newest" of a board.
pub const ALIASES: &[(&str, Arch)] = &[
    ("q35", Arch::X86_64),
    ("pc-q35", Arch::X86_64),
    ("pseries", Arch::Ppc64),
];

/// Every machine type: q35's, then pseries'.
pub fn all() -> impl Iterator<Item = &'static MachineType> {
    PC_Q35.iter().chain(PSERIES)
}

/// Machine properties accepted after the type (`-M TYPE,prop=value`).
pub const PROPERTIES: &[(&str, &str)] = &[
    ("accel", "the accelerator: kvm or qtest"),
    (
        "dumpdtb",
        "write the device tree (pseries) to FILE and exit",
    ),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("unknown machine type '{name}'; valid machine types: {valid}")]
    Unknown { name: String, valid: String },
    #[error("machine property '{0}' needs a value (PROP=VALUE)")]
    PropertyWithoutValue(String),
    #[error("unknown machine property '{name}'; valid properties: {valid}")]
    UnknownProperty { name: String, valid: String },
    #[error("machine property accel={0} is not supported; vmm has kvm and qtest")]
    Accel(String),
}

/// The default machine type: the newest q35.
pub fn newest() -> &'static MachineType {
    newest_of(Arch::X86_64)
}

/// The newest machine type of a board.
pub fn newest_of(arch: Arch) -> &'static MachineType {
    all()
        .filter(|m| m.arch == arch)
        .last()
        .expect("at least one machine type per board")
}

/// Every accepted name, for error messages and `-M help`.
pub fn valid_names() -> String {
    let mut v: Vec<&str> = all().map(|m| m.name).collect();
    v.extend(ALIASES.iter().map(|a| a.0));
    v.join(", ")
}

pub fn find(name: &str) -> Result<&'static MachineType, Error> {
    if let Some((_, arch)) = ALIASES.iter().find(|a| a.0 == name) {
        return Ok(newest_of(*arch));
    }
    all()
        .find(|m| m.name == name)
        .ok_or_else(|| Error::Unknown {
            name: name.to_string(),
            valid: valid_names(),
        })
}

/// A parsed `-M` argument.
#[derive(Debug)]
pub struct MachineSpec {
    pub machine: &'static MachineType,
    pub properties: Vec<(String, String)>,
}

/// Parses `TYPE[,prop=value...]` (an empty TYPE means the default).
pub fn parse(spec: &str) -> Result<MachineSpec, Error> {
    let mut parts = spec.split(',');
    let name = parts.next().unwrap_or("");
    let machine = if name.is_empty() {
        newest()
    } else {
        find(name)?
    };
    let mut properties = vec![];
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| Error::PropertyWithoutValue(p.to_string()))?;
        match k {
            "accel" if v == "kvm" || v == "qtest" => {}
            "accel" => return Err(Error::Accel(v.to_string())),
            "dumpdtb" => {}
            _ => {
                let valid = PROPERTIES
                    .iter()
                    .map(|p| p.0)
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Error::UnknownProperty {
                    name: k.to_string(),
                    valid,
                });
            }
        }
        properties.push((k.to_string(), v.to_string()));
    }
    Ok(MachineSpec {
        machine,
        properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compat entry for CPU type `cpu`-x86_64-cpu names a model vmm
    /// has (or every CPU) and one of its properties.
    #[cfg(target_arch = "x86_64")]
    fn check_cpu_entry(array: &str, g: &str, cpu: &str, p: &str) {
        let model = cpu.strip_suffix('-');
        assert!(
            model.is_none_or(|m| arch::x86_64::cpu::model(m).is_some()),
            "{array}: {g}: no such CPU model"
        );
        let identity = ["family", "model", "stepping", "xlevel"].contains(&p);
        assert!(
            identity || arch::x86_64::cpu::feature(p).is_some(),
            "{array}: {g}: no such CPU property"
        );
    }

    #[test]
    fn compat_arrays_name_real_types_and_properties_and_values() {
        for (array, _, entries) in HW_COMPAT {
            for (t, p, v) in entries.iter() {
                let g = format!("{t}.{p}={v}");
                if let Some(cpu) = t.strip_suffix("x86_64-cpu") {
                    // A CPU type: every CPU's, or a model's (known to the
                    // x86 build).
                    #[cfg(not(target_arch = "x86_64"))]
                    let _ = cpu;
                    #[cfg(target_arch = "x86_64")]
                    check_cpu_entry(array, &g, cpu, p);
                    continue;
                }
                devices::model::parse_global(&g).unwrap_or_else(|e| panic!("{array}: {g}: {e}"));
            }
        }
    }

    #[test]
    fn each_machine_applies_its_own_and_newer_arrays() {
        let arrays = |n: &str| {
            compat_props(find(n).unwrap())
                .iter()
                .map(|c| c.array)
                .collect::<Vec<_>>()
        };
        assert!(arrays("pc-q35-7.2").contains(&"hw_compat_7_2"));
        assert!(arrays("pc-q35-5.1").contains(&"hw_compat_7_2"));
        assert!(!arrays("pc-q35-8.0").contains(&"hw_compat_7_2"));
        assert!(arrays("q35").is_empty());
        // Newest first: the entries closest to a machine type win.
        assert!(HW_COMPAT.windows(2).all(|w| w[0].1 >= w[1].1));
        // Every version but the newest has its own array.
        for m in PC_Q35.iter().filter(|m| m.version != newest().version) {
            let name = format!("hw_compat_{}_{}", m.version.0, m.version.1);
            assert!(HW_COMPAT.iter().any(|a| a.0 == name), "{name} missing");
        }
    }

    #[test]
    fn aliases_and_default_are_the_newest() {
        assert_eq!(find("q35").unwrap(), newest());
        assert_eq!(parse("").unwrap().machine, newest());
        assert_eq!(parse("pc-q35-5.1").unwrap().machine.version, (5, 1));
        for v in ["2.7", "2.8", "5.1", "5.2", "7.2", "8.0"] {
            find(&format!("pc-q35-{v}")).unwrap();
        }
    }

    #[test]
    fn unknown_type_lists_the_valid_ones() {
        let e = parse("pc-q35-1.0").unwrap_err().to_string();
        assert!(
            e.contains("'pc-q35-1.0'") && e.contains("pc-q35-5.1") && e.contains("q35"),
            "{e}"
        );
        assert!(matches!(
            parse("q35,foo=1"),
            Err(Error::UnknownProperty { .. })
        ));
        assert!(matches!(parse("q35,accel=tcg"), Err(Error::Accel(_))));
        assert!(parse("q35,accel=kvm").is_ok());
    }
}

#[cfg(test)]
mod compat_table;
