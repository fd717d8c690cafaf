//! `-dump-abi FILE`: what a guest sees of a machine type's hardware, as
//! data, so that a release's record of it can be compared with any later
//! build (`vmmctl check-abi`): a machine type that shipped must never
//! change what its guests see.
//!
//! For the board's own PCI function and one of each `-device` type, with
//! default properties resolved as on the command line (the machine type's
//! compat arrays applied): the effective properties; the PCI
//! configuration space at reset with its writable and write-1-to-clear
//! masks; capabilities and extended capabilities; BARs; for virtio, the
//! features offered, the queues and their sizes, the MSI-X vectors and
//! which interfaces (legacy, modern) exist. Then the ACPI tables and the
//! memory map of a reference guest (2 vCPUs, 1 GiB and 4 GiB). The
//! devices are built by the same code as the board's, without KVM or host
//! devices behind them.

use crate::qtest::protocol::to_hex as hex;
use crate::vm::virtio::{interrupt_line, transport_config};
use anyhow::{anyhow, Context, Result};
use devices::model::{CompatEntry, Props};
use devices::pci::root_port::{RootPort, RootPortConfig};
use devices::pci::{config::ConfigSpace, host_bridge::HostBridge, PciFunction};
use devices::registry::{Backend, BackendKind, Build, DEVICES};
use devices::virtio::{self, NoVm};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::sync::Arc;

/// The reference guest the tables and the map are made for.
const CPUS: u8 = 2;

/// Writes `m`'s ABI to `path`.
pub fn dump(path: &Path, m: &'static machine::MachineType) -> Result<()> {
    let abi = of(m, &machine::compat_props(m))?;
    let text = serde_json::to_string_pretty(&abi)? + "\n";
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The ABI of machine type `m` with compat entries `compat` (the machine
/// type's own, except in the tests that leave one out on purpose).
pub fn of(m: &machine::MachineType, compat: &[CompatEntry]) -> Result<Value> {
    let mem = devices::virtio::Memory::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)])
        .map_err(|e| anyhow!("guest memory: {e}"))?;
    let info = m.arch.board();
    let host_bridge = devices::model::resolve(info.host_bridge, compat, &[], &[])
        .map_err(|e| anyhow!("{}: {e}", info.host_bridge))?;
    let mut devices = vec![if info.host_bridge_is_function {
        function(
            info.host_bridge,
            &properties(&host_bridge),
            &HostBridge::new(),
            None,
        )
    } else {
        json!({"type": info.host_bridge, "properties": properties(&host_bridge)})
    }];
    let board = virtio::Board {
        vcpus: CPUS,
        on_pcie_port: false,
        nic: 0,
    };
    for ty in DEVICES
        .iter()
        .filter(|t| !info.refuses.contains(&t.info.name))
    {
        let name = ty.info.name;
        let mut props = devices::model::resolve(name, compat, &[], &required(name))
            .map_err(|e| anyhow!("{name}: {e}"))?;
        virtio::resolve_auto(&mut props, &board);
        let shown = properties(&props);
        match &ty.build {
            Build::Virtio(vt) => {
                let backend = backend(vt.backend)?;
                let dev = (vt.create)(&props, backend).map_err(|e| anyhow!("{name}: {e}"))?;
                let tc = transport_config(&props, false, 16, interrupt_line(m.arch, 16));
                let f = virtio::pci::VirtioPci::new(
                    name.into(),
                    dev,
                    &tc,
                    Arc::new(NoVm),
                    mem.clone(),
                    vt.vmstate,
                )?;
                let v = f.guest_view();
                let virtio = json!({
                    "device_type": v.device_type,
                    "features": format!("{:#018x}", v.features),
                    "queue_sizes": v.queue_sizes,
                    "msix_vectors": v.vectors,
                    "legacy": v.legacy,
                    "modern": v.modern,
                    "notify_off_multiplier": v.notify_mul,
                    "device_config": hex(&v.device_config),
                });
                devices.push(function(name, &shown, &f, Some(virtio)));
            }
            Build::Board if name == "pcie-root-port" => {
                let port = RootPort::new(&RootPortConfig::from_props(&props, 1));
                devices.push(function(name, &shown, &port, None));
            }
            Build::Board => devices.push(json!({"type": name, "properties": shown})),
        }
    }
    let topology = arch::x86_64::topology::Topology::parse(
        &CPUS.to_string(),
        m.prefer_sockets(),
        crate::config::MAX_VCPUS,
    )?;
    if !info.acpi {
        // The device tree of the reference guest (1 GiB, the console on
        // -serial), node by node.
        let dtb = crate::vm::spapr::tree(&crate::vm::spapr::Shown {
            machine: m,
            host_bridge: &host_bridge,
            ram: 1 << 30,
            cmdline: "",
            smp: &topology,
            console: true,
            hpt_order: arch::ppc64::boot::hpt_shift_for_ram(1 << 30),
            boot: None,
        })?;
        let nodes = arch::ppc64::fdt::parse(&dtb)
            .ok_or_else(|| anyhow!("{}: the device tree does not read back", m.name))?;
        let tree: Map<String, Value> = nodes
            .into_iter()
            .map(|(node, props)| {
                let props: Map<String, Value> = props
                    .into_iter()
                    .map(|(p, v)| (p, json!(hex(&v))))
                    .collect();
                (node, Value::Object(props))
            })
            .collect();
        return Ok(json!({
            "machine": m.name,
            "reference_guest": {"cpus": CPUS, "ram": "1024 MiB"},
            "devices": devices,
            "device_tree": tree,
        }));
    }
    let memory_map: Vec<Value> = [1u64 << 30, 4 << 30]
        .iter()
        .map(|&ram| {
            let entries: Vec<Value> = arch::x86_64::layout::e820(ram)
                .iter()
                .map(|e| {
                    json!([
                        format!("{:#x}", e.addr),
                        format!("{:#x}", e.size),
                        format!("{:?}", e.kind)
                    ])
                })
                .collect();
            json!({"ram": format!("{} MiB", ram >> 20), "e820": entries})
        })
        .collect();
    let tables =
        arch::x86_64::acpi::build(&crate::config::acpi_config(&host_bridge, topology, 1 << 30));
    Ok(json!({
        "machine": m.name,
        "reference_guest": {"cpus": CPUS},
        "devices": devices,
        "acpi": acpi_tables(&tables.bytes),
        "memory_map": memory_map,
    }))
}

/// The properties a device type cannot be created without (its backend's
/// name); nothing else is set: defaults are what the dump is about.
fn required(type_name: &str) -> Vec<(String, String)> {
    let set = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    match type_name {
        "virtio-blk-pci" => set("drive", "d0"),
        "virtio-net-pci" => set("netdev", "n0"),
        "virtconsole" => set("chardev", "c0"),
        _ => vec![],
    }
}

/// A backend that stands for the real one: an empty disk, a socket for a
/// tap, a console that goes nowhere. None of them shows in the ABI.
fn backend(kind: BackendKind) -> Result<Backend> {
    Ok(match kind {
        BackendKind::None => Backend::None,
        BackendKind::Drive(_) => Backend::Drive {
            path: "/dev/null".into(),
            read_only: false,
            version_1: true,
            claim: false,
        },
        BackendKind::Netdev(_) => {
            let (a, _b) = std::os::unix::net::UnixDatagram::pair()
                .context("cannot make a socket to stand for a tap")?;
            Backend::Frames {
                file: std::os::fd::OwnedFd::from(a).into(),
                version_1: true,
            }
        }
        BackendKind::Console => Backend::Output(Box::new(std::io::sink())),
    })
}

/// Effective property values, by name.
fn properties(props: &Props) -> Map<String, Value> {
    props
        .values
        .iter()
        .map(|r| (r.name.to_string(), crate::config::json_value(&r.value)))
        .collect()
}

/// A PCI function's guest view at reset.
fn function(
    type_name: &str,
    props: &Map<String, Value>,
    f: &dyn PciFunction,
    virtio: Option<Value>,
) -> Value {
    let c = f.config();
    let bars: Vec<Value> = f
        .bars()
        .iter()
        .map(|b| json!({"index": b.index, "kind": format!("{:?}", b.kind), "size": format!("{:#x}", b.size)}))
        .collect();
    let (config, wmask, w1cmask) = (
        registers(&c.data[..]),
        registers(&c.wmask[..]),
        registers(&c.w1cmask[..]),
    );
    // The names the function gives its registers, for the gate's messages.
    let names: Map<String, Value> = (0..0x1000u16)
        .step_by(4)
        .filter_map(|off| Some((format!("{off:#05x}"), json!(f.register_name(off)?))))
        .collect();
    let mut o = json!({
        "type": type_name,
        "properties": props,
        "pci": {
            "config": config,
            "wmask": wmask,
            "w1cmask": w1cmask,
            "register_names": names,
            "capabilities": capabilities(c),
            "ext_capabilities": ext_capabilities(c),
            "bars": bars,
        },
    });
    if let Some(v) = virtio {
        o["virtio"] = v;
    }
    o
}

/// The non-zero 32-bit registers of a 4 KiB space, by offset.
fn registers(space: &[u8]) -> Map<String, Value> {
    space
        .chunks_exact(4)
        .enumerate()
        .filter_map(|(i, w)| {
            let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            (v != 0).then(|| (format!("{:#05x}", i * 4), json!(format!("{v:#010x}"))))
        })
        .collect()
}

/// The capability list: (id, offset) in list order.
fn capabilities(c: &ConfigSpace) -> Vec<Value> {
    let mut out = vec![];
    let mut at = c.data[0x34] as usize & !3;
    while (0x40..0x100).contains(&at) && out.len() < 48 {
        out.push(json!([
            format!("{:#04x}", c.data[at]),
            format!("{at:#04x}")
        ]));
        at = c.data[at + 1] as usize & !3;
    }
    out
}

/// The extended capability list: (id, version, offset) in list order.
fn ext_capabilities(c: &ConfigSpace) -> Vec<Value> {
    let mut out = vec![];
    let mut at = 0x100usize;
    while (0x100..0x1000).contains(&at) && out.len() < 480 {
        let h = u32::from_le_bytes(c.data[at..at + 4].try_into().expect("4 bytes"));
        if h == 0 {
            break;
        }
        out.push(json!([
            format!("{:#06x}", h & 0xffff),
            (h >> 16) & 0xf,
            format!("{at:#05x}")
        ]));
        at = (h >> 20) as usize & !3;
    }
    out
}

/// Each table in the blob `acpi::build` makes (RSDP first, then tables
/// 16-byte aligned): signature, length and a hash of its bytes.
fn acpi_tables(bytes: &[u8]) -> Vec<Value> {
    let mut out = vec![
        json!({"signature": "RSD PTR", "length": 36, "fnv1a64": fnv(&bytes[..36.min(bytes.len())])}),
    ];
    let mut at = 64;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        if len < 8 || at + len > bytes.len() {
            break;
        }
        let t = &bytes[at..at + len];
        out.push(json!({"signature": String::from_utf8_lossy(&t[..4]), "length": len, "fnv1a64": fnv(t)}));
        at = (at + len).next_multiple_of(16);
    }
    out
}

fn fnv(b: &[u8]) -> String {
    let h = b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:#018x}")
}

/// Every difference between `kept` (a release's record of a machine type)
/// and `now` (this build's): one sentence each, naming the machine type,
/// the device, the property or register, and both values. Empty: the
/// guest sees the same hardware. A property or device type that is new
/// in `now` is not a difference by itself: what it shows a guest is (its
/// registers, features, queues).
pub fn compare(kept: &Value, now: &Value) -> Vec<String> {
    let m = kept["machine"].as_str().unwrap_or("?");
    let mut out = vec![];
    if kept["machine"] != now["machine"] {
        out.push(format!(
            "machine type {m} in the record, {} now",
            now["machine"]
        ));
        return out;
    }
    let none = vec![];
    let now_devices = now["devices"].as_array().unwrap_or(&none);
    for k in kept["devices"].as_array().unwrap_or(&none) {
        let ty = k["type"].as_str().unwrap_or("?");
        let Some(n) = now_devices.iter().find(|d| d["type"] == k["type"]) else {
            out.push(format!("{m}: device {ty} is in the record and gone now"));
            continue;
        };
        let at = |what: &str| format!("{m}: {ty}: {what}");
        for (p, v) in k["properties"].as_object().into_iter().flatten() {
            let w = &n["properties"][p];
            if v != w {
                out.push(format!(
                    "{}: {v} in the record, {w} now",
                    at(&format!("property {p}"))
                ));
            }
        }
        let names = &k["pci"]["register_names"];
        for space in ["config", "wmask", "w1cmask"] {
            let (ks, ns) = (&k["pci"][space], &n["pci"][space]);
            let mut offsets: Vec<&String> = ks
                .as_object()
                .into_iter()
                .chain(ns.as_object())
                .flat_map(|o| o.keys())
                .collect();
            offsets.sort();
            offsets.dedup();
            for off in offsets {
                let zero = json!("0x00000000");
                let (a, b) = (ks.get(off).unwrap_or(&zero), ns.get(off).unwrap_or(&zero));
                if a != b {
                    let name = names[off.as_str()]
                        .as_str()
                        .or(n["pci"]["register_names"][off.as_str()].as_str())
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default();
                    out.push(format!(
                        "{}: {} in the record, {} now",
                        at(&format!("{space} {off}{name}")),
                        a.as_str().unwrap_or("?"),
                        b.as_str().unwrap_or("?")
                    ));
                }
            }
        }
        for part in ["capabilities", "ext_capabilities", "bars"] {
            if k["pci"][part] != n["pci"][part] {
                out.push(format!(
                    "{}: {} in the record, {} now",
                    at(part),
                    k["pci"][part],
                    n["pci"][part]
                ));
            }
        }
        for (p, v) in k["virtio"].as_object().into_iter().flatten() {
            let w = &n["virtio"][p];
            if v != w {
                out.push(format!(
                    "{}: {v} in the record, {w} now",
                    at(&format!("virtio {p}"))
                ));
            }
        }
    }
    let tables = |v: &Value| v["acpi"].as_array().cloned().unwrap_or_default();
    let now_tables = tables(now);
    for t in tables(kept) {
        let sig = t["signature"].as_str().unwrap_or("?");
        match now_tables.iter().find(|x| x["signature"] == t["signature"]) {
            None => out.push(format!("{m}: ACPI {sig} is in the record and gone now")),
            Some(x) if *x != t => out.push(format!(
                "{m}: ACPI {sig}: length {} hash {} in the record, length {} hash {} now",
                t["length"], t["fnv1a64"], x["length"], x["fnv1a64"]
            )),
            Some(_) => {}
        }
    }
    // A device tree (pseries): every property of every node, either way.
    let (kt, nt) = (&kept["device_tree"], &now["device_tree"]);
    let mut nodes: Vec<&String> = kt
        .as_object()
        .into_iter()
        .chain(nt.as_object())
        .flat_map(|o| o.keys())
        .collect();
    nodes.sort();
    nodes.dedup();
    for node in nodes {
        let (kp, np) = (&kt[node.as_str()], &nt[node.as_str()]);
        let mut props: Vec<&String> = kp
            .as_object()
            .into_iter()
            .chain(np.as_object())
            .flat_map(|o| o.keys())
            .collect();
        props.sort();
        props.dedup();
        for p in props {
            let (a, b) = (&kp[p.as_str()], &np[p.as_str()]);
            if a != b {
                let shown = |v: &Value| v.as_str().map_or("absent".to_string(), |s| s.to_string());
                out.push(format!(
                    "{m}: device tree {node} {p}: {} in the record, {} now",
                    shown(a),
                    shown(b)
                ));
            }
        }
    }
    if kept["memory_map"] != now["memory_map"] {
        out.push(format!(
            "{m}: memory map {} in the record, {} now",
            kept["memory_map"], now["memory_map"]
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abi(name: &str, drop: Option<(&str, &str)>) -> Value {
        let m = machine::find(name).unwrap();
        let compat: Vec<CompatEntry> = machine::compat_props(m)
            .into_iter()
            .filter(|e| drop != Some((e.type_name, e.property)))
            .collect();
        of(m, &compat).unwrap()
    }

    /// pseries-2.7 without `spapr_machine_3_0_class_options`'s legacy
    /// interrupt numbering (what QEMU 3.1 changed): the gate names the
    /// PHB's interrupt map in the device tree.
    #[test]
    fn the_gate_names_the_device_tree_a_missing_pseries_entry_changes() {
        let kept = abi("pseries-2.7", None);
        assert_eq!(compare(&kept, &kept), Vec::<String>::new());
        assert!(kept["device_tree"]["/pci@800000020000000"]["ranges"].is_string());
        assert!(
            !kept["devices"].to_string().contains("pcie-root-port"),
            "no PCI Express port on pseries"
        );
        let broken = abi(
            "pseries-2.7",
            Some(("spapr-pci-host-bridge", "x-legacy-irq-allocation")),
        );
        let diff = compare(&kept, &broken);
        assert!(
            diff.iter()
                .any(|d| d
                    .starts_with("pseries-2.7: device tree /pci@800000020000000 interrupt-map: ")),
            "{diff:#?}"
        );
        assert!(
            diff.iter()
                .any(|d| d
                    .contains("property x-legacy-irq-allocation: true in the record, false now")),
            "{diff:#?}"
        );
    }

    /// The seeds' AER bug reintroduced: pc-q35-7.2 without hw_compat_7_2's
    /// `x-pcie-err-unc-mask=off` (QEMU 8.0.0's mistake) shows the root
    /// port's new mask to a 7.2 guest; the gate names it.
    #[test]
    fn the_gate_names_the_aer_mask_a_missing_compat_entry_changes() {
        let kept = abi("pc-q35-7.2", None);
        assert_eq!(compare(&kept, &kept), Vec::<String>::new());
        let broken = abi("pc-q35-7.2", Some(("pci-device", "x-pcie-err-unc-mask")));
        let diff = compare(&kept, &broken);
        assert!(
            diff.iter().any(|d| d.starts_with("pc-q35-7.2: pcie-root-port: property x-pcie-err-unc-mask: false in the record, true now")),
            "{diff:#?}"
        );
        assert!(
            diff.iter()
                .any(|d| d.contains("pcie-root-port: config 0x108 (PCI_ERR_UNCOR_MASK)")),
            "{diff:#?}"
        );
        assert!(
            diff.iter()
                .any(|d| d.contains("pcie-root-port: wmask 0x108 (PCI_ERR_UNCOR_MASK)")),
            "{diff:#?}"
        );
    }

    /// The seeds' virtio-blk bug reintroduced: pc-q35-5.1 without
    /// hw_compat_5_1's `num-queues=1` gives a 5.1 guest one queue per vCPU.
    #[test]
    fn the_gate_names_the_queue_count_a_missing_compat_entry_changes() {
        let kept = abi("pc-q35-5.1", None);
        let broken = abi("pc-q35-5.1", Some(("virtio-blk-pci", "num-queues")));
        let diff = compare(&kept, &broken);
        assert!(
            diff.iter()
                .any(|d| d
                    == "pc-q35-5.1: virtio-blk-pci: property num-queues: 1 in the record, 2 now"),
            "{diff:#?}"
        );
        assert!(
            diff.iter().any(|d| d == "pc-q35-5.1: virtio-blk-pci: virtio queue_sizes: [256] in the record, [256,256] now"),
            "{diff:#?}"
        );
    }
}
