//! Every release's `-dump-vmstate` output kept in tests/compat/ must stay
//! compatible with the current build, for every machine type; and the
//! checker must catch a breaking change.

use std::path::{Path, PathBuf};
use std::process::Command;
use vmm_tests::TempDir;

fn vmmctl() -> PathBuf {
    vmm_tests::vmm::binary().with_file_name("vmmctl")
}

fn dump_now(machine: &str, dir: &TempDir) -> PathBuf {
    let out = dir.path(&format!("{machine}.json"));
    let st = Command::new(vmm_tests::vmm::binary())
        .args(["-M", machine, "-dump-vmstate"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "-dump-vmstate {machine} failed");
    out
}

fn check(old: &Path, new: &Path) -> (Option<i32>, String) {
    let out = Command::new(vmmctl())
        .arg("vmstate-check")
        .arg(old)
        .arg(new)
        .output()
        .expect("run vmmctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn current_build_stays_compatible_with_every_kept_release() {
    let dir = TempDir::new("vmstate");
    let compat = vmm_tests::workspace().join("tests/compat");
    let mut checked = 0;
    for release in std::fs::read_dir(&compat)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir() && e.file_name().to_string_lossy().starts_with("vmm-"))
    {
        // The dumps; `streams/` holds the release's saved VMs.
        for dump in std::fs::read_dir(release.path())
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        {
            let machine = dump
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let now = dump_now(&machine, &dir);
            let (code, out) = check(&dump.path(), &now);
            assert_eq!(code, Some(0), "{} vs now:\n{out}", dump.path().display());
            checked += 1;
        }
    }
    assert!(
        checked >= 7,
        "only {checked} dumps found under {}",
        compat.display()
    );
}

#[test]
fn checker_reports_a_removed_field() {
    let dir = TempDir::new("vmstate-bad");
    let now = dump_now("pc-q35-8.0", &dir);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&now).unwrap()).unwrap();
    let fields = v["sections"]["serial"]["fields"].as_array_mut().unwrap();
    fields.retain(|f| f["field"] != "scr");
    let broken = dir.path("broken.json");
    std::fs::write(&broken, v.to_string()).unwrap();
    let (code, out) = check(&now, &broken);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("incompatible: serial: field 'scr' removed"),
        "{out}"
    );
}
