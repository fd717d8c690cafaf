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

/// One field as both dumps can say it: name, element size, and the
/// nested description (name, version, its fields) of a struct field.
#[derive(Debug, PartialEq)]
struct Shape {
    name: String,
    size: u64,
    nested: Option<(String, u64, Vec<Shape>)>,
}

/// A QEMU `-dump-vmstate` description's fields; `conditional` keeps only
/// the fields QEMU sends under a test (`field_exists`), or only the others.
fn qemu_fields(d: &serde_json::Value, conditional: Option<bool>) -> Vec<Shape> {
    d["Fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| conditional.is_none_or(|c| f["field_exists"].as_bool() == Some(c)))
        .map(|f| {
            let nested = f.get("Description").map(|n| {
                (
                    n["name"].as_str().unwrap().to_string(),
                    n["version_id"].as_u64().unwrap(),
                    qemu_fields(n, None),
                )
            });
            // A struct's size in the dump is its C struct's (spapr_vty's
            // `sdev` is 848 bytes of QEMU object); on the wire it is its
            // fields'.
            let size = match &nested {
                Some((_, _, fields)) => fields.iter().map(|f| f.size).sum(),
                None => f["size"].as_u64().unwrap(),
            };
            Shape {
                name: f["field"].as_str().unwrap().to_string(),
                size,
                nested,
            }
        })
        .collect()
}

/// vmm's description's fields, sized per element as QEMU's dump sizes them.
fn vmm_fields(d: &serde_json::Value) -> Vec<Shape> {
    d["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let nested = f.get("struct").map(|n| {
                (
                    n["name"].as_str().unwrap().to_string(),
                    n["version_id"].as_u64().unwrap(),
                    vmm_fields(n),
                )
            });
            let size = match &nested {
                Some((_, _, fields)) => fields.iter().map(|f| f.size).sum(),
                None => f["size"].as_u64().unwrap() / f["array_len"].as_u64().unwrap_or(1),
            };
            Shape {
                name: f["field"].as_str().unwrap().to_string(),
                size,
                nested,
            }
        })
        .collect()
}

/// The sPAPR PHB's, interrupt sources', RTC's, vty's and NVRAM's state as vmm describes it for pseries-2.7 and 2.8 is
/// QEMU 7.2's (Debian's qemu-system-ppc64, which dumps without a POWER
/// host): name, versions, every field in order with its size, the LSI and
/// MSI structs; on pseries-2.7 with the conditional mig_* fields, on 2.8
/// without them.
#[test]
fn pseries_state_is_qemus() {
    let dir = TempDir::new("vmstate-spapr");
    for (machine, scratch) in [("pseries-2.7", true), ("pseries-2.8", false)] {
        let q = dir.path(&format!("qemu-{machine}.json"));
        let st = Command::new("qemu-system-ppc64")
            .args(["-M", machine, "-nodefaults", "-dump-vmstate"])
            .arg(&q)
            .status()
            .expect("qemu-system-ppc64 (scripts/setup.sh installs qemu-system-ppc)");
        assert!(
            st.success(),
            "qemu-system-ppc64 -M {machine} -dump-vmstate failed"
        );
        let q: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&q).unwrap()).unwrap();
        let qd = &q["spapr-pci-host-bridge"]["Description"];
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dump_now(machine, &dir)).unwrap())
                .unwrap();
        let vd = &v["sections"]["spapr_pci"];
        assert_eq!(vd["name"], qd["name"], "{machine}");
        assert_eq!(vd["version_id"], qd["version_id"], "{machine}");
        assert_eq!(
            vd["minimum_version_id"], qd["minimum_version_id"],
            "{machine}"
        );
        let want: Vec<Shape> = if scratch {
            qemu_fields(qd, None)
        } else {
            qemu_fields(qd, Some(false))
        };
        assert!(want.iter().any(|f| f.name == "msi_devs"));
        assert_eq!(
            want.iter().any(|f| f.name.starts_with("mig_")),
            scratch,
            "{machine}"
        );
        assert_eq!(vmm_fields(vd), want, "{machine}");
        // The interrupt sources' routing.
        let (qi, vi) = (&q["ics-spapr"]["Description"], &v["sections"]["ics"]);
        assert_eq!(vi["name"], qi["name"], "{machine}");
        assert_eq!(vi["version_id"], qi["version_id"], "{machine}");
        assert_eq!(vmm_fields(vi), qemu_fields(qi, None), "{machine}");
        // The RTC's offset.
        let (qr, vr) = (&q["spapr-rtc"]["Description"], &v["sections"]["spapr/rtc"]);
        assert_eq!(vr["name"], qr["name"], "{machine}");
        assert_eq!(vr["version_id"], qr["version_id"], "{machine}");
        assert_eq!(vmm_fields(vr), qemu_fields(qr, None), "{machine}");
        // The console's vty, with the VIO device state it nests.
        let (qv, vv) = (&q["spapr-vty"]["Description"], &v["sections"]["spapr_vty"]);
        assert_eq!(vv["name"], qv["name"], "{machine}");
        assert_eq!(vv["version_id"], qv["version_id"], "{machine}");
        let fields = vmm_fields(vv);
        assert_eq!(fields, qemu_fields(qv, None), "{machine}");
        assert_eq!(fields[0].nested.as_ref().unwrap().2.len(), 6);
        // The NVRAM: its size, then that many bytes (a VBUFFER, size 0 in
        // the dump).
        let (qn, vn) = (
            &q["spapr-nvram"]["Description"],
            &v["sections"]["spapr_nvram"],
        );
        assert_eq!(vn["name"], qn["name"], "{machine}");
        assert_eq!(vn["version_id"], qn["version_id"], "{machine}");
        assert_eq!(vmm_fields(vn), qemu_fields(qn, None), "{machine}");
        assert_eq!(vn["fields"][1]["version_id"], qn["Fields"][1]["version_id"]);
    }
}

/// A stream QEMU 7.2 itself writes for a pseries guest (TCG, paused; its
/// table is empty) reads end to end with vmm's reader: RAM, QEMU's
/// iterative `spapr/htab` (START with the order for 256 MiB, a PART and
/// the END, each pass ended), and every device section by the stream's
/// own description, the NVRAM's sized buffer among them; and QEMU's
/// `spapr` machine section has vmm's `timebase` layout.
#[test]
fn qemus_pseries_stream_reads_end_to_end() {
    let dir = TempDir::new("qemu-pseries-stream");
    let sock = dir.path("qemu.qmp");
    let file = dir.path("qemu.stream");
    let mut cmd = Command::new("qemu-system-ppc64");
    cmd.args(["-M", "pseries-7.2,cap-htm=off", "-m", "256M", "-nodefaults"])
        .args(["-S", "-display", "none", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", sock.display()));
    // Killed however the test ends (scripts/setup.sh installs it).
    let mut qemu = vmm_tests::console::Vm::spawn("qemu-system-ppc64", cmd);
    let t = std::time::Duration::from_secs(60);
    let mut q = vmm_tests::qmp::Qmp::connect(&sock, t);
    // QEMU says `completed` once it has written the pipe; `cat` may still
    // be writing the file then, so the file gets its name only after.
    let part = dir.path("qemu.stream.part");
    q.execute(
        "migrate",
        serde_json::json!({"uri": format!(
            "exec:cat > {} && mv {} {}",
            part.display(),
            part.display(),
            file.display()
        )}),
    );
    let m = q.wait_migration(t);
    assert_eq!(m["status"], "completed", "{m}");
    let deadline = std::time::Instant::now() + t;
    while !file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "QEMU's stream never ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    qemu.kill();

    let out = Command::new(vmmctl())
        .arg("analyze-migration")
        .arg(&file)
        .output()
        .expect("run vmmctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ')).collect();
    let htab: Vec<&&str> = lines.iter().filter(|l| l.contains("spapr/htab")).collect();
    assert!(htab[0].ends_with("table of 2^21 bytes"), "{htab:?}");
    assert!(htab.iter().any(|l| l.contains("END 0 chunks")), "{htab:?}");
    for section in [
        "'spapr'",
        "'nvram@71000000/spapr_nvram'",
        "'spapr_pci'",
        "'ics'",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(section)),
            "{section}: {lines:#?}"
        );
    }
    assert!(lines.last().unwrap().contains("EOF"), "{lines:#?}");
    // The NVRAM's size field, then its 64 KiB.
    assert!(text.contains("size: 0x10000"), "{text}");
    assert!(text.contains("[65536 bytes"), "{text}");

    // QEMU's `spapr` section, as its own description says, is vmm's.
    let bytes = std::fs::read(&file).unwrap();
    let at = bytes
        .windows(12)
        .rposition(|w| w == b"{\"page_size\"")
        .expect("QEMU's vmdesc");
    let vmdesc: serde_json::Value = serde_json::from_slice(&bytes[at..]).unwrap();
    let spapr = vmdesc["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "spapr")
        .expect("QEMU's spapr section");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dump_now("pseries-7.2", &dir)).unwrap())
            .unwrap();
    let ours = &v["sections"]["spapr"];
    assert_eq!(spapr["version"], ours["version_id"]);
    let tb = &spapr["fields"][0];
    assert_eq!(tb["name"], ours["fields"][0]["field"]);
    let names = |fields: &serde_json::Value, key: &str| -> Vec<String> {
        fields
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f[key].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(&tb["struct"]["fields"], "name"),
        names(&ours["fields"][0]["struct"]["fields"], "field")
    );
    assert_eq!(
        tb["struct"]["vmsd_name"],
        ours["fields"][0]["struct"]["name"]
    );
}
