//! What a guest sees of every machine type kept in tests/compat/abi/ must
//! be what this build shows it (`vmm -M TYPE -dump-abi`, compared by
//! `vmmctl abi-check`): a machine type that shipped never changes under
//! its guests. And the check must name what changed.

use std::path::{Path, PathBuf};
use std::process::Command;
use vmm_tests::TempDir;

fn vmmctl() -> PathBuf {
    vmm_tests::vmm::binary().with_file_name("vmmctl")
}

/// This build's `-dump-abi` of `machine`, in `dir`.
fn dump_now(machine: &str, dir: &TempDir) -> PathBuf {
    let out = dir.path(&format!("{machine}.json"));
    let st = Command::new(vmm_tests::vmm::binary())
        .args(["-M", machine, "-dump-abi"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "-dump-abi {machine} failed");
    out
}

/// `vmmctl abi-check`: its exit status and what it printed.
fn check(kept: &Path, now: &Path) -> (Option<i32>, String) {
    let out = Command::new(vmmctl())
        .arg("abi-check")
        .arg(kept)
        .arg(now)
        .output()
        .expect("run vmmctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Every kept record: (its file, the machine type).
fn records() -> Vec<(PathBuf, String)> {
    let top = vmm_tests::workspace().join("tests/compat/abi");
    let mut out = vec![];
    for rec in std::fs::read_dir(&top)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
    {
        for f in std::fs::read_dir(rec.path()).unwrap().flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "json") {
                let m = p.file_stem().unwrap().to_string_lossy().into_owned();
                out.push((p, m));
            }
        }
    }
    out
}

#[test]
fn every_kept_machine_type_shows_its_guests_the_same_hardware() {
    let dir = TempDir::new("abi");
    let kept = records();
    // Every versioned machine type this build offers has a record.
    let help = Command::new(vmm_tests::vmm::binary())
        .args(["-M", "help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for line in help
        .lines()
        .filter(|l| l.starts_with("pc-q35-") || l.starts_with("pseries-"))
    {
        let m = line.split_whitespace().next().unwrap();
        assert!(
            kept.iter().any(|(_, k)| k == m),
            "no ABI record of {m}: {help}"
        );
    }
    for (file, machine) in &kept {
        let now = dump_now(machine, &dir);
        let (code, out) = check(file, &now);
        assert_eq!(code, Some(0), "{} vs this build:\n{out}", file.display());
    }
}

/// A record that differs in one register (the root port's AER mask, the
/// seeds' bug) and one property: the check fails naming both, with the
/// machine type, the device and both values.
#[test]
fn the_check_names_the_register_and_the_property_that_changed() {
    let dir = TempDir::new("abi-tampered");
    let now = dump_now("pc-q35-7.2", &dir);
    let mut rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&now).unwrap()).unwrap();
    let port = rec["devices"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|d| d["type"] == "pcie-root-port")
        .unwrap();
    port["pci"]["wmask"]["0x108"] = serde_json::json!("0x00400000");
    port["properties"]["x-pcie-err-unc-mask"] = serde_json::json!(true);
    let tampered = dir.path("tampered.json");
    std::fs::write(&tampered, rec.to_string()).unwrap();
    let (code, out) = check(&tampered, &now);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("changed: pc-q35-7.2: pcie-root-port: wmask 0x108 (PCI_ERR_UNCOR_MASK): 0x00400000 in the record, 0x00000000 now"),
        "{out}"
    );
    assert!(
        out.contains("changed: pc-q35-7.2: pcie-root-port: property x-pcie-err-unc-mask: true in the record, false now"),
        "{out}"
    );
}
