//! The compat table against QEMU's: every QEMU 10.0 `hw_compat_X_Y` /
//! `pc_compat_X_Y` entry that reaches a device type vmm implements (or a
//! QEMU parent of one), for the machine types vmm offers, is accounted for
//! in `machine/compat/vmm.tsv` — applied, equivalent, not modelled, or
//! MISSING — and docs/compat.md is that file as a table.

use crate::HW_COMPAT;

const QEMU: &str = include_str!("../compat/qemu-10.0.13.tsv");
const VMM: &str = include_str!("../compat/vmm.tsv");

/// vmm's device types and their QEMU parents (QEMU 10.0's type tree),
/// and the board's QEMU devices vmm stands in for (ICH9-LPC, mch); every
/// CPU type (`x86_64-cpu`, `MODEL-x86_64-cpu`) counts too.
const RELEVANT: &[&str] = &[
    "pcie-root-port",
    "pcie-root-port-base",
    "pcie-slot",
    "pcie-port",
    "base-pci-bridge",
    "pci-device",
    "virtio-pci",
    "virtio-device",
    "virtio-blk-pci",
    "virtio-blk-pci-base",
    "virtio-blk-device",
    "virtio-net-pci",
    "virtio-net-pci-base",
    "virtio-net-device",
    "virtio-rng-pci",
    "virtio-rng-pci-base",
    "virtio-rng-device",
    "virtio-serial-pci",
    "virtio-serial-pci-base",
    "virtio-serial-device",
    "virtconsole",
    "q35-pcihost",
    "pcie-host-bridge",
    "pci-host-bridge",
    "ICH9-LPC",
    "mch",
    "isa-serial",
];

/// vmm has one type where QEMU has the PCI proxy and the device inside.
fn vmm_type(qemu: &str) -> &str {
    match qemu {
        "virtio-blk-device" => "virtio-blk-pci",
        // vmm's only PCI bridge.
        "base-pci-bridge" => "pcie-root-port",
        other => other,
    }
}

fn rows(text: &str) -> Vec<Vec<&str>> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split('\t').collect())
        .collect()
}

/// `hw_compat_5_1` -> (5, 1).
fn version(array: &str) -> (u32, u32) {
    let v: Vec<u32> = array
        .rsplit('_')
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    (v[1], v[0])
}

/// docs/compat.md, from vmm.tsv.
fn markdown() -> String {
    let mut s = String::from(
        "# Machine-type compat against QEMU\n\n\
         Generated from `machine/compat/vmm.tsv` (`VMM_BLESS=1 cargo test -p machine`);\n\
         QEMU's entries are `machine/compat/qemu-10.0.13.tsv`. Every QEMU 10.0\n\
         `hw_compat_X_Y` / `pc_compat_X_Y` entry for X.Y from 2.7 to 9.2 that reaches a\n\
         device type vmm implements, or a QEMU parent of one, with what vmm does about it\n\
         (and the machine class options QEMU sets in code that vmm models as properties,\n\
         under the name of QEMU's function):\n\n\
         - **applied**: in `HW_COMPAT` (machine/src/lib.rs);\n\
         - **equivalent**: no entry, and vmm's machine types show the guest what QEMU's do;\n\
         - **not modelled**: vmm has no such feature on any machine type (where QEMU's newer\n  machine types have it, a gap, not a compat bug);\n\
         - **MISSING**: vmm has the feature but not the entry, so an old vmm machine type\n  shows a guest something QEMU's does not (a compat bug, open).\n\n",
    );
    let all = rows(VMM);
    for status in ["MISSING", "applied", "equivalent", "not modelled"] {
        let these: Vec<&Vec<&str>> = all.iter().filter(|r| r[4] == status).collect();
        s.push_str(&format!("## {status} ({})\n\n| array | type | property | value | why |\n|---|---|---|---|---|\n", these.len()));
        for r in these {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r[0],
                r[1],
                r[2],
                r[3],
                r[5].replace('|', "/")
            ));
        }
        s.push('\n');
    }
    s
}

#[test]
fn every_qemu_entry_for_a_vmm_device_is_accounted_for() {
    let vmm = rows(VMM);
    let oldest = (2, 7);
    let mut missing = vec![];
    for q in rows(QEMU) {
        let cpu = q[1] == "x86_64-cpu" || q[1].ends_with("-x86_64-cpu");
        if q[1] == "-" || !(RELEVANT.contains(&q[1]) || cpu) || version(q[0]) < oldest {
            continue;
        }
        if !vmm.iter().any(|v| v[..4] == q[..4]) {
            missing.push(q[..4].join(" "));
        }
    }
    assert!(
        missing.is_empty(),
        "not in machine/compat/vmm.tsv: {missing:#?}"
    );
    for v in &vmm {
        assert!(
            ["applied", "equivalent", "not modelled", "MISSING"].contains(&v[4]),
            "{v:?}"
        );
        assert!(v.len() == 6 && !v[5].is_empty(), "no reason: {v:?}");
    }
}

#[test]
fn applied_means_in_hw_compat_and_back() {
    let vmm = rows(VMM);
    for v in vmm.iter().filter(|v| v[4] == "applied") {
        let found = HW_COMPAT.iter().any(|(array, _, entries)| {
            *array == v[0]
                && entries
                    .iter()
                    .any(|(t, p, val)| *t == vmm_type(v[1]) && *p == v[2] && *val == v[3])
        });
        assert!(found, "classified applied but not in HW_COMPAT: {v:?}");
    }
    for (array, _, entries) in HW_COMPAT {
        for (t, p, val) in entries.iter() {
            let found = vmm.iter().any(|v| {
                v[4] == "applied"
                    && v[0] == *array
                    && vmm_type(v[1]) == *t
                    && v[2] == *p
                    && v[3] == *val
            });
            assert!(
                found,
                "{array} {t} {p}={val} is in HW_COMPAT but not classified applied"
            );
        }
    }
}

#[test]
fn docs_compat_md_is_the_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/compat.md");
    let want = markdown();
    if std::env::var_os("VMM_BLESS").is_some() {
        std::fs::write(path, &want).unwrap();
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "docs/compat.md is not vmm.tsv's table: run VMM_BLESS=1 cargo test -p machine"
    );
}
