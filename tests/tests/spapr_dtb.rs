//! The pseries device tree (`-machine dumpdtb=FILE`) against QEMU 7.2's
//! (Debian's qemu-system-ppc64 dumps it without a POWER host), both
//! decompiled with dtc: every node and property vmm writes is QEMU's,
//! value for value, on pseries-2.7, 2.8 and 7.2; what QEMU has beyond
//! vmm's board is listed in docs/ppc64.md.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use vmm_tests::TempDir;

type Tree = BTreeMap<String, BTreeMap<String, String>>;

/// dtc's source form of `dtb`, as node path -> property -> value.
fn decompile(dtb: &Path) -> Tree {
    let out = Command::new("dtc")
        .args(["-I", "dtb", "-O", "dts"])
        .arg(dtb)
        .output()
        .expect("dtc (scripts/setup.sh installs device-tree-compiler)");
    assert!(out.status.success(), "dtc {}", dtb.display());
    let mut tree = Tree::new();
    let mut path: Vec<String> = vec![];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let l = line.trim();
        if let Some(name) = l.strip_suffix(" {") {
            path.push(if name == "/" {
                String::new()
            } else {
                name.to_string()
            });
            tree.entry(path.join("/")).or_default();
        } else if l == "};" {
            path.pop();
        } else if let Some(prop) = l.strip_suffix(';') {
            if path.is_empty() || prop.starts_with("/dts-v1/") {
                continue;
            }
            let (name, value) = prop.split_once(" = ").unwrap_or((prop, ""));
            tree.entry(path.join("/"))
                .or_default()
                .insert(name.to_string(), value.to_string());
        }
    }
    tree
}

/// QEMU's tree; `console`: its `-serial` (a spapr-vty, made before the
/// bridge) or none.
fn qemu_dtb(machine: &str, smp: &str, console: bool, dir: &TempDir) -> Tree {
    let f = dir.path(&format!("qemu-{machine}-{smp}-{console}.dtb"));
    let serial: &[&str] = if console { &["-serial", "null"] } else { &[] };
    let st = Command::new("qemu-system-ppc64")
        .arg("-M")
        .arg(format!("{machine},dumpdtb={},cap-htm=off", f.display()))
        .args(["-nodefaults", "-m", "256M", "-smp", smp])
        .args(serial)
        .output()
        .expect("qemu-system-ppc64 (scripts/setup.sh installs qemu-system-ppc)");
    assert!(f.exists(), "{}", String::from_utf8_lossy(&st.stderr));
    decompile(&f)
}

fn vmm_dtb(machine: &str, smp: &str, console: bool, dir: &TempDir) -> Tree {
    let f = dir.path(&format!("vmm-{machine}-{smp}-{console}.dtb"));
    let serial: &[&str] = if console { &[] } else { &["-serial", "none"] };
    let st = Command::new(vmm_tests::vmm::binary())
        .arg("-M")
        .arg(format!("{machine},dumpdtb={}", f.display()))
        .args(["-m", "256M", "-smp", smp])
        .args(serial)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    decompile(&f)
}

#[test]
fn the_device_tree_is_qemus_where_both_have_it() {
    let dir = TempDir::new("dtb");
    // QEMU's TCG takes one thread a core: its interrupt servers are
    // compared for 1 and 4 CPUs (8 servers a CPU up to pseries-4.1). The
    // console (a vty on the VIO bus, made before the bridge) moves the
    // bridge's pins where sources were taken in creation order (pseries
    // 3.0 and older): with and without it.
    for (machine, smp, console) in [
        ("pseries-2.7", "1", true),
        ("pseries-2.7", "1", false),
        ("pseries-2.8", "1", true),
        ("pseries-2.8", "4", false),
        ("pseries-7.2", "1", true),
        ("pseries-7.2", "4", false),
    ] {
        let (q, v) = (
            qemu_dtb(machine, smp, console, &dir),
            vmm_dtb(machine, smp, console, &dir),
        );
        let machine = format!("{machine} -smp {smp} console {console}");
        let mut compared = 0;
        for (node, props) in &v {
            let theirs = q
                .get(node)
                .unwrap_or_else(|| panic!("{machine}: QEMU has no node '{node}'"));
            for (p, value) in props {
                assert_eq!(
                    theirs.get(p),
                    Some(value),
                    "{machine}: {node}/{p}: vmm says {value}"
                );
                compared += 1;
            }
        }
        // Every CPU node QEMU has, with all it says but the hot-plug
        // connector's index (vmm has no CPU hot-plug).
        let cpus: Vec<&String> = q
            .keys()
            .filter(|n| n.starts_with("/cpus/PowerPC,"))
            .collect();
        assert_eq!(cpus.len(), smp.parse::<usize>().unwrap(), "{machine}");
        for node in cpus {
            let ours = v
                .get(node)
                .unwrap_or_else(|| panic!("{machine}: vmm has no node '{node}'"));
            for p in q[node].keys().filter(|p| *p != "ibm,my-drc-index") {
                assert!(ours.contains_key(p), "{machine}: {node} lacks {p}");
            }
        }
        // The PHB and what the guest needs of it are all there.
        let phb = &v["/pci@800000020000000"];
        for p in [
            "ranges",
            "reg",
            "interrupt-map",
            "ibm,dma-window",
            "bus-range",
        ] {
            assert!(phb.contains_key(p), "{machine}: no {p}");
        }
        assert!(v["/rtas"].contains_key("ibm,read-pci-config"));
        // The NVRAM, after the console on the VIO bus, and its calls.
        let nvram = if console {
            "/vdevice/nvram@71000001"
        } else {
            "/vdevice/nvram@71000000"
        };
        assert_eq!(v[nvram].len(), 5, "{machine}: {:?}", v[nvram]);
        assert!(v["/rtas"].contains_key("nvram-fetch") && v["/rtas"].contains_key("nvram-store"));
        // The console, where the guest is told to write.
        assert_eq!(
            v.contains_key("/vdevice/vty@71000000"),
            console,
            "{machine}"
        );
        assert_eq!(
            v["/chosen"].contains_key("stdout-path"),
            console,
            "{machine}"
        );
        assert!(compared >= 35, "{machine}: only {compared} properties");
        // QEMU's pseries-4.2 and later let Linux assign BARs; vmm agrees
        // on which say so.
        assert_eq!(
            v["/chosen"].contains_key("linux,pci-probe-only"),
            q["/chosen"].contains_key("linux,pci-probe-only"),
            "{machine}"
        );
    }
}

/// q35 has ACPI, not a device tree: dumpdtb says so.
#[test]
fn dumpdtb_on_q35_is_refused() {
    let dir = TempDir::new("dtb-q35");
    let f = dir.path("x.dtb");
    let out = Command::new(vmm_tests::vmm::binary())
        .arg("-M")
        .arg(format!("pc-q35-8.0,dumpdtb={}", f.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ACPI"));
}
