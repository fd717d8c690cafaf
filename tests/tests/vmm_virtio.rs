//! virtio-pci on vmm, judged by the test guest's drivers: every device
//! (blk on a file, net on a tap with a host peer, console, rng) in every
//! transport, polling and MSI-X; the seed's machine-type behaviours
//! (virtio-blk queue count, modern/legacy exposure by backend features);
//! save/restore in the middle of block I/O; bad input.

use serde_json::json;
use std::path::Path;
use std::time::Duration;
use vmm_tests::console::{field, Vm};
use vmm_tests::peer::TapEcho;
use vmm_tests::qmp::Qmp;
use vmm_tests::vmm::Vmm;
use vmm_tests::{blk_pattern, TempDir};

const BOOT: Duration = Duration::from_secs(60);

fn disk(dir: &TempDir, name: &str, mib: u64) -> std::path::PathBuf {
    dir.image(name, mib << 20)
}

fn drive(path: &Path, id: &str, extra: &str) -> [String; 2] {
    [
        "-drive".into(),
        format!("file={},if=none,id={id},format=raw{extra}", path.display()),
    ]
}

/// Checks `sectors` sectors from `sector` of the image against the guest's
/// pattern.
fn assert_pattern(path: &Path, seed: u64, sector: u64, sectors: u64) {
    let data = std::fs::read(path).expect("read disk");
    for s in sector..sector + sectors {
        for w in 0..64u64 {
            let off = (s * 512 + w * 8) as usize;
            let got = u64::from_le_bytes(data[off..off + 8].try_into().unwrap());
            assert_eq!(got, blk_pattern(seed, s, w), "disk word {w} of sector {s}");
        }
    }
}

/// The `virtio.BDF type=...` line of the device at `slot`.
fn device_line(vm: &Vm, slot: u8) -> String {
    let prefix = format!("virtio.00:{slot:02x}.0 type=");
    vm.lines()
        .into_iter()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix}\n{}", vm.log()))
}

/// Every device type at once; the host checks the disk, the console file
/// and the frames its tap peer saw.
fn all_devices(cpus: u32, extra: &str) {
    let dir = TempDir::new("virtio-all");
    let img = disk(&dir, "disk.raw", 16);
    let console = dir.path("console.out");
    let tap = TapEcho::start();
    let seed = 77 + cpus as u64;
    let frames = 6;
    let mut vm = Vmm::new()
        .args(["-m", "256M", "-smp", &cpus.to_string()])
        .args(drive(&img, "d0", ""))
        .args(["-device", "virtio-blk-pci,drive=d0,addr=3"])
        .args(["-netdev", &tap.netdev("n0"), "-device", "virtio-net-pci,netdev=n0,addr=4"])
        .args(["-device", "virtio-rng-pci,addr=5", "-device", "virtio-serial-pci,addr=6"])
        .args(["-chardev", &format!("file,id=c0,path={}", console.display())])
        .args(["-device", "virtconsole,chardev=c0"])
        .append(&format!(
            "cpus={cpus} mem=256M virtio_devices=4 net_peer=echo net_frames={frames} seed={seed} {extra}"
        ))
        .spawn(&format!("virtio-all-{cpus}"));
    vm.assert_pass(BOOT);
    for slot in 3..=6 {
        let l = device_line(&vm, slot);
        assert_eq!(
            field(&l, "offered").as_deref(),
            Some("legacy+modern"),
            "{l}"
        );
        assert_eq!(
            field(&l, "used").as_deref(),
            Some(if extra.contains("legacy") {
                "legacy"
            } else {
                "modern"
            }),
            "{l}"
        );
    }
    // The guest's write is in the host file, for every queue.
    let queues: u64 = field(
        &vm.wait_prefix("virtio.00:03.0.blk capacity", BOOT),
        "num_queues",
    )
    .unwrap()
    .parse()
    .unwrap();
    assert_eq!(queues, if cpus > 1 { cpus as u64 } else { 1 });
    assert_pattern(&img, seed, 2048, 8 * queues);
    let text = std::fs::read_to_string(&console).expect("console chardev");
    assert!(
        text.contains(&format!(
            "virtio-console hello from the test guest seed={seed}"
        )),
        "{text:?}"
    );
    // The host side saw every frame, in order; a frame whose echo was
    // slow is sent again, right after itself, and the guest counts those.
    let net = vm.wait_prefix("virtio.00:04.0.net sent=", BOOT);
    let resent: usize = field(&net, "resent").unwrap().parse().unwrap();
    let mut seen = tap.seen.lock().unwrap().clone();
    let all = seen.len();
    seen.dedup();
    assert_eq!(seen, (0..frames).collect::<Vec<u32>>());
    assert!(
        all - seen.len() <= resent,
        "{} frames twice, {net}",
        all - seen.len()
    );
}

#[test]
fn every_device_works_polling_one_cpu() {
    all_devices(1, "");
}

#[test]
fn every_device_works_with_msix_two_cpus() {
    all_devices(2, "msix=1");
}

#[test]
fn every_device_works_through_the_legacy_interface() {
    all_devices(2, "virtio_mode=legacy msix=1");
}

/// disable-legacy / disable-modern give the guest exactly the interfaces
/// asked for, with the device IDs the spec gives each.
#[test]
fn legacy_modern_and_transitional_exposure() {
    let mut vm = Vmm::new()
        .args(["-m", "128M"])
        .args(["-device", "virtio-rng-pci,addr=3"])
        .args(["-device", "virtio-rng-pci,addr=4,disable-legacy=on"])
        .args(["-device", "virtio-rng-pci,addr=5,disable-modern=on"])
        // Behind a PCIe root port, auto means modern only (as QEMU).
        .args(["-device", "pcie-root-port,id=rp0,chassis=1,addr=6"])
        .args(["-device", "virtio-rng-pci,bus=rp0"])
        .args(["-device", "pcie-root-port,id=rp1,chassis=2,addr=7"])
        .args(["-device", "virtio-rng-pci,bus=rp1,disable-legacy=off"])
        .append("cpus=1 mem=128M virtio_devices=5")
        .spawn("virtio-modes");
    vm.assert_pass(BOOT);
    let want = [
        (3, "legacy+modern", "0x1005", "modern"),
        (4, "modern", "0x1044", "modern"),
        (5, "legacy", "0x1005", "legacy"),
    ];
    for (slot, offered, id, used) in want {
        let l = device_line(&vm, slot);
        assert_eq!(field(&l, "offered").as_deref(), Some(offered), "{l}");
        assert_eq!(field(&l, "pci_id").as_deref(), Some(id), "{l}");
        assert_eq!(field(&l, "used").as_deref(), Some(used), "{l}");
    }
    let behind = |bus: u8| {
        let prefix = format!("virtio.{bus:02x}:00.0 type=");
        vm.lines()
            .into_iter()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{prefix}\n{}", vm.log()))
    };
    assert_eq!(field(&behind(1), "offered").as_deref(), Some("modern"));
    assert_eq!(field(&behind(1), "pci_id").as_deref(), Some("0x1044"));
    assert_eq!(
        field(&behind(2), "offered").as_deref(),
        Some("legacy+modern")
    );
}

fn blk_queues(machine: &str, cpus: u32) -> (u64, u64) {
    let dir = TempDir::new("virtio-mq");
    let img = disk(&dir, "disk.raw", 16);
    let sock = dir.path("qmp.sock");
    let mut vm = Vmm::new()
        .args(["-M", machine, "-m", "128M", "-smp", &cpus.to_string(), "-S"])
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", sock.display()),
        ])
        .args(drive(&img, "d0", ""))
        .args([
            "-device",
            "virtio-blk-pci,drive=d0,id=blk",
            "-device",
            "virtio-rng-pci,id=rng",
        ])
        .append(&format!("cpus={cpus} mem=128M msix=1 seed=5"))
        .spawn(&format!("virtio-mq-{machine}"));
    // What qom-get says before the guest runs is what the guest then finds.
    let mut q = Qmp::connect(&sock, BOOT);
    let mut qom = |id: &str, prop: &str| {
        q.execute(
            "qom-get",
            json!({"path": format!("/machine/peripheral/{id}"), "property": prop}),
        )
        .as_u64()
        .unwrap_or_else(|| panic!("qom-get {id}.{prop} is not a number"))
    };
    let (qom_queues, qom_vectors, rng_vectors) = (
        qom("blk", "num-queues"),
        qom("blk", "vectors"),
        qom("rng", "vectors"),
    );
    q.execute("cont", json!({}));
    vm.assert_pass(BOOT);
    let cap = vm.wait_prefix("virtio.00:01.0.blk capacity", BOOT);
    let used = vm.wait_prefix("virtio.00:01.0.blk queues_used", BOOT);
    let n: u64 = field(&cap, "num_queues").unwrap().parse().unwrap();
    assert_eq!(qom_queues, n, "qom-get blk.num-queues\n{}", vm.log());
    // The rng has no MSI-X up to 7.1 (QEMU's hw_compat_7_1).
    assert_eq!((qom_vectors, rng_vectors), (n + 1, 0), "qom-get vectors");
    let l = vm.wait_prefix("virtio.00:01.0 msix", BOOT);
    let table = field(&l, "table_size").map(|t| t.parse::<u64>().unwrap());
    assert_eq!(table, Some(n + 1), "{}", vm.log());
    assert!(
        !vm.log().contains("virtio.00:02.0 msix"),
        "the rng has an MSI-X table: {}",
        vm.log()
    );
    assert_eq!(
        field(&cap, "transport_queues"),
        field(&cap, "num_queues"),
        "{cap}"
    );
    assert_eq!(field(&used, "queues_used"), field(&used, "of"), "{used}");
    assert_pattern(&img, 5, 2048, 8 * n);
    (n, field(&used, "queues_used").unwrap().parse().unwrap())
}

/// The seed: virtio-blk has one queue per vCPU from 5.2, one on 5.1
/// (hw_compat_5_1), and the driver uses every queue it is given.
#[test]
fn blk_queue_count_follows_the_machine_type() {
    assert_eq!(blk_queues("pc-q35-5.2", 4), (4, 4));
    assert_eq!(blk_queues("pc-q35-5.1", 4), (1, 1));
}

/// 64 MiB of a seeded pattern written, flushed, read back and compared in
/// the guest, and compared again in the host file.
#[test]
fn blk_64_mib_pattern_round_trips() {
    let dir = TempDir::new("virtio-big");
    let img = disk(&dir, "disk.raw", 96);
    let mut vm = Vmm::new()
        .args(["-m", "256M", "-smp", "2"])
        .args(drive(&img, "d0", ""))
        .args(["-device", "virtio-blk-pci,drive=d0"])
        .append("cpus=2 mem=256M msix=1 seed=11 blk_mb=64 blk_big_sector=8192")
        .spawn("virtio-big");
    vm.assert_pass(BOOT);
    let l = vm.wait_prefix("virtio.00:01.0.blk big_mb", BOOT);
    assert_eq!(field(&l, "bad_words").as_deref(), Some("0"), "{l}");
    assert_pattern(&img, 11, 8192, 64 << 11);
}

#[test]
fn read_only_drive_refuses_writes() {
    let dir = TempDir::new("virtio-ro");
    let img = disk(&dir, "disk.raw", 4);
    let mut vm = Vmm::new()
        .args(["-m", "128M"])
        .args(drive(&img, "d0", ",readonly=on"))
        .args(["-device", "virtio-blk-pci,drive=d0"])
        .append("cpus=1 mem=128M")
        .spawn("virtio-ro");
    vm.assert_pass(BOOT);
    let cap = vm.wait_prefix("virtio.00:01.0.blk capacity", BOOT);
    assert_eq!(field(&cap, "read_only").as_deref(), Some("true"), "{cap}");
    assert!(vm
        .lines()
        .iter()
        .any(|l| l == "check.virtio.blk.read_only_refused=ok"));
    assert!(
        std::fs::read(&img).unwrap().iter().all(|&b| b == 0),
        "the image changed"
    );
}

/// The seed's 2.7/2.8 matrix, driven by a backend without VERSION_1:
/// 2.8 exposes legacy only; 2.7 (x-ignore-backend-features=on from
/// hw_compat_2_7) exposes modern anyway, with one notify page per queue;
/// the property on the command line brings 2.7's behaviour to 2.8.
#[test]
fn backend_without_version_1_gates_modern_per_machine_type() {
    let dir = TempDir::new("virtio-gate");
    let img = disk(&dir, "disk.raw", 4);
    let run = |machine: &str, extra: &[&str]| {
        let mut vm = Vmm::new()
            .args(["-M", machine, "-m", "128M"])
            .args(drive(&img, "d0", ",x-virtio-version-1=off"))
            .args(["-device", "virtio-blk-pci,drive=d0,addr=3"])
            .args(extra)
            .append("cpus=1 mem=128M msix=1")
            .spawn(&format!("virtio-gate-{machine}"));
        vm.assert_pass(BOOT);
        let l = device_line(&vm, 3);
        let bar4 = vm
            .lines()
            .into_iter()
            .find(|l| l.starts_with("pci.00:03.0.bar4="))
            .and_then(|l| field(&l, "size"));
        (
            field(&l, "offered").unwrap(),
            field(&l, "used").unwrap(),
            bar4,
        )
    };
    assert_eq!(
        run("pc-q35-2.8", &[]),
        ("legacy".into(), "legacy".into(), None)
    );
    let (offered, used, bar4) = run("pc-q35-2.7", &[]);
    assert_eq!(
        (offered.as_str(), used.as_str()),
        ("legacy+modern", "modern")
    );
    assert_eq!(bar4.as_deref(), Some("0x800000"), "page-per-vq on 2.7");
    let (offered, _, bar4) = run(
        "pc-q35-2.8",
        &["-global", "virtio-pci.x-ignore-backend-features=on"],
    );
    assert_eq!(offered, "legacy+modern");
    assert_eq!(
        bar4.as_deref(),
        Some("0x4000"),
        "4-byte notify stride from 2.8"
    );
    // With a backend that has VERSION_1 both machine types expose both.
    let out = Vmm::new()
        .args(["-M", "pc-q35-2.8", "-m", "128M"])
        .args(drive(&img, "d0", ",x-virtio-version-1=off"))
        .args(["-device", "virtio-blk-pci,drive=d0,disable-legacy=on"])
        .command()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("disable-legacy=on") && err.contains("VIRTIO_F_VERSION_1"),
        "{err}"
    );
}

fn refused(args: &[&str], want: &[&str]) {
    let out = Vmm::new()
        .args(["-m", "128M"])
        .args(args)
        .command()
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: '{w}' not in: {err}");
    }
}

#[test]
fn bad_backends_are_clear_errors() {
    refused(
        &[
            "-drive",
            "file=/nonexistent/disk.img,if=none,id=d0,format=raw",
            "-device",
            "virtio-blk-pci,drive=d0",
        ],
        &["/nonexistent/disk.img", "cannot open"],
    );
    refused(
        &["-device", "virtio-blk-pci,drive=nope"],
        &["drive 'nope' not found"],
    );
    refused(&["-device", "virtio-blk-pci"], &["drive=ID"]);
    refused(
        &[
            "-netdev",
            "tap,id=n0,ifname=lo,script=no",
            "-device",
            "virtio-net-pci,netdev=n0",
        ],
        &["tap 'lo'"],
    );
    refused(&["-netdev", "user,id=n0"], &["user", "tap"]);
    refused(
        &["-device", "virtconsole,chardev=c0"],
        &["virtio-serial-pci"],
    );
    refused(
        &[
            "-device",
            "virtio-rng-pci,disable-legacy=on,disable-modern=on",
        ],
        &["without an interface"],
    );
    refused(
        &[
            "-device",
            "virtio-blk-pci,drive=d0,num-queues=0",
            "-drive",
            "file=/dev/null,if=none,id=d0",
        ],
        &["num-queues=0"],
    );
}

/// Saves `vm` to `file` through its monitor at `sock` and ends it; the
/// guest must not have printed `unfinished` yet (the save came mid-flight).
fn save_mid_flight(vm: Vm, sock: &Path, file: &Path, unfinished: &str) {
    let mut q = Qmp::connect(sock, BOOT);
    q.execute(
        "migrate",
        json!({"uri": format!("file:{}", file.display())}),
    );
    assert_eq!(q.wait_migration(BOOT)["status"], "completed");
    assert!(
        !vm.lines().iter().any(|l| l.starts_with(unfinished)),
        "the save came too late: the guest had printed {unfinished:?}\n{}",
        vm.log()
    );
    drop(q);
    drop(vm);
    let _ = std::fs::remove_file(sock);
}

/// Save in the middle of a 128 MiB block write, restore in a new process:
/// the guest's read-back finds every request done, and so does the host.
#[test]
fn save_and_restore_in_the_middle_of_block_io() {
    let dir = TempDir::new("virtio-snap");
    let img = disk(&dir, "disk.raw", 160);
    let sock = dir.path("qmp.sock");
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let file = dir.path("snap.bin");
    let guest = "cpus=2 mem=256M msix=1 seed=23 blk_mb=128 blk_big_sector=8192";
    let base = || {
        Vmm::new()
            .args(["-m", "256M", "-smp", "2", "-qmp", &qmp])
            .args(drive(&img, "d0", ""))
            .args(["-device", "virtio-blk-pci,drive=d0"])
            .append(guest)
    };
    let vm = base().spawn("virtio-snap-src");
    vm.wait_prefix("virtio.00:01.0.blk queues_used", BOOT);
    // Saved as soon as the big write (100-800 ms here) has reached the
    // disk: its first sector holds the pattern.
    let first = {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&img).unwrap();
        move || {
            let mut w = [0u8; 8];
            f.read_exact_at(&mut w, 8192 * 512).unwrap();
            u64::from_le_bytes(w) == blk_pattern(23, 8192, 0)
        }
    };
    let deadline = std::time::Instant::now() + BOOT;
    while !first() {
        assert!(
            std::time::Instant::now() < deadline,
            "the big write never began"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    save_mid_flight(vm, &sock, &file, "virtio.00:01.0.blk big_mb");
    let mut dst = base()
        .args(["-incoming", &format!("file:{}", file.display())])
        .spawn("virtio-snap-dst");
    dst.assert_pass(BOOT);
    let l = dst.wait_prefix("virtio.00:01.0.blk big_mb", BOOT);
    assert_eq!(field(&l, "errors").as_deref(), Some("0"), "{l}");
    assert_eq!(field(&l, "bad_words").as_deref(), Some("0"), "{l}");
    assert_eq!(dst.boots(), 0, "the guest rebooted\n{}", dst.log());
    assert_pattern(&img, 23, 8192, 128 << 11);
}

/// Save while frames go back and forth between the guest and the host's
/// peer on a tap, restore in a new process on the same tap: the guest
/// gets every frame echoed (resending what the switch lost), and the
/// host saw every sequence number.
#[test]
fn save_and_restore_in_the_middle_of_network_traffic() {
    let dir = TempDir::new("virtio-net-snap");
    let tap = TapEcho::start();
    let sock = dir.path("qmp.sock");
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let file = dir.path("snap.bin");
    let frames = 4000u32;
    let guest =
        format!("cpus=1 mem=128M msix=1 seed=9 net_peer=echo net_frames={frames} net_retry_ms=200");
    let base = || {
        Vmm::new()
            .args(["-m", "128M", "-qmp", &qmp])
            .args([
                "-netdev",
                &tap.netdev("n0"),
                "-device",
                "virtio-net-pci,netdev=n0",
            ])
            .append(&guest)
    };
    let vm = base().spawn("virtio-net-src");
    vm.wait_prefix("virtio.00:01.0.net mac=", BOOT);
    // Saved once traffic flows (all 4000 frames take about a second).
    let deadline = std::time::Instant::now() + BOOT;
    while tap.seen.lock().unwrap().len() < 100 {
        assert!(std::time::Instant::now() < deadline, "no traffic");
        std::thread::sleep(Duration::from_millis(1));
    }
    save_mid_flight(vm, &sock, &file, "virtio.00:01.0.net sent=");
    let before = tap.seen.lock().unwrap().len();
    assert!(before > 0, "no frame before the save");
    let mut dst = base()
        .args(["-incoming", &format!("file:{}", file.display())])
        .spawn("virtio-net-dst");
    dst.assert_pass(BOOT);
    let l = dst.wait_prefix("virtio.00:01.0.net sent=", BOOT);
    assert_eq!(field(&l, "echoed"), Some(frames.to_string()), "{l}");
    let mut seen = tap.seen.lock().unwrap().clone();
    assert!(seen.len() > before, "no frame after the restore");
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        (0..frames).collect::<Vec<u32>>(),
        "the host missed frames"
    );
}
