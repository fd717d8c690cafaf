//! The soak: consecutive live migrations between two hosts (two network
//! namespaces joined by a veth pair) of a guest that writes its memory
//! and, during the first hops, its disk (one image, handed over at every
//! hop), with a fault in every other hop — the destination killed while RAM
//! flows or while the source is paused, a destination that stalls, one
//! that refuses the stream, probes on the port, the link cut silently
//! mid-RAM, a stranger's multifd channel waiting on the port. After every
//! failure the source must run on; after every success the guest checks
//! every page; at the end the guest's disk check and the image itself must
//! be intact.
//!
//! `VMM_SOAK_HOPS` sets the number of hops (14 in the test suite, each
//! fault once;
//! `scripts/soak.sh` runs 100), `VMM_SOAK_SEED` the order of the faults.

use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmm_tests::console::{field, Vm};
use vmm_tests::netns::{probe, wait_for_listener, Hosts};
use vmm_tests::qmp::Qmp;
use vmm_tests::vmm::{in_netns, Vmm};
use vmm_tests::{blk_pattern, TempDir};

const T: Duration = Duration::from_secs(60);
const GUEST: &str =
    "cpus=2 work=mem,counter mem_mb=64 tick_ms=100 max_gap_ms=5000 seed=41 msix=1 blk_mb=96 blk_big_sector=8192";

struct Node {
    vm: Vm,
    sock: PathBuf,
    /// On host A (or B).
    on_a: bool,
    /// Where it listens for the guest (`tcp:ADDR:PORT`), and the port.
    uri: String,
    port: u16,
}

impl Node {
    fn qmp(&self) -> Qmp {
        Qmp::connect(&self.sock, T)
    }
    fn status(&self) -> String {
        self.qmp().execute("query-status", json!({}))["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Where a node runs: host A or B, and the hop it is for (its port).
struct Place<'a> {
    hosts: &'a Hosts,
    on_a: bool,
    hop: usize,
}

/// A node named `name` at `at`: the fault-injection build (its hooks are
/// set by `env`), the shared disk, `-incoming` unless `first`.
fn node(
    dir: &TempDir,
    name: &str,
    at: Place,
    first: bool,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Node {
    let sock = dir.path(&format!("{name}.sock"));
    let img = dir.path("disk.raw");
    let port = 4400 + at.hop as u16;
    let uri = format!("tcp:{}:{port}", at.hosts.addr(at.on_a));
    let drive = format!("file={},if=none,id=d0,format=raw", img.display());
    let mut v = Vmm::new()
        .args(["-m", "256M", "-smp", "2"])
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", sock.display()),
        ])
        .args(["-drive", &drive, "-device", "virtio-blk-pci,drive=d0"])
        .args(extra)
        .append(GUEST);
    if !first {
        v = v.args(["-incoming", &uri]);
    }
    v.binary = Some(vmm_tests::vmm::fault_injection_binary());
    let mut cmd = v.command();
    for (k, val) in env {
        cmd.env(k, val);
    }
    let n = Node {
        vm: Vm::spawn(name, in_netns(at.hosts.ns(at.on_a), cmd)),
        sock,
        on_a: at.on_a,
        uri,
        port,
    };
    n.qmp();
    if !first {
        wait_for_listener(at.hosts.ns(at.on_a), port, T);
    }
    n
}

fn wait_status(q: &mut Qmp, want: &str) {
    let deadline = Instant::now() + T;
    while q.execute("query-status", json!({}))["status"] != want {
        assert!(Instant::now() < deadline, "never {want}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What a hop does besides migrating.
#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    KilledMidRam,
    KilledWhilePaused,
    Stalled,
    Refused,
    Probed,
    LinkCut,
    StrayChannel,
}

/// The source after a failed hop: running, counting, every page intact.
fn still_running(src: &mut Node) {
    assert_eq!(src.status(), "running", "{}", src.vm.log());
    let n = src.vm.ticks();
    src.vm.wait_ticks(n + 2, T);
    src.vm.verify_memory(T);
}

/// The guest's disk check, once some node printed it.
fn disk_check(vm: &Vm) -> Option<String> {
    vm.lines()
        .into_iter()
        .find(|l| l.starts_with("virtio.00:01.0.blk big_mb"))
}

/// One hop from `src` with `fault`; returns the node the guest runs on.
/// The guest's disk check is kept in `disk` wherever it ended.
fn hop(
    dir: &TempDir,
    hosts: &Hosts,
    mut src: Node,
    i: usize,
    fault: Fault,
    disk: &mut Option<String>,
) -> Node {
    let name = format!("n{i}");
    let mut q = src.qmp();
    // The destination is on the other host.
    let there = || Place {
        hosts,
        on_a: !src.on_a,
        hop: i,
    };
    let (src_ns, dst_addr) = (hosts.ns(src.on_a), hosts.addr(!src.on_a));
    match fault {
        Fault::None | Fault::Probed | Fault::StrayChannel => {
            let mut dst = node(dir, &name, there(), false, &[], &[]);
            let mut stray = None;
            match fault {
                Fault::Probed => probe(src_ns, &dst_addr, dst.port),
                Fault::StrayChannel => {
                    // A channel in 0.2.0's shape, claiming to be 0 of 1,
                    // silent; the guest moves on two channels of its own.
                    let script = format!(
                        "exec 3<>/dev/tcp/{dst_addr}/{}; printf 'VMMMFD01\\0\\0\\0\\0\\0\\0\\0\\1' >&3; sleep 60",
                        dst.port
                    );
                    stray = Some(
                        std::process::Command::new("ip")
                            .args(["netns", "exec", src_ns, "bash", "-c", &script])
                            .spawn()
                            .unwrap(),
                    );
                    std::thread::sleep(Duration::from_millis(200));
                    q.execute(
                        "migrate-set-capabilities",
                        json!({"capabilities": [{"capability": "multifd", "state": true}]}),
                    );
                }
                _ => {}
            }
            q.execute("migrate", json!({ "uri": dst.uri }));
            let m = q.wait_migration(T);
            if let Some(mut s) = stray {
                let _ = s.kill();
                let _ = s.wait();
                assert_eq!(m["multifd-channels-used"], 4, "hop {i}: {m}");
            }
            assert_eq!(
                m["status"],
                "completed",
                "hop {i} ({fault:?}): {m}\n{}",
                dst.vm.log()
            );
            *disk = disk.take().or_else(|| disk_check(&src.vm));
            drop(src);
            let n = dst.vm.ticks();
            dst.vm.wait_ticks(n + 2, T);
            dst.vm.verify_memory(T);
            dst
        }
        Fault::KilledMidRam => {
            q.execute(
                "migrate-set-parameters",
                json!({"max-bandwidth": 16u64 << 20}),
            );
            let mut dst = node(dir, &name, there(), false, &[], &[]);
            q.execute("migrate", json!({ "uri": dst.uri }));
            q.wait_ram_sent(T);
            dst.vm.kill();
            let m = q.wait_migration(T);
            assert_eq!(m["status"], "failed", "hop {i} ({fault:?}): {m}");
            q.execute("migrate-set-parameters", json!({"max-bandwidth": 0}));
            still_running(&mut src);
            src
        }
        Fault::LinkCut => {
            q.execute(
                "migrate-set-parameters",
                json!({"max-bandwidth": 16u64 << 20}),
            );
            let mut dst = node(dir, &name, there(), false, &[], &[]);
            q.execute("migrate", json!({ "uri": dst.uri }));
            q.wait_ram_sent(T);
            hosts.cut();
            let m = q.wait_migration(T);
            hosts.mend();
            assert_eq!(m["status"], "failed", "hop {i} ({fault:?}): {m}");
            q.execute("migrate-set-parameters", json!({"max-bandwidth": 0}));
            // The half-fed destination gives up on its own.
            assert_ne!(dst.vm.wait_exit(T).code(), Some(0));
            still_running(&mut src);
            src
        }
        Fault::KilledWhilePaused | Fault::Stalled => {
            let env = match fault {
                Fault::Stalled => ("VMM_TEST_DELAY_DEVICES_MS", "25000"),
                _ => ("VMM_TEST_DELAY_LOADED_MS", "30000"),
            };
            let mut dst = node(dir, &name, there(), false, &[], &[env]);
            q.execute("migrate", json!({ "uri": dst.uri }));
            wait_status(&mut q, "finish-migrate");
            if let Fault::KilledWhilePaused = fault {
                std::thread::sleep(Duration::from_millis(300));
                dst.vm.kill();
            }
            let m = q.wait_migration(T);
            assert_eq!(m["status"], "failed", "hop {i} ({fault:?}): {m}");
            dst.vm.kill();
            still_running(&mut src);
            src
        }
        Fault::Refused => {
            let mut dst = node(dir, &name, there(), false, &["-M", "pc-q35-7.2"], &[]);
            q.execute("migrate", json!({ "uri": dst.uri }));
            let m = q.wait_migration(T);
            assert_eq!(m["status"], "failed", "hop {i} ({fault:?}): {m}");
            // Refused at the machine type: it waits on for a real source.
            assert_eq!(dst.status(), "inmigrate");
            dst.vm.kill();
            still_running(&mut src);
            src
        }
    }
}

/// The disk the guest wrote at the first hops holds its pattern.
fn check_image(img: &Path) {
    let data = std::fs::read(img).unwrap();
    for s in (8192..8192 + (96u64 << 11)).step_by(97) {
        let off = (s * 512) as usize;
        let got = u64::from_le_bytes(data[off..off + 8].try_into().unwrap());
        assert_eq!(got, blk_pattern(41, s, 0), "sector {s}");
    }
}

#[test]
fn migrations_with_faults_lose_nothing() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let hops = env("VMM_SOAK_HOPS", 14) as usize;
    let mut seed = env("VMM_SOAK_SEED", 1);
    let mut faults = [
        Fault::KilledMidRam,
        Fault::KilledWhilePaused,
        Fault::Stalled,
        Fault::Refused,
        Fault::Probed,
        Fault::LinkCut,
        Fault::StrayChannel,
    ];
    let dir = TempDir::new("soak");
    dir.image("disk.raw", 128 << 20);
    let hosts = Hosts::new();
    let at = Place {
        hosts: &hosts,
        on_a: true,
        hop: 0,
    };
    let mut cur = node(&dir, "n0", at, true, &[], &[]);
    // The first hops run while the guest's disk check writes.
    cur.vm.wait_prefix("virtio.00:01.0.blk queues_used", T);
    let mut disk = None;
    let t0 = Instant::now();
    let mut failed = 0;
    for i in 1..=hops {
        // Every other hop a fault: each kind in turn, in an order a small
        // xorshift shuffles anew for every round.
        let fault = if i % 2 == 0 {
            let k = (i / 2 - 1) % faults.len();
            if k == 0 {
                for j in (1..faults.len()).rev() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    faults.swap(j, (seed % (j as u64 + 1)) as usize);
                }
            }
            faults[k]
        } else {
            Fault::None
        };
        eprintln!("soak: hop {i}/{hops}: {fault:?} ({:.0?} in)", t0.elapsed());
        failed += !matches!(fault, Fault::None | Fault::Probed | Fault::StrayChannel) as usize;
        cur = hop(&dir, &hosts, cur, i, fault, &mut disk);
    }
    eprintln!(
        "soak: {hops} hops, {failed} failed on purpose, in {:.1?}",
        t0.elapsed()
    );
    // The disk check ran to its end somewhere along the way, clean.
    cur.vm.wait_ticks(cur.vm.ticks() + 2, T);
    let l = disk
        .or_else(|| disk_check(&cur.vm))
        .expect("the guest's disk check never ended");
    assert_eq!(field(&l, "errors").as_deref(), Some("0"), "{l}");
    assert_eq!(field(&l, "bad_words").as_deref(), Some("0"), "{l}");
    cur.vm.verify_memory(T);
    check_image(&dir.path("disk.raw"));
}
