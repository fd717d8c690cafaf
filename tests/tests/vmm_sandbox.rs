//! The seccomp sandbox: every class of thread runs under its own filter
//! (the whole test suite runs with it on, the default), and a call outside
//! a thread's list ends vmm with one line naming the thread and the call.

use std::time::Duration;
use vmm_tests::console::Vm;
use vmm_tests::vmm::{fault_injection_binary, Vmm};
use vmm_tests::{free_port, TempDir};

const T: Duration = Duration::from_secs(60);

/// vmm (the fault-injection build) with a virtio device and a monitor
/// (and `extra`), so that a thread of every class starts; the thread of
/// class `forbidden` makes a call outside its list once it is confined.
fn spawn(dir: &TempDir, forbidden: &str, extra: &[&str]) -> Vm {
    spawn_with(dir, forbidden, forbidden, extra, &[])
}

/// [`spawn`], the console named `name`, with `env` set too.
fn spawn_with(
    dir: &TempDir,
    name: &str,
    forbidden: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Vm {
    let qmp = format!("unix:{},server=on,wait=off", dir.path(name).display());
    let mut v = Vmm::new()
        .args(["-m", "128M", "-qmp", &qmp, "-device", "virtio-rng-pci"])
        .args(extra)
        .append("cpus=1 work=counter tick_ms=100");
    v.binary = Some(fault_injection_binary());
    let mut cmd = v.command();
    cmd.env("VMM_TEST_FORBIDDEN", forbidden);
    cmd.envs(env.iter().copied());
    Vm::spawn(name, cmd)
}

#[test]
fn a_call_outside_a_threads_list_ends_vmm_naming_both() {
    let dir = TempDir::new("sandbox");
    for (class, thread, call) in [
        ("main", "vmm", "ptrace"),
        ("vcpu", "vcpu0", "socket"),
        ("worker", "virtio-rng-pci", "socket"),
        ("qmp", "qmp-", "socket"),
        ("migration", "incoming", "eventfd2"),
    ] {
        // An incoming port: its thread is a migration's.
        let incoming = format!("tcp:127.0.0.1:{}", free_port());
        let mut vm = spawn(&dir, class, &["-incoming", &incoming]);
        let st = vm.wait_exit(T);
        let log = vm.log();
        assert_eq!(st.code(), Some(159), "{class}: {log}");
        let line = log
            .lines()
            .find(|l| l.contains("outside its seccomp list"))
            .unwrap_or_else(|| panic!("{class}: no report: {log}"));
        assert!(
            line.contains(&format!("thread '{thread}")) && line.contains(&format!(": {call} (")),
            "{class}: {line}"
        );
    }
}

/// A vCPU, a device thread and a migration may make KVM's ioctls only
/// (a migration FIONBIO too), and the monitor none: a terminal's (TCGETS)
/// ends vmm, naming the thread.
#[test]
fn only_the_main_loop_makes_other_than_kvms_ioctls() {
    let dir = TempDir::new("sandbox-ioctl");
    for (class, thread) in [
        ("vcpu", "vcpu0"),
        ("worker", "virtio-rng-pci"),
        ("qmp", "qmp-"),
        ("migration", "incoming"),
    ] {
        let incoming = format!("tcp:127.0.0.1:{}", free_port());
        let mut vm = spawn_with(
            &dir,
            &format!("{class}-ioctl"),
            class,
            &["-incoming", &incoming],
            &[("VMM_TEST_FORBIDDEN_IOCTL", "1")],
        );
        let st = vm.wait_exit(T);
        let log = vm.log();
        assert_eq!(st.code(), Some(159), "{class}: {log}");
        assert!(
            log.contains(&format!("thread '{thread}"))
                && log.contains("outside its seccomp list: ioctl (16)"),
            "{class}: {log}"
        );
    }
}

/// `-sandbox off`: the same call is just a call, and vmm runs on.
#[test]
fn sandbox_off_confines_nothing() {
    let dir = TempDir::new("sandbox-off");
    let vm = spawn(&dir, "vcpu", &["-sandbox", "off"]);
    // The call was made (the hook says so) and the guest goes on ticking.
    vm.wait_for("the forbidden call", T, |l| l.contains("a forbidden call"));
    let n = vm.ticks();
    vm.wait_ticks(n + 3, T);
    assert!(!vm.log().contains("seccomp"), "{}", vm.log());
}
