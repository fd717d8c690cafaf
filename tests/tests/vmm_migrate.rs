//! Live migration between vmm processes over real TCP: a guest that keeps
//! writing memory moves A -> B -> C -> A and its own checker verifies
//! every page; block I/O in flight; two "hosts" in network namespaces;
//! and every failure (destination killed mid-RAM or while the source is
//! paused, a cut link, a wrong machine type, cancel) leaves the source
//! running with nothing lost, ready to migrate again.

use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use vmm_tests::console::{field, Vm};
use vmm_tests::netns::{wait_for_listener, Hosts};
use vmm_tests::qmp::Qmp;
use vmm_tests::vmm::Vmm;
use vmm_tests::{blk_pattern, free_port, TempDir};

const BOOT: Duration = Duration::from_secs(60);
const T: Duration = Duration::from_secs(60);
const GUEST: &str = "cpus=2 work=mem,counter mem_mb=64 tick_ms=100 max_gap_ms=3000 seed=7";

struct Node {
    vm: Vm,
    sock: PathBuf,
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

fn vmm(dir: &TempDir, name: &str, extra: &[&str]) -> (Vmm, PathBuf) {
    let sock = dir.path(&format!("{name}.sock"));
    let _ = std::fs::remove_file(&sock);
    let v = Vmm::new()
        .args(["-m", "256M", "-smp", "2"])
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", sock.display()),
        ])
        .args(extra)
        .append(GUEST);
    (v, sock)
}

/// Starts a vmm and waits for its monitor (a destination listens by then).
fn start(dir: &TempDir, name: &str, extra: &[&str]) -> Node {
    let (v, sock) = vmm(dir, name, extra);
    let n = Node {
        vm: v.spawn(name),
        sock,
    };
    n.qmp();
    n
}

fn ticks(vm: &Vm) -> Vec<u64> {
    ticks_in(&vm.lines())
}

fn ticks_in(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        // One tick a line (a cut line printed again whole would hold two).
        .filter(|l| l.matches("tick").count() == 1)
        .filter(|l| l.starts_with("tick n="))
        .filter_map(|l| field(l, "n")?.parse().ok())
        .collect()
}

fn wait_ticks(vm: &Vm, n: usize) -> u64 {
    let deadline = Instant::now() + BOOT;
    loop {
        let t = ticks(vm);
        if t.len() >= n {
            return *t.last().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} ticks\n{}",
            vm.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a migration and polls until it ends; the final query-migrate.
fn migrate(src: &Node, uri: &str) -> Value {
    let mut q = src.qmp();
    q.execute("migrate", json!({ "uri": uri }));
    let m = q.wait_migration(T);
    if m["status"] == "completed" {
        // The destination confirmed that a vCPU runs (RUNNING, which ends
        // the downtime the source reports); no warning about it.
        let log = src.vm.log();
        assert!(!log.contains("after GO"), "{log}");
    }
    m
}

/// The guest's own verdict on every page it wrote.
fn verify(vm: &mut Vm) {
    let before = vm.count(|l| l.starts_with("mem.verify") && l.contains("reason=request"));
    vm.send(b"v");
    vm.wait_count("a verify", before + 1, T, |l| {
        l.starts_with("mem.verify") && l.contains("reason=request")
    });
    let v = vm
        .lines()
        .into_iter()
        .rfind(|l| l.starts_with("mem.verify") && l.contains("reason=request"))
        .unwrap();
    assert_eq!(
        field(&v, "bad_pages").as_deref(),
        Some("0"),
        "{v}\n{}",
        vm.log()
    );
}

/// Starts destination `name` (with `extra` options) listening on a free
/// loopback port; returns it and the URI to migrate to.
fn incoming(dir: &TempDir, name: &str, extra: &[&str]) -> (Node, String) {
    let port = free_port();
    let listen = format!("tcp:127.0.0.1:{port}");
    let mut a = extra.to_vec();
    a.extend_from_slice(&["-incoming", &listen]);
    (start(dir, name, &a), listen)
}

/// Moves `src` to the waiting `dst` at `uri`; the guest runs on there and
/// finds every page it wrote.
fn hand_over(src: Node, dst: &mut Node, uri: &str) {
    let m = migrate(&src, uri);
    assert_eq!(m["status"], "completed", "{m}\n{}", dst.vm.log());
    drop(src);
    wait_ticks(&dst.vm, 2);
    verify(&mut dst.vm);
}

/// Moves `src` to a new destination `name` (with `extra` options), then
/// has the guest verify every page there; returns the destination.
fn move_and_verify(dir: &TempDir, src: Node, name: &str, extra: &[&str]) -> Node {
    let (mut dst, uri) = incoming(dir, name, extra);
    hand_over(src, &mut dst, &uri);
    dst
}

/// When a destination refuses a stream.
#[derive(PartialEq)]
enum Refused {
    /// At its header or machine type, before taking anything from it:
    /// the destination waits on for another source.
    Before,
    /// While loading (a device's state): the destination exits non-zero.
    While,
}

/// Destination `name` (with `extra` options) must refuse `src`'s stream:
/// the migration fails naming every `want`, the destination waits on or
/// exits as `when` says, and the source keeps the guest.
fn assert_refused(
    dir: &TempDir,
    src: &mut Node,
    name: &str,
    extra: &[&str],
    want: &[&str],
    when: Refused,
) {
    let (mut bad, uri) = incoming(dir, name, extra);
    let m = migrate(src, &uri);
    assert_eq!(m["status"], "failed", "{m}");
    let why = m["error-desc"].as_str().unwrap_or_default();
    for w in want {
        assert!(why.contains(w), "{w:?} not in: {m}");
    }
    if when == Refused::Before {
        assert_eq!(bad.status(), "inmigrate", "{}", bad.vm.log());
    } else {
        assert_ne!(bad.vm.wait_exit(T).code(), Some(0));
    }
    assert!(bad.vm.logged(want[0], T), "{}", bad.vm.log());
    assert_still_running(src);
}

/// Still running and still counting: the source after a failed migration.
fn assert_still_running(node: &mut Node) {
    assert_eq!(node.status(), "running", "{}", node.vm.log());
    let n = ticks(&node.vm).len();
    wait_ticks(&node.vm, n + 3);
    verify(&mut node.vm);
}

#[test]
fn guest_moves_a_b_c_a_while_writing_memory() {
    let dir = TempDir::new("mig-chain");
    let mut src = start(&dir, "A", &[]);
    src.vm.wait_prefix("mem.filled", BOOT);
    let mut last = wait_ticks(&src.vm, 3);
    for (hop, name) in ["B", "C", "A2"].iter().enumerate() {
        let port = free_port();
        let dst = start(&dir, name, &["-incoming", &format!("tcp:127.0.0.1:{port}")]);
        assert_eq!(dst.status(), "inmigrate");
        if hop == 1 {
            // This hop sends RAM over 3 extra connections (multifd).
            let mut q = src.qmp();
            q.execute(
                "migrate-set-capabilities",
                json!({"capabilities": [{"capability": "multifd", "state": true}]}),
            );
            q.execute("migrate-set-parameters", json!({"multifd-channels": 3}));
            let caps = q.execute("query-migrate-capabilities", json!({}));
            assert!(caps
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["capability"] == "multifd" && c["state"] == true));
            assert_eq!(
                q.execute("query-migrate-parameters", json!({}))["multifd-channels"],
                3
            );
        }
        if hop == 2 {
            // And this one on the main stream alone.
            src.qmp().execute(
                "migrate-set-capabilities",
                json!({"capabilities": [{"capability": "multifd", "state": false}]}),
            );
        }
        let m = migrate(&src, &format!("tcp:127.0.0.1:{port}"));
        assert_eq!(m["status"], "completed", "hop {hop}: {m}\n{}", dst.vm.log());
        assert!(
            m["downtime"].as_u64().unwrap() <= m["total-time"].as_u64().unwrap(),
            "{m}"
        );
        assert!(m["ram"]["dirty-sync-count"].as_u64().unwrap() >= 1, "{m}");
        assert_eq!(m["ram"]["remaining"], 0);
        assert_eq!(src.status(), "postmigrate");
        // The first hop with the defaults: the four channels the
        // destination said it takes.
        assert_eq!(m["multifd-channels-used"], [4, 3, 0][hop], "{m}");
        let mut old = std::mem::replace(&mut src, dst);
        old.vm.kill();
        let n = *ticks(&old.vm).last().expect("ticks on the source");
        assert!(n >= last);
        // The counter goes on from where the source left it (a tick line
        // the migration cut is joined to its rest on the destination).
        wait_ticks(&src.vm, 1);
        let all = ticks_in(&old.vm.across(&src.vm));
        let i = all.iter().position(|t| *t == n).expect("the last tick");
        assert_eq!(
            all.get(i + 1),
            Some(&(n + 1)),
            "hop {hop}: the tick after {n}\n{}\n{}",
            old.vm.log(),
            src.vm.log()
        );
        drop(old);
        assert_eq!(src.vm.boots(), 0, "the guest rebooted");
        assert_eq!(src.status(), "running");
        verify(&mut src.vm);
        last = wait_ticks(&src.vm, 3);
    }
    src.vm.send(b"q");
    src.vm.assert_pass(BOOT);
}

#[test]
fn unix_socket_and_incoming_defer() {
    let dir = TempDir::new("mig-unix");
    let src = start(&dir, "src", &[]);
    src.vm.wait_prefix("mem.filled", BOOT);
    let mut dst = start(&dir, "dst", &["-incoming", "defer"]);
    // Nothing to run yet: cont is refused, with the reason.
    let e = dst.qmp().try_execute("cont", json!({})).unwrap_err();
    assert!(
        e["desc"].as_str().unwrap().contains("incoming migration"),
        "{e}"
    );
    let path = dir.path("mig.sock");
    dst.qmp().execute(
        "migrate-incoming",
        json!({"uri": format!("unix:{}", path.display())}),
    );
    let m = migrate(&src, &format!("unix:{}", path.display()));
    assert_eq!(m["status"], "completed", "{m}");
    // The destination says so too (QEMU's incoming side does).
    let deadline = Instant::now() + T;
    while dst.qmp().execute("query-migrate", json!({}))["status"] != "completed" {
        assert!(
            Instant::now() < deadline,
            "the destination never said completed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(src);
    wait_ticks(&dst.vm, 2);
    verify(&mut dst.vm);
}

/// Block I/O keeps going during the migration: pages the device writes
/// (read-back into guest memory) must reach the destination too.
#[test]
fn block_io_in_flight_loses_nothing() {
    let dir = TempDir::new("mig-blk");
    let img = dir.image("disk.raw", 320 << 20);
    let drive = format!("file={},if=none,id=d0,format=raw", img.display());
    let args = ["-drive", &drive, "-device", "virtio-blk-pci,drive=d0"];
    let guest = "cpus=2 mem=256M msix=1 seed=31 blk_mb=256 blk_big_sector=8192";
    let mk = |name: &str, extra: &[&str]| {
        let sock = dir.path(&format!("{name}.sock"));
        let v = Vmm::new()
            .args(["-m", "256M", "-smp", "2"])
            .args([
                "-qmp",
                &format!("unix:{},server=on,wait=off", sock.display()),
            ])
            .args(args)
            .args(extra)
            .append(guest);
        Node {
            vm: v.spawn(name),
            sock,
        }
    };
    let src = mk("src", &[]);
    let port = free_port();
    let mut dst = mk("dst", &["-incoming", &format!("tcp:127.0.0.1:{port}")]);
    src.vm.wait_prefix("virtio.00:01.0.blk queues_used", BOOT);
    let m = migrate(&src, &format!("tcp:127.0.0.1:{port}"));
    assert_eq!(m["status"], "completed", "{m}");
    assert!(
        !src.vm
            .lines()
            .iter()
            .any(|l| l.starts_with("virtio.00:01.0.blk big_mb")),
        "the I/O had finished before the migration did\n{}",
        src.vm.log()
    );
    drop(src);
    dst.vm.assert_pass(BOOT);
    let l = dst.vm.wait_prefix("virtio.00:01.0.blk big_mb", BOOT);
    assert_eq!(field(&l, "errors").as_deref(), Some("0"), "{l}");
    assert_eq!(field(&l, "bad_words").as_deref(), Some("0"), "{l}");
    let data = std::fs::read(&img).unwrap();
    for s in (8192..8192 + (256u64 << 11)).step_by(97) {
        let off = (s * 512) as usize;
        let got = u64::from_le_bytes(data[off..off + 8].try_into().unwrap());
        assert_eq!(got, blk_pattern(31, s, 0), "sector {s}");
    }
}

#[test]
fn wrong_machine_type_is_refused_and_the_source_runs_on() {
    let dir = TempDir::new("mig-machine");
    let mut src = start(&dir, "src", &[]);
    src.vm.wait_prefix("mem.filled", BOOT);
    assert_refused(
        &dir,
        &mut src,
        "bad",
        &["-M", "pc-q35-8.0"],
        &["machine type", "pc-q35-8.0"],
        Refused::Before,
    );
    // A new migration works.
    move_and_verify(&dir, src, "good", &[]);
}

#[test]
fn destination_killed_mid_ram_then_cancel_then_success() {
    let dir = TempDir::new("mig-kill");
    let mut src = start(&dir, "src", &[]);
    src.vm.wait_prefix("mem.filled", BOOT);
    // Slow enough that RAM takes seconds.
    src.qmp().execute(
        "migrate-set-parameters",
        json!({"max-bandwidth": 16u64 << 20}),
    );
    let port = free_port();
    let mut dst = start(
        &dir,
        "dst1",
        &["-incoming", &format!("tcp:127.0.0.1:{port}")],
    );
    let mut q = src.qmp();
    q.execute("migrate", json!({"uri": format!("tcp:127.0.0.1:{port}")}));
    let mid = q.wait_ram_sent(T);
    assert_eq!(mid["status"], "active", "{mid}");
    dst.vm.kill();
    let m = q.wait_migration(T);
    assert_eq!(m["status"], "failed", "{m}");
    assert_still_running(&mut src);

    // Cancel: the source keeps running; the half-fed destination exits.
    let port = free_port();
    let mut dst = start(
        &dir,
        "dst2",
        &["-incoming", &format!("tcp:127.0.0.1:{port}")],
    );
    q.execute("migrate", json!({"uri": format!("tcp:127.0.0.1:{port}")}));
    q.wait_ram_sent(T);
    q.execute("migrate_cancel", json!({}));
    let m = q.wait_migration(T);
    assert_eq!(m["status"], "cancelled", "{m}");
    assert_ne!(dst.vm.wait_exit(T).code(), Some(0));
    assert_still_running(&mut src);

    // And then it works.
    q.execute("migrate-set-parameters", json!({"max-bandwidth": 0}));
    move_and_verify(&dir, src, "dst3", &[]);
}

/// A destination on `port` from the fault-injection build, which pauses
/// for `ms` at the named `hook` of its side of the migration.
fn held_destination(dir: &TempDir, port: u16, hook: &str, ms: &str) -> Node {
    let (mut v, sock) = vmm(dir, "dst", &["-incoming", &format!("tcp:127.0.0.1:{port}")]);
    v.binary = Some(vmm_tests::vmm::fault_injection_binary());
    let mut cmd = v.command();
    cmd.env(hook, ms);
    let dst = Node {
        vm: Vm::spawn("dst", cmd),
        sock,
    };
    dst.qmp();
    dst
}

/// The destination dies after the source paused for the last pass — in
/// the middle of the device state, or with everything loaded but not yet
/// confirmed: the source resumes the guest.
fn killed_while_paused(hook: &str) {
    let dir = TempDir::new("mig-paused");
    let mut src = start(&dir, "src", &[]);
    src.vm.wait_prefix("mem.filled", BOOT);
    let port = free_port();
    // Held far longer than the test takes to kill it.
    let mut dst = held_destination(&dir, port, hook, "30000");
    let mut q = src.qmp();
    q.execute("migrate", json!({"uri": format!("tcp:127.0.0.1:{port}")}));
    let deadline = Instant::now() + T;
    while q.execute("query-status", json!({}))["status"] != "finish-migrate" {
        assert!(
            Instant::now() < deadline,
            "the source never paused to finish"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    if hook == "VMM_TEST_DELAY_DEVICES_MS" {
        // Loading: the destination's monitor still answers what a
        // management stack polls, and says why it refuses the rest.
        let mut d = dst.qmp();
        assert_eq!(d.execute("query-status", json!({}))["status"], "inmigrate");
        assert_eq!(d.execute("query-migrate", json!({}))["status"], "active");
        let e = d.try_execute("stop", json!({})).unwrap_err();
        assert!(
            e["desc"]
                .as_str()
                .unwrap()
                .contains("incoming migration is loading"),
            "{e}"
        );
    }
    // While it finishes, nobody resumes the source behind its back.
    if let Ok(st) = q.try_execute("cont", json!({})) {
        panic!("cont during finish-migrate was accepted: {st}");
    }
    dst.vm.kill();
    let m = q.wait_migration(T);
    assert_eq!(m["status"], "failed", "{m}");
    assert_still_running(&mut src);
}

#[test]
fn destination_killed_mid_device_state() {
    killed_while_paused("VMM_TEST_DELAY_DEVICES_MS");
}

#[test]
fn destination_killed_while_the_source_is_paused() {
    killed_while_paused("VMM_TEST_DELAY_LOADED_MS");
}

fn start_in(dir: &TempDir, ns: &str, name: &str, extra: &[&str]) -> Node {
    let (v, sock) = vmm(dir, name, extra);
    Node {
        vm: v.spawn_in(ns, name),
        sock,
    }
}

#[test]
fn between_two_hosts_and_a_cut_link_is_detected() {
    let dir = TempDir::new("mig-hosts");
    let hosts = Hosts::new();
    let (a, b) = (hosts.addr(true), hosts.addr(false));
    let src = start_in(&dir, &hosts.a, "src", &[]);
    src.vm.wait_prefix("mem.filled", BOOT);
    let dst = start_in(
        &dir,
        &hosts.b,
        "dst",
        &["-incoming", &format!("tcp:{b}:4444")],
    );
    wait_for_listener(&hosts.b, 4444, T);
    let m = migrate(&src, &format!("tcp:{b}:4444"));
    assert_eq!(m["status"], "completed", "{m}\n{}", dst.vm.log());
    // Back, slowly, and the wire is cut half-way.
    let mut back = start_in(
        &dir,
        &hosts.a,
        "back",
        &["-incoming", &format!("tcp:{a}:4445")],
    );
    drop(src);
    let mut dst = dst;
    wait_for_listener(&hosts.a, 4445, T);
    let mut q = dst.qmp();
    q.execute(
        "migrate-set-parameters",
        json!({"max-bandwidth": 16u64 << 20}),
    );
    q.execute("migrate", json!({"uri": format!("tcp:{a}:4445")}));
    q.wait_ram_sent(T);
    hosts.cut();
    let t0 = Instant::now();
    let m = q.wait_migration(T);
    let detected = t0.elapsed();
    assert_eq!(m["status"], "failed", "{m}");
    eprintln!(
        "cut link detected after {} ms: {}",
        detected.as_millis(),
        m["error-desc"]
    );
    assert!(detected < Duration::from_secs(8), "took {detected:?}");
    assert_still_running(&mut dst);
    // The half-fed destination gives up on its own, never runs the guest.
    assert_ne!(back.vm.wait_exit(T).code(), Some(0));
    assert!(ticks(&back.vm).is_empty());
}

/// The seed chain: pc-q35-5.1 keeps virtio-blk at one queue on every hop,
/// and a destination that would have another count is refused by name.
#[test]
fn seed_chain_keeps_num_queues_on_pc_q35_5_1() {
    let dir = TempDir::new("mig-seed");
    let img = dir.image("disk.raw", 16 << 20);
    let drive = format!("file={},if=none,id=d0,format=raw", img.display());
    let dev = vec![
        "-M",
        "pc-q35-5.1",
        "-drive",
        &drive,
        "-device",
        "virtio-blk-pci,drive=d0,id=blk0",
    ];
    let mut src = start(&dir, "A", &dev);
    src.vm.wait_prefix("mem.filled", BOOT);
    let queues = |n: &Node| {
        n.qmp().execute(
            "qom-get",
            json!({"path": "/machine/peripheral/blk0", "property": "num-queues"}),
        )
    };
    assert_eq!(queues(&src), json!(1));
    // A destination whose device has two queues: in strict mode (QEMU's
    // behaviour) it refuses, naming the property.
    let mut two = dev.clone();
    two.extend_from_slice(&["-global", "virtio-blk-pci.num-queues=2"]);
    let mut strict = two.clone();
    strict.extend_from_slice(&["-global", "migration.x-strict-config=on"]);
    assert_refused(
        &dir,
        &mut src,
        "bad",
        &strict,
        &["num-queues"],
        Refused::While,
    );
    for name in ["B", "C"] {
        src = move_and_verify(&dir, src, name, &dev);
        assert_eq!(queues(&src), json!(1), "hop to {name}");
    }
    // Otherwise it builds the device as the source's guest has it: one
    // queue, whatever its own -global says (carried configuration).
    src = move_and_verify(&dir, src, "D", &two);
    assert_eq!(queues(&src), json!(1), "a destination told 2 queues");
    let from = src.qmp().execute(
        "qom-get",
        json!({"path": "/machine/peripheral/blk0", "property": "x-provenance"}),
    );
    assert_eq!(from["num-queues"], "migration", "{from}");
}

/// A number written just before `unit` in `line` ("12.5 MiB sent").
fn figure(line: &str, unit: &str) -> f64 {
    let at = line
        .find(unit)
        .unwrap_or_else(|| panic!("no '{unit}' in {line:?}"));
    line[..at]
        .split_whitespace()
        .last()
        .and_then(|n| n.trim_start_matches('(').parse().ok())
        .unwrap_or_else(|| panic!("no figure before '{unit}' in {line:?}"))
}

/// The companion tool: `vmmctl --qmp SOCKET migrate URI` draws the
/// progress of a guest with 192 MiB written as it moves (never a bar of
/// zeros), ends on the final figures and a summary; `status` tells where
/// the VM stands.
#[test]
fn vmmctl_migrate_shows_progress_and_summary() {
    let dir = TempDir::new("mig-vmmctl");
    let node = |name: &str, extra: &[&str]| {
        let (mut v, sock) = vmm(&dir, name, extra);
        for a in v.args.iter_mut().filter(|a| *a == "256M") {
            *a = "512M".into();
        }
        v.append = GUEST.replace("mem_mb=64", "mem_mb=192");
        let n = Node {
            vm: v.spawn(name),
            sock,
        };
        n.qmp();
        n
    };
    let src = node("src", &[]);
    src.vm.wait_prefix("mem.filled", BOOT);
    // Slow enough that RAM takes over a second, so the bar is drawn while
    // it moves; auto-converge so the guest cannot outrun the cap.
    src.qmp().cap_bandwidth_and_auto_converge(150_000_000);
    let port = free_port();
    let mut dst = node("dst", &["-incoming", &format!("tcp:127.0.0.1:{port}")]);
    let vmmctl = vmm_tests::vmm::binary().with_file_name("vmmctl");
    let sock = src.sock.display().to_string();
    let out = Command::new(&vmmctl)
        .args(["--qmp", &sock, "migrate", &format!("tcp:127.0.0.1:{port}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bars: Vec<&str> = text.lines().filter(|l| l.starts_with('[')).collect();
    assert!(bars.len() >= 2, "no progress drawn while moving:\n{text}");
    let sent: Vec<f64> = bars.iter().map(|l| figure(l, "MiB sent")).collect();
    let left: Vec<f64> = bars.iter().map(|l| figure(l, "MiB left")).collect();
    // A bar drawn just as the first pass starts may have sent nothing yet,
    // but it knows what is left: never a line of zeros.
    assert!(
        sent.iter().zip(&left).all(|(&s, &l)| s > 0.0 || l > 0.0),
        "a bar of zeros:\n{text}"
    );
    assert!(
        sent.windows(2).all(|w| w[0] <= w[1]),
        "sent went backwards:\n{text}"
    );
    // The guest wrote 192 MiB: at least that much moved.
    let last = bars.last().unwrap();
    assert!(sent[sent.len() - 1] >= 192.0, "{text}");
    assert!(
        last.contains("100%") && figure(last, "MiB left") == 0.0,
        "the bar does not end full: {last}"
    );
    assert!(
        // Progress drawn while RAM moved, not only the final figures.
        bars[..bars.len() - 1]
            .iter()
            .any(|l| figure(l, "MiB sent") > 0.0 && !l.contains("100%")),
        "{text}"
    );
    let summary = text
        .lines()
        .find(|l| l.starts_with("migration completed"))
        .expect("summary");
    assert!(
        summary.contains("downtime") && summary.contains("MiB sent"),
        "{summary}"
    );
    assert_eq!(figure(summary, "MiB sent"), sent[sent.len() - 1], "{text}");
    let out = Command::new(&vmmctl)
        .args(["--qmp", &sock, "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("status: postmigrate") && text.contains("migration: completed"),
        "{text}"
    );
    drop(src);
    wait_ticks(&dst.vm, 2);
    verify(&mut dst.vm);
    // A migration that fails: exit status 1 and the reason.
    let port = free_port();
    let _bad = start(
        &dir,
        "bad",
        &[
            "-M",
            "pc-q35-8.0",
            "-incoming",
            &format!("tcp:127.0.0.1:{port}"),
        ],
    );
    let out = Command::new(&vmmctl)
        .args([
            "--qmp",
            &dst.sock.display().to_string(),
            "migrate",
            &format!("tcp:127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("migration failed") && text.contains("machine type"),
        "{text}"
    );
}

/// A guest that dirties memory as fast as a capped link moves it: without
/// auto-converge the migration keeps iterating and says why; with it, the
/// vCPUs are throttled step by step until it converges.
#[test]
fn convergence_needs_auto_converge_when_the_guest_outruns_the_link() {
    let dir = TempDir::new("mig-converge");
    // One vCPU writing 64 MiB flat out.
    let mk = |name: &str, extra: &[&str]| {
        let sock = dir.path(&format!("{name}.sock"));
        let v = Vmm::new()
            .args([
                "-m",
                "256M",
                "-qmp",
                &format!("unix:{},server=on,wait=off", sock.display()),
            ])
            .args(extra)
            .append("cpus=1 work=mem,counter mem_mb=64 tick_ms=100 max_gap_ms=60000");
        let n = Node {
            vm: v.spawn(name),
            sock,
        };
        n.qmp();
        n
    };
    let mut src = mk("src", &[]);
    src.vm.wait_prefix("mem.filled", BOOT);
    let mut q = src.qmp();
    q.execute(
        "migrate-set-parameters",
        json!({"max-bandwidth": 32u64 << 20}),
    );
    let port = free_port();
    let mut dst = mk("dst1", &["-incoming", &format!("tcp:127.0.0.1:{port}")]);
    q.execute("migrate", json!({"uri": format!("tcp:127.0.0.1:{port}")}));
    let deadline = Instant::now() + T;
    let stuck = loop {
        let m = q.execute("query-migrate", json!({}));
        if m["ram"]["dirty-sync-count"].as_u64().unwrap_or(0) >= 2 {
            break m;
        }
        assert!(Instant::now() < deadline, "{m}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(stuck["status"], "active", "{stuck}");
    let why = stuck["not-converging"].as_str().unwrap_or_default();
    assert!(
        why.contains("auto-converge is off") && why.contains("downtime limit"),
        "{stuck}"
    );
    q.execute("migrate_cancel", json!({}));
    assert_eq!(q.wait_migration(T)["status"], "cancelled");
    assert_ne!(dst.vm.wait_exit(T).code(), Some(0));
    assert_still_running(&mut src);

    q.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "auto-converge", "state": true}]}),
    );
    let port = free_port();
    let mut dst = mk("dst2", &["-incoming", &format!("tcp:127.0.0.1:{port}")]);
    q.execute("migrate", json!({"uri": format!("tcp:127.0.0.1:{port}")}));
    let mut throttled = 0;
    let m = loop {
        let m = q.execute("query-migrate", json!({}));
        throttled = throttled.max(m["cpu-throttle-percentage"].as_u64().unwrap_or(0));
        if m["status"] != "active" && m["status"] != "setup" {
            break m;
        }
        assert!(Instant::now() < deadline + T, "did not converge: {m}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(m["status"], "completed", "{m}");
    assert!(throttled >= 20, "never throttled: {m}");
    drop(src);
    wait_ticks(&dst.vm, 2);
    verify(&mut dst.vm);
}

/// Network traffic goes on across a live migration: the guest echoes
/// frames with a peer on a bridge, the source on one tap, the destination
/// on another; frames lost in the switch are resent, none is missing.
#[test]
fn network_traffic_resumes_after_migration() {
    let dir = TempDir::new("mig-net");
    let net = vmm_tests::peer::TapEcho::bridged(2);
    let frames = 3000u32;
    let guest =
        format!("cpus=1 mem=128M msix=1 seed=5 net_peer=echo net_frames={frames} net_retry_ms=200");
    let mk = |name: &str, netdev: String, extra: &[&str]| {
        let sock = dir.path(&format!("{name}.sock"));
        let v = Vmm::new()
            .args([
                "-m",
                "128M",
                "-qmp",
                &format!("unix:{},server=on,wait=off", sock.display()),
            ])
            .args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"])
            .args(extra)
            .append(&guest);
        let n = Node {
            vm: v.spawn(name),
            sock,
        };
        n.qmp();
        n
    };
    let src = mk("src", net.netdev("n0"), &[]);
    let port = free_port();
    let mut dst = mk(
        "dst",
        net.netdev_other("n0", 0),
        &["-incoming", &format!("tcp:127.0.0.1:{port}")],
    );
    src.vm.wait_prefix("virtio.00:01.0.net mac=", BOOT);
    // Moved once traffic flows (the 3000 frames take most of a second).
    let deadline = Instant::now() + BOOT;
    while net.seen.lock().unwrap().len() < 100 {
        assert!(Instant::now() < deadline, "no traffic");
        std::thread::sleep(Duration::from_millis(1));
    }
    let m = migrate(&src, &format!("tcp:127.0.0.1:{port}"));
    assert_eq!(m["status"], "completed", "{m}");
    let before = net.seen.lock().unwrap().len();
    assert!(
        before > 0
            && !src
                .vm
                .lines()
                .iter()
                .any(|l| l.starts_with("virtio.00:01.0.net sent=")),
        "the migration did not land mid-traffic ({before} frames)\n{}",
        src.vm.log()
    );
    drop(src);
    dst.vm.assert_pass(BOOT);
    let l = dst.vm.wait_prefix("virtio.00:01.0.net sent=", BOOT);
    assert_eq!(field(&l, "echoed"), Some(frames.to_string()), "{l}");
    // The destination announced the guest's MAC (QEMU's self-announce).
    let announced = net.announced.lock().unwrap().clone();
    assert!(
        announced.contains(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]),
        "no RARP from the guest's MAC: {announced:?}"
    );
    let mut seen = net.seen.lock().unwrap().clone();
    assert!(seen.len() > before, "nothing after the migration");
    seen.sort();
    seen.dedup();
    assert_eq!(seen, (0..frames).collect::<Vec<u32>>());
}

/// `migrate fd:N`: a connected socket handed to the source process (here
/// inherited as fd 10; a management stack would pass one the same way).
#[test]
fn migrate_over_an_inherited_fd() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new("mig-fd");
    let port = free_port();
    let mut dst = start(
        &dir,
        "dst",
        &["-incoming", &format!("tcp:127.0.0.1:{port}")],
    );
    let conn =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the destination");
    let fd = conn.as_raw_fd();
    let (v, sock) = vmm(&dir, "src", &[]);
    let mut cmd = v.command();
    // SAFETY: dup2 is async-signal-safe; it runs in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 10) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let src = Node {
        vm: Vm::spawn("src", cmd),
        sock,
    };
    drop(conn);
    src.vm.wait_prefix("mem.filled", BOOT);
    let e = src
        .qmp()
        .try_execute("migrate", json!({"uri": "fd:99"}))
        .unwrap_err();
    assert!(
        e["desc"]
            .as_str()
            .unwrap()
            .contains("fd:99 is not an open socket"),
        "{e}"
    );
    let m = migrate(&src, "fd:10");
    assert_eq!(m["status"], "completed", "{m}");
    drop(src);
    wait_ticks(&dst.vm, 2);
    verify(&mut dst.vm);
}

/// A reset in the middle of a migration ends it (failed); the guest
/// reboots on the source and a new migration works.
#[test]
fn reset_during_migration_fails_it_and_a_new_one_works() {
    let dir = TempDir::new("mig-reset");
    let src = start(&dir, "src", &[]);
    src.vm.wait_prefix("mem.filled", BOOT);
    let mut q = src.qmp();
    q.execute(
        "migrate-set-parameters",
        json!({"max-bandwidth": 16u64 << 20}),
    );
    let port = free_port();
    let mut dst = start(
        &dir,
        "dst1",
        &["-incoming", &format!("tcp:127.0.0.1:{port}")],
    );
    q.execute("migrate", json!({"uri": format!("tcp:127.0.0.1:{port}")}));
    q.wait_ram_sent(T);
    q.execute("system_reset", json!({}));
    let m = q.wait_migration(T);
    assert_eq!(m["status"], "failed", "{m}");
    assert!(
        m["error-desc"]
            .as_str()
            .unwrap_or_default()
            .contains("reset"),
        "{m}"
    );
    assert_ne!(dst.vm.wait_exit(T).code(), Some(0));
    src.vm
        .wait_count("a second boot", 2, BOOT, |l| l.starts_with("mem.filled"));
    q.execute("migrate-set-parameters", json!({"max-bandwidth": 0}));
    move_and_verify(&dir, src, "dst2", &[]);
}

/// The x-ignore-backend-features seed, live: on `pc-q35-2.7` a backend
/// without VIRTIO_F_VERSION_1 still gets the modern interface (2.7's
/// behaviour, kept by hw_compat_2_7), so 2.7 → 2.7 migrates; a destination
/// that gates on the backend (what the unfixed 2.8 binary did on 2.7) is
/// refused by name instead of corrupting the device.
#[test]
fn seed_modern_exposure_on_pc_q35_2_7() {
    let dir = TempDir::new("mig-seed27");
    let img = dir.image("disk.raw", 16 << 20);
    let drive = format!(
        "file={},if=none,id=d0,format=raw,x-virtio-version-1=off",
        img.display()
    );
    let dev = vec![
        "-M",
        "pc-q35-2.7",
        "-drive",
        &drive,
        "-device",
        "virtio-blk-pci,drive=d0",
    ];
    let mut src = start(&dir, "A", &dev);
    src.vm.wait_prefix("mem.filled", BOOT);
    let mut gated = dev.clone();
    gated.extend_from_slice(&["-global", "virtio-pci.x-ignore-backend-features=off"]);
    let mut strict = gated.clone();
    strict.extend_from_slice(&["-global", "migration.x-strict-config=on"]);
    assert_refused(
        &dir,
        &mut src,
        "gated",
        &strict,
        &["legacy", "x-ignore-backend-features"],
        Refused::While,
    );
    let src = move_and_verify(&dir, src, "B", &dev);
    // Not strict, the gating destination keeps the guest's modern
    // interface: it adopts the source's x-ignore-backend-features.
    move_and_verify(&dir, src, "C", &gated);
}

/// What a management stack does (libvirt passes migration sockets this
/// way): the `qemu.qmp` package from PyPI passes a connected socket with
/// SCM_RIGHTS, `getfd` names it, `migrate fd:NAME` uses it.
#[test]
fn getfd_then_migrate_fd_name_with_the_qemu_qmp_client() {
    let dir = TempDir::new("mig-getfd");
    let port = free_port();
    let mut dst = start(
        &dir,
        "dst",
        &["-incoming", &format!("tcp:127.0.0.1:{port}")],
    );
    let src = start(&dir, "src", &[]);
    src.vm.wait_prefix("mem.filled", BOOT);
    let python = vmm_tests::workspace().join("target/qmp-venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/setup.sh",
        python.display()
    );
    let script = r#"
import asyncio, socket, sys
from qemu.qmp import QMPClient, ExecuteError
async def main(path, port):
    q = QMPClient("getfd-test")
    await q.connect(path)
    try:
        await q.execute("getfd", {"fdname": "mig"})
        print("getfd without a descriptor was accepted")
        return 1
    except ExecuteError as e:
        print("no-fd:", e.error.error.desc)
    try:
        await q.execute("closefd", {"fdname": "nope"})
        return 1
    except ExecuteError as e:
        print("closefd:", e.error.error.desc)
    s = socket.create_connection(("127.0.0.1", port))
    q.send_fd_scm(s.fileno())
    await q.execute("getfd", {"fdname": "mig"})
    s.close()
    await q.execute("migrate", {"uri": "fd:mig"})
    while True:
        m = await q.execute("query-migrate")
        if m["status"] in ("completed", "failed", "cancelled"):
            break
        await asyncio.sleep(0.02)
    print("status:", m["status"], m.get("error-desc", ""))
    await q.disconnect()
    return 0
sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]))))
"#;
    let out = Command::new(&python)
        .args([
            "-c",
            script,
            &src.sock.display().to_string(),
            &port.to_string(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("no-fd: getfd: no file descriptor was passed"),
        "{text}"
    );
    assert!(
        text.contains("closefd: File descriptor named 'nope' not found"),
        "{text}"
    );
    assert!(text.contains("status: completed"), "{text}");
    drop(src);
    wait_ticks(&dst.vm, 2);
    verify(&mut dst.vm);
}

/// The release binary carries no test hook: the fault-injection pauses
/// exist only in the binary built with the feature.
#[test]
fn the_release_binary_has_no_fault_injection() {
    let hooks = [
        "VMM_TEST_DELAY_DEVICES_MS",
        "VMM_TEST_DELAY_LOADED_MS",
        "VMM_TEST_DELAY_RUNNING_MS",
        "VMM_TEST_PANIC",
        "VMM_TEST_FORBIDDEN",
        "VMM_TEST_FORBIDDEN_IOCTL",
    ];
    let has = |bin: &std::path::Path| {
        let bytes = std::fs::read(bin).unwrap();
        hooks
            .iter()
            .filter(|h| bytes.windows(h.len()).any(|w| w == h.as_bytes()))
            .count()
    };
    assert_eq!(has(&vmm_tests::vmm::binary()), 0);
    assert_eq!(has(&vmm_tests::vmm::fault_injection_binary()), hooks.len());
}

/// A guest that wrote 64 MiB once and now writes little: precopy time is
/// set by the bandwidth cap.
const IDLE_GUEST: &str =
    "cpus=1 work=mem,counter mem_mb=64 mem_rate=10 tick_ms=100 max_gap_ms=30000 seed=5";

/// multifd with a bandwidth cap that makes precopy last well over 10 s:
/// the main stream is silent all that time (RAM goes on the channels), and
/// the destination must not take the silence for a dead source.
#[test]
fn a_long_multifd_migration_completes() {
    let dir = TempDir::new("mig-long-multifd");
    let (v, sock) = vmm(&dir, "src", &[]);
    let v = Vmm {
        append: IDLE_GUEST.into(),
        ..v
    };
    let src = Node {
        vm: v.spawn("src"),
        sock,
    };
    src.vm.wait_prefix("mem.filled", BOOT);
    let mut q = src.qmp();
    q.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "multifd", "state": true}]}),
    );
    // 64 MiB at 5 MB/s: about 13 s of precopy.
    q.execute(
        "migrate-set-parameters",
        json!({"multifd-channels": 2, "max-bandwidth": 5_000_000u64}),
    );
    let (mut dst, uri) = incoming(&dir, "dst", &[]);
    let t0 = Instant::now();
    let m = migrate(&src, &uri);
    assert_eq!(m["status"], "completed", "{m}\n{}", dst.vm.log());
    assert!(
        t0.elapsed() > Duration::from_secs(11),
        "only {:?}",
        t0.elapsed()
    );
    drop(src);
    wait_ticks(&dst.vm, 2);
    verify(&mut dst.vm);
}

/// What a port scanner or a load balancer's health check does to the
/// incoming port — connect and close, send a few bytes, or connect and
/// say nothing — does not end the destination; the real source then
/// migrates.
#[test]
fn probes_on_the_incoming_port_are_ignored() {
    use std::io::Write;
    let dir = TempDir::new("mig-probe");
    let src = start(&dir, "src", &[]);
    src.vm.wait_prefix("mem.filled", BOOT);
    let (mut dst, uri) = incoming(&dir, "dst", &[]);
    let addr = uri.strip_prefix("tcp:").unwrap();
    drop(std::net::TcpStream::connect(addr).unwrap());
    let mut five = std::net::TcpStream::connect(addr).unwrap();
    five.write_all(b"HELLO").unwrap();
    drop(five);
    let _silent = std::net::TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(dst.status(), "inmigrate", "{}", dst.vm.log());
    hand_over(src, &mut dst, &uri);
}

/// A stranger that connects first with a stream header is answered with
/// the reason and ignored; the destination keeps waiting, and the real
/// source, connecting second, migrates.
#[test]
fn a_stranger_first_is_refused_and_the_real_source_then_migrates() {
    use std::io::{Read, Write};
    let dir = TempDir::new("mig-stranger");
    let src = start(&dir, "src", &[]);
    src.vm.wait_prefix("mem.filled", BOOT);
    let (mut dst, uri) = incoming(&dir, "dst", &[]);
    let addr = uri.strip_prefix("tcp:").unwrap();
    let mut stranger = std::net::TcpStream::connect(addr).unwrap();
    // QEMU's header: magic, version 3, a configuration section naming a
    // machine type the destination does not run.
    let mut head = b"QEVM\x00\x00\x00\x03\x07".to_vec();
    head.extend_from_slice(&(6u32).to_be_bytes());
    head.extend_from_slice(b"pc-q35");
    stranger.write_all(&head).unwrap();
    stranger
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    let _ = stranger.read_to_string(&mut answer);
    assert!(
        answer.starts_with("ERR ") && answer.contains("machine type"),
        "{answer:?}"
    );
    drop(stranger);
    assert_eq!(dst.status(), "inmigrate", "{}", dst.vm.log());
    hand_over(src, &mut dst, &uri);
}

/// What an operator gets with no migration parameters set: RAM on the
/// multifd channels the destination says it takes (four: QEMU's default
/// is two), the guest intact. With the capability turned off, one stream.
#[test]
fn the_default_migration_uses_the_channels_the_destination_takes() {
    let dir = TempDir::new("mig-default-multifd");
    let src = start(&dir, "src", &[]);
    src.vm.wait_prefix("mem.filled", BOOT);
    let caps = src.qmp().execute("query-migrate-capabilities", json!({}));
    assert!(
        caps.as_array()
            .unwrap()
            .iter()
            .any(|c| c["capability"] == "multifd" && c["state"] == true),
        "{caps}"
    );
    let (mut b, uri) = incoming(&dir, "b", &[]);
    let m = migrate(&src, &uri);
    assert_eq!(m["status"], "completed", "{m}\n{}", b.vm.log());
    assert_eq!(m["multifd-channels-used"], 4, "{m}");
    drop(src);
    wait_ticks(&b.vm, 2);
    verify(&mut b.vm);
    b.qmp().execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "multifd", "state": false}]}),
    );
    let (mut c, uri) = incoming(&dir, "c", &[]);
    let m = migrate(&b, &uri);
    assert_eq!(m["status"], "completed", "{m}\n{}", c.vm.log());
    assert_eq!(m["multifd-channels-used"], 0, "{m}");
    drop(b);
    wait_ticks(&c.vm, 2);
    verify(&mut c.vm);
}

/// A stranger that opens a multifd channel (the 0.2.0 header, claiming to
/// be channel 0 of 1) before the real source does not join the real
/// source's migration: nothing it sends reaches guest RAM, and the
/// migration does not wait for it. The real source migrates over its own
/// two channels.
#[test]
fn a_strangers_channel_does_not_join_the_migration() {
    use std::io::{Read, Write};
    let dir = TempDir::new("mig-stranger-channel");
    let src = start(&dir, "src", &[]);
    src.vm.wait_prefix("mem.filled", BOOT);
    let (mut dst, uri) = incoming(&dir, "dst", &[]);
    let addr = uri.strip_prefix("tcp:").unwrap();
    let mut stranger = std::net::TcpStream::connect(addr).unwrap();
    let mut head = b"VMMMFD01".to_vec();
    head.extend_from_slice(&0u32.to_be_bytes());
    head.extend_from_slice(&1u32.to_be_bytes());
    // One page of junk for the guest's first megabyte, then silence.
    head.extend_from_slice(&(0x10_0000u64 | 1).to_be_bytes());
    head.extend_from_slice(&[0xee; 4096]);
    stranger.write_all(&head).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut q = src.qmp();
    q.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "multifd", "state": true}]}),
    );
    q.execute("migrate-set-parameters", json!({"multifd-channels": 2}));
    let m = migrate(&src, &uri);
    assert_eq!(m["status"], "completed", "{m}\n{}", dst.vm.log());
    assert_eq!(m["multifd-channels-used"], 2, "{m}");
    drop(src);
    wait_ticks(&dst.vm, 2);
    verify(&mut dst.vm);
    // The stranger was never taken in: its connection is closed.
    stranger
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut rest = vec![];
    let t = Instant::now();
    let _ = stranger.read_to_end(&mut rest);
    assert!(t.elapsed() < Duration::from_secs(14), "still open");
    assert!(
        dst.vm.logged("not part of", T),
        "the stranger's channel was not named: {}",
        dst.vm.log()
    );
}

/// Once GO is sent the guest is the destination's, whatever happens next:
/// here the destination holds its vCPUs for 6 s after GO, so RUNNING never
/// reaches the source in time. The migration completes with that visible
/// in query-migrate, and the source refuses to run the guest a second time
/// (cont, system_reset) unless forced.
#[test]
fn after_go_the_source_does_not_run_the_guest_again() {
    let dir = TempDir::new("mig-after-go");
    let src = start(&dir, "src", &[]);
    src.vm.wait_prefix("mem.filled", BOOT);
    let port = free_port();
    let mut dst = held_destination(&dir, port, "VMM_TEST_DELAY_RUNNING_MS", "6000");
    let mut q = src.qmp();
    q.execute("migrate", json!({"uri": format!("tcp:127.0.0.1:{port}")}));
    let m = q.wait_migration(T);
    assert_eq!(m["status"], "completed", "{m}");
    assert_eq!(m["x-running-confirmed"], false, "{m}");
    assert!(src.vm.logged("no RUNNING", T), "{}", src.vm.log());
    assert_eq!(
        q.execute("query-status", json!({}))["status"],
        "postmigrate"
    );
    for cmd in ["cont", "system_reset"] {
        let e = q
            .try_execute(cmd, json!({}))
            .expect_err(&format!("{cmd} after GO was accepted"));
        assert!(
            e["desc"]
                .as_str()
                .unwrap_or_default()
                .contains("handed over"),
            "{cmd}: {e}"
        );
    }
    assert_eq!(
        q.execute("query-status", json!({}))["status"],
        "postmigrate"
    );
    // The guest runs on the destination once it lets go.
    wait_ticks(&dst.vm, 2);
    verify(&mut dst.vm);
    // The operator's override exists, and says what it does.
    q.execute("cont", json!({"force": true}));
    assert_eq!(q.execute("query-status", json!({}))["status"], "running");
}

/// A destination's devices do nothing before GO: here it holds after
/// loading (before LOADED) while the guest's disk writes are in flight,
/// then dies; the source takes the guest back and finishes the writes.
/// The destination has a disk image of its own, and not a byte of it was
/// written. (The guest's requests are synchronous, so a request pending in
/// the saved ring is rare: this guards the property, it does not force the
/// race.)
#[test]
fn destination_devices_wait_for_go() {
    let dir = TempDir::new("mig-devices-wait");
    let (src_img, dst_img) = (
        dir.image("src.raw", 320 << 20),
        dir.image("dst.raw", 320 << 20),
    );
    let guest = "cpus=2 mem=256M msix=1 seed=31 blk_mb=256 blk_big_sector=8192";
    let mk = |name: &str, img: &std::path::Path, extra: &[&str], hold: bool| {
        let sock = dir.path(&format!("{name}.sock"));
        let drive = format!("file={},if=none,id=d0,format=raw", img.display());
        let mut v = Vmm::new()
            .args(["-m", "256M", "-smp", "2"])
            .args([
                "-qmp",
                &format!("unix:{},server=on,wait=off", sock.display()),
            ])
            .args(["-drive", &drive, "-device", "virtio-blk-pci,drive=d0"])
            .args(extra)
            .append(guest);
        let cmd = if hold {
            v.binary = Some(vmm_tests::vmm::fault_injection_binary());
            let mut c = v.command();
            c.env("VMM_TEST_DELAY_LOADED_MS", "30000");
            c
        } else {
            v.command()
        };
        Node {
            vm: Vm::spawn(name, cmd),
            sock,
        }
    };
    let mut src = mk("src", &src_img, &[], false);
    let port = free_port();
    let mut dst = mk(
        "dst",
        &dst_img,
        &["-incoming", &format!("tcp:127.0.0.1:{port}")],
        true,
    );
    dst.qmp();
    src.vm.wait_prefix("virtio.00:01.0.blk queues_used", BOOT);
    let mut q = src.qmp();
    q.execute("migrate", json!({"uri": format!("tcp:127.0.0.1:{port}")}));
    let deadline = Instant::now() + T;
    while q.execute("query-status", json!({}))["status"] != "finish-migrate" {
        assert!(
            Instant::now() < deadline,
            "the source never paused to finish"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The destination has loaded everything and holds before LOADED.
    std::thread::sleep(Duration::from_millis(1500));
    dst.vm.kill();
    let m = q.wait_migration(T);
    assert_eq!(m["status"], "failed", "{m}");
    let data = std::fs::read(&dst_img).unwrap();
    let written = data
        .chunks(512)
        .filter(|s| s.iter().any(|&b| b != 0))
        .count();
    assert_eq!(
        written, 0,
        "the destination wrote {written} sectors before GO"
    );
    // The source finished the guest's writes.
    src.vm.assert_pass(BOOT);
}

/// A destination that is alive but stalls with the guest paused (here it
/// sleeps 25 s in the middle of the device state) does not keep the source
/// paused: past ten times the downtime limit (at least 5 s) the source
/// gives up and the guest runs on there.
#[test]
fn a_stalled_destination_does_not_keep_the_guest_paused() {
    let dir = TempDir::new("mig-stalled");
    let mut src = start(&dir, "src", &[]);
    src.vm.wait_prefix("mem.filled", BOOT);
    let port = free_port();
    let dst = held_destination(&dir, port, "VMM_TEST_DELAY_DEVICES_MS", "25000");
    let mut q = src.qmp();
    q.execute("migrate", json!({"uri": format!("tcp:127.0.0.1:{port}")}));
    let deadline = Instant::now() + T;
    while q.execute("query-status", json!({}))["status"] != "finish-migrate" {
        assert!(
            Instant::now() < deadline,
            "the source never paused to finish"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let paused = Instant::now();
    let m = q.wait_migration(T);
    let waited = paused.elapsed();
    assert_eq!(m["status"], "failed", "{m}");
    assert!(
        m["error-desc"]
            .as_str()
            .unwrap_or_default()
            .contains("stalled"),
        "{m}"
    );
    assert!(
        waited < Duration::from_secs(12),
        "the guest stayed paused {waited:?}"
    );
    assert_still_running(&mut src);
    drop(dst);
}

/// A writable disk image is used by one VM at a time (an open-file-
/// description lock, as QEMU locks images): a second VM on it is refused
/// at start, a live migration hands it over at GO (the source lets go,
/// the destination takes it), and the handed-over source cannot take it
/// back, even forced, while the destination runs.
#[test]
fn a_disk_image_is_used_by_one_vm_at_a_time() {
    let dir = TempDir::new("mig-lock");
    let img = dir.image("disk.raw", 1 << 20);
    let drive = format!("file={},if=none,id=d0,format=raw", img.display());
    let disk = ["-drive", &drive, "-device", "virtio-blk-pci,drive=d0"];
    let src = start(&dir, "A", &disk);
    src.vm.wait_prefix("mem.filled", BOOT);
    let (second, _) = vmm(&dir, "B", &disk);
    let mut second = second.spawn("B");
    assert_eq!(second.wait_exit(T).code(), Some(1), "{}", second.log());
    let log = second.log();
    assert!(log.contains("in use by another process"), "{log}");
    let (mut dst, uri) = incoming(&dir, "C", &disk);
    let m = migrate(&src, &uri);
    assert_eq!(m["status"], "completed", "{m}\n{}", dst.vm.log());
    wait_ticks(&dst.vm, 2);
    verify(&mut dst.vm);
    let e = src
        .qmp()
        .try_execute("cont", json!({"force": true}))
        .expect_err("the source took the image back from a running destination");
    let why = e["desc"].as_str().unwrap_or_default();
    assert!(why.contains("in use by another process"), "{e}");
}

/// Makes QEMU's tls-creds-x509 layout in `dir` (scripts/tls-certs.sh).
/// TLS with credentials `creds` for the next migration, and auto-converge:
/// a TLS link on this loaded 2-core host can fall to the test guest's
/// dirty rate (the guest's pages are verified all the same).
fn tls_on_with_auto_converge(q: &mut Qmp, creds: &str) {
    q.execute("migrate-set-parameters", json!({ "tls-creds": creds }));
    q.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "auto-converge", "state": true}]}),
    );
}

/// A destination in TLS, deferred, with `objects` (`-object` each) and
/// `params` set before `migrate-incoming`: the node and its URI.
fn tls_destination(dir: &TempDir, name: &str, objects: &[String], params: Value) -> (Node, String) {
    let args: Vec<&str> = ["-incoming", "defer"]
        .into_iter()
        .chain(objects.iter().flat_map(|o| ["-object", o.as_str()]))
        .collect();
    let dst = start(dir, name, &args);
    let port = free_port();
    let mut q = dst.qmp();
    q.execute("migrate-set-parameters", params);
    q.execute(
        "migrate-incoming",
        json!({"uri": format!("tcp:127.0.0.1:{port}")}),
    );
    (dst, format!("tcp:127.0.0.1:{port}"))
}

/// Waits until `n`'s log says `what`.
fn wait_log(n: &Node, what: &str) {
    let deadline = Instant::now() + T;
    while !n.vm.log().contains(what) {
        assert!(Instant::now() < deadline, "no '{what}': {}", n.vm.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tls_dir(dir: &std::path::Path) {
    let st = Command::new(vmm_tests::workspace().join("scripts/tls-certs.sh"))
        .arg(dir)
        .status()
        .expect("run scripts/tls-certs.sh");
    assert!(st.success());
    // The keys are 0600: they are vmm's user's to read, as an operator
    // gives them to the user their vmm runs as.
    if let Some((uid, gid)) = vmm_tests::vmm_user() {
        for f in std::fs::read_dir(dir).unwrap() {
            std::os::unix::fs::chown(f.unwrap().path(), Some(uid), Some(gid)).unwrap();
        }
    }
}

/// Live migration in TLS with QEMU's credentials (`-object
/// tls-creds-x509`, `tls-creds` set on both sides, the destination with
/// `-incoming defer`): a hop on the main stream and one with multifd
/// channels arrive with every page; a source whose CA the destination's
/// certificate does not chain to is refused with the reason, and the
/// destination waits on for a source it trusts.
#[test]
fn migration_in_tls_with_qemus_credentials() {
    let dir = TempDir::new("mig-tls");
    let (good, other) = (dir.path("pki"), dir.path("other-pki"));
    tls_dir(&good);
    tls_dir(&other);
    let creds = |d: &std::path::Path, end: &str| {
        format!("tls-creds-x509,id=tls0,dir={},endpoint={end}", d.display())
    };
    let tls_on = |q: &mut Qmp| {
        tls_on_with_auto_converge(q, "tls0");
    };
    let src = start(&dir, "src", &["-object", &creds(&good, "client")]);
    src.vm.wait_prefix("mem.filled", BOOT);
    tls_on(&mut src.qmp());
    // A destination in TLS, waiting; it can leave in TLS too (`tlsc`).
    let client_too = format!(
        "tls-creds-x509,id=tlsc,dir={},endpoint=client",
        good.display()
    );
    let tls_dst = |name: &str| {
        tls_destination(
            &dir,
            name,
            &[creds(&good, "server"), client_too.clone()],
            json!({"tls-creds": "tls0"}),
        )
    };
    // A source with another CA: refused in the handshake, on both sides.
    let stranger = start(&dir, "stranger", &["-object", &creds(&other, "client")]);
    stranger.vm.wait_prefix("mem.filled", BOOT);
    tls_on(&mut stranger.qmp());
    let (mut dst, uri) = tls_dst("dst1");
    // The handshake runs on the migration's thread: the migration fails.
    let m = migrate(&stranger, &uri);
    assert_eq!(m["status"], "failed", "{m}");
    let why = m["error-desc"].as_str().unwrap_or_default();
    assert!(why.contains("TLS") && why.contains("certificate"), "{m}");
    assert_eq!(stranger.status(), "running");
    assert_eq!(dst.status(), "inmigrate", "{}", dst.vm.log());
    wait_log(&dst, "ignoring a connection");
    drop(stranger);
    // The trusted source: the main stream in TLS.
    hand_over(src, &mut dst, &uri);
    // And on: multifd, every channel in TLS. The server's credentials
    // cannot connect; the client's (`tlsc`) do.
    let (mut dst2, uri2) = tls_dst("dst2");
    let mut q = dst.qmp();
    q.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "multifd", "state": true}]}),
    );
    let e = q
        .try_execute("migrate", json!({ "uri": uri2 }))
        .expect_err("server credentials used to connect");
    assert!(
        e["desc"].as_str().unwrap_or_default().contains("side"),
        "{e}"
    );
    tls_on_with_auto_converge(&mut q, "tlsc");
    let m = migrate(&dst, &uri2);
    assert_eq!(m["status"], "completed", "{m}\n{}", dst2.vm.log());
    assert_eq!(m["multifd-channels-used"], 4, "{m}");
    drop(dst);
    wait_ticks(&dst2.vm, 2);
    verify(&mut dst2.vm);
}

/// `tls-authz` with QEMU's `authz-simple` object: the destination admits
/// only the client whose certificate's subject is the identity, spelled
/// as QEMU spells it (the certificate's order, commas doubled on the
/// command line). A
/// client the CA vouches for but the identity does not name is refused
/// after the handshake, naming both; the destination waits on, and the
/// named client migrates.
#[test]
fn tls_authz_admits_only_the_client_it_names() {
    let dir = TempDir::new("mig-tls-authz");
    let pki = dir.path("pki");
    tls_dir(&pki);
    let creds = |end: &str| {
        format!(
            "tls-creds-x509,id=tls0,dir={},endpoint={end}",
            pki.display()
        )
    };
    let src = start(&dir, "src", &["-object", &creds("client")]);
    src.vm.wait_prefix("mem.filled", BOOT);
    let mut q = src.qmp();
    tls_on_with_auto_converge(&mut q, "tls0");
    let dst = |name: &str, identity: &str| {
        let authz = format!("authz-simple,id=auth0,identity={identity}");
        let (dst, uri) = tls_destination(
            &dir,
            name,
            &[creds("server"), authz],
            json!({"tls-creds": "tls0", "tls-authz": "auth0"}),
        );
        assert_eq!(
            dst.qmp().execute("query-migrate-parameters", json!({}))["tls-authz"],
            "auth0"
        );
        (dst, uri)
    };
    // The server's own subject: a certificate the CA signed, not the
    // client's.
    let (wrong, uri) = dst("dst-wrong", "C=GB,,O=vmm tests,,CN=vmm server");
    let m = migrate(&src, &uri);
    assert_eq!(m["status"], "failed", "{m}");
    assert_eq!(src.status(), "running");
    wait_log(&wrong, "admits only");
    let log = wrong.vm.log();
    assert!(
        log.contains("'C=GB,O=vmm tests,CN=vmm client'")
            && log.contains("'C=GB,O=vmm tests,CN=vmm server'"),
        "{log}"
    );
    assert_eq!(wrong.status(), "inmigrate");
    drop(wrong);
    let (mut right, uri) = dst("dst-right", "C=GB,,O=vmm tests,,CN=vmm client");
    hand_over(src, &mut right, &uri);
}

/// Live migration in TLS with a pre-shared key, QEMU's `tls-creds-psk`
/// (`keys.psk` of `username:hexkey` lines; the client's username defaults
/// to `qemu`): a hop on the main stream and one with multifd. A client
/// with another key is refused in the handshake and the destination waits
/// on; `tls-authz` admits by username.
#[test]
fn migration_in_tls_with_a_pre_shared_key() {
    let dir = TempDir::new("mig-psk");
    let (good, other) = (dir.path("psk"), dir.path("other-psk"));
    for (d, key) in [
        (&good, "1f2e3d4c5b6a79881f2e3d4c5b6a7988"),
        (&other, "00112233445566778899aabbccddeeff"),
    ] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("keys.psk"), format!("qemu:{key}\nalice:{key}\n")).unwrap();
    }
    let creds = |d: &std::path::Path, end: &str, extra: &str| {
        format!(
            "tls-creds-psk,id=tls0,dir={},endpoint={end}{extra}",
            d.display()
        )
    };
    let dst = |name: &str, authz: Option<&str>| {
        // It can leave in TLS too (`tlsc`, username qemu).
        let mut objects = vec![
            creds(&good, "server", ""),
            creds(&good, "client", "").replace("id=tls0", "id=tlsc"),
        ];
        let mut params = json!({"tls-creds": "tls0"});
        if let Some(who) = authz {
            objects.push(format!("authz-simple,id=auth0,identity={who}"));
            params["tls-authz"] = "auth0".into();
        }
        tls_destination(&dir, name, &objects, params)
    };
    // Another key: refused in the handshake, the destination waits on.
    let stranger = start(&dir, "stranger", &["-object", &creds(&other, "client", "")]);
    stranger.vm.wait_prefix("mem.filled", BOOT);
    tls_on_with_auto_converge(&mut stranger.qmp(), "tls0");
    let (mut dst1, uri) = dst("dst1", None);
    let m = migrate(&stranger, &uri);
    assert_eq!(m["status"], "failed", "{m}");
    assert!(
        m["error-desc"].as_str().unwrap_or_default().contains("TLS"),
        "{m}"
    );
    assert_eq!(stranger.status(), "running");
    wait_log(&dst1, "ignoring a connection");
    assert_eq!(dst1.status(), "inmigrate");
    drop(stranger);
    // The right key: a hop on one stream.
    let src = start(&dir, "src", &["-object", &creds(&good, "client", "")]);
    src.vm.wait_prefix("mem.filled", BOOT);
    tls_on_with_auto_converge(&mut src.qmp(), "tls0");
    hand_over(src, &mut dst1, &uri);
    // tls-authz names alice: qemu (this source) is refused, alice is not;
    // the second hop runs multifd.
    let mut q = dst1.qmp();
    tls_on_with_auto_converge(&mut q, "tlsc");
    let (dst2, uri2) = dst("dst2", Some("alice"));
    let m = migrate(&dst1, &uri2);
    assert_eq!(m["status"], "failed", "{m}");
    wait_log(&dst2, "'qemu', and tls-authz 'auth0' admits only 'alice'");
    drop(dst2);
    drop(dst1);
    let alice = start(
        &dir,
        "alice",
        &["-object", &creds(&good, "client", ",username=alice")],
    );
    alice.vm.wait_prefix("mem.filled", BOOT);
    let mut q = alice.qmp();
    tls_on_with_auto_converge(&mut q, "tls0");
    q.execute(
        "migrate-set-capabilities",
        json!({"capabilities": [{"capability": "multifd", "state": true}]}),
    );
    let (mut dst3, uri3) = dst("dst3", Some("alice"));
    let m = migrate(&alice, &uri3);
    assert_eq!(m["status"], "completed", "{m}\n{}", dst3.vm.log());
    assert_eq!(m["multifd-channels-used"], 4, "{m}");
    drop(alice);
    wait_ticks(&dst3.vm, 2);
    verify(&mut dst3.vm);
}

/// A destination that accepts the connection and then says nothing holds
/// a TLS handshake for as long as it likes: the handshake runs on the
/// migration's thread, so `migrate` answers at once, the monitor goes on
/// answering, and `migrate_cancel` ends the migration with the guest
/// running.
#[test]
fn a_stalled_tls_handshake_does_not_hold_the_monitor() {
    let dir = TempDir::new("mig-tls-stall");
    let pki = dir.path("pki");
    tls_dir(&pki);
    let creds = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        pki.display()
    );
    let src = start(&dir, "src", &["-object", &creds]);
    src.vm.wait_prefix("mem.filled", BOOT);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("tcp:{}", silent.local_addr().unwrap());
    let mut q = src.qmp();
    tls_on_with_auto_converge(&mut q, "tls0");
    let t0 = Instant::now();
    q.execute("migrate", json!({ "uri": uri }));
    let mut answers = vec![t0.elapsed()];
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(q.execute("query-migrate", json!({}))["status"], "setup");
        answers.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        answers.iter().all(|d| *d < Duration::from_secs(2)),
        "the monitor waited for the handshake: {answers:?}"
    );
    q.execute("migrate_cancel", json!({}));
    let m = q.wait_migration(T);
    assert_eq!(m["status"], "cancelled", "{m}");
    assert_eq!(src.status(), "running");
    drop(silent);
}

/// A destination that takes the multifd probe and never answers holds
/// the migration in setup; `migrate_cancel` ends it there: cancelled, the
/// guest running, and no connection opened after the cancel (a main
/// stream opened then would be taken by a 0.2.0 destination, which dies
/// on one that says nothing).
#[test]
fn a_cancel_while_the_probe_waits_opens_nothing_more() {
    use std::io::Read;
    let dir = TempDir::new("mig-probe-cancel");
    let mut src = start(&dir, "src", &[]);
    src.vm.wait_prefix("mem.filled", BOOT);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("tcp:{}", silent.local_addr().unwrap());
    let mut q = src.qmp();
    q.execute("migrate", json!({ "uri": uri }));
    let (mut probe, _) = silent.accept().unwrap();
    let mut head = [0u8; 24];
    probe.read_exact(&mut head).unwrap();
    assert_eq!(&head[..8], b"VMMMFD01", "not the probe: {head:02x?}");
    assert_eq!(head[8..16], [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    q.execute("migrate_cancel", json!({}));
    let m = q.wait_migration(T);
    assert_eq!(m["status"], "cancelled", "{m}");
    silent.set_nonblocking(true).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        silent.accept().is_err(),
        "a connection was opened after the cancel"
    );
    drop(q);
    assert_still_running(&mut src);
}

/// `migrate fd:N` takes a descriptor vmm inherited (or one passed with
/// getfd), never one of its own: every socket vmm opened itself — its
/// monitor's listener and connections among them — is refused by number,
/// and the monitor goes on answering.
#[test]
fn fd_n_never_takes_a_descriptor_of_vmms_own() {
    let dir = TempDir::new("mig-own-fd");
    let src = start(&dir, "src", &[]);
    src.vm.wait_prefix("mem.filled", BOOT);
    let mut q = src.qmp();
    let own: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", src.vm.pid()))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let link = std::fs::read_link(e.path()).ok()?;
            link.to_string_lossy()
                .starts_with("socket:")
                .then(|| e.file_name().to_string_lossy().to_string())
        })
        .collect();
    assert!(own.len() >= 2, "the monitor's sockets: {own:?}");
    for fd in &own {
        let e = q
            .try_execute("migrate", json!({"uri": format!("fd:{fd}")}))
            .expect_err("vmm migrated into a socket of its own");
        assert!(
            e["desc"].as_str().unwrap_or_default().contains("inherited"),
            "fd:{fd}: {e}"
        );
    }
    assert_eq!(q.execute("query-status", json!({}))["status"], "running");
    assert_eq!(src.status(), "running");
}

/// A guest that migrated in and then reboots does not leave its first RAM
/// behind: the new board's RAM replaces it, and vmm's resident memory
/// after the guest has written its pattern again is what it was before.
#[test]
fn a_migrated_guest_that_reboots_does_not_keep_its_old_ram() {
    let dir = TempDir::new("mig-reboot-ram");
    let src = start(&dir, "src", &[]);
    src.vm.wait_prefix("mem.filled", BOOT);
    let mut dst = move_and_verify(&dir, src, "dst", &[]);
    let before = vmm_tests::rss_kib(dst.vm.pid());
    dst.qmp().execute("system_reset", json!({}));
    // Its console here began after the migration: the fill after the
    // reboot is the first one it shows.
    dst.vm.wait_prefix("mem.filled", BOOT);
    let n = ticks(&dst.vm).len();
    wait_ticks(&dst.vm, n + 2);
    let after = vmm_tests::rss_kib(dst.vm.pid());
    assert!(
        after < before + (32 << 10),
        "resident {before} KiB before the reboot, {after} KiB after"
    );
    verify(&mut dst.vm);
}

/// A guest with a disk that is reset right after it migrated in boots
/// again: the board the reset throws away lets go of the image at once
/// (nothing of it outlives the board, not the self-announce either), so
/// the new board can lock it.
#[test]
fn a_reset_right_after_arrival_keeps_the_disk() {
    let dir = TempDir::new("mig-reset-arrival");
    let img = dir.image("disk.raw", 1 << 20);
    let drive = format!("file={},if=none,id=d0,format=raw", img.display());
    let disk = ["-drive", &drive, "-device", "virtio-blk-pci,drive=d0"];
    let src = start(&dir, "src", &disk);
    src.vm.wait_prefix("mem.filled", BOOT);
    let (mut dst, uri) = incoming(&dir, "dst", &disk);
    let mut d = dst.qmp();
    let m = migrate(&src, &uri);
    assert_eq!(m["status"], "completed", "{m}");
    d.execute("system_reset", json!({}));
    dst.vm.wait_prefix("mem.filled", BOOT);
    assert_eq!(dst.status(), "running", "{}", dst.vm.log());
    drop(src);
    let n = ticks(&dst.vm).len();
    wait_ticks(&dst.vm, n + 2);
    verify(&mut dst.vm);
}
