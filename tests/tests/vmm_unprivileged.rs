//! vmm needs no root: as an ordinary user in group `kvm` (scripts/setup.sh
//! makes `vmm-test`), it boots, serves QMP, saves and restores, and
//! migrates live; `-runas` makes a vmm started as root that user before it
//! opens anything.

use serde_json::json;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;
use vmm_tests::console::Vm;
use vmm_tests::qmp::Qmp;
use vmm_tests::vmm::Vmm;
use vmm_tests::{free_port, unprivileged_user, TempDir};

const T: Duration = Duration::from_secs(60);
const GUEST: &str = "cpus=1 work=mem,counter mem_mb=32 tick_ms=100 max_gap_ms=5000 seed=3";

/// The uid process `pid` runs as (real, effective, saved, fs all equal).
fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ids: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(ids.iter().all(|&i| i == ids[0]), "mixed uids {ids:?}");
    ids[0]
}

/// vmm `name` with a disk and a monitor in `dir`, run as the test user;
/// `extra` options.
fn user_vmm(dir: &TempDir, name: &str, extra: &[&str]) -> (Vm, PathBuf) {
    let (uid, gid) = unprivileged_user();
    let sock = dir.path(&format!("{name}.sock"));
    let drive = format!(
        "file={},if=none,id=d0,format=raw",
        dir.path("disk.raw").display()
    );
    let mut cmd = Vmm::new()
        .args(["-m", "128M", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .args(["-drive", &drive, "-device", "virtio-blk-pci,drive=d0"])
        .args(extra)
        .append(GUEST)
        .as_root()
        .command();
    cmd.uid(uid).gid(gid);
    let vm = Vm::spawn(name, cmd);
    assert_eq!(uid_of(vm.pid()), uid);
    (vm, sock)
}

/// Saves the VM behind `q` to `file` (`migrate file:`).
fn save(q: &mut Qmp, file: &std::path::Path) {
    q.execute(
        "migrate",
        json!({"uri": format!("file:{}", file.display())}),
    );
    assert_eq!(q.wait_migration(T)["status"], "completed");
}

#[test]
fn an_unprivileged_vmm_boots_saves_restores_and_migrates() {
    let dir = TempDir::new("unprivileged");
    dir.image("disk.raw", 16 << 20);
    // Boot and QMP.
    let (vm, sock) = user_vmm(&dir, "boot", &[]);
    vm.wait_prefix("mem.filled", T);
    let mut q = Qmp::connect(&sock, T);
    assert_eq!(q.execute("query-status", json!({}))["status"], "running");
    // Save to a file and restore from it.
    let saved = dir.path("saved.vmm");
    save(&mut q, &saved);
    drop(vm);
    let incoming = format!("file:{}", saved.display());
    let (mut restored, sock) = user_vmm(&dir, "restored", &["-incoming", &incoming]);
    restored.wait_ticks(restored.ticks() + 2, T);
    restored.verify_memory(T);
    // And live, to another unprivileged vmm.
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let (mut moved, moved_sock) = user_vmm(&dir, "moved", &["-incoming", &uri]);
    // It listens once its monitor answers.
    Qmp::connect(&moved_sock, T);
    let mut q = Qmp::connect(&sock, T);
    q.execute("migrate", json!({ "uri": uri }));
    let m = q.wait_migration(T);
    assert_eq!(m["status"], "completed", "{m}\n{}", moved.log());
    drop(restored);
    moved.wait_ticks(moved.ticks() + 2, T);
    moved.verify_memory(T);
}

/// Started as root with `-runas vmm-test`, vmm is that user (and its
/// group) before it opens anything, for good: the guest runs.
#[test]
fn runas_drops_root_before_anything_is_opened() {
    let (uid, gid) = unprivileged_user();
    let dir = TempDir::new("runas");
    let sock = dir.path("q.sock");
    let vm = Vmm::new()
        .as_root()
        .args(["-m", "128M", "-runas", "vmm-test", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .append(GUEST)
        .spawn("runas");
    vm.wait_prefix("mem.filled", T);
    assert_eq!(uid_of(vm.pid()), uid);
    let status = std::fs::read_to_string(format!("/proc/{}/status", vm.pid())).unwrap();
    let gids = status.lines().find_map(|l| l.strip_prefix("Gid:")).unwrap();
    assert!(
        gids.split_whitespace().all(|g| g == gid.to_string()),
        "{gids}"
    );
    // The monitor's socket is the user's.
    let meta = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&sock).unwrap());
    assert_eq!(meta, uid);
    let mut q = Qmp::connect(&sock, T);
    assert_eq!(q.execute("query-status", json!({}))["status"], "running");
    // Its own page map stays readable (a process that changed its uid
    // is not dumpable, and its /proc files are root's): a save reads
    // only the pages the guest touched.
    let saved = dir.path("saved.vmm");
    save(&mut q, &saved);
    assert!(!vm.log().contains("pagemap"), "{}", vm.log());
    // A user that does not exist: one sentence, before anything runs.
    let mut bad = Vmm::new()
        .as_root()
        .args(["-m", "128M", "-runas", "no-such-user-here"])
        .append(GUEST)
        .spawn("runas-bad");
    assert_eq!(bad.wait_exit(T).code(), Some(1));
    assert!(
        bad.log().contains("-runas no-such-user-here: no such user"),
        "{}",
        bad.log()
    );
}
