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

/// A qtest VM as [`start`] makes it, waiting for a migration on TCP; and
/// the URI to migrate it to.
fn incoming(dir: &TempDir, name: &str, args: &[&str]) -> (Vm, Qmp, Qtest, String) {
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let mut all = vec!["-incoming", uri.as_str()];
    all.extend_from_slice(args);
    let (vm, q, qt) = start(dir, name, &all);
    (vm, q, qt, uri)
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

    // A paused VM serves its client as QEMU's does.
    q.execute("stop", json!({}));
    assert_eq!(qt.readl(0x10_0000), 0xdead_beef);
    q.execute("cont", json!({}));

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

/// Where a virtio-pci function's common configuration is on its bus:
/// its BAR's PCI address plus the capability's offset, found by walking
/// the capabilities with `read` (a dword of configuration space).
fn common_cfg_pci(mut read: impl FnMut(u8) -> u32) -> u64 {
    let mut p = (read(0x34) & 0xfc) as u8;
    while p != 0 {
        let c = read(p);
        if c & 0xff == 0x09 && (c >> 24) & 0xff == 1 {
            let bar = (read(p + 4) & 0xff) as u8;
            let off = read(p + 8);
            let lo = read(0x10 + 4 * bar);
            let hi = read(0x14 + 4 * bar);
            return (u64::from(hi) << 32 | u64::from(lo & !0xf)) + u64::from(off);
        }
        p = ((c >> 8) & 0xfc) as u8;
    }
    panic!("no virtio common configuration capability");
}

/// q35: bus addresses are CPU addresses.
fn common_cfg(qt: &mut Qtest, dev: u8) -> u64 {
    common_cfg_pci(|off| qt.pci_read32(0, dev, 0, off))
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
    // Read as registers (4 bytes at a time), not all ones.
    assert_eq!(config_before[..4], qt.pci_read32(0, 3, 0, 0).to_le_bytes());
    assert_eq!(
        config_before[4..6],
        [0x06, 0x00],
        "memory and bus master on"
    );
    // 24 MiB of pattern, sent at 16 MiB/s: the migration takes over a
    // second, room for many requests however slow each is.
    let chunk: Vec<u8> = (0..65536u32).map(|i| (i ^ (i >> 8)) as u8).collect();
    for i in 0..384u64 {
        qt.write(0x100_0000 + i * 65536, &chunk);
    }
    q.execute(
        "migrate-set-parameters",
        json!({"max-bandwidth": 16u64 << 20}),
    );

    let (mut dst, mut dq, mut dqt, to) = incoming(&dir, "dst", &args);
    // libqtest's first request is answered while the VM waits for its
    // stream; one that reads the guest waits until the guest is here.
    assert_eq!(dqt.ok("endianness"), "little");
    let mut early = dqt.try_clone();
    let first = std::thread::spawn(move || early.read(0x100_0000, 4));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !first.is_finished(),
        "a read was served before the guest arrived"
    );
    q.execute("migrate", json!({"uri": to}));

    // Writes while the pages move: each acknowledged one must arrive.
    let mut acked: BTreeMap<u64, u32> = BTreeMap::new();
    // The loop ends at the first write refused after the handover.
    let deadline = std::time::Instant::now() + T;
    for n in 0.. {
        assert!(
            std::time::Instant::now() < deadline,
            "the migration never completed"
        );
        let addr = 0x100_0000 + u64::from(n % 97) * 0x4_1000 + u64::from(n % 13) * 4;
        let r = qt.cmd(&format!("writel {addr:#x} {:#x}", n | 0x8000_0000));
        if r == "OK" {
            acked.insert(addr, n | 0x8000_0000);
        } else {
            assert!(r.contains("migration's destination"), "{r}");
            break;
        }
    }
    let m = q.wait_migration(T);
    assert_eq!(m["status"], "completed", "{m}");
    assert!(
        acked.len() > 50,
        "too few writes during the migration: {}",
        acked.len()
    );

    // The destination runs the guest: its client's requests are served,
    // the one that waited first (it reads what the source had there).
    assert_eq!(dq.execute("query-status", json!({}))["status"], "running");
    let got = first.join().unwrap();
    let want = acked
        .get(&0x100_0000)
        .map_or(chunk[..4].to_vec(), |v| v.to_le_bytes().to_vec());
    assert_eq!(got, want);
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

/// Where the qtest client keeps an RTAS call's argument and result cells.
const RTAS_ARGS: u64 = 0x10_0000;
const RTAS_RETS: u64 = 0x10_1000;
/// PHB 0's BUID.
const BUID: u64 = 0x0800_0000_2000_0000;

/// An RTAS call through qtest's `rtas`: its results, status first.
fn rtas(qt: &mut Qtest, name: &str, args: &[u32], nret: usize) -> Vec<u32> {
    for (i, a) in args.iter().enumerate() {
        qt.writel(RTAS_ARGS + 4 * i as u64, *a);
    }
    let r = qt.cmd(&format!(
        "rtas {name} {} {RTAS_ARGS:#x} {nret} {RTAS_RETS:#x}",
        args.len()
    ));
    assert_eq!(r, "OK 0", "rtas {name}");
    (0..nret)
        .map(|i| qt.readl(RTAS_RETS + 4 * i as u64))
        .collect()
}

/// `ibm,read-pci-config` of bus 0: (status, value).
fn cfg_read(qt: &mut Qtest, devfn: u8, reg: u32, size: u32) -> (i32, u32) {
    let addr = u32::from(devfn) << 8 | reg;
    let r = rtas(
        qt,
        "ibm,read-pci-config",
        &[addr, (BUID >> 32) as u32, BUID as u32, size],
        2,
    );
    (r[0] as i32, r[1])
}

fn cfg_write(qt: &mut Qtest, devfn: u8, reg: u32, size: u32, v: u32) -> i32 {
    let addr = u32::from(devfn) << 8 | reg;
    rtas(
        qt,
        "ibm,write-pci-config",
        &[addr, (BUID >> 32) as u32, BUID as u32, size, v],
        1,
    )[0] as i32
}

/// The CPU address of virtio-pci function `devfn`'s common configuration
/// behind PHB 0 whose 32-bit window starts at `mem32` (bus address 2 GiB).
fn spapr_common_cfg(qt: &mut Qtest, devfn: u8, mem32: u64) -> u64 {
    let pci = common_cfg_pci(|off| cfg_read(qt, devfn, u32::from(off), 4).1);
    assert!((0x8000_0000..0x1_0000_0000).contains(&pci), "{pci:#x}");
    mem32 + (pci - 0x8000_0000)
}

/// A pseries board under qtest: big-endian as QEMU's ppc64 target, its
/// functions behind PHB 0 reached through RTAS configuration calls (with
/// QEMU's checks: BUID, size, alignment, a function there), its BARs
/// through the PHB's 32-bit window, a little-endian device register
/// seen byte-swapped by a big-endian access, as on the real bus.
#[test]
fn pseries_functions_are_reached_through_rtas_and_the_phb_windows() {
    let dir = TempDir::new("qtest-spapr");
    let img = dir.image("d.raw", 1 << 20);
    let drive = format!("file={},if=none,id=d0,format=raw", img.display());
    let (_vm, mut q, mut qt) = start(
        &dir,
        "spapr",
        &[
            "-M",
            "pseries-10.0",
            "-drive",
            &drive,
            "-device",
            "virtio-blk-pci,drive=d0",
        ],
    );
    assert_eq!(q.execute("query-status", json!({}))["status"], "running");
    assert_eq!(qt.ok("endianness"), "big");
    qt.writel(0x2000, 0x1122_3344);
    assert_eq!(qt.read(0x2000, 4), [0x11, 0x22, 0x33, 0x44]);

    // The first function sits at 00:00.0 (the PHB is not one).
    assert_eq!(cfg_read(&mut qt, 0, 0, 4), (0, 0x1001_1af4));
    assert_eq!(cfg_read(&mut qt, 0, 2, 2), (0, 0x1001));
    assert_eq!(cfg_read(&mut qt, 8, 0, 4).0, -1, "no function at 00:01.0");
    assert_eq!(cfg_read(&mut qt, 0, 2, 4).0, -1, "misaligned");
    assert_eq!(cfg_read(&mut qt, 0, 0, 3).0, -1, "size 3");
    assert_eq!(cfg_read(&mut qt, 0, 0x100, 4).0, -1, "beyond 256 bytes");
    let other = rtas(&mut qt, "ibm,read-pci-config", &[0, 0, 1, 4], 2);
    assert_eq!(other[0] as i32, -1, "another BUID");
    // An unknown call: QEMU's H_PARAMETER, unsigned.
    assert_eq!(
        qt.cmd("rtas ibm,nope 0 0x100000 1 0x101000"),
        "OK 18446744073709551612"
    );

    // Memory decoding on; a driver's first steps through the window.
    assert_eq!(cfg_write(&mut qt, 0, 4, 2, 0x6), 0);
    assert_eq!(cfg_read(&mut qt, 0, 4, 2), (0, 0x6));
    let cc = spapr_common_cfg(&mut qt, 0, 0x2000_8000_0000);
    qt.writeb(cc + 0x14, 0x3);
    assert_eq!(qt.readb(cc + 0x14), 0x3);
    // device_feature_select = 1 (a big-endian store of bswap(1)), then
    // device_feature's high word has VIRTIO_F_VERSION_1.
    qt.writel(cc, 1u32.swap_bytes());
    assert_eq!(qt.readl(cc + 4).swap_bytes() & 1, 1);
}

/// `vmmctl analyze-migration`'s lines for section `name`'s fields.
fn section_fields(file: &std::path::Path, name: &str) -> Vec<String> {
    let out = std::process::Command::new(vmm_tests::vmm::binary().with_file_name("vmmctl"))
        .arg("analyze-migration")
        .arg(file)
        .output()
        .expect("run vmmctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut inside = false;
    let mut v = vec![];
    for l in text.lines() {
        if !l.starts_with(' ') {
            inside = l.contains(name);
        } else if inside {
            v.push(l.trim().to_string());
        }
    }
    assert!(!v.is_empty(), "no section {name} in:\n{text}");
    v
}

/// The seed across processes (spapr-phb-2.7-2.8-migration): a pseries-2.7
/// bridge sends 2.7's layout — the mig_* fields holding 2.7's single
/// window (the 32-bit and 64-bit windows merged again), its I/O window
/// and LIOBN — and pseries-2.8 sends none of it, unless the guest was
/// started with `pre-2.8-migration=on` (to go back to a release that
/// expects 2.7's layout: then 2.8's own windows, not merged); each
/// migrates over TCP to another process with the functions'
/// configuration and registers intact; a destination expecting the other
/// layout refuses the stream by name and the source runs on.
#[test]
fn the_spapr_phb_seed_across_processes() {
    const ON: &str = "spapr-pci-host-bridge.pre-2.8-migration=on";
    const OFF: &str = "spapr-pci-host-bridge.pre-2.8-migration=off";
    let seven = [
        ("mig_liobn", "0x80000000"),
        ("mig_mem_win_addr", "0x100a0000000"),
        ("mig_mem_win_size", "0xf80000000"),
        ("mig_io_win_addr", "0x10080000000"),
        ("mig_io_win_size", "0x10000"),
    ];
    let eight = [
        ("mig_liobn", "0x80000000"),
        ("mig_mem_win_addr", "0x200080000000"),
        ("mig_mem_win_size", "0x80000000"),
        ("mig_io_win_addr", "0x200000000000"),
        ("mig_io_win_size", "0x10000"),
    ];
    // (machine type, its -global, the scratch fields it sends, the
    // -global of a destination expecting the other layout)
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        Option<&'a [(&'a str, &'a str)]>,
        &'a str,
    );
    let cases: [Case; 3] = [
        ("pseries-2.7", None, Some(&seven), OFF),
        ("pseries-2.8", None, None, ON),
        ("pseries-2.8", Some(ON), Some(&eight), OFF),
    ];
    for (machine, global, scratch, flip) in cases {
        let dir = TempDir::new("qtest-seed");
        let img = dir.image("d.raw", 1 << 20);
        let drive = format!("file={},if=none,id=d0,format=raw", img.display());
        let base = [
            "-M",
            machine,
            "-drive",
            &drive,
            "-device",
            "virtio-blk-pci,drive=d0",
        ];
        let mut args = base.to_vec();
        if let Some(g) = global {
            args.extend_from_slice(&["-global", g]);
        }
        let case = format!("{machine} {}", global.unwrap_or(""));
        let (_src, mut q, mut qt) = start(&dir, "src", &args);
        let mem32 = if machine == "pseries-2.7" {
            0x100_a000_0000
        } else {
            0x2000_8000_0000
        };
        assert_eq!(cfg_write(&mut qt, 0, 4, 2, 0x7), 0);
        let cc = spapr_common_cfg(&mut qt, 0, mem32);
        qt.writeb(cc + 0x14, 0x3);
        let config: Vec<(i32, u32)> = (0..64).map(|i| cfg_read(&mut qt, 0, 4 * i, 4)).collect();

        // What the stream says of the bridge.
        let file = dir.path("saved.vmm");
        q.execute(
            "migrate",
            json!({"uri": format!("file:{}", file.display())}),
        );
        assert_eq!(q.wait_migration(T)["status"], "completed");
        let phb = section_fields(&file, "spapr_pci");
        let has = |f: &str| phb.iter().any(|l| l.starts_with(f));
        assert_eq!(
            has("mig_mem_win_size"),
            scratch.is_some(),
            "{case}: {phb:#?}"
        );
        for (f, v) in scratch.unwrap_or_default() {
            assert!(
                phb.iter().any(|l| l.starts_with(f) && l.contains(v)),
                "{case}: {f} is not {v}: {phb:#?}"
            );
        }
        q.execute("cont", json!({}));

        // A destination whose bridge expects the other layout refuses.
        let mut wargs = base.to_vec();
        wargs.extend_from_slice(&["-global", flip]);
        let (mut wrong, _wq, _wqt, to) = incoming(&dir, "wrong", &wargs);
        q.execute("migrate", json!({"uri": to}));
        let m = q.wait_migration(T);
        assert_eq!(m["status"], "failed", "{case}: {m}");
        assert!(!wrong.wait_exit(T).success());
        // The other layout misreads (a count, the section's end): the
        // load stops there, naming the bridge's section.
        assert!(
            wrong.logged("incoming migration failed", T) && wrong.logged("'spapr_pci'", T),
            "{}",
            wrong.log()
        );
        assert_eq!(q.execute("query-status", json!({}))["status"], "running");
        assert_eq!(qt.readb(cc + 0x14), 0x3, "the source runs on");

        // The same machine type and layout takes it.
        let (_dst, mut dq, mut dqt, to) = incoming(&dir, "dst", &args);
        q.execute("migrate", json!({"uri": to}));
        let m = q.wait_migration(T);
        assert_eq!(m["status"], "completed", "{case}: {m}");
        assert_eq!(dq.execute("query-status", json!({}))["status"], "running");
        let after: Vec<(i32, u32)> = (0..64).map(|i| cfg_read(&mut dqt, 0, 4 * i, 4)).collect();
        assert_eq!(after, config, "{case}: configuration space");
        assert_eq!(dqt.readb(cc + 0x14), 0x3, "{case}: device_status");
    }
}

/// The RTAS calls a pseries guest needs beside PCI: its clock (read, set,
/// and carried by a migration), its console, reboot and power-off; calls
/// with the wrong number of arguments get RTAS's parameter error.
#[test]
fn pseries_rtas_clock_console_reboot_and_power_off() {
    let dir = TempDir::new("qtest-rtas");
    let (mut vm, mut q, mut qt) = start(&dir, "src", &["-M", "pseries-10.0"]);
    let now = rtas(&mut qt, "get-time-of-day", &[], 8);
    assert_eq!(now[0], 0);
    assert!(
        (2026..2100).contains(&now[1]) && (1..=12).contains(&now[2]),
        "{now:?}"
    );
    assert_eq!(rtas(&mut qt, "get-time-of-day", &[0], 8)[0] as i32, -3);
    assert_eq!(rtas(&mut qt, "get-time-of-day", &[], 7)[0] as i32, -3);

    // The guest sets its clock; it runs on from there, and moves with it.
    let then = [2001, 2, 3, 4, 5, 6, 0];
    assert_eq!(rtas(&mut qt, "set-time-of-day", &then, 1), [0]);
    assert_eq!(
        rtas(&mut qt, "set-time-of-day", &[2001, 13, 1, 0, 0, 0, 0], 1)[0] as i32,
        -3
    );
    let t = rtas(&mut qt, "get-time-of-day", &[], 8);
    assert_eq!(t[1..6], [2001, 2, 3, 4, 5], "{t:?}");

    // The PHB's first LSI: masked at reset; routed, masked and unmasked.
    assert_eq!(rtas(&mut qt, "ibm,get-xive", &[0x1200], 3), [0, 0, 0xff]);
    assert_eq!(rtas(&mut qt, "ibm,set-xive", &[0x1200, 0, 5], 1), [0]);
    assert_eq!(rtas(&mut qt, "ibm,int-off", &[0x1200], 1), [0]);
    assert_eq!(rtas(&mut qt, "ibm,get-xive", &[0x1200], 3), [0, 0, 0xff]);
    assert_eq!(rtas(&mut qt, "ibm,int-on", &[0x1200], 1), [0]);
    assert_eq!(
        rtas(&mut qt, "ibm,set-xive", &[0x2000, 0, 5], 1)[0] as i32,
        -3
    );
    assert_eq!(
        rtas(&mut qt, "ibm,set-xive", &[0x1200, 1, 5], 1)[0] as i32,
        -3,
        "one server"
    );
    assert_eq!(rtas(&mut qt, "ibm,set-xive", &[0x1201, 0, 7], 1), [0]);
    let (mut dst, mut dq, mut dqt, to) = incoming(&dir, "dst", &["-M", "pseries-10.0"]);
    q.execute("migrate", json!({"uri": to}));
    assert_eq!(q.wait_migration(T)["status"], "completed");
    let t = rtas(&mut dqt, "get-time-of-day", &[], 8);
    assert_eq!(
        t[1..6],
        [2001, 2, 3, 4, 5],
        "the destination's clock: {t:?}"
    );
    // The interrupt routing came along.
    assert_eq!(rtas(&mut dqt, "ibm,get-xive", &[0x1200], 3), [0, 0, 5]);
    assert_eq!(rtas(&mut dqt, "ibm,get-xive", &[0x1201], 3), [0, 0, 7]);

    // The console: -serial, here the process's stdout.
    for c in b"rtas-console\n" {
        assert_eq!(
            rtas(&mut dqt, "display-character", &[u32::from(*c)], 1),
            [0]
        );
    }
    dst.wait_prefix("rtas-console", T);

    // A reboot builds the board anew (the client stays); power-off ends.
    let clock: u64 = dqt.ok("clock_step 1000").parse().unwrap();
    assert_eq!(rtas(&mut dqt, "system-reboot", &[], 1), [0]);
    dq.wait_event("RESET", T);
    // The virtual clock goes on across the reset, as QEMU's.
    assert_eq!(dqt.ok("clock_step 1"), (clock + 1).to_string());
    assert_eq!(dqt.cmd("clock_step -5"), "FAIL could not advance time");
    assert_eq!(rtas(&mut dqt, "power-off", &[0], 1)[0] as i32, -3);
    // The VM ends with this call; its reply still arrives (vmm writes
    // the last replies before it exits).
    dqt.writel(RTAS_ARGS, 0);
    dqt.writel(RTAS_ARGS + 4, 0);
    assert_eq!(
        dqt.cmd(&format!("rtas power-off 2 {RTAS_ARGS:#x} 1 {RTAS_RETS:#x}")),
        "OK 0"
    );
    assert!(dst.wait_exit(T).success(), "{}", dst.log());
    assert!(vm.try_exit().is_none(), "the source waits, postmigrate");
}

/// A hypercall through vmm's qtest `hcall`: r3, then r4 to r12.
fn hcall(qt: &mut Qtest, opcode: u64, args: &[u64]) -> (i64, [u64; 9]) {
    let line: Vec<String> = std::iter::once(format!("hcall {opcode:#x}"))
        .chain(args.iter().map(|a| format!("{a:#x}")))
        .collect();
    let reply = qt.ok(&line.join(" "));
    let n: Vec<u64> = reply
        .split(' ')
        .map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).unwrap())
        .collect();
    assert_eq!(n.len(), 10, "{reply}");
    (n[0] as i64, n[1..].try_into().unwrap())
}

const H_GET_TERM_CHAR: u64 = 0x54;
const H_PUT_TERM_CHAR: u64 = 0x58;
const H_RTAS: u64 = 0xf000;
const H_FUNCTION: i64 = -2;
const H_PARAMETER: i64 = -4;
const VTY: u64 = 0x7100_0000;

/// `H_PUT_TERM_CHAR` of up to 16 bytes to the vty at `reg`.
fn put_chars(qt: &mut Qtest, reg: u64, bytes: &[u8]) -> i64 {
    let mut b = [0u8; 16];
    b[..bytes.len()].copy_from_slice(bytes);
    let hi = u64::from_be_bytes(b[..8].try_into().unwrap());
    let lo = u64::from_be_bytes(b[8..].try_into().unwrap());
    hcall(qt, H_PUT_TERM_CHAR, &[reg, bytes.len() as u64, hi, lo]).0
}

/// `H_GET_TERM_CHAR` of the vty at `reg`: what it had waiting.
fn get_chars(qt: &mut Qtest, reg: u64) -> Vec<u8> {
    let (r3, out) = hcall(qt, H_GET_TERM_CHAR, &[reg]);
    assert_eq!(r3, 0);
    let mut b = out[1].to_be_bytes().to_vec();
    b.extend_from_slice(&out[2].to_be_bytes());
    b.truncate(out[0] as usize);
    b
}

/// The pseries console as a guest reaches it: the vty QEMU's `-serial`
/// makes, written and read with the PAPR hypercalls (the path a KVM-PPC
/// vCPU's exits take), input waiting in its ring carried by a migration;
/// RTAS entered the way a guest enters it, through `H_RTAS` and a buffer
/// in its memory.
#[test]
fn the_pseries_console_and_rtas_through_hypercalls() {
    let dir = TempDir::new("qtest-hcall");
    let (mut vm, mut q, mut qt) = start(&dir, "src", &["-M", "pseries-2.7"]);

    // Output, to the vty's address or to 0 (Linux's early console).
    assert_eq!(put_chars(&mut qt, VTY, b"hvc0 says hi\n"), 0);
    vm.wait_prefix("hvc0 says hi", T);
    assert_eq!(put_chars(&mut qt, 0, b"early\n"), 0);
    vm.wait_prefix("early", T);
    assert_eq!(
        put_chars(&mut qt, VTY + 1, b"x"),
        H_PARAMETER,
        "no vty there"
    );
    assert_eq!(
        hcall(&mut qt, H_PUT_TERM_CHAR, &[VTY, 17, 0, 0]).0,
        H_PARAMETER,
        "17 bytes"
    );

    // Input: stdin into the ring; a NUL after a return comes in the next
    // call (guests drop one that follows a return in the same batch).
    vm.send(b"ab\r\0c");
    let mut got = vec![];
    let mut batches = 0;
    for _ in 0..500 {
        let b = get_chars(&mut qt, VTY);
        if !b.is_empty() {
            batches += 1;
            assert!(!b.windows(2).any(|w| w == b"\r\0"), "{b:?}");
        }
        got.extend(b);
        if got.len() >= 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(got, b"ab\r\0c");
    assert!(batches >= 2);
    assert!(get_chars(&mut qt, VTY).is_empty());

    // RTAS through H_RTAS: token, nargs, nret, arguments, results.
    let rtas_buf = |qt: &mut Qtest, token: u32, nret: u32| {
        for (i, w) in [token, 0, nret].iter().enumerate() {
            qt.writel(RTAS_ARGS + 4 * i as u64, *w);
        }
        qt.writel(RTAS_ARGS + 12, 0xdead);
        hcall(qt, H_RTAS, &[RTAS_ARGS]).0
    };
    assert_eq!(rtas_buf(&mut qt, 0x2001, 8), 0, "get-time-of-day");
    assert_eq!(qt.readl(RTAS_ARGS + 12), 0, "its status");
    let year = qt.readl(RTAS_ARGS + 16);
    assert!((2026..2100).contains(&year), "{year}");
    assert_eq!(rtas_buf(&mut qt, 0x2fff, 1), H_PARAMETER, "no such token");
    assert_eq!(
        qt.readl(RTAS_ARGS + 12) as i32,
        -3,
        "RTAS's parameter error"
    );
    // A hypercall the board leaves alone (H_CLEAR_MOD: QEMU's TCG
    // table has none either; KVM-PPC's kernel serves it).
    assert_eq!(hcall(&mut qt, 0x10, &[]).0, H_FUNCTION);

    // Input waiting in the ring moves with the guest.
    vm.send(b"carried");
    // stdin's thread puts it in the ring at once; the migration must not
    // start before (nothing shows it short of taking it).
    std::thread::sleep(Duration::from_secs(1));
    let (dst, mut dq, mut dqt, to) = incoming(&dir, "dst", &["-M", "pseries-2.7"]);
    q.execute("migrate", json!({"uri": to}));
    assert_eq!(q.wait_migration(T)["status"], "completed");
    assert_eq!(dq.execute("query-status", json!({}))["status"], "running");
    assert_eq!(get_chars(&mut dqt, VTY), b"carried");
    assert_eq!(put_chars(&mut dqt, VTY, b"on dst\n"), 0);
    dst.wait_prefix("on dst", T);

    // Without a console there is no vty: its calls and display-character
    // fail, as QEMU's do.
    let (_none, _nq, mut nqt) = start(&dir, "none", &["-M", "pseries-2.7", "-serial", "none"]);
    assert_eq!(put_chars(&mut nqt, VTY, b"x"), H_PARAMETER);
    assert_eq!(hcall(&mut nqt, H_GET_TERM_CHAR, &[0]).0, H_PARAMETER);
    assert_eq!(
        rtas(&mut nqt, "display-character", &[0x41], 1)[0] as i32,
        -1
    );
}

const H_EOI: u64 = 0x64;
const H_CPPR: u64 = 0x68;
const H_IPI: u64 = 0x6c;
const H_IPOLL: u64 = 0x70;
const H_XIRR: u64 = 0x74;

/// What vCPU 0's presentation controller presents (`H_IPOLL`): its XIRR.
fn ipoll(qt: &mut Qtest) -> u64 {
    let (r3, out) = hcall(qt, H_IPOLL, &[]);
    assert_eq!(r3, 0);
    out[0]
}

/// Waits until vCPU 0's controller presents `xirr` (a device thread or
/// stdin's raises the source); `what` names it if it never does.
fn wait_presented(qt: &mut Qtest, xirr: u64, what: &str) {
    let deadline = std::time::Instant::now() + T;
    while ipoll(qt) != xirr {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The emulated XICS as a guest's vCPU 0 meets it: the console's input
/// raises the vty's source, routed by RTAS; the server takes it above its
/// current priority, gives it back below, takes and ends it with the
/// hypercalls; an IPI; a source presented and not yet taken moves with
/// the guest to another process.
#[test]
fn the_emulated_xics_presents_the_consoles_input_and_ipis() {
    let dir = TempDir::new("qtest-xics");
    let args = ["-M", "pseries-10.0", "-smp", "2"];
    let (mut vm, mut q, mut qt) = start(&dir, "src", &args);
    const VTY_IRQ: u32 = 0x1100;
    assert_eq!(ipoll(&mut qt), 0, "nothing, CPPR 0 at reset");
    assert_eq!(rtas(&mut qt, "ibm,set-xive", &[VTY_IRQ, 0, 5], 1), [0]);
    assert_eq!(hcall(&mut qt, H_CPPR, &[0xff]).0, 0);
    vm.send(b"x");
    let presented = 0xff00_0000 | u64::from(VTY_IRQ);
    wait_presented(
        &mut qt,
        presented,
        "the vty's input never raised its source",
    );
    // A more favoured priority than the source's gives it back; a less
    // favoured one takes it again.
    hcall(&mut qt, H_CPPR, &[3]);
    assert_eq!(ipoll(&mut qt), 3 << 24);
    hcall(&mut qt, H_CPPR, &[0xff]);
    assert_eq!(ipoll(&mut qt), presented);
    let (r3, out) = hcall(&mut qt, H_XIRR, &[]);
    assert_eq!((r3, out[0]), (0, presented));
    assert_eq!(
        ipoll(&mut qt) >> 24,
        5,
        "the server runs at the source's priority"
    );
    assert_eq!(get_chars(&mut qt, VTY), b"x");
    assert_eq!(hcall(&mut qt, H_EOI, &[presented]).0, 0);
    assert_eq!(ipoll(&mut qt), 0xff00_0000);
    // An IPI to vCPU 0's server; none to a server that is not there.
    assert_eq!(hcall(&mut qt, H_IPI, &[0, 4]).0, 0);
    assert_eq!(hcall(&mut qt, H_XIRR, &[]).1[0], 0xff00_0002);
    hcall(&mut qt, H_IPI, &[0, 0xff]);
    hcall(&mut qt, H_EOI, &[0xff00_0002]);
    assert_eq!(hcall(&mut qt, H_IPI, &[7, 4]).0, H_PARAMETER);

    // Presented, not taken: it is on the destination.
    vm.send(b"y");
    wait_presented(
        &mut qt,
        presented,
        "the second input never raised its source",
    );
    let (_dst, mut dq, mut dqt, to) = incoming(&dir, "dst", &args);
    q.execute("migrate", json!({"uri": to}));
    assert_eq!(q.wait_migration(T)["status"], "completed");
    assert_eq!(dq.execute("query-status", json!({}))["status"], "running");
    assert_eq!(hcall(&mut dqt, H_XIRR, &[]).1[0], presented);
    assert_eq!(get_chars(&mut dqt, VTY), b"y");
    assert_eq!(rtas(&mut dqt, "ibm,get-xive", &[VTY_IRQ], 3), [0, 0, 5]);
}

/// A capability of function `devfn` (RTAS configuration reads): where.
fn spapr_capability(qt: &mut Qtest, devfn: u8, id: u32, kind: Option<u32>) -> u32 {
    let mut p = cfg_read(qt, devfn, 0x34, 1).1 & 0xfc;
    while p != 0 {
        let c = cfg_read(qt, devfn, p, 4).1;
        if c & 0xff == id && kind.is_none_or(|k| (c >> 24) & 0xff == k) {
            return p;
        }
        p = (c >> 8) & 0xfc;
    }
    panic!("function {devfn:#x} has no capability {id:#x} {kind:?}");
}

/// Where BAR `bar` of function `devfn` is for the CPU: through PHB 0's
/// 32-bit window (bus address 2 GiB) or its 64-bit one (bus = CPU).
fn spapr_bar(qt: &mut Qtest, devfn: u8, bar: u32) -> u64 {
    let lo = cfg_read(qt, devfn, 0x10 + 4 * bar, 4).1;
    let pci = if lo & 0x4 != 0 {
        u64::from(cfg_read(qt, devfn, 0x14 + 4 * bar, 4).1) << 32 | u64::from(lo & !0xf)
    } else {
        u64::from(lo & !0xf)
    };
    if pci < 0x1_0000_0000 {
        0x2000_8000_0000 + (pci - 0x8000_0000)
    } else {
        pci
    }
}

/// A driver's first request to the virtio-rng function at 00:00.0 of PHB
/// 0 (pseries-4.2 and later's 32-bit window): queue 0 with one 16-byte
/// buffer, then its doorbell. Where the used ring is.
fn rng_request(qt: &mut Qtest) -> u64 {
    rng_request_at(qt, 0, 0x20_0000)
}

/// [`rng_request`] to the function at `devfn`, its rings and buffer from
/// guest address `rings` on.
fn rng_request_at(qt: &mut Qtest, devfn: u8, rings: u64) -> u64 {
    let cc = spapr_common_cfg(qt, devfn, 0x2000_8000_0000);
    let le16 = |qt: &mut Qtest, at: u64, v: u16| qt.write(at, &v.to_le_bytes());
    let le32 = |qt: &mut Qtest, at: u64, v: u32| qt.write(at, &v.to_le_bytes());
    let le64 = |qt: &mut Qtest, at: u64, v: u64| qt.write(at, &v.to_le_bytes());
    qt.writeb(cc + 0x14, 0x3);
    le32(qt, cc + 0x8, 1);
    le32(qt, cc + 0xc, 1);
    qt.writeb(cc + 0x14, 0xb);
    le16(qt, cc + 0x10, 0xffff);
    le16(qt, cc + 0x16, 0);
    le16(qt, cc + 0x18, 16);
    le16(qt, cc + 0x1a, 1);
    let (desc, avail, used, buf) = (rings, rings + 0x1000, rings + 0x2000, rings + 0x10_0000);
    le64(qt, cc + 0x20, desc);
    le64(qt, cc + 0x28, avail);
    le64(qt, cc + 0x30, used);
    le16(qt, cc + 0x1c, 1);
    qt.writeb(cc + 0x14, 0xf);
    le64(qt, desc, buf);
    le32(qt, desc + 8, 16);
    le16(qt, desc + 12, 2);
    le16(qt, avail + 4, 0);
    le16(qt, avail + 2, 1);
    let notify = spapr_capability(qt, devfn, 0x09, Some(2));
    let bar = cfg_read(qt, devfn, notify + 4, 1).1;
    let off = cfg_read(qt, devfn, notify + 8, 4).1;
    let mut qo = [0u8; 2];
    qo.copy_from_slice(&qt.read(cc + 0x1e, 2));
    let mult = cfg_read(qt, devfn, notify + 16, 4).1;
    let bell = spapr_bar(qt, devfn, bar)
        + u64::from(off)
        + u64::from(u16::from_le_bytes(qo)) * u64::from(mult);
    le16(qt, bell, 0);
    used
}

/// MSI-X on pseries as a guest gets it: `ibm,change-msi` takes sources for
/// a virtio-rng function's vectors and points its table at the MSI window,
/// `ibm,query-interrupt-source-number` names them; the device fills a
/// buffer the client queued and its vector raises the source, which the
/// emulated XICS presents (`H_IPOLL`); the MSI map moves with the guest;
/// released, the vectors have no source. On pseries-2.8 sources are
/// taken after the board's (QEMU 3.0's first-free allocation).
#[test]
fn a_functions_msix_reaches_the_xics_through_rtas_msis() {
    let dir = TempDir::new("qtest-msi");
    let args = ["-M", "pseries-10.0", "-device", "virtio-rng-pci"];
    let (_vm, mut q, mut qt) = start(&dir, "src", &args);
    let (hi, lo) = ((BUID >> 32) as u32, BUID as u32);
    assert_eq!(
        cfg_write(&mut qt, 0, 4, 2, 0x6),
        0,
        "memory and bus master on"
    );
    let msix = spapr_capability(&mut qt, 0, 0x11, None);
    let control = cfg_read(&mut qt, 0, msix + 2, 2).1;
    let vectors = (control & 0x7ff) + 1;
    assert!(vectors >= 2, "{vectors} vectors");
    assert_eq!(cfg_write(&mut qt, 0, msix + 2, 2, control | 0x8000), 0);
    // Too many: the vectors there are, nothing taken; then two.
    let r = rtas(&mut qt, "ibm,change-msi", &[0, hi, lo, 4, 64, 0], 4);
    assert_eq!(r, [0, vectors, 1, 2]);
    let r = rtas(&mut qt, "ibm,change-msi", &[0, hi, lo, 4, 2, 1], 4);
    assert_eq!(r, [0, 2, 2, 2]);
    let src =
        |qt: &mut Qtest, v: u32| rtas(qt, "ibm,query-interrupt-source-number", &[0, hi, lo, v], 3);
    assert_eq!(src(&mut qt, 1), [0, 0x1301, 1], "from SPAPR_IRQ_MSI, edge");
    assert_eq!(src(&mut qt, 2)[0] as i32, -1, "no third vector");
    assert_eq!(
        rtas(&mut qt, "ibm,change-msi", &[0, hi, lo, 3, 1, 0], 3)[0] as i32,
        -3,
        "no MSI, only MSI-X"
    );
    let table_at = cfg_read(&mut qt, 0, msix + 4, 4).1;
    let table = spapr_bar(&mut qt, 0, table_at & 7) + u64::from(table_at & !7);
    assert_eq!(
        qt.read(table + 16, 12),
        [0, 0, 0, 0, 0, 4, 0, 0, 0x01, 0x13, 0, 0],
        "vector 1: the MSI window, source 0x1301 (little-endian)"
    );
    // The call unmasked the vectors, as QEMU's; route vector 1's source to
    // vCPU 0 at priority 5.
    assert_eq!(
        qt.read(table + 16 + 12, 4),
        [0, 0, 0, 0],
        "vector 1 unmasked"
    );
    assert_eq!(rtas(&mut qt, "ibm,set-xive", &[0x1301, 0, 5], 1), [0]);
    hcall(&mut qt, H_CPPR, &[0xff]);

    let used = rng_request(&mut qt);
    let presented = 0xff00_1301;
    wait_presented(&mut qt, presented, "vector 1 never reached the XICS");
    assert_eq!(qt.read(used + 2, 2), [1, 0], "the buffer came back");

    // The map moves with the guest.
    let (_dst, mut dq, mut dqt, to) = incoming(&dir, "dst", &args);
    q.execute("migrate", json!({"uri": to}));
    assert_eq!(q.wait_migration(T)["status"], "completed");
    assert_eq!(dq.execute("query-status", json!({}))["status"], "running");
    assert_eq!(src(&mut dqt, 0), [0, 0x1300, 1]);
    assert_eq!(hcall(&mut dqt, H_XIRR, &[]).1[0], presented);
    // Released: no source.
    assert_eq!(
        rtas(&mut dqt, "ibm,change-msi", &[0, hi, lo, 4, 0, 2], 3)[..2],
        [0, 0]
    );
    assert_eq!(src(&mut dqt, 0)[0] as i32, -1);

    // (virtio-rng has no MSI-X on the old types: hw_compat_7_1.)
    let img = dir.image("d.raw", 1 << 20);
    let drive = format!("file={},if=none,id=d0,format=raw", img.display());
    let old = [
        "-M",
        "pseries-2.8",
        "-drive",
        &drive,
        "-device",
        "virtio-blk-pci,drive=d0",
    ];
    let (_old, _oq, mut oqt) = start(&dir, "old", &old);
    assert_eq!(
        rtas(&mut oqt, "ibm,change-msi", &[0, hi, lo, 1, 1, 0], 3),
        [0, 1, 1]
    );
    assert_eq!(
        src(&mut oqt, 0),
        [0, 0x1008, 1],
        "after EPOW, hot-plug, vty, NVRAM and the four pins"
    );
}

/// A little-endian ppc64 `vmlinux`: one segment of `code` linked where
/// Linux links (0xc000000000000000) with `bss` bytes after it, entered at
/// `entry` bytes in.
fn vmlinux(code: &[u8], bss: u64, entry: u64) -> Vec<u8> {
    const BASE: u64 = 0xc000_0000_0000_0000;
    let mut f = b"\x7fELF\x02\x01\x01".to_vec();
    f.resize(16, 0);
    for (v, n) in [
        (2u64, 2),
        (21, 2),
        (1, 4),
        (BASE + entry, 8),
        (64, 8),
        (0, 8),
        (0, 4),
    ] {
        f.extend_from_slice(&v.to_le_bytes()[..n]);
    }
    for (v, n) in [(64u64, 2), (56, 2), (1, 2), (0, 6)] {
        f.extend_from_slice(&v.to_le_bytes()[..n.min(8)]);
    }
    f.resize(64, 0);
    let memsz = code.len() as u64 + bss;
    for (v, n) in [
        (1u64, 4),
        (7, 4),
        (0x1000, 8),
        (BASE, 8),
        (BASE, 8),
        (code.len() as u64, 8),
        (memsz, 8),
        (0x1_0000, 8),
    ] {
        f.extend_from_slice(&v.to_le_bytes()[..n]);
    }
    f.resize(0x1000, 0);
    f.extend_from_slice(code);
    f
}

/// `-kernel` on pseries: the kernel, the initrd, RTAS and the device tree
/// in guest RAM where a kernel entered with r3 = the tree finds them, the
/// tree telling it where each is (read back from guest memory through
/// qtest and decompiled with dtc); a kernel too large for the guest is
/// refused by name.
#[test]
fn a_pseries_kernel_finds_its_initrd_rtas_and_tree_in_memory() {
    let dir = TempDir::new("qtest-kernel");
    let kernel = dir.path("vmlinux");
    std::fs::write(&kernel, vmlinux(b"vmlinux!", 0x1000, 0x100)).unwrap();
    let initrd = dir.path("initrd");
    std::fs::write(&initrd, b"the initrd's bytes").unwrap();
    let (k, i) = (kernel.display().to_string(), initrd.display().to_string());
    let (_vm, _q, mut qt) = start(
        &dir,
        "src",
        &[
            "-M",
            "pseries-8.0",
            "-kernel",
            &k,
            "-initrd",
            &i,
            "-append",
            "console=hvc0",
        ],
    );
    assert_eq!(qt.read(0, 8), b"vmlinux!", "the kernel at 0");
    // The tree at the top of the real-mode area (here, of the 128 MiB of
    // RAM) less 1 MiB.
    let fdt = 0x7f0_0000;
    assert_eq!(qt.readl(fdt), 0xd00d_feed);
    let size = qt.readl(fdt + 4) as usize;
    let dtb = dir.path("guest.dtb");
    std::fs::write(&dtb, qt.read(fdt, size)).unwrap();
    // dumpdtb with the same command line writes that tree, byte for byte
    // (as QEMU's dumpdtb shows the tree after its reset).
    let dumped = dir.path("dumped.dtb");
    let st = std::process::Command::new(vmm_tests::vmm::binary())
        .arg("-M")
        .arg(format!("pseries-8.0,dumpdtb={}", dumped.display()))
        .args([
            "-m",
            "128M",
            "-kernel",
            &k,
            "-initrd",
            &i,
            "-append",
            "console=hvc0",
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert_eq!(
        std::fs::read(&dumped).unwrap(),
        std::fs::read(&dtb).unwrap()
    );
    let out = std::process::Command::new("dtc")
        .args(["-I", "dtb", "-O", "dts"])
        .arg(&dtb)
        .output()
        .expect("dtc (scripts/setup.sh installs device-tree-compiler)");
    let dts = String::from_utf8_lossy(&out.stdout).to_string();
    let prop = |name: &str| -> u64 {
        let line = dts
            .lines()
            .find(|l| l.trim().starts_with(&format!("{name} = <")))
            .unwrap_or_else(|| panic!("no {name} in\n{dts}"));
        let v = line.split('<').nth(1).unwrap().trim_end_matches(">;");
        u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
    };
    assert!(dts.contains("bootargs = \"console=hvc0\""), "{dts}");
    let (start, end) = (prop("linux,initrd-start"), prop("linux,initrd-end"));
    assert_eq!(
        start, 0x2_0000,
        "after the kernel and its bss, 64 KiB aligned"
    );
    assert_eq!(
        qt.read(start, (end - start) as usize),
        b"the initrd's bytes"
    );
    // RTAS: the blob that makes the H_RTAS hypercall, where the tree says.
    let rtas = prop("linux,rtas-base");
    assert_eq!(prop("linux,rtas-entry"), rtas);
    assert_eq!(qt.readl(rtas + 12), 0x4400_0022, "sc 1");
    // The kernel must leave them alone.
    let reserved: Vec<Vec<String>> = dts
        .lines()
        .filter(|l| l.starts_with("/memreserve/"))
        .map(|l| {
            l.trim_start_matches("/memreserve/")
                .trim_end_matches(';')
                .split_whitespace()
                .map(|w| {
                    u64::from_str_radix(w.trim_start_matches("0x"), 16)
                        .unwrap()
                        .to_string()
                })
                .collect()
        })
        .collect();
    for (at, len) in [(0, 0x1008), (rtas, 0x1000), (start, end - start)] {
        assert!(
            reserved.contains(&vec![at.to_string(), len.to_string()]),
            "{at:#x}+{len:#x} not reserved in\n{dts}"
        );
    }

    // A kernel larger than the guest's memory.
    let huge = dir.path("huge");
    std::fs::write(&huge, vmlinux(b"x", 300 << 20, 0)).unwrap();
    let out = std::process::Command::new(vmm_tests::vmm::binary())
        .args([
            "-M",
            "pseries-8.0",
            "-m",
            "256M",
            "-accel",
            "qtest",
            "-qtest",
            "stdio",
            "-serial",
            "none",
            "-kernel",
        ])
        .arg(&huge)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot load kernel") && err.contains("does not fit in the guest's 256 MiB"),
        "{err}"
    );
}

/// The ppc64le build of vmm (scripts/ppc64le.sh builds it), as a command
/// run under qemu-user.
fn ppc64le_vmm() -> std::process::Command {
    let bin = std::env::var_os("VMM_PPC64LE").map_or_else(
        || vmm_tests::workspace().join("target/ppc64le/powerpc64le-unknown-linux-gnu/debug/vmm"),
        std::path::PathBuf::from,
    );
    assert!(
        bin.is_file(),
        "{} missing: scripts/ppc64le.sh builds it",
        bin.display()
    );
    let mut c = std::process::Command::new("qemu-ppc64le-static");
    c.args(["-L", "/"]).arg(bin);
    c
}

/// A pseries guest moves between hosts of two architectures: from the
/// x86_64 build to the ppc64le one (run under qemu-user) and back, over
/// TCP, its PHB-programmed device, configuration space, registers, RTC
/// and memory intact. The stream is the host's business only where QEMU's
/// is: integers big-endian, RAM pages as the guest has them.
#[test]
#[ignore = "needs the ppc64le build under qemu-user: scripts/ppc64le.sh runs it"]
fn a_pseries_guest_moves_between_an_x86_64_and_a_ppc64le_build() {
    let dir = TempDir::new("qtest-xarch");
    let img = dir.image("d.raw", 1 << 20);
    let drive = format!("file={},if=none,id=d0,format=raw", img.display());
    let board = [
        "-M",
        "pseries-2.7",
        "-m",
        "128M",
        "-drive",
        &drive,
        "-device",
        "virtio-blk-pci,drive=d0",
    ];
    let (mut x86, mut q, mut qt) = {
        let (qmp, sock) = qmp_arg(&dir, "x86b");
        let mut args = vec!["-qmp", qmp.as_str()];
        args.extend_from_slice(&board);
        let (vm, qt) = Qtest::spawn("x86b", &dir.path("x86b.qtest"), &args);
        (vm, Qmp::connect(&sock, T), qt)
    };
    assert_eq!(cfg_write(&mut qt, 0, 4, 2, 0x7), 0);
    let cc = spapr_common_cfg(&mut qt, 0, 0x100_a000_0000);
    qt.writeb(cc + 0x14, 0x3);
    assert_eq!(
        rtas(&mut qt, "set-time-of-day", &[2001, 2, 3, 4, 5, 6, 0], 1),
        [0]
    );
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 13 + 1) as u8).collect();
    qt.write(0x40_0000, &pattern);
    let config: Vec<(i32, u32)> = (0..64).map(|i| cfg_read(&mut qt, 0, 4 * i, 4)).collect();

    let check = |qt: &mut Qtest, who: &str| {
        let now: Vec<(i32, u32)> = (0..64).map(|i| cfg_read(qt, 0, 4 * i, 4)).collect();
        assert_eq!(now, config, "{who}: configuration space");
        assert_eq!(qt.readb(cc + 0x14), 0x3, "{who}: device_status");
        assert_eq!(qt.read(0x40_0000, pattern.len()), pattern, "{who}: memory");
        let t = rtas(qt, "get-time-of-day", &[], 8);
        assert_eq!(t[1..5], [2001, 2, 3, 4], "{who}: RTC {t:?}");
    };

    // x86_64 -> ppc64le
    let port = free_port();
    let incoming = format!("tcp:127.0.0.1:{port}");
    let (pqmp, psock) = qmp_arg(&dir, "ppc");
    let mut pargs = vec!["-qmp", pqmp.as_str(), "-incoming", incoming.as_str()];
    pargs.extend_from_slice(&board);
    let (ppc, mut pqt) = Qtest::spawn_with("ppc", &dir.path("ppc.qtest"), ppc64le_vmm(), &pargs);
    let mut pq = Qmp::connect(&psock, T);
    q.execute("migrate", json!({"uri": incoming}));
    let m = q.wait_migration(T);
    assert_eq!(m["status"], "completed", "{m}\n{}", ppc.log());
    assert_eq!(pq.execute("query-status", json!({}))["status"], "running");
    check(&mut pqt, "ppc64le");
    // It is the ppc64le build (only there is vmm without its sandbox).
    assert!(
        ppc.logged("seccomp sandbox is x86_64 only", T),
        "{}",
        ppc.log()
    );
    assert!(x86.try_exit().is_none());

    // ppc64le -> x86_64
    let port = free_port();
    let incoming = format!("tcp:127.0.0.1:{port}");
    let (bqmp, bsock) = qmp_arg(&dir, "back");
    let mut bargs = vec!["-qmp", bqmp.as_str(), "-incoming", incoming.as_str()];
    bargs.extend_from_slice(&board);
    let (_back, mut bqt) = Qtest::spawn("back", &dir.path("back.qtest"), &bargs);
    let mut bq = Qmp::connect(&bsock, T);
    pq.execute("migrate", json!({"uri": incoming}));
    let m = pq.wait_migration(T);
    assert_eq!(m["status"], "completed", "{m}\n{}", ppc.log());
    assert_eq!(bq.execute("query-status", json!({}))["status"], "running");
    check(&mut bqt, "back on x86_64");
}

/// The client's other two places: vmm listening on a unix socket
/// (`server=on`, a client after another), and stdio (the console
/// elsewhere); and command lines that cannot work, refused by name.
#[test]
fn the_client_may_connect_to_vmm_or_speak_on_stdio() {
    use std::os::unix::net::UnixStream;
    use std::process::Command;
    let dir = TempDir::new("qtest-addr");
    let sock = dir.path("listen.qtest");
    let qtest = |extra: &[&str]| {
        let mut c = Command::new(vmm_tests::vmm::binary());
        c.args([
            "-M",
            "pc-q35-8.0",
            "-m",
            "128M",
            "-accel",
            "qtest",
            "-qtest",
        ])
        .args(extra);
        c
    };
    let listen = format!("unix:{},server=on,wait=off", sock.display());
    let vm = Vm::spawn("listen", qtest(&[&listen]));
    let connect = || {
        let deadline = std::time::Instant::now() + T;
        loop {
            match UnixStream::connect(&sock) {
                Ok(s) => return Qtest::new(s),
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("{e}\n{}", vm.log()),
            }
        }
    };
    let mut first = connect();
    assert_eq!(first.ok("endianness"), "little");
    first.writel(0x1000, 7);
    drop(first);
    assert_eq!(
        connect().readl(0x1000),
        7,
        "the next client sees the same guest"
    );

    let mut stdio = Vm::spawn("stdio", qtest(&["stdio", "-serial", "none"]));
    stdio.send(b"endianness\nwritel 0x1000 0x2a\nreadl 0x1000\nfrob\n");
    stdio.wait_prefix("OK little", T);
    stdio.wait_for("the read", T, |l| l == "OK 0x000000000000002a");
    stdio.wait_for("the refusal", T, |l| l == "FAIL Unknown command 'frob'");

    for (args, says) in [
        (&["-accel", "qtest"][..], "-accel qtest needs -qtest"),
        (
            &["-accel", "qtest", "-qtest", "stdio"],
            "cannot both have stdio",
        ),
        (
            &["-qtest", "unix:/nowhere", "-kernel", "/dev/null"],
            "needs -accel qtest",
        ),
        (
            &["-accel", "qtest", "-qtest", "tcp:1:2"],
            "invalid -qtest 'tcp:1:2'",
        ),
        (
            &["-M", "pseries-2.8", "-kernel", "/dev/null"],
            "needs KVM-PPC",
        ),
    ] {
        let out = Command::new(vmm_tests::vmm::binary())
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

const H_SET_MODE: u64 = 0x31c;
const H_P2: i64 = -55;
const H_P3: i64 = -56;
const H_P4: i64 = -57;
const H_UNSUPPORTED_FLAG: i64 = -256;
/// LPCR[ILE].
const LPCR_ILE: u64 = 1 << 25;

/// A guest's secondary CPUs as RTAS shows them: the boot CPU runs, the
/// others are stopped until `start-cpu` (QEMU 7.2's codes for a CPU that
/// is not there, a CPU that already runs, a call with the wrong counts);
/// `H_SET_MODE` sets every CPU's LPCR bits; both move with the guest, in
/// each vCPU's `spapr-cpu` section; `stop-self` stops its caller.
#[test]
fn secondary_cpus_start_through_rtas_and_keep_their_state_across_migration() {
    let dir = TempDir::new("qtest-cpus");
    // -smp 2 on pseries-2.7 (8 virtual threads a core): the second CPU is
    // interrupt server 8, as QEMU numbers it.
    let args = ["-M", "pseries-2.7", "-smp", "2"];
    let (_vm, mut q, mut qt) = start(&dir, "src", &args);
    let query = |qt: &mut Qtest, id: u32| rtas(qt, "query-cpu-stopped-state", &[id], 2);
    assert_eq!(query(&mut qt, 0), [0, 2], "the boot CPU runs");
    assert_eq!(query(&mut qt, 8), [0, 0], "the second is stopped");
    assert_eq!(query(&mut qt, 1)[0] as i32, -3, "no server 1");
    assert_eq!(
        rtas(&mut qt, "query-cpu-stopped-state", &[8], 1)[0] as i32,
        -3,
        "one result"
    );

    // Little-endian interrupts and AIL 3, as a ppc64le Linux asks: AIL 3
    // not on pseries-2.7, whose CPU is a POWER7 (QEMU's cap-ail-mode-3
    // off); on pseries-7.2 it is, AIL 2 never.
    let set_mode = |qt: &mut Qtest, mflags: u64, resource: u64, v1: u64, v2: u64| {
        hcall(qt, H_SET_MODE, &[mflags, resource, v1, v2]).0
    };
    assert_eq!(set_mode(&mut qt, 1, 4, 0, 0), 0);
    assert_eq!(
        set_mode(&mut qt, 3, 3, 0, 0),
        H_UNSUPPORTED_FLAG,
        "AIL 3 on POWER7"
    );
    assert_eq!(set_mode(&mut qt, 0, 3, 0, 0), 0, "AIL 0");
    {
        let (_p9, _p9q, mut p9) = start(&dir, "p9", &["-M", "pseries-7.2"]);
        assert_eq!(set_mode(&mut p9, 3, 3, 0, 0), 0, "AIL 3 on POWER9");
        assert_eq!(set_mode(&mut p9, 2, 3, 0, 0), H_UNSUPPORTED_FLAG, "AIL 2");
    }
    assert_eq!(set_mode(&mut qt, 2, 4, 0, 0), H_UNSUPPORTED_FLAG);
    assert_eq!(set_mode(&mut qt, 1, 3, 0, 0), H_UNSUPPORTED_FLAG, "AIL 1");
    assert_eq!(set_mode(&mut qt, 1, 4, 1, 0), H_P3);
    assert_eq!(set_mode(&mut qt, 1, 4, 0, 1), H_P4);
    assert_eq!(set_mode(&mut qt, 0, 2, 0, 0), H_P2, "the DAWR is not ours");

    assert_eq!(rtas(&mut qt, "start-cpu", &[8, 0x100, 0x1234], 1), [0]);
    assert_eq!(query(&mut qt, 8), [0, 2]);
    assert_eq!(
        rtas(&mut qt, "start-cpu", &[8, 0x100, 0], 1)[0] as i32,
        -1,
        "it runs already"
    );
    assert_eq!(
        rtas(&mut qt, "start-cpu", &[9, 0x100, 0], 1)[0] as i32,
        -3,
        "no server 9"
    );
    assert_eq!(rtas(&mut qt, "start-cpu", &[8, 0x100], 1)[0] as i32, -3);

    // The stream: each vCPU's section.
    let file = dir.path("saved.vmm");
    q.execute(
        "migrate",
        json!({"uri": format!("file:{}", file.display())}),
    );
    assert_eq!(q.wait_migration(T)["status"], "completed");
    let fields = section_fields(&file, "spapr-cpu");
    let lpcr = format!("lpcr: {LPCR_ILE:#x}");
    assert_eq!(
        fields.iter().filter(|l| *l == "halted: 0x0").count(),
        2,
        "both run: {fields:#?}"
    );
    assert_eq!(
        fields.iter().filter(|l| **l == lpcr).count(),
        2,
        "both have {lpcr}: {fields:#?}"
    );
    q.execute("cont", json!({}));

    // Over TCP to another process: the second CPU still runs there.
    let (_dst, mut dq, mut dqt, to) = incoming(&dir, "dst", &args);
    q.execute("migrate", json!({"uri": to}));
    assert_eq!(q.wait_migration(T)["status"], "completed");
    assert_eq!(dq.execute("query-status", json!({}))["status"], "running");
    assert_eq!(query(&mut dqt, 8), [0, 2]);
    assert_eq!(
        rtas(&mut dqt, "start-cpu", &[8, 0x100, 0], 1)[0] as i32,
        -1,
        "it runs there too"
    );
    // qtest's client is vCPU 0: stop-self stops it.
    assert_eq!(rtas(&mut dqt, "stop-self", &[], 0), [] as [u32; 0]);
    assert_eq!(query(&mut dqt, 0), [0, 0]);
}

/// A function without MSI-X interrupts on its INTx pin as a pseries guest
/// sees it: the bridge's pin for its slot (0x1200 for slot 0 from
/// pseries-3.1, the tree's interrupt-map), a level-triggered source of
/// the XICS. Ended while the device still holds the line, it is presented
/// again; read, the ISR drops the line and the end is the last of it.
/// The interrupt line register is 0, as QEMU's with no firmware.
#[test]
fn a_functions_intx_reaches_the_xics_as_its_bridges_pin() {
    let dir = TempDir::new("qtest-intx");
    let args = ["-M", "pseries-10.0", "-device", "virtio-rng-pci"];
    let (_vm, _q, mut qt) = start(&dir, "src", &args);
    assert_eq!(cfg_read(&mut qt, 0, 0x3c, 1), (0, 0), "interrupt line");
    assert_eq!(cfg_read(&mut qt, 0, 0x3d, 1), (0, 1), "INTA");
    assert_eq!(cfg_write(&mut qt, 0, 4, 2, 0x6), 0);
    const PIN: u32 = 0x1200;
    assert_eq!(rtas(&mut qt, "ibm,set-xive", &[PIN, 0, 5], 1), [0]);
    hcall(&mut qt, H_CPPR, &[0xff]);

    let used = rng_request(&mut qt);
    let presented = 0xff00_0000 | u64::from(PIN);
    wait_presented(&mut qt, presented, "the pin never reached the XICS");
    assert_eq!(qt.read(used + 2, 2), [1, 0], "the buffer came back");
    // Taken and ended with the line still up: presented again.
    assert_eq!(hcall(&mut qt, H_XIRR, &[]).1[0], presented);
    assert_eq!(hcall(&mut qt, H_EOI, &[presented]).0, 0);
    assert_eq!(ipoll(&mut qt), presented, "a level is sent again");
    // Taken, the ISR read (the device lowers its line), ended: done.
    assert_eq!(hcall(&mut qt, H_XIRR, &[]).1[0], presented);
    assert_eq!(read_isr(&mut qt, 0) & 1, 1, "a queue interrupt");
    assert_eq!(hcall(&mut qt, H_EOI, &[presented]).0, 0);
    assert_eq!(ipoll(&mut qt), 0xff00_0000, "nothing more");
}

/// The virtio ISR of the function at `devfn` (reading it lowers its line).
fn read_isr(qt: &mut Qtest, devfn: u8) -> u8 {
    let isr = spapr_capability(qt, devfn, 0x09, Some(3));
    let bar = cfg_read(qt, devfn, isr + 4, 1).1;
    let off = cfg_read(qt, devfn, isr + 8, 4).1;
    let at = spapr_bar(qt, devfn, bar) + u64::from(off);
    qt.readb(at)
}

/// Two functions on one pin (slots 0 and 4 both raise INTA as 0x1200):
/// the pin stays up while either holds its line, as QEMU's bus counts
/// them; it goes down when the last one lets go.
#[test]
fn a_pin_two_functions_share_stays_up_while_either_holds_it() {
    let dir = TempDir::new("qtest-pin");
    let args = [
        "-M",
        "pseries-10.0",
        "-device",
        "virtio-rng-pci,addr=0x0",
        "-device",
        "virtio-rng-pci,addr=0x4",
    ];
    let (_vm, _q, mut qt) = start(&dir, "src", &args);
    const PIN: u32 = 0x1200;
    let presented = 0xff00_0000 | u64::from(PIN);
    assert_eq!(rtas(&mut qt, "ibm,set-xive", &[PIN, 0, 5], 1), [0]);
    hcall(&mut qt, H_CPPR, &[0xff]);
    for (devfn, rings) in [(0u8, 0x20_0000u64), (0x20, 0x40_0000)] {
        assert_eq!(cfg_write(&mut qt, devfn, 4, 2, 0x6), 0);
        let used = rng_request_at(&mut qt, devfn, rings);
        let deadline = std::time::Instant::now() + T;
        while qt.read(used + 2, 2) != [1, 0] {
            assert!(
                std::time::Instant::now() < deadline,
                "{devfn:#x}: no buffer back"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    wait_presented(&mut qt, presented, "the pin never reached the XICS");
    // The first lets go; the second still holds the pin.
    assert_eq!(hcall(&mut qt, H_XIRR, &[]).1[0], presented);
    assert_eq!(read_isr(&mut qt, 0) & 1, 1);
    assert_eq!(hcall(&mut qt, H_EOI, &[presented]).0, 0);
    assert_eq!(
        ipoll(&mut qt),
        presented,
        "the other function holds the pin"
    );
    // The second lets go: the pin is down.
    assert_eq!(hcall(&mut qt, H_XIRR, &[]).1[0], presented);
    assert_eq!(read_isr(&mut qt, 0x20) & 1, 1);
    assert_eq!(hcall(&mut qt, H_EOI, &[presented]).0, 0);
    assert_eq!(ipoll(&mut qt), 0xff00_0000, "nothing more");
}

const H_REMOVE: u64 = 0x04;
const H_ENTER: u64 = 0x08;
const H_READ: u64 = 0x0c;
const H_PROTECT: u64 = 0x18;
const H_EXACT: u64 = 1 << (63 - 24);
const H_READ_4: u64 = 1 << (63 - 26);
const H_PTEG_FULL: i64 = -6;
const H_NOT_FOUND: i64 = -7;
/// HPTE bits: valid (first doubleword); memory coherence, cache
/// inhibited (second).
const V_VALID: u64 = 0x1;
const R_M: u64 = 0x10;
const R_I: u64 = 0x20;

/// `H_READ` of the entry at `ptex`.
fn hpte(qt: &mut Qtest, ptex: u64) -> (u64, u64) {
    let (r3, out) = hcall(qt, H_READ, &[0, ptex]);
    assert_eq!(r3, 0, "H_READ {ptex}");
    (out[0], out[1])
}

/// The hash page table a guest builds with the MMU hypercalls (QEMU's
/// table under TCG and qtest, which KVM-PPC's kernel keeps itself)
/// migrates as QEMU's iterative `spapr/htab` section: the entries made
/// before (saved to a file in between, which restores in a new process),
/// and those made, changed and removed while RAM moves, arrive;
/// the destination's table is the source's, slot for slot: a full group
/// stays full, a removed slot is free.
#[test]
fn the_hash_page_table_migrates_with_the_entries_made_while_it_moves() {
    let dir = TempDir::new("qtest-htab");
    let (mut src, mut q, mut qt) = start(&dir, "src", &["-M", "pseries-2.7"]);
    // -m 128M: a table of 2^20 bytes (1/128 of RAM), 65,536 entries.
    let v = |n: u64| (n << 7) | V_VALID;
    let ram = |page: u64| (page << 12) | R_M;
    // Group 0 (entries 0 to 7) fills from its first free slot.
    for n in 0..8 {
        let (r3, out) = hcall(&mut qt, H_ENTER, &[0, 5, v(n), ram(n)]);
        assert_eq!((r3, out[0]), (0, n), "H_ENTER {n}");
    }
    assert_eq!(
        hcall(&mut qt, H_ENTER, &[0, 3, v(9), ram(9)]).0,
        H_PTEG_FULL
    );
    assert_eq!(hcall(&mut qt, H_REMOVE, &[0, 3, 0]).0, 0);
    assert_eq!(hcall(&mut qt, H_PROTECT, &[0x2, 6, 0]).0, 0);
    // The last entry, and an I/O page (cache-inhibited, above RAM).
    assert_eq!(
        hcall(&mut qt, H_ENTER, &[H_EXACT, 65_535, v(10), ram(10)]).0,
        0
    );
    let io = (1u64 << 40) | R_I;
    assert_eq!(hcall(&mut qt, H_ENTER, &[H_EXACT, 100, v(11), io]).0, 0);
    assert_eq!(
        hcall(&mut qt, H_ENTER, &[H_EXACT, 65_536, v(1), ram(1)]).0,
        H_PARAMETER
    );
    assert_eq!(
        hcall(&mut qt, H_ENTER, &[H_EXACT, 101, v(1), 1 << 12]).0,
        H_PARAMETER,
        "RAM, not coherent"
    );
    let mut want: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for ptex in (0..8).chain([100, 65_535]) {
        want.insert(ptex, hpte(&mut qt, ptex));
    }
    assert_eq!(want[&3], (0, 0), "removed");
    assert_eq!(want[&6].1, ram(6) | 0x2, "protected");
    // A save first: the migration after it still sends the whole table.
    // The machine's own section carries the guest's timebase: under qtest
    // the virtual clock at 512 MHz (QEMU's `spapr` section, `timebase`).
    let clock: u64 = qt.ok("clock_step 1000000007").parse().unwrap();
    let file = dir.path("saved.vmm");
    q.execute(
        "migrate",
        json!({"uri": format!("file:{}", file.display())}),
    );
    assert_eq!(q.wait_migration(T)["status"], "completed");
    let spapr = section_fields(&file, "'spapr'");
    let tb = format!("guest_timebase: {:#x},", u128::from(clock) * 512 / 1000);
    assert!(spapr[0].contains(&tb), "{tb} in {spapr:?}");
    q.execute("cont", json!({}));
    // The saved table restores into a new process (`-incoming file:`).
    let incoming_file = format!("file:{}", file.display());
    let (mut restored, _rq, mut rqt) = start(
        &dir,
        "restored",
        &["-M", "pseries-2.7", "-incoming", &incoming_file],
    );
    for (ptex, e) in &want {
        assert_eq!(hpte(&mut rqt, *ptex), *e, "restored entry {ptex}");
    }
    assert_eq!(hcall(&mut rqt, H_ENTER, &[0, 0, v(12), ram(12)]).1[0], 3);
    assert!(restored.try_exit().is_none(), "{}", restored.log());

    // 24 MiB of RAM at 16 MiB/s: entries keep changing while it moves.
    let page: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
    for i in 0..384u64 {
        qt.write(0x100_0000 + i * 65536, &page);
    }
    q.execute(
        "migrate-set-parameters",
        json!({"max-bandwidth": 16u64 << 20}),
    );
    let (mut dst, mut dq, mut dqt, to) = incoming(&dir, "dst", &["-M", "pseries-2.7"]);
    q.execute("migrate", json!({"uri": to}));
    let deadline = std::time::Instant::now() + T;
    for n in 0u64.. {
        if std::time::Instant::now() > deadline {
            panic!(
                "the migration never completed: {}\n{}",
                q.execute("query-migrate", json!({})),
                dst.log()
            );
        }
        // A new entry in its own group; every third one removed again
        // later, every fifth reprotected.
        let ptex = 1000 + 8 * (n % 4000);
        let line = if n % 3 == 2 {
            format!("hcall {H_REMOVE:#x} 0 {:#x} 0", ptex - 16)
        } else if n % 5 == 4 {
            format!("hcall {H_PROTECT:#x} 0x1 {:#x} 0", ptex - 8)
        } else {
            format!(
                "hcall {H_ENTER:#x} {H_EXACT:#x} {ptex:#x} {:#x} {:#x}",
                v(n + 100),
                ram(n)
            )
        };
        let r = qt.cmd(&line);
        if !r.starts_with("OK") {
            assert!(r.contains("migration's destination"), "{r}");
            break;
        }
        // Acknowledged: the source's table has it, so must the
        // destination's.
        let r3 = r.split(' ').nth(1).unwrap();
        if r3 != "0x0" {
            continue;
        }
        if n % 3 == 2 {
            want.insert(ptex - 16, (0, 0));
        } else if n % 5 == 4 {
            let e = want.get_mut(&(ptex - 8)).unwrap();
            e.1 |= 0x1;
        } else {
            want.insert(ptex, (v(n + 100), ram(n)));
        }
    }
    let m = q.wait_migration(T);
    assert_eq!(m["status"], "completed", "{m}");
    let changed = want.len() - 10;
    assert!(
        changed > 30,
        "too few entries changed while moving: {changed}"
    );
    let moved = || want.range(1000..).map(|(_, e)| e);
    assert!(
        moved().any(|e| *e == (0, 0)) && moved().any(|e| e.1 & 0x3 == 0x1),
        "no entry was removed or reprotected while moving"
    );

    for (ptex, e) in &want {
        assert_eq!(hpte(&mut dqt, *ptex), *e, "entry {ptex}");
    }
    let (r3, four) = hcall(&mut dqt, H_READ, &[H_READ_4, 4]);
    assert_eq!(r3, 0);
    assert_eq!(
        four[..8],
        [
            want[&4].0, want[&4].1, want[&5].0, want[&5].1, want[&6].0, want[&6].1, want[&7].0,
            want[&7].1
        ]
    );
    // Slot for slot: group 0's one free slot is 3, then it is full.
    let (r3, out) = hcall(&mut dqt, H_ENTER, &[0, 0, v(12), ram(12)]);
    assert_eq!((r3, out[0]), (0, 3));
    assert_eq!(
        hcall(&mut dqt, H_ENTER, &[0, 0, v(13), ram(13)]).0,
        H_PTEG_FULL
    );
    assert_eq!(hcall(&mut dqt, H_REMOVE, &[0, 102, 0]).0, H_NOT_FOUND);
    assert_eq!(dq.execute("query-status", json!({}))["status"], "running");
    assert!(src.try_exit().is_none() && dst.try_exit().is_none());
}

/// The NVRAM QEMU's pseries always has (`/vdevice/nvram@...`): what the
/// guest stores from its memory with RTAS `nvram-store` it reads back
/// with `nvram-fetch`, inside its 64 KiB only; a migration carries the
/// contents (QEMU's `spapr_nvram` section: the size, then the bytes) and
/// a reboot keeps them.
#[test]
fn the_nvram_keeps_what_the_guest_stores_across_a_migration() {
    let dir = TempDir::new("qtest-nvram");
    let (mut src, mut q, mut qt) = start(&dir, "src", &["-M", "pseries-7.2"]);
    let log: Vec<u8> = b"oops: kernel BUG at mm/slub.c:42 "
        .iter()
        .cycle()
        .take(600)
        .copied()
        .collect();
    let (from, to_mem) = (0x20_0000u64, 0x30_0000u64);
    qt.write(from, &log);
    let end = 65536 - 600;
    assert_eq!(
        rtas(&mut qt, "nvram-store", &[end, from as u32, 600], 2),
        [0, 600]
    );
    assert_eq!(
        rtas(&mut qt, "nvram-store", &[0, from as u32, 4], 2),
        [0, 4]
    );
    // Past the end, wrapping, or the wrong counts: RTAS's parameter
    // error, and nothing moves.
    let param = -3i32 as u32;
    assert_eq!(
        rtas(&mut qt, "nvram-store", &[end + 1, from as u32, 600], 2)[0],
        param
    );
    assert_eq!(
        rtas(&mut qt, "nvram-fetch", &[u32::MAX, to_mem as u32, 2], 2),
        [param, 0]
    );
    assert_eq!(
        rtas(&mut qt, "nvram-fetch", &[0, to_mem as u32], 2)[0],
        param
    );
    // A buffer outside RAM: the hardware error.
    assert_eq!(
        rtas(&mut qt, "nvram-fetch", &[0, 0xf000_0000, 16], 2),
        [-1i32 as u32, 0]
    );
    assert_eq!(
        rtas(&mut qt, "nvram-fetch", &[end, to_mem as u32, 600], 2),
        [0, 600]
    );
    assert_eq!(qt.read(to_mem, 600), log);

    let (mut dst, mut dq, mut dqt, to) = incoming(&dir, "dst", &["-M", "pseries-7.2"]);
    q.execute("migrate", json!({"uri": to}));
    assert_eq!(q.wait_migration(T)["status"], "completed");
    assert_eq!(
        rtas(&mut dqt, "nvram-fetch", &[end, to_mem as u32, 600], 2),
        [0, 600]
    );
    assert_eq!(dqt.read(to_mem, 600), log, "the destination's NVRAM");
    assert_eq!(
        rtas(&mut dqt, "nvram-fetch", &[0, to_mem as u32, 8], 2),
        [0, 8]
    );
    assert_eq!(dqt.read(to_mem, 8), b"oops\0\0\0\0");
    // A reboot keeps it (QEMU's NVRAM has no reset).
    assert_eq!(rtas(&mut dqt, "system-reboot", &[], 1), [0]);
    dq.wait_event("RESET", T);
    assert_eq!(
        rtas(&mut dqt, "nvram-fetch", &[end, to_mem as u32, 600], 2),
        [0, 600]
    );
    assert_eq!(dqt.read(to_mem, 600), log, "the NVRAM after a reboot");
    assert!(src.try_exit().is_none() && dst.try_exit().is_none());
}

/// The RTAS calls a Linux guest makes at boot and at the end beside the
/// board's devices, as QEMU 7.2 answers them: the system parameters
/// (the partition's size as a string, shortened to the caller's buffer,
/// none settable), event-scan and check-exception (no event is ever
/// pending), and ibm,os-term: the guest's last words logged, QEMU's guest
/// panic (GUEST_PANICKED, then SHUTDOWN with reason guest-panic) and the
/// machine off.
#[test]
fn the_partition_parameters_events_and_os_term() {
    let dir = TempDir::new("qtest-sysparm");
    let (mut vm, mut q, mut qt) = start(&dir, "src", &["-M", "pseries-7.2", "-smp", "2,maxcpus=4"]);
    let buf = 0x20_0000u64;
    let want = b"MaxEntCap=4,DesMem=128,DesProcs=2,MaxPlatProcs=4\0";
    assert_eq!(
        rtas(
            &mut qt,
            "ibm,get-system-parameter",
            &[20, buf as u32, 100],
            1
        ),
        [0]
    );
    assert_eq!(qt.read(buf, 2), (want.len() as u16).to_be_bytes());
    assert_eq!(qt.read(buf + 2, want.len()), want);
    // A short buffer takes what fits; the length says the whole.
    qt.write(buf, &[0xee; 16]);
    assert_eq!(
        rtas(
            &mut qt,
            "ibm,get-system-parameter",
            &[20, buf as u32, 10],
            1
        ),
        [0]
    );
    assert_eq!(
        qt.read(buf, 11),
        [&[0, want.len() as u8][..], b"MaxEntCa", &[0xee]].concat()
    );
    let sysparm_error = -9999i32 as u32;
    assert_eq!(
        rtas(&mut qt, "ibm,get-system-parameter", &[20, buf as u32, 1], 1),
        [sysparm_error]
    );
    assert_eq!(
        rtas(&mut qt, "ibm,get-system-parameter", &[42, buf as u32, 8], 1),
        [0]
    );
    assert_eq!(qt.read(buf, 3), [0, 1, 0], "diagnostics run mode: disabled");
    assert_eq!(
        rtas(&mut qt, "ibm,get-system-parameter", &[7, buf as u32, 8], 1),
        [-3i32 as u32]
    );
    assert_eq!(
        rtas(&mut qt, "ibm,set-system-parameter", &[20, buf as u32], 1),
        [-9002i32 as u32]
    );
    assert_eq!(
        rtas(&mut qt, "ibm,set-system-parameter", &[7, buf as u32], 1),
        [-3i32 as u32]
    );
    // No event is pending; the wrong counts are refused.
    assert_eq!(
        rtas(
            &mut qt,
            "event-scan",
            &[0xffff_ffff, 0, buf as u32, 1024],
            1
        ),
        [1]
    );
    assert_eq!(
        rtas(
            &mut qt,
            "check-exception",
            &[0, 0, 0xffff_ffff, 0, buf as u32, 1024],
            1
        ),
        [1]
    );
    assert_eq!(
        rtas(&mut qt, "event-scan", &[0, 0, buf as u32], 1),
        [-3i32 as u32]
    );
    assert_eq!(
        rtas(&mut qt, "check-exception", &[0, 0, 0, 0, buf as u32], 1),
        [-3i32 as u32]
    );

    // The guest's last words, then the panic: the machine goes off.
    qt.write(buf, b"Kernel panic - not syncing: Fatal exception\0");
    qt.writel(RTAS_ARGS, buf as u32);
    assert_eq!(
        qt.cmd(&format!(
            "rtas ibm,os-term 1 {RTAS_ARGS:#x} 1 {RTAS_RETS:#x}"
        )),
        "OK 0"
    );
    let panicked = q.wait_event("GUEST_PANICKED", T);
    assert_eq!(panicked["data"]["action"], "poweroff", "{panicked}");
    let down = q.wait_event("SHUTDOWN", T);
    assert_eq!(down["data"]["reason"], "guest-panic", "{down}");
    assert!(vm.wait_exit(T).success(), "{}", vm.log());
    assert!(
        vm.logged(
            "OS terminated: Kernel panic - not syncing: Fatal exception",
            T
        ),
        "{}",
        vm.log()
    );
}
