//! The soak: consecutive live migrations of a guest that writes its memory
//! and, during the first hops, its disk (one image, handed over at every
//! hop), with a fault in every other hop — the destination killed while RAM
//! flows or while the source is paused, a destination that stalls, one
//! that refuses the stream, probes on the port. After every failure the
//! source must run on; after every success the guest checks every page;
//! at the end the guest's disk check and the image itself must be intact.
//!
//! `VMM_SOAK_HOPS` sets the number of hops (6 in the test suite;
//! `scripts/soak.sh` runs 100), `VMM_SOAK_SEED` the order of the faults.

use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmm_tests::console::{field, Vm};
use vmm_tests::qmp::Qmp;
use vmm_tests::vmm::Vmm;
use vmm_tests::{blk_pattern, free_port, TempDir};

const T: Duration = Duration::from_secs(60);
const GUEST: &str =
    "cpus=2 work=mem,counter mem_mb=64 tick_ms=100 max_gap_ms=5000 seed=41 msix=1 blk_mb=96 blk_big_sector=8192";

struct Node {
    vm: Vm,
    sock: PathBuf,
    uri: String,
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

/// A node named `name`: the fault-injection build (its hooks are set by
/// `env`), the shared disk, `-incoming` on a fresh port unless `first`.
fn node(dir: &TempDir, name: &str, first: bool, extra: &[&str], env: &[(&str, &str)]) -> Node {
    let sock = dir.path(&format!("{name}.sock"));
    let img = dir.path("disk.raw");
    let uri = format!("tcp:127.0.0.1:{}", free_port());
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
        vm: Vm::spawn(name, cmd),
        sock,
        uri,
    };
    n.qmp();
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
fn hop(dir: &TempDir, mut src: Node, i: usize, fault: Fault, disk: &mut Option<String>) -> Node {
    let name = format!("n{i}");
    let mut q = src.qmp();
    match fault {
        Fault::None | Fault::Probed => {
            let mut dst = node(dir, &name, false, &[], &[]);
            if let Fault::Probed = fault {
                use std::io::Write;
                let addr = dst.uri.strip_prefix("tcp:").unwrap().to_string();
                drop(std::net::TcpStream::connect(&addr).unwrap());
                let mut junk = std::net::TcpStream::connect(&addr).unwrap();
                let _ = junk.write_all(b"GET / HTTP/1.0\r\n\r\n");
            }
            q.execute("migrate", json!({ "uri": dst.uri }));
            let m = q.wait_migration(T);
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
            let mut dst = node(dir, &name, false, &[], &[]);
            q.execute("migrate", json!({ "uri": dst.uri }));
            std::thread::sleep(Duration::from_millis(400));
            dst.vm.kill();
            let m = q.wait_migration(T);
            assert_eq!(m["status"], "failed", "hop {i} ({fault:?}): {m}");
            q.execute("migrate-set-parameters", json!({"max-bandwidth": 0}));
            still_running(&mut src);
            src
        }
        Fault::KilledWhilePaused | Fault::Stalled => {
            let env = match fault {
                Fault::Stalled => ("VMM_TEST_DELAY_DEVICES_MS", "25000"),
                _ => ("VMM_TEST_DELAY_LOADED_MS", "3000"),
            };
            let mut dst = node(dir, &name, false, &[], &[env]);
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
            let mut dst = node(dir, &name, false, &["-M", "pc-q35-7.2"], &[]);
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
    let hops = env("VMM_SOAK_HOPS", 6) as usize;
    let mut seed = env("VMM_SOAK_SEED", 1);
    let faults = [
        Fault::KilledMidRam,
        Fault::KilledWhilePaused,
        Fault::Stalled,
        Fault::Refused,
        Fault::Probed,
    ];
    let dir = TempDir::new("soak");
    std::fs::File::create(dir.path("disk.raw"))
        .and_then(|f| f.set_len(128 << 20))
        .unwrap();
    let mut cur = node(&dir, "n0", true, &[], &[]);
    // The first hops run while the guest's disk check writes.
    cur.vm.wait_prefix("virtio.00:01.0.blk queues_used", T);
    let mut disk = None;
    let t0 = Instant::now();
    let mut failed = 0;
    for i in 1..=hops {
        // Every other hop a fault, chosen by a small xorshift.
        let fault = if i % 2 == 0 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            faults[(seed % faults.len() as u64) as usize]
        } else {
            Fault::None
        };
        eprintln!("soak: hop {i}/{hops}: {fault:?} ({:.0?} in)", t0.elapsed());
        failed += !matches!(fault, Fault::None | Fault::Probed) as usize;
        cur = hop(&dir, cur, i, fault, &mut disk);
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
