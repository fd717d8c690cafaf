//! The device model and versioned machine types through the real binary:
//! `--print-config` provenance, `-device help`, the AER root port per
//! machine type in the guest (and against QEMU 7.2, the reference), and
//! the error cases.

use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use vmm_tests::console::field;
use vmm_tests::qemu::Qemu;
use vmm_tests::vmm::{binary, Vmm};

const BOOT: Duration = Duration::from_secs(60);

fn vmm(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(binary()).args(args).output().expect("run vmm");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn print_config(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--print-config");
    let (code, out, err) = vmm(&a);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn prop<'a>(cfg: &'a Value, id: &str, name: &str) -> &'a Value {
    let dev = cfg["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .expect("device in config");
    &dev["properties"][name]
}

#[test]
fn print_config_shows_values_and_where_they_came_from() {
    let rp = ["-device", "pcie-root-port,id=rp0,chassis=1"];
    let c72 = print_config(&[&["-M", "pc-q35-7.2"][..], &rp].concat());
    assert_eq!(prop(&c72, "rp0", "x-pcie-err-unc-mask")["value"], false);
    assert_eq!(
        prop(&c72, "rp0", "x-pcie-err-unc-mask")["source"],
        "compat:hw_compat_7_2"
    );
    assert_eq!(prop(&c72, "rp0", "chassis")["source"], "device");
    assert_eq!(prop(&c72, "rp0", "slot")["source"], "default");
    assert_eq!(c72["machine"]["type"], "pc-q35-7.2");
    let c80 = print_config(&[&["-M", "pc-q35-8.0"][..], &rp].concat());
    assert_eq!(prop(&c80, "rp0", "x-pcie-err-unc-mask")["value"], true);
    assert_eq!(
        prop(&c80, "rp0", "x-pcie-err-unc-mask")["source"],
        "default"
    );
    // Older machine types inherit the 7.2 entry; the alias is the newest.
    let c51 = print_config(&[&["-M", "pc-q35-5.1"][..], &rp].concat());
    assert_eq!(
        prop(&c51, "rp0", "x-pcie-err-unc-mask")["source"],
        "compat:hw_compat_7_2"
    );
    assert_eq!(
        print_config(&rp)["machine"]["type"],
        print_config(&[&["-M", "q35"][..], &rp].concat())["machine"]["type"]
    );
    // -global beats compat, -device beats -global.
    let g = print_config(&[
        "-M",
        "pc-q35-7.2",
        "-global",
        "pci-device.x-pcie-err-unc-mask=on",
        "-device",
        "pcie-root-port,id=a,chassis=1",
        "-device",
        "pcie-root-port,id=b,chassis=2,x-pcie-err-unc-mask=off",
    ]);
    assert_eq!(
        (
            prop(&g, "a", "x-pcie-err-unc-mask")["value"].clone(),
            prop(&g, "a", "x-pcie-err-unc-mask")["source"].clone()
        ),
        (Value::Bool(true), "global".into())
    );
    assert_eq!(
        (
            prop(&g, "b", "x-pcie-err-unc-mask")["value"].clone(),
            prop(&g, "b", "x-pcie-err-unc-mask")["source"].clone()
        ),
        (Value::Bool(false), "device".into())
    );
    // Addresses: first free slots, or the one asked for.
    let a = print_config(&[
        "-device",
        "pcie-root-port,id=a,chassis=1,addr=0x1c",
        "-device",
        "pcie-root-port,id=b,chassis=2",
    ]);
    let addr = |id: &str| {
        a["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .unwrap()["addr"]
            .clone()
    };
    assert_eq!((addr("a"), addr("b")), ("1c.0".into(), "01.0".into()));
}

#[test]
fn help_lists_types_and_properties() {
    let (code, out, _) = vmm(&["-device", "help"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("\"pcie-root-port\"")
            && out.contains("\"isa-debug-exit\"")
            && !out.contains("\"pci-device\""),
        "{out}"
    );
    let (code, out, _) = vmm(&["-device", "pcie-root-port,help"]);
    assert_eq!(code, Some(0));
    for want in [
        "x-pcie-err-unc-mask=<bool>",
        "(default: on)",
        "chassis=<uint8>",
        "addr=",
    ] {
        assert!(out.contains(want), "{want} missing: {out}");
    }
    let (code, out, _) = vmm(&["-M", "help"]);
    assert_eq!(code, Some(0));
    for m in [
        "pc-q35-2.7",
        "pc-q35-2.8",
        "pc-q35-5.1",
        "pc-q35-5.2",
        "pc-q35-7.2",
        "pc-q35-8.0",
        "(default, alias of q35, pc-q35)",
    ] {
        assert!(out.contains(m), "{m} missing: {out}");
    }
}

/// Boots the guest with two root ports; returns their AER lines.
fn aer_lines(machine: &str, extra: &[&str]) -> Vec<String> {
    let mut vm = Vmm::new()
        .args(["-M", machine, "-m", "256M"])
        .args([
            "-device",
            "pcie-root-port,id=rp0,chassis=1",
            "-device",
            "pcie-root-port,id=rp1,chassis=2",
        ])
        .args(extra)
        .append("cpus=1 pci_ecam=1")
        .spawn(machine);
    vm.assert_pass(BOOT);
    let ports: Vec<_> = vm
        .lines()
        .into_iter()
        .filter(|l| l.contains("vendor=0x1b36 device=0x000c"))
        .collect();
    assert_eq!(ports.len(), 2, "{}", vm.log());
    for p in &ports {
        assert!(
            field(p, "caps").unwrap().split(',').any(|c| c == "10"),
            "PCIe capability: {p}"
        );
        assert_eq!(field(p, "ext_caps").as_deref(), Some("0001"), "AER: {p}");
    }
    vm.lines()
        .into_iter()
        .filter(|l| l.contains(".aer offset="))
        .collect()
}

#[test]
fn aer_uncor_mask_differs_between_7_2_and_8_0_in_the_guest() {
    let l72 = aer_lines("pc-q35-7.2", &[]);
    let l80 = aer_lines("pc-q35-8.0", &[]);
    assert_eq!(l72.len(), 2);
    for l in &l72 {
        assert_eq!(field(l, "uncor_mask").as_deref(), Some("0x0"), "{l}");
        assert_eq!(
            field(l, "uncor_mask_writable").as_deref(),
            Some("0x0"),
            "{l}"
        );
    }
    for l in &l80 {
        assert_eq!(field(l, "uncor_mask").as_deref(), Some("0x2400000"), "{l}");
        assert_eq!(
            field(l, "uncor_mask_writable").as_deref(),
            Some("0x3fff030"),
            "{l}"
        );
    }
    // The seed's recovery: 8.0 behaviour on a 7.2 machine, from the command line.
    for l in aer_lines(
        "pc-q35-7.2",
        &["-global", "pcie-root-port.x-pcie-err-unc-mask=on"],
    ) {
        assert_eq!(field(&l, "uncor_mask").as_deref(), Some("0x2400000"), "{l}");
    }
}

/// vmm's pc-q35-7.2 root port reads like QEMU 7.2's, register by register.
#[test]
fn aer_registers_match_qemu_7_2() {
    let mut q = Qemu::new("pc-q35-7.2")
        .append("cpus=1 mem=256M")
        .device("pcie-root-port,id=rp0,chassis=1,addr=0x1")
        .spawn("qemu-7.2-rootport");
    q.assert_pass(BOOT);
    let theirs = q
        .lines()
        .into_iter()
        .find(|l| l.starts_with("pci.00:01.0.aer"))
        .expect("QEMU's AER line");
    let mut v = Vmm::new()
        .args([
            "-M",
            "pc-q35-7.2",
            "-m",
            "256M",
            "-device",
            "pcie-root-port,id=rp0,chassis=1,addr=0x1",
        ])
        .append("cpus=1 mem=256M")
        .spawn("vmm-7.2-rootport");
    v.assert_pass(BOOT);
    let ours = v
        .lines()
        .into_iter()
        .find(|l| l.starts_with("pci.00:01.0.aer"))
        .expect("vmm's AER line");
    assert_eq!(ours, theirs);
}

fn bad(args: &[&str], want: &[&str]) {
    let (code, _, err) = vmm(args);
    assert_eq!(code, Some(1), "{args:?}: {err}");
    let line = err.trim();
    assert_eq!(line.lines().count(), 1, "{err}");
    for w in want {
        assert!(line.contains(w), "{args:?}: {line:?} lacks {w:?}");
    }
}

#[test]
fn device_errors_are_one_sentence() {
    let k = vmm_tests::guest_kernel();
    let k = k.to_str().unwrap();
    fn with<'a>(k: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        [&["-kernel", k][..], extra].concat()
    }
    let run = |extra: &[&'static str]| with(k, extra);
    bad(
        &run(&["-device", "pcie-root-prot"]),
        &[
            "unknown device type 'pcie-root-prot'",
            "did you mean pcie-root-port",
        ],
    );
    bad(
        &run(&["-device", "pcie-root-port,chasis=1"]),
        &["no property 'chasis'", "chassis, slot, port"],
    );
    bad(
        &run(&["-device", "pcie-root-port,chassis=lots"]),
        &["'lots'", "chassis", "0 to 255"],
    );
    bad(
        &run(&["-device", "pcie-root-port,x-pcie-err-unc-mask=maybe"]),
        &["'maybe'", "on, off"],
    );
    bad(
        &run(&[
            "-device",
            "pcie-root-port,id=a,chassis=1",
            "-device",
            "pcie-root-port,id=a,chassis=2",
        ]),
        &["duplicate device id 'a'"],
    );
    bad(
        &run(&[
            "-device",
            "pcie-root-port,id=a,chassis=1,addr=3",
            "-device",
            "pcie-root-port,id=b,chassis=2,addr=3",
        ]),
        &["03.0", "already taken", "'a'"],
    );
    bad(
        &run(&["-device", "pcie-root-port,addr=0"]),
        &["00.0", "host bridge"],
    );
    bad(
        &run(&[
            "-device",
            "pcie-root-port,id=a",
            "-device",
            "pcie-root-port,id=b",
        ]),
        &["chassis 0 slot 0", "'a'"],
    );
    bad(
        &run(&["-global", "virtio-scsi-pci.num_queues=1"]),
        &["unknown device type 'virtio-scsi-pci'"],
    );
    bad(
        &run(&["-global", "pcie-root-port.nope=1"]),
        &["no property 'nope'"],
    );
    bad(
        &run(&["-device", "pcie-root-port,bus=pcie.9"]),
        &["bus 'pcie.9'", "pcie.0"],
    );
    bad(&run(&["-device", "pci-device"]), &["abstract"]);
    bad(
        &run(&["-M", "pc-q35-7.2,foo=bar"]),
        &["unknown machine property 'foo'"],
    );
}

/// `auto` settings show the value the guest sees, where it came from, and
/// the setting itself: virtio-blk's queues follow -smp from 5.2 on (1 on
/// 5.1, hw_compat_5_1), MSI-X vectors follow the queues, disable-legacy
/// the bus, the MAC the NIC's place on the board.
#[test]
fn print_config_shows_the_effective_value_of_auto_settings() {
    let dir = vmm_tests::TempDir::new("effective");
    let img = dir.image("d.raw", 1 << 20);
    let drive = format!("file={},if=none,id=d0,format=raw", img.display());
    let cfg = |machine: &str, smp: &str| {
        print_config(&[
            "-M",
            machine,
            "-smp",
            smp,
            "-drive",
            &drive,
            "-device",
            "virtio-blk-pci,drive=d0,id=blk",
            "-device",
            "virtio-rng-pci,id=rng",
            "-device",
            "pcie-root-port,id=rp,chassis=1",
            "-device",
            "virtio-rng-pci,id=rng2,bus=rp",
        ])
    };
    for (machine, smp, queues, source) in [
        ("pc-q35-5.2", "4", 4, "auto: -smp 4"),
        ("pc-q35-5.2", "1", 1, "auto: -smp 1"),
        ("pc-q35-5.1", "4", 1, "compat:hw_compat_5_1"),
        ("pc-q35-5.1", "1", 1, "compat:hw_compat_5_1"),
    ] {
        let c = cfg(machine, smp);
        let nq = prop(&c, "blk", "num-queues");
        assert_eq!(
            (nq["value"].as_u64(), nq["source"].as_str()),
            (Some(queues), Some(source)),
            "{machine} -smp {smp}: {nq}"
        );
        if source.starts_with("auto") {
            assert_eq!(nq["setting"]["value"], 65535, "{nq}");
            assert_eq!(nq["setting"]["source"], "default", "{nq}");
        }
        let v = prop(&c, "blk", "vectors");
        assert_eq!(v["value"].as_u64(), Some(queues + 1), "{v}");
        assert!(v["source"].as_str().unwrap().starts_with("auto: "), "{v}");
        assert_eq!(v["setting"]["value"], 4294967295u64, "{v}");
    }
    // QEMU's hw_compat_7_1: no MSI-X for virtio-rng-pci up to 7.1 (a
    // guest started on vmm up to 0.2.0 keeps its own: carried_config.rs).
    let c = cfg("pc-q35-5.2", "2");
    assert_eq!(prop(&c, "rng", "vectors")["value"], 0);
    assert_eq!(prop(&c, "rng", "vectors")["source"], "compat:hw_compat_7_1");
    let c = cfg("pc-q35-7.2", "2");
    assert_eq!(prop(&c, "rng", "vectors")["value"], 2);
    // Legacy I/O on the root bus, none behind a PCIe port (as QEMU).
    assert_eq!(prop(&c, "rng", "disable-legacy")["value"], "off");
    assert_eq!(prop(&c, "rng2", "disable-legacy")["value"], "on");
    assert_eq!(
        prop(&c, "rng2", "disable-legacy")["source"],
        "auto: behind a PCIe root port"
    );
    assert_eq!(
        prop(&c, "rng", "addr")["source"],
        "auto: first free slot on pcie.0"
    );
    // As QEMU's qom-get answers it: an int32, slot << 3 | function.
    assert_eq!(prop(&c, "rng", "addr")["value"], 2 << 3);
    // A value that was set stays as set, with its source.
    let c = print_config(&[
        "-smp",
        "4",
        "-drive",
        &drive,
        "-device",
        "virtio-blk-pci,drive=d0,id=blk,num-queues=2,vectors=0",
    ]);
    assert_eq!(prop(&c, "blk", "num-queues")["value"], 2);
    assert_eq!(prop(&c, "blk", "num-queues")["source"], "device");
    assert!(prop(&c, "blk", "num-queues").get("setting").is_none());
    assert_eq!(prop(&c, "blk", "vectors")["value"], 0);
}

/// The board's host bridge has the machine's properties: the compat
/// arrays set them (pc_compat_2_10 on pc-q35-2.7/2.8), `-global` may too,
/// `--print-config` shows them with provenance, and `-device` cannot make
/// a second one.
#[test]
fn the_host_bridge_takes_compat_and_global_but_not_device() {
    let hole64 = |args: &[&str]| {
        let c = print_config(args);
        let p = &c["machine"]["host_bridge"]["properties"]["x-pci-hole64-fix"];
        (
            p["value"].clone(),
            p["source"].as_str().unwrap_or("").to_string(),
        )
    };
    assert_eq!(
        hole64(&["-M", "pc-q35-2.7"]),
        (Value::Bool(false), "compat:pc_compat_2_10".into())
    );
    assert_eq!(
        hole64(&["-M", "pc-q35-5.1"]),
        (Value::Bool(true), "default".into())
    );
    let uid = |m: &str| {
        let c = print_config(&["-M", m]);
        let p = &c["machine"]["host_bridge"]["properties"]["x-pci-root-uid"];
        (
            p["value"].as_u64(),
            p["source"].as_str().unwrap_or("").to_string(),
        )
    };
    assert_eq!(
        uid("pc-q35-5.1"),
        (Some(1), "compat:pc_q35_machine_5_1_options".into())
    );
    assert_eq!(uid("pc-q35-5.2"), (Some(0), "default".into()));
    assert_eq!(
        hole64(&[
            "-M",
            "pc-q35-2.8",
            "-global",
            "q35-pcihost.x-pci-hole64-fix=on"
        ]),
        (Value::Bool(true), "global".into())
    );
    let (code, _, err) = vmm(&["-device", "q35-pcihost", "--print-config"]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("-device q35-pcihost") && err.contains("-global q35-pcihost."),
        "{err}"
    );
}
