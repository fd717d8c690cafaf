//! The QMP monitor driven over its sockets: the protocol and its error
//! replies, stop/cont (the vCPUs really stop, the guest clock does not
//! jump), power-down through the ACPI power button, reset, quit, -S,
//! qom-get agreeing with --print-config, and real clients nobody here
//! wrote: the `qemu.qmp` package and its `qmp-shell`.

use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use vmm_tests::console::Vm;
use vmm_tests::qmp::Qmp;
use vmm_tests::vmm::Vmm;
use vmm_tests::TempDir;

const BOOT: Duration = Duration::from_secs(60);
const T: Duration = Duration::from_secs(10);

fn with_qmp(dir: &TempDir, v: Vmm) -> (Vmm, PathBuf) {
    let sock = dir.path("qmp.sock");
    (
        v.args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", sock.display()),
        ]),
        sock,
    )
}

fn ticks(vm: &Vm) -> usize {
    vm.lines()
        .iter()
        .filter(|l| l.starts_with("tick n="))
        .count()
}

fn wait_ticks(vm: &Vm, n: usize) {
    let deadline = std::time::Instant::now() + BOOT;
    while ticks(vm) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "no {n} ticks\n{}",
            vm.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn protocol_negotiation_and_error_replies() {
    let dir = TempDir::new("qmp-proto");
    let tcp = vmm_tests::free_port();
    let (v, sock) = with_qmp(
        &dir,
        Vmm::new().args(["-m", "256M", "-smp", "2", "-name", "proto"]),
    );
    let v = v.args(["-qmp", &format!("tcp:127.0.0.1:{tcp},server=on,wait=off")]);
    let vm = v
        .append("cpus=2 work=counter tick_ms=100")
        .spawn("qmp-proto");
    let mut q = Qmp::connect_raw(&sock, T);
    assert_eq!(
        q.greeting["QMP"]["version"]["package"]
            .as_str()
            .map(|s| s.starts_with("vmm")),
        Some(true)
    );
    assert!(q.greeting["QMP"]["capabilities"].is_array());
    // Before negotiation: CommandNotFound.
    let e = q.try_execute("query-status", json!({})).unwrap_err();
    assert_eq!(e["class"], "CommandNotFound", "{e}");
    q.execute("qmp_capabilities", json!({}));
    assert_eq!(
        q.try_execute("qmp_capabilities", json!({})).unwrap_err()["class"],
        "CommandNotFound"
    );
    // Malformed JSON: GenericError, and the connection stays usable.
    let r = q.raw("{\"execute\": oops}\n");
    assert_eq!(r["error"]["class"], "GenericError", "{r}");
    assert_eq!(q.execute("query-status", json!({}))["status"], "running");
    // Unknown command, with the id echoed.
    let r = q.raw(r#"{"execute": "no-such-command", "id": "x-42"}"#);
    assert_eq!(
        (r["error"]["class"].clone(), r["id"].clone()),
        (json!("CommandNotFound"), json!("x-42")),
        "{r}"
    );
    let r = q.raw(r#"{"execute": "query-name", "id": 7}"#);
    assert_eq!(
        (r["return"]["name"].clone(), r["id"].clone()),
        (json!("proto"), json!(7)),
        "{r}"
    );
    // Bad arguments.
    for (args, want) in [
        (json!({"path": 5, "property": "x"}), "expected: string"),
        (json!({"path": "/machine"}), "'property' is missing"),
        (
            json!({"path": "/machine", "property": "type", "bogus": 1}),
            "'bogus' is unexpected",
        ),
    ] {
        let e = q.try_execute("qom-get", args).unwrap_err();
        assert_eq!(e["class"], "GenericError");
        assert!(e["desc"].as_str().unwrap().contains(want), "{e}");
    }
    assert_eq!(
        q.raw(r#"{"execute": "stop", "arguments": []}"#)["error"]["class"],
        "GenericError"
    );
    // Introspection.
    let cmds: Vec<String> = q
        .execute("query-commands", json!({}))
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    for c in [
        "qmp_capabilities",
        "query-status",
        "stop",
        "cont",
        "system_powerdown",
        "system_reset",
        "quit",
        "qom-list",
        "qom-get",
        "query-pci",
        "query-machines",
        "query-cpus-fast",
        "query-version",
        "query-name",
    ] {
        assert!(cmds.contains(&c.to_string()), "{c} missing from {cmds:?}");
    }
    let ms = q.execute("query-machines", json!({}));
    let ms = ms.as_array().unwrap();
    assert!(ms.iter().any(|m| m["name"] == "pc-q35-7.2"));
    assert_eq!(ms.iter().filter(|m| m["is-default"] == true).count(), 1);
    let cpus = q.execute("query-cpus-fast", json!({}));
    assert_eq!(cpus.as_array().unwrap().len(), 2);
    assert!(
        cpus.as_array()
            .unwrap()
            .iter()
            .all(|c| c["thread-id"].as_i64().unwrap() > 0),
        "{cpus}"
    );
    // A second client at once, over TCP.
    let mut t = std::net::TcpStream::connect(("127.0.0.1", tcp)).expect("tcp QMP");
    let mut rd = std::io::BufReader::new(t.try_clone().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut rd, &mut line).unwrap();
    assert!(line.contains("\"QMP\""), "{line}");
    t.write_all(br#"{"execute":"qmp_capabilities"}{"execute":"query-status"}"#)
        .unwrap();
    for _ in 0..2 {
        line.clear();
        std::io::BufRead::read_line(&mut rd, &mut line).unwrap();
        assert!(line.contains("\"return\""), "{line}");
    }
    // A client that vanishes mid-command harms nothing.
    {
        let mut gone = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        gone.write_all(br#"{"execute":"qmp_capabilities"}{"execute": "query-st"#)
            .unwrap();
    }
    let before = ticks(&vm);
    wait_ticks(&vm, before + 3);
    assert_eq!(q.execute("query-status", json!({}))["status"], "running");
}

#[test]
fn stop_really_pauses_and_cont_resumes_without_a_clock_jump() {
    let dir = TempDir::new("qmp-stop");
    let (v, sock) = with_qmp(&dir, Vmm::new().args(["-m", "256M", "-smp", "2"]));
    let mut vm = v
        .append("cpus=2 work=counter tick_ms=100 max_gap_ms=500")
        .spawn("qmp-stop");
    let mut q = Qmp::connect(&sock, T);
    wait_ticks(&vm, 3);
    q.execute("stop", json!({}));
    q.wait_event("STOP", T);
    assert_eq!(
        q.execute("query-status", json!({})),
        json!({"status": "paused", "running": false, "singlestep": false})
    );
    let frozen = ticks(&vm);
    let last_before = vm
        .lines()
        .into_iter()
        .rfind(|l| l.starts_with("tick n="))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        ticks(&vm),
        frozen,
        "the guest ran while stopped\n{}",
        vm.log()
    );
    q.execute("cont", json!({}));
    q.wait_event("RESUME", T);
    wait_ticks(&vm, frozen + 3);
    // kvm-clock was frozen too: the guest saw no 1.5 s gap.
    let after: Vec<String> = vm
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("tick n="))
        .collect();
    let ns = |l: &str| {
        vmm_tests::console::field(l, "ns")
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let step = ns(&after[frozen]) - ns(&last_before);
    assert!(
        step < 400_000_000,
        "guest clock jumped {step} ns across stop/cont\n{}",
        vm.log()
    );
    assert!(
        !vm.lines().iter().any(|l| l.starts_with("clock.gap_ms")),
        "{}",
        vm.log()
    );
    vm.send(b"q");
    vm.assert_pass(BOOT);
}

#[test]
fn system_powerdown_shuts_the_guest_down_cleanly() {
    let dir = TempDir::new("qmp-pwr");
    let (v, sock) = with_qmp(&dir, Vmm::new().args(["-m", "256M"]));
    let mut vm = v
        .append("cpus=1 work=counter tick_ms=100")
        .spawn("qmp-powerdown");
    let mut q = Qmp::connect(&sock, T);
    wait_ticks(&vm, 2);
    q.execute("system_powerdown", json!({}));
    q.wait_event("POWERDOWN", T);
    let sd = q.wait_event("SHUTDOWN", T);
    assert_eq!(
        sd["data"],
        json!({"guest": true, "reason": "guest-shutdown"})
    );
    assert!(sd["timestamp"]["seconds"].as_u64().unwrap() > 0);
    assert_eq!(vm.wait_exit(BOOT).code(), Some(0), "{}", vm.log());
    assert!(
        vm.lines().iter().any(|l| l == "acpi.power_button=pressed"),
        "{}",
        vm.log()
    );
    assert_eq!(vm.result().as_deref(), Some("RESULT PASS"));
}

#[test]
fn system_reset_and_quit() {
    let dir = TempDir::new("qmp-reset");
    let (v, sock) = with_qmp(&dir, Vmm::new().args(["-m", "256M"]));
    let mut vm = v
        .append("cpus=1 work=counter tick_ms=100")
        .spawn("qmp-reset");
    let mut q = Qmp::connect(&sock, T);
    wait_ticks(&vm, 1);
    q.execute("system_reset", json!({}));
    let r = q.wait_event("RESET", T);
    assert_eq!(
        r["data"],
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
    vm.wait_count("with a boot banner", 2, BOOT, |l| {
        l.contains("guest=vmm-test-guest")
    });
    assert_eq!(q.execute("query-status", json!({}))["status"], "running");
    q.execute("quit", json!({}));
    let sd = q.wait_event("SHUTDOWN", T);
    assert_eq!(
        sd["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    assert_eq!(vm.wait_exit(BOOT).code(), Some(0), "{}", vm.log());
}

#[test]
fn start_paused_with_s_then_cont() {
    let dir = TempDir::new("qmp-s");
    let (v, sock) = with_qmp(&dir, Vmm::new().args(["-m", "256M", "-S"]));
    let mut vm = v.append("cpus=1").spawn("qmp-prelaunch");
    let mut q = Qmp::connect(&sock, T);
    assert_eq!(q.execute("query-status", json!({}))["status"], "prelaunch");
    std::thread::sleep(Duration::from_millis(500));
    assert!(vm.boots() == 0, "the guest ran before cont\n{}", vm.log());
    q.execute("cont", json!({}));
    q.wait_event("RESUME", T);
    vm.assert_pass(BOOT);
}

/// qom-get returns the effective values --print-config shows.
#[test]
fn qom_get_agrees_with_print_config() {
    let args = [
        "-M",
        "pc-q35-7.2",
        "-m",
        "256M",
        "-device",
        "pcie-root-port,id=rp0,chassis=3,slot=4",
        "-global",
        "pcie-root-port.port=2",
    ];
    let out = Command::new(vmm_tests::vmm::binary())
        .args(args)
        .arg("--print-config")
        .output()
        .unwrap();
    let cfg: Value = serde_json::from_slice(&out.stdout).unwrap();
    let props = cfg["devices"][0]["properties"].as_object().unwrap().clone();
    let dir = TempDir::new("qmp-qom");
    let (v, sock) = with_qmp(&dir, Vmm::new().args(args));
    let _vm = v.append("cpus=1 work=counter tick_ms=200").spawn("qmp-qom");
    let mut q = Qmp::connect(&sock, T);
    let listed = q.execute("qom-list", json!({"path": "/machine/peripheral"}));
    assert_eq!(
        listed,
        json!([{"name": "rp0", "type": "child<pcie-root-port>"}])
    );
    for (name, p) in &props {
        let got = q.execute(
            "qom-get",
            json!({"path": "/machine/peripheral/rp0", "property": name}),
        );
        assert_eq!(got, p["value"], "{name}");
    }
    assert_eq!(
        q.execute(
            "qom-get",
            json!({"path": "/machine/peripheral/rp0", "property": "x-pcie-err-unc-mask"})
        ),
        json!(false)
    );
    assert_eq!(
        q.try_execute(
            "qom-get",
            json!({"path": "/machine/peripheral/nope", "property": "x"})
        )
        .unwrap_err()["class"],
        "DeviceNotFound"
    );
    let pci = q.execute("query-pci", json!({}));
    let devs = pci[0]["devices"].as_array().unwrap();
    let rp = devs
        .iter()
        .find(|d| d["qdev_id"] == "rp0")
        .expect("rp0 in query-pci");
    assert_eq!(
        (
            rp["id"]["vendor"].clone(),
            rp["id"]["device"].clone(),
            rp["class_info"]["class"].clone()
        ),
        (json!(0x1b36), json!(0x000c), json!(0x0604))
    );
    assert!(
        devs.iter()
            .any(|d| d["id"]["device"] == 0x29c0 && d["slot"] == 0),
        "{pci}"
    );
}

fn venv_bin(name: &str) -> PathBuf {
    let p = vmm_tests::workspace()
        .join("target/qmp-venv/bin")
        .join(name);
    assert!(
        p.exists(),
        "{} missing: run scripts/setup.sh (it installs qemu.qmp into a venv)",
        p.display()
    );
    p
}

/// The qemu.qmp package from PyPI, as operators' scripts use it.
#[test]
fn qemu_qmp_python_client_manages_vmm() {
    let dir = TempDir::new("qmp-py");
    let (v, sock) = with_qmp(&dir, Vmm::new().args(["-m", "256M"]));
    let mut vm = v
        .append("cpus=1 work=counter tick_ms=100")
        .spawn("qmp-python");
    wait_ticks(&vm, 1);
    let script = r#"
import asyncio, json, sys
from qemu.qmp import QMPClient
async def main(path):
    qmp = QMPClient('vmm-test')
    await qmp.connect(path)
    out = {"greeting": qmp.greeting.QMP.version.package if hasattr(qmp.greeting.QMP.version, 'package') else None}
    events = []
    async def listen():
        async for ev in qmp.events:
            events.append(ev['event'])
    task = asyncio.create_task(listen())
    out["status1"] = (await qmp.execute('query-status'))['status']
    await qmp.execute('stop')
    out["status2"] = (await qmp.execute('query-status'))['status']
    await qmp.execute('cont')
    out["status3"] = (await qmp.execute('query-status'))['status']
    out["name"] = await qmp.execute('query-name')
    try:
        await qmp.execute('no-such-command')
    except Exception as e:
        out["error"] = type(e).__name__
    await asyncio.sleep(0.5)
    out["events"] = events
    task.cancel()
    await qmp.disconnect()
    print(json.dumps(out))
asyncio.run(main(sys.argv[1]))
"#;
    let out = Command::new(venv_bin("python3"))
        .arg("-c")
        .arg(script)
        .arg(&sock)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            r["status1"].clone(),
            r["status2"].clone(),
            r["status3"].clone()
        ),
        (json!("running"), json!("paused"), json!("running")),
        "{r}"
    );
    assert_eq!(r["error"], "ExecuteError", "{r}");
    let ev: Vec<&str> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(ev, ["STOP", "RESUME"], "{r}");
    vm.send(b"q");
    vm.assert_pass(BOOT);
}

/// qmp-shell, the tool people use, runs every command against vmm.
#[test]
fn qmp_shell_runs_every_command() {
    let dir = TempDir::new("qmp-shell");
    let (v, sock) = with_qmp(
        &dir,
        Vmm::new().args([
            "-m",
            "256M",
            "-name",
            "shell",
            "-device",
            "pcie-root-port,id=rp0,chassis=1",
        ]),
    );
    let mut vm = v
        .append("cpus=1 work=counter tick_ms=100")
        .spawn("qmp-shell");
    wait_ticks(&vm, 1);
    let mut sh = Command::new(venv_bin("qmp-shell"))
        .arg(&sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run qmp-shell");
    let cmds = "query-version
query-commands
query-status
query-name
query-machines
query-cpus-fast
query-cpu-definitions
stop
query-status
cont
qom-list path=/machine/peripheral
qom-get path=/machine/peripheral/rp0 property=chassis
query-pci
system_reset
system_powerdown
";
    sh.stdin.take().unwrap().write_all(cmds.as_bytes()).unwrap();
    let out = sh.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("\"error\""), "{text}");
    for want in [
        r#""paused""#,
        r#""shell""#,
        "pc-q35-7.2",
        r#""thread-id""#,
        "child<pcie-root-port>",
        r#""qdev_id": "rp0""#,
    ] {
        assert!(
            text.contains(want),
            "{want} missing:
{text}"
        );
    }
    // system_reset then system_powerdown: the guest rebooted and powered off.
    assert_eq!(vm.wait_exit(BOOT).code(), Some(0), "{}", vm.log());
    assert!(vm.boots() >= 2, "{}", vm.log());
}

/// Threads of process `pid`.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A client that connects, negotiates and leaves takes nothing with it
/// that stays: 50 of them (a monitoring loop's `vmmctl status` every 10 s
/// for 8 minutes) leave the thread count where it was, and an event after
/// them still reaches a client that stayed.
#[test]
fn clients_that_leave_leave_no_threads_behind() {
    let dir = TempDir::new("qmp-leak");
    let (v, sock) = with_qmp(&dir, Vmm::new().append("cpus=1 work=counter tick_ms=100"));
    let vm = v.spawn("qmp-leak");
    wait_ticks(&vm, 1);
    let mut stays = Qmp::connect(&sock, T);
    let settle = || std::thread::sleep(Duration::from_millis(300));
    settle();
    let before = threads(vm.pid());
    for _ in 0..50 {
        let mut q = Qmp::connect(&sock, T);
        q.execute("query-status", json!({}));
    }
    // The departed clients' threads end once they see their hang-up.
    let deadline = std::time::Instant::now() + T;
    let mut after = threads(vm.pid());
    while after > before + 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        after = threads(vm.pid());
    }
    assert!(
        after <= before + 1,
        "{before} threads before 50 clients, {after} {T:?} after"
    );
    stays.execute("stop", json!({}));
    assert_eq!(stays.execute("query-status", json!({}))["status"], "paused");
}

/// The monitor's unix socket is this user's alone (0600, from the start)
/// and gone when vmm exits; a path that is not a socket is never removed:
/// vmm refuses to start on it, naming it, and leaves the file as it was
/// (for `-qmp` and for `-incoming unix:` alike).
#[test]
fn the_monitor_socket_is_private_and_nothing_else_is_removed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("qmp-private");
    let (v, sock) = with_qmp(&dir, Vmm::new().append("cpus=1 work=counter tick_ms=100"));
    let mut vm = v.spawn("qmp-private");
    let mut q = Qmp::connect(&sock, T);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the QMP socket is {mode:o}");
    q.execute("quit", json!({}));
    vm.wait_exit(T);
    assert!(!sock.exists(), "the QMP socket outlived vmm");

    let precious = dir.path("precious.txt");
    std::fs::write(&precious, "keep me").unwrap();
    for opt in [
        [
            "-qmp",
            &format!("unix:{},server=on,wait=off", precious.display()),
        ],
        ["-incoming", &format!("unix:{}", precious.display())],
    ] {
        let mut vm = Vmm::new()
            .args(opt)
            .append("cpus=1 work=counter tick_ms=100")
            .spawn("qmp-not-a-socket");
        assert_eq!(vm.wait_exit(T).code(), Some(1), "{opt:?}: {}", vm.log());
        let log = vm.log();
        assert!(
            log.contains("precious.txt") && log.contains("not a socket"),
            "{opt:?}: {log}"
        );
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    }
}

/// A monitor or an incoming migration on a non-loopback address says, at
/// start, that it is reachable from the network without authentication.
#[test]
fn listening_beyond_loopback_is_warned_about() {
    let port = vmm_tests::free_port();
    let mut vm = Vmm::new()
        .args(["-qmp", &format!("tcp:0.0.0.0:{port},server=on,wait=off")])
        .args([
            "-incoming",
            &format!("tcp:0.0.0.0:{}", vmm_tests::free_port()),
        ])
        .append("cpus=1 work=counter tick_ms=100")
        .spawn("qmp-exposed");
    let deadline = std::time::Instant::now() + T;
    while vm.log().matches("reachable from the network").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no warning:\n{}",
            vm.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    vm.kill();
}

/// A client that sends commands and never reads the replies costs vmm a
/// bounded amount of memory: past a bound of unread output it is
/// disconnected, and the monitor goes on serving everyone else.
#[test]
fn a_client_that_never_reads_is_dropped_not_buffered() {
    use std::io::Read;
    let dir = TempDir::new("qmp-flood");
    let (v, sock) = with_qmp(&dir, Vmm::new().append("cpus=1 work=counter tick_ms=100"));
    let vm = v.spawn("qmp-flood");
    wait_ticks(&vm, 1);
    let mut other = Qmp::connect(&sock, T);
    let before = vmm_tests::rss_kib(vm.pid());
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut greeting = [0u8; 64];
    s.read_exact(&mut greeting).unwrap();
    s.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .unwrap();
    // 2 million commands, 60 MB; the replies are never read.
    let batch = b"{\"execute\":\"query-status\"}\n".repeat(10_000);
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut sent = 0;
    let mut dropped = false;
    for _ in 0..200 {
        if s.write_all(&batch).is_err() {
            dropped = true;
            break;
        }
        sent += 10_000;
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = vmm_tests::rss_kib(vm.pid());
    eprintln!("resident {before} KiB before, {after} KiB after {sent} commands");
    assert!(
        after < before + 64 * 1024,
        "vmm grew from {before} KiB to {after} KiB for {sent} unread replies"
    );
    assert!(
        dropped,
        "the client was never dropped ({sent} commands sent)"
    );
    assert_eq!(
        other.execute("query-status", json!({}))["status"],
        "running"
    );
    assert!(
        vm.logged("does not read", Duration::from_secs(10)),
        "the drop was not logged: {}",
        vm.log()
    );
}

/// A monitor socket serves 32 clients at once: the 33rd is told so and
/// turned away, and once one leaves a new one is served.
#[test]
fn a_monitor_serves_a_bounded_number_of_clients() {
    use std::io::{BufRead, BufReader};
    let dir = TempDir::new("qmp-many");
    let (v, sock) = with_qmp(&dir, Vmm::new().append("cpus=1 work=counter tick_ms=100"));
    let vm = v.spawn("qmp-many");
    wait_ticks(&vm, 1);
    let connect = || {
        let s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut first = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut first)
            .unwrap();
        (s, first)
    };
    let mut held: Vec<_> = (0..32)
        .map(|_| {
            let (s, greeting) = connect();
            assert!(greeting.contains("\"QMP\""), "{greeting}");
            s
        })
        .collect();
    let (_, refused) = connect();
    assert!(refused.contains("32 clients at once"), "{refused}");
    drop(held.pop());
    // Served again once the monitor has seen that one leave.
    let deadline = std::time::Instant::now() + T;
    loop {
        let (_, greeting) = connect();
        if greeting.contains("\"QMP\"") {
            break;
        }
        assert!(greeting.contains("32 clients at once"), "{greeting}");
        assert!(
            std::time::Instant::now() < deadline,
            "still turned away {T:?} after a client left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A reply or an event is one write with its CRLF: a client that reads
/// with a timeout, or a proxy that forwards each read, never meets a line
/// without its end (vmm wrote the JSON, then the CRLF: seen with strace).
#[test]
fn each_qmp_line_is_one_write() {
    let dir = TempDir::new("qmp-write");
    let (v, sock) = with_qmp(&dir, Vmm::new().append("cpus=1 work=counter tick_ms=100"));
    let vm = v.spawn("qmp-write");
    wait_ticks(&vm, 1);
    let mut q = Qmp::connect(&sock, T);
    let strace = vmm_tests::strace::Strace::attach(
        vm.pid(),
        "write,writev,sendmsg,sendto",
        &dir.path("strace.log"),
    );
    q.execute("query-status", json!({}));
    q.execute("stop", json!({}));
    q.wait_event("STOP", T);
    let log = strace.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(r#"\"return\""#) || l.contains(r#"\"event\""#))
        .collect();
    assert!(lines.len() >= 3, "no QMP writes traced:\n{log}");
    for l in lines {
        assert!(
            l.contains(r#"}\r\n""#),
            "a line without its CRLF: {l}\n{log}"
        );
    }
}
