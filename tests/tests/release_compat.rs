//! Every recorded release that can migrate (`tests/compat/releases`),
//! built from its own commit by `scripts/build-release.sh`, against this
//! build, with real processes over real TCP and real files: a running
//! guest that keeps writing memory moves from the release to this build
//! and back again, and a VM the release saved to a file restores here.
//! After every move the guest's own checker verifies every page it wrote.

use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use vmm_tests::console::Vm;
use vmm_tests::qmp::Qmp;
use vmm_tests::vmm::Vmm;
use vmm_tests::{free_port, TempDir};

const BOOT: Duration = Duration::from_secs(60);
const T: Duration = Duration::from_secs(60);
const GUEST: &str = "cpus=2 work=mem,counter mem_mb=64 tick_ms=100 max_gap_ms=3000 seed=11";
/// A machine type every release that migrates has.
const MACHINE: &str = "pc-q35-8.0";

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

struct Node {
    vm: Vm,
    sock: PathBuf,
}

impl Node {
    fn qmp(&self) -> Qmp {
        Qmp::connect(&self.sock, T)
    }
}

/// Starts `binary` (None: this build) with the guest and one virtio disk
/// and rng; waits for its monitor.
fn start(dir: &TempDir, name: &str, binary: Option<&PathBuf>, extra: &[&str]) -> Node {
    let sock = dir.path(&format!("{name}.sock"));
    let disk = dir.path("disk.img");
    if !disk.exists() {
        dir.image("disk.img", 1 << 20);
    }
    let mut v = Vmm::new()
        .args(["-M", MACHINE, "-m", "256M", "-smp", "2"])
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", sock.display()),
        ])
        .args([
            "-drive",
            &format!("file={},if=none,id=d0,format=raw", disk.display()),
            "-device",
            "virtio-blk-pci,drive=d0",
            "-device",
            "virtio-rng-pci",
        ])
        .args(extra)
        .append(GUEST);
    v.binary = binary.cloned();
    let n = Node {
        vm: v.spawn(name),
        sock,
    };
    n.qmp();
    n
}

/// Moves `src` live to a new node running `binary`; the guest runs on
/// there and finds every page it wrote.
fn live_move(dir: &TempDir, src: Node, name: &str, binary: Option<&PathBuf>) -> Node {
    let listen = format!("tcp:127.0.0.1:{}", free_port());
    let mut dst = start(dir, name, binary, &["-incoming", &listen]);
    let mut q = src.qmp();
    q.execute("migrate", json!({ "uri": listen }));
    let m = q.wait_migration(T);
    assert_eq!(
        m["status"],
        "completed",
        "{m}\n{}\n{}",
        src.vm.log(),
        dst.vm.log()
    );
    drop(src);
    dst.vm.wait_ticks(dst.vm.ticks() + 2, BOOT);
    dst.vm.verify_memory(T);
    dst
}

#[test]
fn every_release_migrates_live_to_this_build_and_back() {
    for (version, old) in releases() {
        let dir = TempDir::new(&format!("release-{version}-live"));
        let src = start(&dir, &format!("{version}-src"), Some(&old), &[]);
        src.vm.wait_ticks(3, BOOT);
        let here = live_move(&dir, src, "this-build", None);
        let back = live_move(&dir, here, &format!("{version}-again"), Some(&old));
        drop(back);
    }
}

#[test]
fn a_vm_saved_by_every_release_restores_here() {
    for (version, old) in releases() {
        let dir = TempDir::new(&format!("release-{version}-file"));
        let src = start(&dir, &format!("{version}-saver"), Some(&old), &[]);
        src.vm.wait_ticks(3, BOOT);
        let file = dir.path("vm.save");
        let mut q = src.qmp();
        q.execute(
            "migrate",
            json!({ "uri": format!("file:{}", file.display()) }),
        );
        let m = q.wait_migration(T);
        assert_eq!(m["status"], "completed", "{m}\n{}", src.vm.log());
        drop(src);
        let incoming = format!("file:{}", file.display());
        let mut dst = start(&dir, "restored", None, &["-incoming", &incoming]);
        dst.vm.wait_ticks(dst.vm.ticks() + 2, BOOT);
        dst.vm.verify_memory(T);
    }
}
