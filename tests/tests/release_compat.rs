//! Every recorded release that can migrate (`tests/compat/releases`),
//! built from its own commit by `scripts/build-release.sh`, against this
//! build, on every machine type both offer, with real processes over real
//! TCP and real files: a running guest that keeps writing memory, with
//! every virtio device, moves from the release to this build and back
//! again, and a VM saved to a file by either restores on the other. After
//! every move the guest's own checker verifies every page it wrote.

use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use vmm_tests::console::Vm;
use vmm_tests::peer::TapEcho;
use vmm_tests::qmp::Qmp;
use vmm_tests::vmm::{every_virtio_device, Vmm};
use vmm_tests::{free_port, TempDir};

const BOOT: Duration = Duration::from_secs(60);
const T: Duration = Duration::from_secs(60);
const GUEST: &str = "cpus=2 work=mem,counter mem_mb=64 tick_ms=100 max_gap_ms=3000 seed=11";

/// The releases that can migrate, as (version, vmm binary).
fn releases() -> Vec<(String, PathBuf)> {
    let record = std::fs::read_to_string(vmm_tests::workspace().join("tests/compat/releases"))
        .expect("read tests/compat/releases");
    let live: Vec<String> = record
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[2] == "live").then(|| f[0].to_string())
        })
        .collect();
    assert!(!live.is_empty(), "no release that migrates is recorded");
    live.into_iter()
        .map(|v| {
            let out = Command::new(vmm_tests::workspace().join("scripts/build-release.sh"))
                .arg(&v)
                .output()
                .expect("run scripts/build-release.sh");
            assert!(
                out.status.success(),
                "building release {v} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (v, PathBuf::from(dir).join("vmm"))
        })
        .collect()
}

/// The versioned machine types `binary` offers (`-M help`).
fn machine_types(binary: &std::path::Path) -> Vec<String> {
    let out = Command::new(binary)
        .args(["-M", "help"])
        .output()
        .expect("run -M help");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("pc-q35-"))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

/// Every (release, its binary, machine type) where the release and this
/// build both offer the machine type.
fn pairs() -> Vec<(String, PathBuf, String)> {
    let ours = machine_types(&vmm_tests::vmm::binary());
    let mut out = vec![];
    for (version, old) in releases() {
        for m in machine_types(&old) {
            if ours.contains(&m) {
                out.push((version.clone(), old.clone(), m));
            }
        }
    }
    assert!(
        !out.is_empty(),
        "no machine type in common with any release"
    );
    out
}

struct Node {
    vm: Vm,
    sock: PathBuf,
}

impl Node {
    fn qmp(&self) -> Qmp {
        Qmp::connect(&self.sock, T)
    }
}

/// Starts `binary` (None: this build) on machine type `machine` with the
/// guest and every virtio device: the disk every node in `dir` shares, the
/// NIC on `netdev`; waits for its monitor.
fn start(
    dir: &TempDir,
    netdev: &str,
    machine: &str,
    name: &str,
    binary: Option<&PathBuf>,
    extra: &[&str],
) -> Node {
    let sock = dir.path(&format!("{name}.sock"));
    let disk = dir.path("disk.img");
    if !disk.exists() {
        dir.image("disk.img", 1 << 20);
    }
    let mut v = Vmm::new()
        .args(["-M", machine, "-m", "256M", "-smp", "2"])
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", sock.display()),
        ])
        .args(every_virtio_device(&disk, netdev))
        .args(extra)
        .append(GUEST);
    v.binary = binary.cloned();
    let mut cmd = v.command();
    // What a destination adopts is logged at info (for the matrix).
    cmd.env("RUST_LOG", "info");
    let n = Node {
        vm: Vm::spawn(name, cmd),
        sock,
    };
    n.qmp();
    n
}

/// Who runs a node: a release's version, or this build.
fn who(version: &str, binary: Option<&PathBuf>) -> String {
    match binary {
        Some(_) => version.to_string(),
        None => "this build".into(),
    }
}

/// One hop that worked, for scripts/compat-matrix.sh: appended to the
/// file `VMM_COMPAT_MATRIX` names (one JSON object a line), with what the
/// destination adopted of its source's configuration.
fn note(machine: &str, from: &str, to: &str, how: &str, dst: &Node) {
    let Some(path) = std::env::var_os("VMM_COMPAT_MATRIX") else {
        return;
    };
    let carried: Vec<String> = dst
        .vm
        .lines()
        .iter()
        .filter_map(|l| {
            l.split("keeps its guest's hardware: ")
                .nth(1)
                .map(String::from)
        })
        .collect();
    let line = json!({"machine": machine, "from": from, "to": to, "how": how, "carried": carried});
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open VMM_COMPAT_MATRIX");
    writeln!(f, "{line}").expect("write VMM_COMPAT_MATRIX");
}

/// Moves `src` live to a new node running `binary`, its NIC on `netdev`
/// (another tap on the same bridge: the source holds its own until it
/// ends); the guest runs on there and finds every page it wrote.
fn live_move(
    dir: &TempDir,
    netdev: &str,
    machine: &str,
    (src, from): (Node, &str),
    name: &str,
    (binary, version): (Option<&PathBuf>, &str),
) -> Node {
    let listen = format!("tcp:127.0.0.1:{}", free_port());
    let mut dst = start(dir, netdev, machine, name, binary, &["-incoming", &listen]);
    let mut q = src.qmp();
    q.execute("migrate", json!({ "uri": listen }));
    let m = q.wait_migration(T);
    assert_eq!(
        m["status"],
        "completed",
        "{machine}: {m}\n{}\n{}",
        src.vm.log(),
        dst.vm.log()
    );
    // A release takes no channels with a session: this build asked it
    // first (the multifd probe, on by default) and sent one stream.
    if binary.is_some() {
        assert_eq!(m["multifd-channels-used"], 0, "{machine}: {m}");
    }
    drop(src);
    dst.vm.wait_ticks(dst.vm.ticks() + 2, BOOT);
    dst.vm.verify_memory(T);
    note(machine, from, &who(version, binary), "live", &dst);
    dst
}

/// Saves `src` to a file and restores it on a new node running `binary`.
fn file_move(
    dir: &TempDir,
    netdev: &str,
    machine: &str,
    (src, from): (Node, &str),
    name: &str,
    (binary, version): (Option<&PathBuf>, &str),
) -> Node {
    let file = dir.path(&format!("{name}.save"));
    let mut q = src.qmp();
    q.execute(
        "migrate",
        json!({ "uri": format!("file:{}", file.display()) }),
    );
    let m = q.wait_migration(T);
    assert_eq!(m["status"], "completed", "{machine}: {m}\n{}", src.vm.log());
    drop(src);
    let incoming = format!("file:{}", file.display());
    let mut dst = start(
        dir,
        netdev,
        machine,
        name,
        binary,
        &["-incoming", &incoming],
    );
    dst.vm.wait_ticks(dst.vm.ticks() + 2, BOOT);
    dst.vm.verify_memory(T);
    note(machine, from, &who(version, binary), "file", &dst);
    dst
}

#[test]
fn every_release_migrates_live_to_this_build_and_back_on_every_machine_type() {
    for (version, old, machine) in pairs() {
        let dir = TempDir::new(&format!("release-{version}-{machine}-live"));
        let net = TapEcho::bridged(2);
        let (a, b) = (net.netdev("n0"), net.netdev_other("n0", 0));
        let v = version.as_str();
        let src = start(&dir, &a, &machine, &format!("{v}-src"), Some(&old), &[]);
        src.vm.wait_ticks(3, BOOT);
        // A chain: the release, this build, the release, this build.
        let here = live_move(&dir, &b, &machine, (src, v), "this-build", (None, v));
        let back = live_move(
            &dir,
            &a,
            &machine,
            (here, "this build"),
            &format!("{v}-again"),
            (Some(&old), v),
        );
        let again = live_move(&dir, &b, &machine, (back, v), "this-build-again", (None, v));
        drop(again);
    }
}

#[test]
fn a_vm_saved_by_either_restores_on_the_other_on_every_machine_type() {
    for (version, old, machine) in pairs() {
        let dir = TempDir::new(&format!("release-{version}-{machine}-file"));
        let tap = TapEcho::start();
        let net = tap.netdev("n0");
        let v = version.as_str();
        let src = start(&dir, &net, &machine, &format!("{v}-saver"), Some(&old), &[]);
        src.vm.wait_ticks(3, BOOT);
        let here = file_move(&dir, &net, &machine, (src, v), "restored-here", (None, v));
        let back = file_move(
            &dir,
            &net,
            &machine,
            (here, "this build"),
            &format!("restored-on-{v}"),
            (Some(&old), v),
        );
        drop(back);
    }
}

/// vmm up to 0.2.0 carried no configuration and gave every machine type
/// the same root port and firmware tables: a read-only Secondary Latency
/// Timer, a link of x1 at 2.5 GT/s, the whole 64-bit PCI window in ACPI
/// and PCI0._UID 0. This build's machine types give what QEMU's of the
/// same name do (hw_compat_8_1, hw_compat_3_1, pc_compat_2_10, the 5.1
/// machine class). A guest started on the release keeps its hardware on
/// this build, through a reset (which rebuilds the board and its tables)
/// and onward to another process started without flags; started fresh,
/// it gets QEMU's. The guest itself reports all four at every boot, and the
/// topology CPUID tells it, which 0.2.0's guest keeps too.
#[test]
fn a_guest_from_a_release_keeps_its_root_port_and_acpi_through_resets() {
    let bridge = |writable: &str| {
        format!("pci.00:01.0.bridge secondary_latency_timer=0x0 writable={writable}")
    };
    let link = |speed: u32, width: u32| {
        format!(
            "pci.00:01.0.pcie version=2 port_type=4 link_max_speed={speed} link_max_width={width}"
        )
    };
    let windows = |n: u32| format!("acpi.dsdt.qword_memory_windows={n}");
    let uid = |n: u32| format!("acpi.dsdt.pci0_uid={n}");
    let released = [bridge("0x0"), link(1, 1), windows(1), uid(0)];
    // (machine type, what a fresh start there shows, what a 0.2.0 guest
    // keeps that differs)
    let cases = [
        (
            "pc-q35-2.7",
            [bridge("0xff"), link(1, 1), windows(0), uid(1)],
            &[
                "x-pci-express-writeable-slt-bug=off (here on)",
                "x-pci-hole64-fix=on (here off)",
                "x-pci-root-uid=0 (here 1)",
            ][..],
        ),
        (
            "pc-q35-8.0",
            [bridge("0xff"), link(4, 32), windows(1), uid(0)],
            &[
                "x-pci-express-writeable-slt-bug=off (here on)",
                "x-speed=2_5 (here 16)",
                "x-width=1 (here 32)",
            ][..],
        ),
    ];
    let all = releases();
    for (machine, fresh_shows, kept) in cases {
        let Some((version, old)) = all
            .iter()
            .find(|(_, b)| machine_types(b).iter().any(|m| m == machine))
        else {
            panic!("no recorded release offers {machine}");
        };
        let dir = TempDir::new(&format!("release-root-port-{machine}"));
        let node = |name: &str, binary: Option<&PathBuf>, extra: &[&str]| {
            let sock = dir.path(&format!("{name}.sock"));
            let mut v = Vmm::new()
                .args(["-M", machine, "-m", "128M"])
                .args(["-device", "pcie-root-port,id=rp0,chassis=1"])
                .args([
                    "-qmp",
                    &format!("unix:{},server=on,wait=off", sock.display()),
                ])
                .args(extra)
                .append("cpus=1 work=mem,counter mem_mb=16 tick_ms=100 max_gap_ms=5000 seed=5");
            v.binary = binary.cloned();
            let mut cmd = v.command();
            cmd.env("RUST_LOG", "info");
            let vm = Vm::spawn(name, cmd);
            Qmp::connect(&sock, T);
            (vm, sock)
        };
        // Each line once: one boot, and it showed that.
        let shows = |vm: &Vm, lines: &[String; 4]| {
            let counts: Vec<usize> = lines.iter().map(|want| vm.count(|l| l == want)).collect();
            assert_eq!(counts, [1; 4], "{machine}: {lines:?}\n{}", vm.log());
        };
        let reboot = |vm: &Vm, sock: &PathBuf| {
            Qmp::connect(sock, T).execute("system_reset", json!({}));
            vm.wait_prefix("mem.filled", BOOT);
        };
        let migrate = |from: &PathBuf, to: &str| {
            let mut q = Qmp::connect(from, T);
            q.execute("migrate", json!({ "uri": to }));
            assert_eq!(q.wait_migration(T)["status"], "completed");
        };

        let (src, src_sock) = node(version, Some(old), &[]);
        src.wait_prefix("mem.filled", BOOT);
        shows(&src, &released);
        // The topology CPUID told the guest (leaves 1, 0xB, 0x80000008).
        let topology = |vm: &Vm| vm.wait_prefix("smp.topology", BOOT);
        let released_topology = topology(&src);

        let uri = format!("tcp:127.0.0.1:{}", free_port());
        let (mut one, one_sock) = node("this-build", None, &["-incoming", &uri]);
        migrate(&src_sock, &uri);
        drop(src);
        one.wait_ticks(one.ticks() + 2, T);
        one.verify_memory(T);
        for k in kept {
            assert!(one.log().contains(k), "{machine}: {k}\n{}", one.log());
        }
        // The console here begins after the move: the reset's boot is
        // its first.
        reboot(&one, &one_sock);
        shows(&one, &released);
        assert_eq!(topology(&one), released_topology, "{}", one.log());

        let uri = format!("tcp:127.0.0.1:{}", free_port());
        let (two, two_sock) = node("onward", None, &["-incoming", &uri]);
        migrate(&one_sock, &uri);
        drop(one);
        reboot(&two, &two_sock);
        shows(&two, &released);
        assert_eq!(topology(&two), released_topology, "{}", two.log());
        drop(two);

        let (fresh, _) = node("fresh", None, &[]);
        fresh.wait_prefix("mem.filled", BOOT);
        shows(&fresh, &fresh_shows);
    }
}

/// The VM every kept stream is of (`tests/compat/vmm-VERSION/streams/`):
/// its size and vCPUs, with every virtio device, and the guest it ran: a
/// small one, so that a stream (untouched pages are not in it) is small.
const STREAM_VM: [&str; 4] = ["-m", "128M", "-smp", "2"];
const STREAM_GUEST: &str =
    "cpus=2 work=mem,counter mem_pages=32 tick_ms=100 max_gap_ms=5000 seed=21";

/// Where release `version`'s kept streams are.
fn streams_of(version: &str) -> PathBuf {
    vmm_tests::workspace().join(format!("tests/compat/vmm-{version}/streams"))
}

/// Not a check: `scripts/freeze-streams.sh VERSION` runs it to keep, for
/// a recorded release, one saved stream per machine type it offers (the
/// guest running, every device in use), gzipped, for
/// `every_kept_stream_loads_and_runs_on_this_build`.
#[test]
#[ignore = "run by scripts/freeze-streams.sh"]
fn freeze_saved_streams() {
    let version = std::env::var("VMM_FREEZE_STREAMS").expect("VMM_FREEZE_STREAMS=VERSION");
    let (_, binary) = releases()
        .into_iter()
        .find(|(v, _)| *v == version)
        .unwrap_or_else(|| panic!("{version} is not a recorded release that migrates"));
    let out = streams_of(&version);
    std::fs::create_dir_all(&out).expect("create the streams directory");
    for machine in machine_types(&binary) {
        let dir = TempDir::new(&format!("freeze-{version}-{machine}"));
        let tap = TapEcho::start();
        let sock = dir.path("qmp.sock");
        let disk = dir.image("disk.img", 1 << 20);
        let mut v = Vmm::new()
            .args(["-M", &machine])
            .args(STREAM_VM)
            .args([
                "-qmp",
                &format!("unix:{},server=on,wait=off", sock.display()),
            ])
            .args(every_virtio_device(&disk, &tap.netdev("n0")))
            .append(STREAM_GUEST);
        v.binary = Some(binary.clone());
        let vm = v.spawn(&format!("{version}-{machine}"));
        vm.wait_prefix("mem.filled", BOOT);
        vm.wait_ticks(3, T);
        let saved = dir.path("saved.vmm");
        let mut q = Qmp::connect(&sock, T);
        q.execute(
            "migrate",
            json!({ "uri": format!("file:{}", saved.display()) }),
        );
        assert_eq!(q.wait_migration(T)["status"], "completed", "{}", vm.log());
        let gz = out.join(format!("{machine}.vmm.gz"));
        let zipped = Command::new("gzip")
            .args(["-9", "-n", "-c"])
            .arg(&saved)
            .output()
            .expect("run gzip");
        assert!(zipped.status.success());
        std::fs::write(&gz, &zipped.stdout).expect("write the stream");
        eprintln!(
            "{}: {} bytes ({} gzipped)",
            gz.display(),
            std::fs::metadata(&saved).map(|m| m.len()).unwrap_or(0),
            zipped.stdout.len()
        );
    }
}

/// A VM saved by every release that migrates, on every machine type it
/// offered, kept in the repository: this build loads each (no old binary
/// needed) into a VM of the same shape and the guest runs on and finds
/// every page it wrote.
#[test]
fn every_kept_stream_loads_and_runs_on_this_build() {
    let record = std::fs::read_to_string(vmm_tests::workspace().join("tests/compat/releases"))
        .expect("read tests/compat/releases");
    let mut loaded = 0;
    for line in record.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 3 || f[2] != "live" {
            continue;
        }
        let version = f[0];
        // The machine types the release offered: its vmstate dumps.
        let dumps = vmm_tests::workspace().join(format!("tests/compat/vmm-{version}"));
        let mut machines: Vec<String> = std::fs::read_dir(&dumps)
            .unwrap_or_else(|e| panic!("{}: {e}", dumps.display()))
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".json").map(String::from))
            .collect();
        machines.sort();
        for machine in machines {
            let gz = streams_of(version).join(format!("{machine}.vmm.gz"));
            assert!(
                gz.exists(),
                "{version} offered {machine} but kept no stream of it: scripts/freeze-streams.sh {version}"
            );
            let dir = TempDir::new(&format!("kept-{version}-{machine}"));
            let stream = dir.write("saved.vmm", &gunzip(&gz));
            let tap = TapEcho::start();
            let disk = dir.image("disk.img", 1 << 20);
            let mut vm = Vmm::new()
                .args(["-M", &machine])
                .args(STREAM_VM)
                .args(every_virtio_device(&disk, &tap.netdev("n0")))
                .args(["-incoming", &format!("file:{}", stream.display())])
                .append(STREAM_GUEST)
                .spawn(&format!("{version}-{machine}-here"));
            vm.wait_ticks(vm.ticks() + 3, BOOT);
            vm.verify_memory(T);
            loaded += 1;
        }
    }
    assert!(loaded > 0, "no release keeps a stream");
}

fn gunzip(path: &std::path::Path) -> Vec<u8> {
    let out = Command::new("gzip")
        .args(["-d", "-c"])
        .arg(path)
        .output()
        .expect("run gzip");
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
