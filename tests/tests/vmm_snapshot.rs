//! Save a running VM to a file (QMP `migrate file:`) and restore it in a
//! new process (`-incoming file:`): the guest's own checker verifies every
//! page, the counter continues and the clock does not jump; five cycles in
//! a row; bad streams are refused before anything runs; and the PCIe AER
//! seed across processes.

use serde_json::json;
use std::time::Duration;
use vmm_tests::console::{field, Vm};
use vmm_tests::qmp::Qmp;
use vmm_tests::strace::Strace;
use vmm_tests::vmm::Vmm;
use vmm_tests::TempDir;

const BOOT: Duration = Duration::from_secs(60);
const T: Duration = Duration::from_secs(30);
const GUEST: &str = "cpus=2 work=mem,counter mem_mb=64 tick_ms=100 max_gap_ms=3000 seed=7";

fn ticks(vm: &Vm) -> Vec<(u64, u64)> {
    ticks_in(&vm.lines())
}

fn ticks_in(lines: &[String]) -> Vec<(u64, u64)> {
    lines
        .iter()
        // One tick a line (a cut line printed again whole would hold two).
        .filter(|l| l.starts_with("tick n=") && l.matches("tick").count() == 1)
        .filter_map(|l| Some((field(l, "n")?.parse().ok()?, field(l, "ns")?.parse().ok()?)))
        .collect()
}

/// The last tick `before` printed whole and the next one on the console
/// that `after`, its restored guest, continues: `before` is ended first
/// (everything it wrote read), and a tick line the save cut in the middle
/// counts once `after` printed its rest.
fn continued(before: &mut Vm, after: &Vm) -> ((u64, u64), (u64, u64)) {
    before.kill();
    let last = *ticks(before).last().expect("ticks before the save");
    wait_tick_after(after, 0);
    let all = ticks_in(&before.across(after));
    let i = all.iter().position(|t| *t == last).expect("the last tick");
    let next = *all.get(i + 1).unwrap_or_else(|| {
        panic!(
            "no tick after {last:?} across the save\n{}\n{}",
            before.log(),
            after.log()
        )
    });
    (last, next)
}

fn wait_tick_after(vm: &Vm, n: u64) -> (u64, u64) {
    let deadline = std::time::Instant::now() + BOOT;
    loop {
        if let Some(t) = ticks(vm).into_iter().find(|t| t.0 > n) {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no tick after {n}\n{}",
            vm.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The guest checks every page it wrote, then ends with its verdict.
fn verify_then_pass(vm: &mut Vm) {
    vm.send(b"v");
    let v = vm.wait_for("a verify", BOOT, |l| {
        l.starts_with("mem.verify") && l.contains("reason=request")
    });
    assert_eq!(field(&v, "bad_pages").as_deref(), Some("0"), "{v}");
    vm.send(b"q");
    vm.assert_pass(BOOT);
}

fn with_cpus(cpus: u32, extra: &[&str]) -> Vmm {
    Vmm::new()
        .args([
            "-m",
            "256M",
            "-smp",
            &cpus.to_string(),
            "-device",
            "pcie-root-port,id=rp0,chassis=1",
        ])
        .args(extra)
        .append(GUEST)
}

fn base(extra: &[&str]) -> Vmm {
    with_cpus(2, extra)
}

/// Runs `vm` (with QMP at `sock`) until `migrate file:` completes.
fn save(vm: &Vm, sock: &std::path::Path, file: &std::path::Path) -> (u64, u64) {
    let mut q = Qmp::connect(sock, T);
    let last = *ticks(vm).last().expect("ticks before saving");
    q.execute(
        "migrate",
        json!({"uri": format!("file:{}", file.display())}),
    );
    let m = q.wait_migration(T);
    assert_eq!(m["status"], "completed", "{m}");
    assert_eq!(m["ram"]["total"], 256u64 << 20);
    assert_eq!(
        q.execute("query-status", json!({}))["status"],
        "postmigrate"
    );
    let last_saved = *ticks(vm).last().unwrap();
    assert!(last_saved.0 >= last.0);
    q.wait_event("MIGRATION", T);
    last_saved
}

#[test]
fn restore_continues_bit_exact_through_five_cycles() {
    let dir = TempDir::new("snap");
    let sock = dir.path("qmp.sock");
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let mut vm = base(&["-qmp", &qmp]).spawn("snap-0");
    vm.wait_prefix("mem.filled", BOOT);
    wait_tick_after(&vm, 3);
    for cycle in 1..=5 {
        let file = dir.path(&format!("snap{cycle}.bin"));
        save(&vm, &sock, &file);
        vm.kill();
        let _ = std::fs::remove_file(&sock);
        let mut before = std::mem::replace(
            &mut vm,
            base(&[
                "-qmp",
                &qmp,
                "-incoming",
                &format!("file:{}", file.display()),
            ])
            .spawn(&format!("snap-{cycle}")),
        );
        // The counter continues from where it stopped, and guest time did
        // not jump over the save.
        let (last, next) = continued(&mut before, &vm);
        drop(before);
        assert_eq!(
            next.0,
            last.0 + 1,
            "cycle {cycle}: tick {} after {}\n{}",
            next.0,
            last.0,
            vm.log()
        );
        assert!(
            next.1 - last.1 < 300_000_000,
            "cycle {cycle}: clock jumped {} ns",
            next.1 - last.1
        );
        assert!(
            vm.boots() == 0,
            "cycle {cycle}: the guest rebooted\n{}",
            vm.log()
        );
        vm.send(b"v");
        let v = vm.wait_for("a verify", BOOT, |l| {
            l.starts_with("mem.verify") && l.contains("reason=request")
        });
        assert_eq!(
            field(&v, "bad_pages").as_deref(),
            Some("0"),
            "cycle {cycle}: {v}"
        );
        wait_tick_after(&vm, next.0 + 2);
    }
    vm.send(b"q");
    vm.assert_pass(BOOT);
}

fn saved_stream(dir: &TempDir, extra: &[&str]) -> std::path::PathBuf {
    let sock = dir.path("src.sock");
    let vm = base(
        &[
            &[
                "-qmp",
                &format!("unix:{},server=on,wait=off", sock.display()),
            ][..],
            extra,
        ]
        .concat(),
    )
    .spawn("snap-src");
    vm.wait_prefix("mem.filled", BOOT);
    wait_tick_after(&vm, 0);
    let file = dir.path("snap.bin");
    save(&vm, &sock, &file);
    file
}

fn restore_fails(v: Vmm, file: &std::path::Path, want: &[&str]) {
    let mut vm = v
        .args(["-incoming", &format!("file:{}", file.display())])
        .spawn("snap-bad");
    assert_eq!(vm.wait_exit(BOOT).code(), Some(1), "{}", vm.log());
    let err = vm
        .lines()
        .into_iter()
        .find(|l| l.starts_with("stderr: vmm:"))
        .unwrap_or_default();
    for w in want {
        assert!(err.contains(w), "{w:?} missing: {err}");
    }
    assert!(
        vm.lines().iter().all(|l| !l.starts_with("tick")) && vm.cut().is_none(),
        "a half-loaded guest ran\n{}",
        vm.log()
    );
}

#[test]
fn bad_streams_are_refused_before_anything_runs() {
    let dir = TempDir::new("snap-bad");
    // Every device type, so that the stream has every kind of section.
    let img = dir.image("disk.raw", 1 << 20);
    let tap = vmm_tests::peer::TapEcho::start();
    let devices = vmm_tests::vmm::every_virtio_device(&img, &tap.netdev("n0"));
    let devices: Vec<&str> = devices.iter().map(String::as_str).collect();
    let file = saved_stream(&dir, &devices);
    // The stream explains itself: vmmctl decodes it from its description.
    let out = std::process::Command::new(vmm_tests::vmm::binary().with_file_name("vmmctl"))
        .arg("analyze-migration")
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "machine type 'pc-q35-10.0'",
        "section 'cpu' instance 1",
        "section 'kvmclock'",
        "section '0000:00:01.0/PCIDevice'",
        "EOF; RAM: ",
    ] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }
    // The dump (-dump-vmstate, checked against old releases) describes
    // exactly the sections a save writes.
    let dump = dir.path("dump.json");
    let st = std::process::Command::new(vmm_tests::vmm::binary())
        .arg("-dump-vmstate")
        .arg(&dump)
        .status()
        .unwrap();
    assert!(st.success());
    let dump: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dump).unwrap()).unwrap();
    for name in dump["sections"].as_object().unwrap().keys() {
        assert!(
            text.contains(&format!("{name}' instance")),
            "section {name} described but not saved:\n{text}"
        );
    }
    let saved = text.lines().filter(|l| l.contains(": section '")).count();
    let described_kinds = dump["sections"].as_object().unwrap().len();
    assert!(
        saved >= described_kinds,
        "{saved} sections saved, {described_kinds} described"
    );
    // Only pages someone wrote travel: the guest's 64 MiB pattern and what
    // the VMM loaded, not the untouched rest of the 256 MiB.
    let pages: u64 = text
        .lines()
        .find_map(|l| {
            l.split("EOF; RAM: ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap();
    assert!((16_384..40_000).contains(&pages), "{pages} pages sent");
    restore_fails(
        base(&["-M", "pc-q35-7.2"]),
        &file,
        &["machine type received is 'pc-q35-10.0' and local is 'pc-q35-7.2'"],
    );
    let bytes = std::fs::read(&file).unwrap();
    let cut = dir.path("cut.bin");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    restore_fails(base(&[]), &cut, &["stream truncated at offset"]);
    restore_fails(
        with_cpus(1, &[]),
        &file,
        &["Unknown savevm section or instance 'cpu' 1"],
    );
    let mut garbage = bytes.clone();
    garbage[0] = b'X';
    std::fs::write(&cut, &garbage).unwrap();
    restore_fails(base(&[]), &cut, &["not a migration stream"]);
}

/// The seed: the same machine type on both sides, but the source's root
/// port initialises PCI_ERR_UNCOR_MASK (as QEMU 8.0 did for pc-q35-7.2)
/// and the destination's does not (7.2). In strict mode (QEMU's
/// behaviour) the restore fails naming the register; the destination
/// with the property set (8.0.1's fix) loads; and a destination left as
/// it is adopts the guest's root port (carried configuration) and runs.
#[test]
fn aer_seed_across_processes() {
    let dir = TempDir::new("snap-aer");
    let on = [
        "-M",
        "pc-q35-7.2",
        "-global",
        "pcie-root-port.x-pcie-err-unc-mask=on",
    ];
    let file = saved_stream(&dir, &on);
    restore_fails(
        base(&[
            "-M",
            "pc-q35-7.2",
            "-global",
            "migration.x-strict-config=on",
        ]),
        &file,
        &[
            "PCI_ERR_UNCOR_MASK",
            "0x108",
            "00:01.0",
            "x-pcie-err-unc-mask=on on the destination",
        ],
    );
    for (name, args) in [("snap-aer-ok", &on[..]), ("snap-aer-adopted", &on[..2])] {
        let mut vm = base(args)
            .args(["-incoming", &format!("file:{}", file.display())])
            .spawn(name);
        wait_tick_after(&vm, 0);
        vm.send(b"q");
        vm.assert_pass(BOOT);
    }
}

/// `-incoming defer`: the destination waits (status inmigrate, nothing
/// runs) until QMP `migrate-incoming` names the stream.
#[test]
fn incoming_defer_then_migrate_incoming() {
    let dir = TempDir::new("snap-defer");
    let file = saved_stream(&dir, &[]);
    let sock = dir.path("dst.sock");
    let mut vm = base(&[
        "-incoming",
        "defer",
        "-qmp",
        &format!("unix:{},server=on,wait=off", sock.display()),
    ])
    .spawn("snap-defer");
    let mut q = Qmp::connect(&sock, T);
    assert_eq!(q.execute("query-status", json!({}))["status"], "inmigrate");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        vm.lines()
            .iter()
            .all(|l| !l.starts_with("guest=") && !l.starts_with("tick")),
        "{}",
        vm.log()
    );
    let e = q
        .try_execute("migrate-incoming", json!({"uri": "ftp:host:1"}))
        .unwrap_err();
    assert!(
        e["desc"]
            .as_str()
            .unwrap()
            .contains("invalid migration URI 'ftp:host:1'"),
        "{e}"
    );
    q.execute(
        "migrate-incoming",
        json!({"uri": format!("file:{}", file.display())}),
    );
    q.wait_event("RESUME", T);
    assert_eq!(q.execute("query-status", json!({}))["status"], "running");
    wait_tick_after(&vm, 0);
    let e = q
        .try_execute(
            "migrate-incoming",
            json!({"uri": format!("file:{}", file.display())}),
        )
        .unwrap_err();
    assert!(
        e["desc"].as_str().unwrap().contains("only possible once"),
        "{e}"
    );
    vm.send(b"q");
    vm.assert_pass(BOOT);

    // A stream that does not load: an error reply, and the process ends.
    let cut = dir.path("cut.bin");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let _ = std::fs::remove_file(&sock);
    let mut vm = base(&[
        "-incoming",
        "defer",
        "-qmp",
        &format!("unix:{},server=on,wait=off", sock.display()),
    ])
    .spawn("snap-defer-bad");
    let mut q = Qmp::connect(&sock, T);
    let e = q
        .try_execute(
            "migrate-incoming",
            json!({"uri": format!("file:{}", cut.display())}),
        )
        .unwrap_err();
    assert!(
        e["desc"].as_str().unwrap().contains("stream truncated"),
        "{e}"
    );
    assert_eq!(vm.wait_exit(BOOT).code(), Some(1), "{}", vm.log());
    assert!(
        vm.lines().iter().all(|l| !l.starts_with("tick")) && vm.cut().is_none(),
        "{}",
        vm.log()
    );
}

/// Save, continue, save again: the second stream must still carry pages
/// the guest wrote only before the first save (its page tables, IDT...) —
/// whatever tells the save which pages were ever touched must not forget
/// them after a first save.
#[test]
fn second_save_after_cont_is_complete() {
    let dir = TempDir::new("snap-twice");
    let sock = dir.path("qmp.sock");
    let mut vm = base(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", sock.display()),
    ])
    .spawn("snap-twice");
    vm.wait_prefix("mem.filled", BOOT);
    wait_tick_after(&vm, 0);
    save(&vm, &sock, &dir.path("first.bin"));
    let mut q = Qmp::connect(&sock, T);
    q.execute("cont", json!({}));
    let t = wait_tick_after(&vm, ticks(&vm).last().unwrap().0 + 2);
    let second = dir.path("second.bin");
    let last = save(&vm, &sock, &second);
    assert!(last.0 >= t.0);
    let mut back =
        base(&["-incoming", &format!("file:{}", second.display())]).spawn("snap-twice-restored");
    let (last, next) = continued(&mut vm, &back);
    assert_eq!(next.0, last.0 + 1, "{}", back.log());
    drop(vm);
    verify_then_pass(&mut back);
}

/// `migrate file:` runs off the main loop: while a 1 GiB guest's save is
/// held up (the file is a FIFO nobody reads yet), the monitor answers —
/// query-migrate says active, query-status finish-migrate, `cont` is
/// refused — and once the FIFO is read the save completes and restores
/// with every page intact.
#[test]
fn file_save_runs_off_the_main_loop() {
    let dir = TempDir::new("snap-fifo");
    let sock = dir.path("qmp.sock");
    let fifo = dir.fifo("save.fifo");
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let big = |extra: &[&str]| {
        Vmm::new()
            .args(["-m", "1G", "-smp", "2", "-qmp", &qmp])
            .args(extra)
            .append("cpus=2 work=mem,counter mem_mb=256 tick_ms=100 max_gap_ms=3000 seed=7")
    };
    let mut vm = big(&[]).spawn("snap-fifo");
    vm.wait_prefix("mem.filled", BOOT);
    wait_tick_after(&vm, 1);
    let mut q = Qmp::connect(&sock, T);
    let t0 = std::time::Instant::now();
    q.execute(
        "migrate",
        json!({"uri": format!("file:{}", fifo.display())}),
    );
    for _ in 0..3 {
        assert_eq!(q.execute("query-migrate", json!({}))["status"], "active");
        assert_eq!(
            q.execute("query-status", json!({}))["status"],
            "finish-migrate"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let e = q.try_execute("cont", json!({})).unwrap_err();
    assert!(
        e["desc"]
            .as_str()
            .unwrap()
            .contains("migration is finishing"),
        "{e}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the monitor was held up"
    );
    let reader = std::thread::spawn(move || std::fs::read(&fifo).expect("read the FIFO"));
    let m = q.wait_migration(T);
    assert_eq!(m["status"], "completed", "{m}");
    assert_eq!(
        q.execute("query-status", json!({}))["status"],
        "postmigrate"
    );
    let bytes = reader.join().unwrap();
    assert!(bytes.len() > 256 << 20, "{} bytes", bytes.len());
    assert_eq!(m["ram"]["transferred"], bytes.len() as u64);
    drop(q);
    vm.kill();
    let file = dir.path("save.bin");
    std::fs::write(&file, bytes).unwrap();
    let _ = std::fs::remove_file(&sock);
    let mut back = big(&["-incoming", &format!("file:{}", file.display())]).spawn("snap-fifo-back");
    let (last, next) = continued(&mut vm, &back);
    assert_eq!(next.0, last.0 + 1, "{}", back.log());
    drop(vm);
    verify_then_pass(&mut back);
}

/// A reset while a save is held up fails the save, and the guest boots
/// and runs again: the new board must not inherit `finish-migrate` (which
/// would keep its vCPUs parked for good and refuse `cont`).
#[test]
fn reset_during_a_held_save_fails_it_and_the_guest_runs_again() {
    let dir = TempDir::new("snap-fifo-reset");
    let sock = dir.path("qmp.sock");
    let fifo = dir.fifo("save.fifo");
    let vm = base(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", sock.display()),
    ])
    .spawn("snap-fifo-reset");
    vm.wait_prefix("mem.filled", BOOT);
    wait_tick_after(&vm, 1);
    let mut q = Qmp::connect(&sock, T);
    q.execute(
        "migrate",
        json!({"uri": format!("file:{}", fifo.display())}),
    );
    assert_eq!(
        q.execute("query-status", json!({}))["status"],
        "finish-migrate"
    );
    q.execute("system_reset", json!({}));
    let deadline = std::time::Instant::now() + T;
    while q.execute("query-status", json!({}))["status"] != "running" {
        assert!(
            std::time::Instant::now() < deadline,
            "the VM did not run again after the reset: {}",
            q.execute("query-status", json!({}))
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(q.execute("query-migrate", json!({}))["status"], "failed");
    // The guest boots again and its counter ticks.
    let ticking_again = |vm: &Vm| {
        let lines = vm.lines();
        let second_boot = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains("guest=vmm-test-guest"))
            .nth(1)
            .map(|(i, _)| i);
        second_boot.is_some_and(|i| lines[i..].iter().any(|l| l.starts_with("tick n=")))
    };
    let deadline = std::time::Instant::now() + BOOT;
    while !ticking_again(&vm) {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest did not run again\n{}",
            vm.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the held save end (it opens the FIFO once a reader does).
    let _ = std::fs::read(&fifo);
}

/// `migrate file:` says `completed` only once the file is on stable
/// storage: the save ends with an fsync of the file (seen with strace), so
/// a host crash right after cannot lose the only copy of the guest.
#[test]
fn a_file_save_is_durable_when_it_completes() {
    let dir = TempDir::new("snap-fsync");
    let sock = dir.path("qmp.sock");
    let trace = dir.path("strace.log");
    let file = dir.path("vm.save");
    let v = base(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", sock.display()),
    ]);
    let vm = v.spawn("snap-fsync");
    vm.wait_prefix("mem.filled", BOOT);
    wait_tick_after(&vm, 1);
    // Every thread traced before the save starts (the save's own thread
    // is made later, and strace -f follows it).
    let strace = Strace::attach(vm.pid(), "fsync,fdatasync,openat", &trace);
    save(&vm, &sock, &file);
    let log = strace.log();
    // The file's descriptor, from its openat, then a sync of it.
    let name = file.display().to_string();
    let fd = log
        .lines()
        .filter(|l| l.contains("openat(") && l.contains(&name))
        .find_map(|l| l.rsplit("= ").next()?.trim().parse::<i32>().ok())
        .unwrap_or_else(|| panic!("no openat of {name} in:\n{log}"));
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("fsync({fd})")) || l.contains(&format!("fdatasync({fd})"))),
        "no fsync of fd {fd} ({name}):\n{log}"
    );
}

/// A vCPU state this host's KVM refuses is not run with part of it lost:
/// a saved MSR (MSR_STAR of the last vCPU) renumbered to one KVM does not
/// know makes the restore fail naming it. KVM stops at the first MSR it
/// refuses, so every MSR after it would have been lost too.
#[test]
fn a_refused_msr_fails_the_restore_naming_it() {
    let dir = TempDir::new("snap-msr");
    let file = saved_stream(&dir, &[]);
    let mut data = std::fs::read(&file).unwrap();
    // MSR_STAR's entry: index 0xc0000081 (le32), 4 reserved zero bytes.
    // The last one in the file is in the vCPU sections, after all of RAM.
    let star = [0x81, 0x00, 0x00, 0xc0, 0, 0, 0, 0];
    let at = data
        .windows(star.len())
        .rposition(|w| w == star)
        .expect("MSR_STAR in the saved vCPU state");
    data[at..at + 4].copy_from_slice(&0x4000_00ffu32.to_le_bytes());
    std::fs::write(&file, &data).unwrap();
    restore_fails(base(&[]), &file, &["MSR 0x400000ff", "refused"]);
}
