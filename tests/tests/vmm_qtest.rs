//! `-accel qtest`: the q35 board without vCPUs, driven over QEMU's qtest
//! protocol by a real client on a real socket; its ports, memory, PCI
//! configuration and virtio registers as a guest sees them, its
//! lifecycle, and its migration between two processes over TCP.

use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use vmm_tests::console::Vm;
use vmm_tests::qmp::Qmp;
use vmm_tests::qtest::Qtest;
use vmm_tests::vmm::Vmm;
use vmm_tests::{free_port, TempDir};

const T: Duration = Duration::from_secs(60);
const ECAM: u64 = 0xb000_0000;

fn qmp_arg(dir: &TempDir, name: &str) -> (String, std::path::PathBuf) {
    let sock = dir.path(&format!("{name}.qmp"));
    (format!("unix:{},server=on,wait=off", sock.display()), sock)
}

/// A qtest VM named `name` with `args`, its monitor and its client.
fn start(dir: &TempDir, name: &str, args: &[&str]) -> (Vm, Qmp, Qtest) {
    let (qmp, sock) = qmp_arg(dir, name);
    let mut all = vec!["-m", "128M", "-qmp", &qmp];
    all.extend_from_slice(args);
    let (vm, qt) = Qtest::spawn(name, &dir.path(&format!("{name}.qtest")), &all);
    let q = Qmp::connect(&sock, T);
    (vm, q, qt)
}

#[test]
fn the_protocol_drives_the_q35_board() {
    let dir = TempDir::new("qtest-proto");
    let (mut vm, mut q, mut qt) = start(&dir, "proto", &["-M", "pc-q35-8.0"]);
    assert_eq!(q.execute("query-status", json!({}))["status"], "running");
    assert_eq!(qt.ok("endianness"), "little");

    // Memory, each way QEMU's clients use.
    qt.writel(0x10_0000, 0xdead_beef);
    assert_eq!(qt.readl(0x10_0000), 0xdead_beef);
    assert_eq!(qt.ok("readq 0x100000"), "0x00000000deadbeef");
    assert_eq!(qt.read(0x10_0000, 4), [0xef, 0xbe, 0xad, 0xde]);
    assert_eq!(qt.ok("b64read 0x100000 4"), "776t3g==");
    qt.ok("b64write 0x100010 3 AQID");
    assert_eq!(qt.read(0x10_0010, 4), [1, 2, 3, 0]);
    qt.ok("memset 0x100020 5 0x5a");
    assert_eq!(qt.read(0x10_001f, 7), [0, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0]);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    qt.write(0x20_0ffe, &pattern);
    assert_eq!(qt.read(0x20_0ffe, pattern.len()), pattern);

    // The host bridge through the legacy ports and through ECAM.
    let id = qt.pci_read32(0, 0, 0, 0);
    assert_eq!(id, 0x29c0_8086);
    assert_eq!(qt.readl(ECAM), id);
    assert_eq!(qt.inl(0xcfc), id);
    // An unassigned port reads as all ones, unassigned memory as zero.
    assert_eq!(qt.ok("inb 0x5ff"), "0x00ff");
    assert_eq!(qt.readl(0xfe00_0000_0000), 0);

    // The virtual clock moves only when told.
    let now: u64 = qt.ok("clock_step 1000").parse().unwrap();
    assert_eq!(
        qt.ok(&format!("clock_set {}", now + 5)),
        (now + 5).to_string()
    );
    assert!(qt.cmd("clock_set 0").starts_with("FAIL"));

    // Bad requests get a reason, and the VM goes on.
    assert_eq!(qt.cmd("frobnicate 1"), "FAIL Unknown command 'frobnicate'");
    assert_eq!(
        qt.cmd("outb 0x10000 1"),
        "FAIL outb: port 0x10000 is beyond 0xffff"
    );
    assert_eq!(qt.cmd("readl"), "FAIL readl: missing address");
    assert_eq!(qt.cmd("write 0 1 0x"), "ERR invalid argument size");
    assert!(qt
        .cmd("read 0 0x100000000")
        .starts_with("FAIL read: 4294967296 bytes"));
    assert!(qt.cmd("rtas get-time-of-day 0 0 0 0").contains("no RTAS"));
    assert_eq!(qt.readl(0x10_0000), 0xdead_beef);

    // stop holds the client's requests as it holds vCPUs; cont serves them.
    q.execute("stop", json!({}));
    let mut held = qt.try_clone();
    let h = std::thread::spawn(move || held.readl(0x10_0000));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !h.is_finished(),
        "a request was served while the VM was paused"
    );
    q.execute("cont", json!({}));
    assert_eq!(h.join().unwrap(), 0xdead_beef);

    // The guest's own way out: S5 through the ACPI PM control register.
    qt.ok("outw 0x604 0x3400");
    assert!(vm.wait_exit(T).success(), "{}", vm.log());
}

/// Through qtest, a board's PCI functions are what the test guest finds
/// on the same command line under KVM: identity, class, header,
/// capabilities, BAR placement and size.
#[test]
fn qtest_sees_the_pci_functions_the_guest_sees() {
    let dir = TempDir::new("qtest-pci");
    let img = dir.image("d.raw", 1 << 20);
    let drive = format!("file={},if=none,id=d0,format=raw", img.display());
    let devices = [
        "-M",
        "pc-q35-7.2",
        "-device",
        "pcie-root-port,id=rp0,chassis=1",
        "-drive",
        &drive,
        "-device",
        "virtio-blk-pci,drive=d0",
        "-device",
        "virtio-rng-pci",
    ];
    let guest = Vmm::new()
        .args(["-m", "128M"])
        .args(devices)
        .append("cpus=1 work=counter mem_mb=8")
        .spawn("guest");
    guest.wait_prefix("pci.ecam_functions=", T);
    let seen: Vec<String> = guest
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("pci.") && (l.contains(" vendor=") || l.contains(".bar")))
        .collect();
    drop(guest);
    assert!(seen.len() >= 6, "too few PCI lines: {seen:?}");

    let (_vm, _q, mut qt) = start(&dir, "board", &devices);
    let mut got = vec![];
    for l in &seen {
        let bdf = &l[4..11];
        let (bus, dev, func) = (
            u8::from_str_radix(&bdf[..2], 16).unwrap(),
            u8::from_str_radix(&bdf[3..5], 16).unwrap(),
            bdf[6..7].parse::<u8>().unwrap(),
        );
        let mut r = |off: u8| qt.pci_read32(bus, dev, func, off);
        if l.contains(" vendor=") {
            let id = r(0);
            let class = r(8) >> 8;
            let hdr = (r(0x0c) >> 16) & 0xff;
            let mut caps = vec![];
            let mut p = (r(0x34) & 0xfc) as u8;
            while p != 0 && caps.len() < 48 {
                let c = r(p);
                caps.push(format!("{:02x}", c & 0xff));
                p = ((c >> 8) & 0xfc) as u8;
            }
            // What the guest printed up to its extended capabilities.
            let guest_part = l.split(" ext_caps=").next().unwrap();
            got.push((
                guest_part.to_string(),
                format!(
                    "pci.{bdf} vendor={:#06x} device={:#06x} class={class:#08x} hdr={hdr:#04x} caps={}",
                    id & 0xffff,
                    id >> 16,
                    caps.join(",")
                ),
            ));
        } else {
            // pci.BB:DD.F.barN=ADDR size=SIZE type=...
            let n: u8 = l[15..16].parse().unwrap();
            let off = 0x10 + 4 * n;
            let lo = r(off);
            let io = lo & 1 == 1;
            let mem64 = !io && (lo >> 1) & 3 == 2;
            let hi = if mem64 { r(off + 4) } else { 0 };
            let addr = u64::from(hi) << 32 | u64::from(lo & if io { !3 } else { !0xf });
            let mut size_of = |reg: u8, mask: u32| {
                let old = qt.pci_read32(bus, dev, func, reg);
                qt.pci_write32(bus, dev, func, reg, 0xffff_ffff);
                let v = qt.pci_read32(bus, dev, func, reg);
                qt.pci_write32(bus, dev, func, reg, old);
                v & mask
            };
            let low_mask = size_of(off, if io { !3 } else { !0xf });
            let size = if mem64 {
                let high = size_of(off + 4, !0);
                (!(u64::from(high) << 32 | u64::from(low_mask))).wrapping_add(1)
            } else {
                u64::from((!low_mask).wrapping_add(1) & if io { 0xffff } else { !0 })
            };
            let guest_part = l.split(" type=").next().unwrap();
            got.push((
                guest_part.to_string(),
                format!("pci.{bdf}.bar{n}={addr:#x} size={size:#x}"),
            ));
        }
    }
    let differ: BTreeMap<_, _> = got.iter().filter(|(g, q)| g != q).cloned().collect();
    assert!(differ.is_empty(), "guest vs qtest: {differ:#?}");
}

/// Where a virtio-pci function's common configuration is: the BAR's
/// address plus the capability's offset.
fn common_cfg(qt: &mut Qtest, dev: u8) -> u64 {
    let mut p = (qt.pci_read32(0, dev, 0, 0x34) & 0xfc) as u8;
    while p != 0 {
        let c = qt.pci_read32(0, dev, 0, p);
        if c & 0xff == 0x09 && (c >> 24) & 0xff == 1 {
            let bar = (qt.pci_read32(0, dev, 0, p + 4) & 0xff) as u8;
            let off = qt.pci_read32(0, dev, 0, p + 8);
            let lo = qt.pci_read32(0, dev, 0, 0x10 + 4 * bar);
            let hi = qt.pci_read32(0, dev, 0, 0x14 + 4 * bar);
            return (u64::from(hi) << 32 | u64::from(lo & !0xf)) + u64::from(off);
        }
        p = ((c >> 8) & 0xfc) as u8;
    }
    panic!("00:{dev:02x}.0 has no virtio common configuration capability");
}

/// A qtest VM migrates like any other: the client programs a virtio-blk
/// function (memory decoding on, features and status negotiated through
/// its registers) and fills memory, keeps writing while the migration
/// runs, and the destination — another process, over TCP — has the same
/// configuration space, registers and every byte the source acknowledged.
#[test]
fn a_qtest_vm_migrates_with_its_memory_and_device_state() {
    let dir = TempDir::new("qtest-mig");
    let img = dir.image("d.raw", 1 << 20);
    let drive = format!("file={},if=none,id=d0,format=raw", img.display());
    let args = [
        "-M",
        "pc-q35-8.0",
        "-drive",
        &drive,
        "-device",
        "virtio-blk-pci,drive=d0,addr=0x3",
    ];
    let (mut src, mut q, mut qt) = start(&dir, "src", &args);
    // Memory and bus mastering on, then a driver's first steps.
    let cmd = qt.pci_read32(0, 3, 0, 4);
    qt.pci_write32(0, 3, 0, 4, cmd | 0x6);
    let cc = common_cfg(&mut qt, 3);
    qt.writeb(cc + 0x14, 0x1 | 0x2); // ACKNOWLEDGE | DRIVER
    qt.writel(cc + 0x08, 1); // driver_feature_select: bits 32..63
    qt.writel(cc + 0x0c, 1); // VIRTIO_F_VERSION_1
    qt.writeb(cc + 0x14, 0x1 | 0x2 | 0x8); // FEATURES_OK
    assert_eq!(qt.readb(cc + 0x14), 0xb, "the device refused the features");
    qt.writew(cc + 0x16, 0); // queue_select
    let qsize = qt.readw(cc + 0x18);
    let config_before = qt.read(ECAM + (3 << 15), 256);
    // 24 MiB of pattern, sent at 64 MiB/s: the migration takes a while.
    let chunk: Vec<u8> = (0..65536u32).map(|i| (i ^ (i >> 8)) as u8).collect();
    for i in 0..384u64 {
        qt.write(0x100_0000 + i * 65536, &chunk);
    }
    q.execute(
        "migrate-set-parameters",
        json!({"max-bandwidth": 64u64 << 20}),
    );

    let port = free_port();
    let (qmp, dsock) = qmp_arg(&dir, "dst");
    let incoming = format!("tcp:127.0.0.1:{port}");
    let mut dargs = vec!["-m", "128M", "-qmp", &qmp, "-incoming", &incoming];
    dargs.extend_from_slice(&args);
    let (mut dst, mut dqt) = Qtest::spawn("dst", &dir.path("dst.qtest"), &dargs);
    let mut dq = Qmp::connect(&dsock, T);
    q.execute("migrate", json!({"uri": incoming}));

    // Writes while the pages move: each acknowledged one must arrive.
    let mut acked: BTreeMap<u64, u32> = BTreeMap::new();
    let mut refused = false;
    for n in 0..100_000u32 {
        let addr = 0x100_0000 + u64::from(n % 97) * 0x4_1000 + u64::from(n % 13) * 4;
        let r = qt.cmd(&format!("writel {addr:#x} {:#x}", n | 0x8000_0000));
        if r == "OK" {
            acked.insert(addr, n | 0x8000_0000);
        } else {
            assert!(r.contains("migration's destination"), "{r}");
            refused = true;
            break;
        }
    }
    assert!(refused, "the migration never completed while writing");
    let m = q.wait_migration(T);
    assert_eq!(m["status"], "completed", "{m}");
    assert!(
        acked.len() > 50,
        "too few writes during the migration: {}",
        acked.len()
    );

    // The destination runs the guest: its client's requests are served.
    assert_eq!(dq.execute("query-status", json!({}))["status"], "running");
    assert_eq!(
        dqt.read(ECAM + (3 << 15), 256),
        config_before,
        "config space"
    );
    let dcc = common_cfg(&mut dqt, 3);
    assert_eq!(dcc, cc);
    assert_eq!(dqt.readb(dcc + 0x14), 0xb, "device_status");
    dqt.writel(dcc + 0x08, 1);
    assert_eq!(dqt.readl(dcc + 0x0c), 1, "driver features 32..63");
    dqt.writew(dcc + 0x16, 0);
    assert_eq!(dqt.readw(dcc + 0x18), qsize, "queue 0's size");
    for (addr, v) in &acked {
        assert_eq!(dqt.readl(*addr), *v, "the write at {addr:#x}");
    }
    for i in (0..384u64).step_by(37) {
        let at = 0x100_0000 + i * 65536 + 0x8000;
        let want: Vec<u8> = chunk[0x8000..0x8100].to_vec();
        let got = dqt.read(at, 256);
        // Unless a write during the migration landed in it.
        if acked.keys().all(|a| *a < at || *a >= at + 256) {
            assert_eq!(got, want, "pattern at {at:#x}");
        }
    }
    // The source's client is told the guest is gone, not left hanging.
    assert!(qt
        .cmd("readl 0x1000000")
        .contains("migration's destination"));
    assert_eq!(
        q.execute("query-status", json!({}))["status"],
        "postmigrate"
    );
    assert!(src.try_exit().is_none() && dst.try_exit().is_none());
}
