//! vmm boots guests on KVM: the test guest's platform checks pass on vmm
//! exactly as they pass on QEMU, the lifecycle ends the process the way a
//! user expects, and bad input gets one clear sentence and exit status 1.

use std::process::Command;
use std::time::Duration;
use vmm_tests::console::field;
use vmm_tests::vmm::{binary, Vmm};

const BOOT: Duration = Duration::from_secs(60);

fn platform(cpus: u32, mem: &str) -> Vmm {
    Vmm::new()
        .args(["-M", "q35", "-m", mem, "-smp", &cpus.to_string()])
        .append(&format!(
            "cpus={cpus} mem={mem} pci_ecam=1 acpi_require=FACP,APIC,DSDT,MCFG"
        ))
}

fn passes(cpus: u32, mem: &str) -> vmm_tests::console::Vm {
    let mut vm = platform(cpus, mem).spawn(&format!("vmm-{cpus}cpu-{mem}"));
    vm.assert_pass(BOOT);
    let lines = vm.lines();
    for want in [
        "check.pci.cf8_ecam_agree=ok",
        "check.smp.all_alive=ok",
        "check.acpi.checksums=ok",
        "check.mem.size=ok",
        "check.clock.monotonic=ok",
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "missing {want}\n{}",
            vm.log()
        );
    }
    assert_eq!(
        vm.value("smp.online", "smp.online"),
        Some(cpus.to_string()),
        "{}",
        vm.log()
    );
    assert_eq!(
        vm.value("clock.source", "clock.source").as_deref(),
        Some("kvm-clock"),
        "{}",
        vm.log()
    );
    // The host bridge, seen the same way through CF8 and ECAM.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("pci.00:00.0 vendor=0x8086 device=0x29c0")),
        "{}",
        vm.log()
    );
    vm
}

#[test]
fn test_guest_passes_1_cpu_512m() {
    passes(1, "512M");
}

#[test]
fn test_guest_passes_2_cpus_512m() {
    passes(2, "512M");
}

#[test]
fn test_guest_passes_4_cpus_512m() {
    passes(4, "512M");
}

#[test]
fn test_guest_passes_2_cpus_5g_with_ram_above_4g() {
    let vm = passes(2, "5G");
    let above: u64 = vm
        .value("mem.ram_total", "mem.ram_above_4g")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(above, 3 << 30, "{}", vm.log());
}

/// The Linux boot protocol: the same guest as a bzImage, entered at
/// code32_start with the zero page (e820, command line, RSDP) in %esi.
#[test]
fn bzimage_boot_protocol_passes_the_same_checks() {
    let mut vm = platform(2, "5G").bzimage().spawn("vmm-bzimage");
    vm.assert_pass(BOOT);
    let p = vm.wait_prefix("boot.protocol=", BOOT);
    assert!(
        p.starts_with("boot.protocol=linux") && p.contains("cpus=2 mem=5G"),
        "{p}"
    );
    let above: u64 = vm
        .value("mem.ram_total", "mem.ram_above_4g")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(above, 3 << 30, "{}", vm.log());
    assert!(
        vm.lines()
            .iter()
            .any(|l| l == "check.pci.cf8_ecam_agree=ok"),
        "{}",
        vm.log()
    );
}

/// The mem and counter workloads run on every vCPU; the console takes the
/// host's commands.
#[test]
fn workloads_run_and_console_input_reaches_the_guest() {
    let mut vm = Vmm::new()
        .args(["-m", "512M", "-smp", "2"])
        .append("cpus=2 mem=512M work=mem,counter mem_mb=32 tick_ms=100 max_gap_ms=2000")
        .spawn("vmm-work");
    vm.wait_prefix("mem.filled", BOOT);
    vm.wait_prefix("tick n=3", BOOT);
    vm.send(b"v");
    let v = vm.wait_for("a requested verify", BOOT, |l| {
        l.starts_with("mem.verify") && l.contains("reason=request")
    });
    assert_eq!(field(&v, "bad_pages").as_deref(), Some("0"), "{v}");
    vm.send(b"q");
    vm.assert_pass(BOOT);
}

#[test]
fn acpi_poweroff_exits_0() {
    let mut vm = Vmm::new()
        .args(["-m", "256M"])
        .append("cpus=1 end=acpi exit_port=0")
        .spawn("vmm-s5");
    let st = vm.wait_exit(BOOT);
    assert_eq!(vm.result().as_deref(), Some("RESULT PASS"), "{}", vm.log());
    assert_eq!(st.code(), Some(0), "{}", vm.log());
}

#[test]
fn debug_exit_carries_the_guests_code() {
    // A failing guest writes 1: (1 << 1) | 1 = 3, as QEMU's isa-debug-exit.
    let mut vm = Vmm::new()
        .args(["-m", "256M", "-smp", "2"])
        .append("cpus=3")
        .spawn("vmm-fail");
    assert_eq!(vm.wait_exit(BOOT).code(), Some(3), "{}", vm.log());
    assert!(
        vm.result().unwrap().starts_with("RESULT FAIL"),
        "{}",
        vm.log()
    );
}

#[test]
fn reset_exits_with_no_reboot_and_reboots_without() {
    let mut vm = Vmm::new()
        .args(["-m", "256M", "-no-reboot"])
        .append("cpus=1 end=reset")
        .spawn("vmm-noreboot");
    assert_eq!(vm.wait_exit(BOOT).code(), Some(0), "{}", vm.log());
    let vm = Vmm::new()
        .args(["-m", "256M"])
        .append("cpus=1 end=reset")
        .spawn("vmm-reboot");
    // Booted, reset, booted again: the banner twice.
    vm.wait_count("with a boot banner", 2, BOOT, |l| {
        l.contains("guest=vmm-test-guest")
    });
}

#[test]
fn triple_fault_exits_nonzero_with_registers() {
    let mut vm = Vmm::new()
        .args(["-m", "256M"])
        .append("cpus=1 end=triple-fault")
        .spawn("vmm-tf");
    assert_eq!(vm.wait_exit(BOOT).code(), Some(1), "{}", vm.log());
    let err = vm
        .lines()
        .into_iter()
        .find(|l| l.starts_with("stderr: vmm:"))
        .expect("an error line");
    assert!(
        err.contains("triple fault") && err.contains("rip=0x") && err.contains("cr3="),
        "{err}"
    );
}

#[test]
fn serial_to_file() {
    let dir = vmm_tests::TempDir::new("serial");
    let out = dir.path("console.log");
    let mut vm = Vmm::new()
        .args(["-m", "256M", "-serial", &format!("file:{}", out.display())])
        .append("cpus=1")
        .spawn("vmm-serial-file");
    assert_eq!(vm.wait_exit(BOOT).code(), Some(1), "{}", vm.log());
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("RESULT PASS"), "{text}");
    assert!(
        vm.lines().iter().all(|l| l.starts_with("stderr: ")) && vm.cut().is_none(),
        "stdout must stay quiet\n{}",
        vm.log()
    );
}

/// Runs vmm with `args`; returns (status, stderr).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(binary()).args(args).output().expect("run vmm");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn bad(args: &[&str], want: &[&str]) {
    let (code, _, err) = run(args);
    assert_eq!(code, Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let line = err.trim();
    assert_eq!(line.lines().count(), 1, "one line expected: {err}");
    for w in want {
        assert!(
            line.contains(w),
            "{args:?}: {line:?} does not mention {w:?}"
        );
    }
}

#[test]
fn bad_input_gets_one_sentence_and_status_1() {
    let k = vmm_tests::guest_kernel();
    let k = k.to_str().unwrap();
    bad(
        &["-kernel", "/nonexistent/kernel"],
        &["cannot open kernel /nonexistent/kernel"],
    );
    bad(
        &["-kernel", "/etc/hostname"],
        &["/etc/hostname is not a kernel"],
    );
    bad(
        &["-M", "pc-q35-1.0", "-kernel", k],
        &["'pc-q35-1.0'", "pc-q35-5.1", "pc-q35-8.0", "q35"],
    );
    bad(&["-m", "1M", "-kernel", k], &["too small", "1M"]);
    bad(
        &["-m", "lots", "-kernel", k],
        &["invalid memory size 'lots'"],
    );
    bad(&["-smp", "0", "-kernel", k], &["-smp 0"]);
    bad(&["-smp", "x", "-kernel", k], &["-smp 'x'"]);
    bad(
        &["-device", "nosuch", "-kernel", k],
        &["unknown device type 'nosuch'"],
    );
    bad(
        &["-device", "isa-debug-exit,bogus=1", "-kernel", k],
        &["no property 'bogus'"],
    );
    bad(
        &["-global", "isa-debug-exit.iobase=zz", "-kernel", k],
        &["'zz'"],
    );
    bad(
        &["-serial", "tcp:1", "-kernel", k],
        &["invalid -serial 'tcp:1'"],
    );
    bad(&["-nosuchoption"], &["nosuchoption"]);
}

#[test]
fn kvm_not_openable_is_one_sentence() {
    // Drop root: /dev/kvm (0600 root) cannot be opened, the real failure.
    let k = vmm_tests::guest_kernel();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(binary())
        .args(["-kernel", k.to_str().unwrap()])
        .output()
        .expect("run setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.trim().starts_with("vmm: cannot open /dev/kvm"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn help_version_and_lists() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("vmm "), "{out}");
    let (code, out, _) = run(&["-help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("-smp") && out.contains("--kernel"), "{out}");
    let (code, out, _) = run(&["-M", "help"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("pc-q35-2.7") && out.contains("(default"),
        "{out}"
    );
    let (code, out, _) = run(&["-device", "help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("isa-debug-exit"), "{out}");
}

/// PVH kernels may be 32-bit ELFs (QEMU's -kernel boots them): the test
/// guest's segments and PVH note repacked as ELF32 (tests/guest/mkelf32.py)
/// give the same checks as the ELF64, on vmm and on QEMU alike.
#[test]
fn elf32_pvh_kernel_boots_like_the_elf64_on_vmm_and_qemu() {
    let elf64 = vmm_tests::guest_kernel();
    let elf32 = elf64.with_extension("elf32");
    assert!(
        elf32.is_file(),
        "{} missing: run scripts/build-guest.sh",
        elf32.display()
    );
    let append = "cpus=2 mem=256M";
    let run_vmm = |kernel: &std::path::Path, name: &str| {
        let mut v = Vmm::new().args(["-m", "256M", "-smp", "2"]).append(append);
        v.kernel = kernel.to_path_buf();
        let mut vm = v.spawn(name);
        vm.assert_pass(BOOT);
        vm
    };
    let run_qemu = |kernel: &std::path::Path, name: &str| {
        let q = vmm_tests::qemu::Qemu::new("microvm")
            .smp(2)
            .mem("256M")
            .append(append);
        let mut vm = vmm_tests::console::Vm::spawn(name, q.command(kernel));
        vm.assert_pass(BOOT);
        vm
    };
    let (v64, v32) = (run_vmm(&elf64, "vmm-elf64"), run_vmm(&elf32, "vmm-elf32"));
    assert_eq!(v32.checks(), v64.checks(), "{}", v32.log());
    assert!(v32.checks().len() >= 10, "{}", v32.log());
    let (q64, q32) = (
        run_qemu(&elf64, "qemu-elf64"),
        run_qemu(&elf32, "qemu-elf32"),
    );
    assert_eq!(q32.checks(), q64.checks(), "{}", q32.log());
    for vm in [&v32, &q32] {
        assert_eq!(
            vm.value("boot.protocol", "boot.protocol").as_deref(),
            Some("pvh"),
            "{}",
            vm.log()
        );
    }
}

/// A kernel segment outside guest RAM is named, with its address, its
/// size and the RAM there is.
#[test]
fn a_kernel_segment_outside_ram_is_named() {
    let elf32 = vmm_tests::guest_kernel().with_extension("elf32");
    let mut image = std::fs::read(&elf32).expect("read the ELF32 test guest");
    // The first program header (at e_phoff 52) is the PT_LOAD: link it at
    // 128 MiB, just past the end of a 128 MiB guest.
    assert_eq!(u32::from_le_bytes(image[52..56].try_into().unwrap()), 1);
    image[52 + 12..52 + 16].copy_from_slice(&0x800_0000u32.to_le_bytes());
    let dir = vmm_tests::TempDir::new("elf-far");
    let k = dir.path("far.elf");
    std::fs::write(&k, image).unwrap();
    bad(
        &["-m", "128M", "-kernel", k.to_str().unwrap()],
        &[
            "segment 0 (address 0x8000000,",
            "does not fit in the guest's 128 MiB of RAM",
            "RAM at 0x0-0x7ffffff",
        ],
    );
}

/// A bug that panics a thread ends the whole VMM at once, saying which
/// thread and what it said, instead of leaving a VM half alive (a dead
/// vCPU, locks poisoned for whoever comes next).
#[test]
fn a_panic_ends_the_vmm_naming_the_thread() {
    let mut v = Vmm::new().append("cpus=1 work=counter tick_ms=100");
    v.binary = Some(vmm_tests::vmm::fault_injection_binary());
    let mut cmd = v.command();
    cmd.env("VMM_TEST_PANIC", "vcpu");
    let mut vm = vmm_tests::console::Vm::spawn("panic", cmd);
    let status = vm.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "{status:?}");
    let log = vm.log();
    assert!(
        log.contains("thread 'vcpu0' panicked") && log.contains("fault injection: a panic at vcpu"),
        "{log}"
    );
}

/// Every descriptor vmm opens itself is close-on-exec — KVM's, the
/// eventfds of the serial port, ACPI and each virtio queue, epoll, sockets,
/// disk images — so none leaks into a process vmm (or a library in it)
/// ever starts. Only what it was given (0, 1, 2) is inherited.
#[test]
fn every_descriptor_vmm_opens_is_close_on_exec() {
    let dir = vmm_tests::TempDir::new("cloexec");
    let img = dir.image("disk.raw", 16 << 20);
    let drive = format!("file={},if=none,id=d0,format=raw", img.display());
    let qmp = format!("unix:{},server=on,wait=off", dir.path("q.sock").display());
    let mut cmd = Vmm::new()
        .args(["-m", "256M", "-smp", "2", "-qmp", &qmp])
        .args(["-drive", &drive, "-device", "virtio-blk-pci,drive=d0"])
        .args(["-device", "virtio-rng-pci"])
        .append("cpus=2 work=counter tick_ms=100 max_gap_ms=5000")
        .command();
    // vmm inherits nothing but 0, 1 and 2 (the test runner's own
    // descriptors would otherwise show up as vmm's).
    // SAFETY: close_range is async-signal-safe; nothing else runs here.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let vm = vmm_tests::console::Vm::spawn("vmm-cloexec", cmd);
    vm.wait_prefix("tick n=", BOOT);
    let pid = vm.pid();
    let mut leaking = vec![];
    let mut seen = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let fd: u32 = e.unwrap().file_name().to_string_lossy().parse().unwrap();
        if fd <= 2 {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap();
        seen += 1;
        if flags & libc::O_CLOEXEC as u32 == 0 {
            let what = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap_or_default();
            leaking.push(format!("{fd} -> {}", what.display()));
        }
    }
    assert!(seen > 10, "only {seen} descriptors: is this vmm?");
    assert!(leaking.is_empty(), "not close-on-exec: {leaking:?}");
}
