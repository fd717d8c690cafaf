//! `-cpu`: QEMU's named models and `host`, with `+feat`/`-feat`, enforced
//! at start; and the CPU travelling with a migrating guest: a destination
//! whose host lacks a feature the guest was given refuses it, naming the
//! feature, and the source runs on.
//!
//! What the guest sees is read by the guest itself (CPUID executed at
//! CPL0, `cpu.cpuid` lines). On these PVM hosts a guest's CPUID reflects
//! vmm's table for the features KVM reports as supported and the identity
//! leaves; features KVM does not report (SSE3, AVX2, ...) the guest sees
//! as the host has them whatever the table says, so the tests hide and
//! check features KVM reports (x2apic, lahf-lm, ...).

use arch::x86_64::cpu;
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use vmm_tests::console::Vm;
use vmm_tests::qemu::Qemu;
use vmm_tests::qmp::Qmp;
use vmm_tests::vmm::Vmm;
use vmm_tests::{free_port, TempDir};

const T: Duration = Duration::from_secs(60);
/// The guest also keeps a pattern in its YMM registers (`work=avx`): each
/// move checks the XSAVE state arrived whole.
const GUEST: &str = "cpus=1 work=mem,avx,counter mem_mb=8 tick_ms=100 max_gap_ms=5000 seed=3";

/// The guest runs on (two more ticks) and finds its memory and registers.
fn runs_on(vm: &mut Vm) {
    vm.wait_ticks(vm.ticks() + 2, T);
    verify(vm);
}

/// Has the guest check its memory and its vector registers.
fn verify(vm: &mut Vm) {
    let before = vm.count(|l| l.starts_with("avx.verify"));
    vm.verify_memory(T);
    let lines = vm.lines();
    let avx: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("avx.verify"))
        .collect();
    assert!(avx.len() > before, "no avx.verify\n{}", vm.log());
    assert!(avx.last().unwrap().contains(" bad=0 "), "{}", vm.log());
}

fn vmm(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(vmm_tests::vmm::binary())
        .args(args)
        .output()
        .expect("run vmm");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The CPUID leaves the guest reported, by (leaf, index).
fn guest_cpuid(vm: &Vm) -> HashMap<(u32, u32), [u32; 4]> {
    vm.wait_prefix("cpu.cpuid leaf=0x80000002", T);
    let num = |l: &str, key: &str| {
        let v = l.split(&format!("{key}=")).nth(1)?.split(' ').next()?;
        match v.strip_prefix("0x") {
            Some(h) => u32::from_str_radix(h, 16).ok(),
            None => v.parse().ok(),
        }
    };
    vm.lines()
        .iter()
        .filter(|l| l.starts_with("cpu.cpuid "))
        .filter_map(|l| {
            Some((
                (num(l, "leaf")?, num(l, "index")?),
                [
                    num(l, "eax")?,
                    num(l, "ebx")?,
                    num(l, "ecx")?,
                    num(l, "edx")?,
                ],
            ))
        })
        .collect()
}

fn sees(leaves: &HashMap<(u32, u32), [u32; 4]>, name: &str) -> bool {
    let f = cpu::feature(name).unwrap();
    let r = leaves[&(f.word.leaf, f.word.index)];
    let reg = match f.word.reg {
        cpu::Reg::Eax => r[0],
        cpu::Reg::Ebx => r[1],
        cpu::Reg::Ecx => r[2],
        cpu::Reg::Edx => r[3],
    };
    reg & f.mask() != 0
}

fn boot(cpu: &str) -> Vm {
    Vmm::new()
        .args(["-cpu", cpu, "-m", "64M"])
        .append("cpus=1")
        .spawn(&format!("cpu-{cpu}"))
}

#[test]
fn cpu_help_lists_every_model_and_what_this_host_lacks() {
    let (code, out, err) = vmm(&["-cpu", "help"]);
    assert_eq!(code, Some(0), "{err}");
    for m in cpu::models() {
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().next() == Some(m.name)),
            "{} missing from -cpu help:\n{out}",
            m.name
        );
    }
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().next() == Some("host")),
        "{out}"
    );
}

/// A model asking for what the host lacks (taken to lack, by the test
/// switch, and every model this host really lacks something of) fails to
/// start, naming exactly that, grouped by CPUID word; with `check=on` the
/// same model starts and the guest runs.
#[test]
fn a_model_this_host_cannot_give_fails_at_start_naming_the_features() {
    let (_, help, _) = vmm(&["-cpu", "help"]);
    let lacking: Vec<(&str, Vec<&str>)> = help
        .lines()
        .filter_map(|l| {
            let name = l.split_whitespace().next()?;
            let list = l.split("[this host lacks: ").nth(1)?.trim_end_matches(']');
            Some((name, list.split(' ').collect()))
        })
        .collect();
    // Whatever this host has, one it is taken to lack (the test switch)
    // refuses a model that asks for it.
    let mut v = Vmm::new().args(["-cpu", "host,+x2apic,+lahf-lm", "-m", "64M"]);
    v.binary = Some(vmm_tests::vmm::fault_injection_binary());
    let mut cmd = v.command();
    cmd.env("VMM_TEST_HOST_LACKS", "x2apic,lahf-lm");
    let out = cmd.output().expect("run vmm");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains("it lacks x2apic (leaf 0x1 ecx); lahf-lm (leaf 0x80000001 ecx)"),
        "{err}"
    );
    let Some((model, missing)) = lacking
        .iter()
        .find(|(m, _)| *m == "Haswell")
        .or(lacking.first())
    else {
        return;
    };
    let out = Vmm::new()
        .args(["-cpu", model, "-m", "64M"])
        .command()
        .output()
        .expect("run vmm");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains(&format!("cannot give -cpu {model}")), "{err}");
    for f in missing {
        let feat = cpu::feature(f).unwrap();
        assert!(
            err.contains(f) && err.contains(&feat.word.to_string()),
            "{f}: {err}"
        );
    }
    let mut vm = boot(&format!("{model},check=on"));
    vm.assert_pass(T);
    assert!(vm.logged("the guest goes without", T), "{}", vm.log());
}

/// A named model: the guest sees its vendor, signature and name, and
/// none of the features KVM could give that the model does not have.
#[test]
fn the_guest_sees_the_model() {
    let m = cpu::model("EPYC-Rome").unwrap();
    let vm = boot("EPYC-Rome,check=on");
    let leaves = guest_cpuid(&vm);
    let vendor: Vec<u8> = [leaves[&(0, 0)][1], leaves[&(0, 0)][3], leaves[&(0, 0)][2]]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    assert_eq!(vendor, m.vendor.as_bytes());
    assert_eq!(leaves[&(0, 0)][0], m.level);
    assert_eq!(leaves[&(0x8000_0000, 0)][0], m.xlevel);
    let sig = leaves[&(1, 0)][0];
    let family = ((sig >> 8) & 0xf) + ((sig >> 20) & 0xff);
    let model = ((sig >> 4) & 0xf) | ((sig >> 12) & 0xf0);
    assert_eq!((family, model, sig & 0xf), (m.family, m.model, m.stepping));
    let brand: Vec<u8> = leaves[&(0x8000_0002, 0)]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    assert!(m.model_id.as_bytes().starts_with(&brand[..16]), "{brand:?}");
    // tsc-deadline and invtsc: KVM gives them here, EPYC-Rome has neither.
    for f in ["tsc-deadline", "invtsc"] {
        assert!(!m.features.iter().any(|x| x.name == f));
        assert!(!sees(&leaves, f), "the guest sees {f}:\n{}", vm.log());
    }
}

/// `host` leaves out what cannot migrate (invtsc) unless
/// `migratable=off`; `-FEATURE` hides a feature.
#[test]
fn host_with_and_without_features() {
    let plain = guest_cpuid(&boot("host"));
    assert!(sees(&plain, "x2apic") && sees(&plain, "lahf-lm"));
    assert!(!sees(&plain, "invtsc"));
    let fewer = guest_cpuid(&boot("host,-x2apic,lahf_lm=off"));
    assert!(!sees(&fewer, "x2apic") && !sees(&fewer, "lahf-lm"));
    let all = guest_cpuid(&boot("host,migratable=off"));
    assert!(sees(&all, "invtsc"));
    let (code, _, err) = vmm(&["-cpu", "host,+avx9", "-kernel", "/dev/null"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("unknown CPU feature 'avx9'"), "{err}");
}

/// A running guest with a monitor; `env` (test switches) runs the
/// fault-injection build.
fn node(
    dir: &TempDir,
    name: &str,
    cpu: &str,
    env: &[(&str, &str)],
    extra: &[&str],
) -> (Vm, PathBuf) {
    let sock = dir.path(&format!("{name}.sock"));
    let mut v = Vmm::new()
        .args(["-cpu", cpu, "-m", "128M"])
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", sock.display()),
        ])
        .args(extra)
        .append(GUEST);
    if !env.is_empty() {
        v.binary = Some(vmm_tests::vmm::fault_injection_binary());
    }
    let mut cmd = v.command();
    cmd.env("RUST_LOG", "info");
    cmd.envs(env.iter().copied());
    let vm = Vm::spawn(name, cmd);
    Qmp::connect(&sock, T);
    (vm, sock)
}

/// Migrates `src` to a new destination; the final query-migrate.
fn migrate(
    dir: &TempDir,
    src: &std::path::Path,
    name: &str,
    cpu: &str,
    env: &[(&str, &str)],
) -> (Vm, serde_json::Value) {
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let (dst, _) = node(dir, name, cpu, env, &["-incoming", &uri]);
    let mut q = Qmp::connect(src, T);
    q.execute("migrate", json!({ "uri": uri }));
    (dst, q.wait_migration(T))
}

/// A weaker destination (one whose host lacks tsc-deadline, by the test
/// switch) refuses a guest that was given it, naming it, before the
/// guest moves; the source runs on. The same guest started with a model
/// without it (EPYC-Rome: AMD has no TSC deadline timer) moves there.
#[test]
fn a_destination_that_lacks_a_feature_the_guest_has_refuses_it() {
    let dir = TempDir::new("cpu-weaker");
    let (mut src, src_sock) = node(&dir, "src", "host", &[], &[]);
    src.wait_prefix("mem.filled", T);
    let (_dst, m) = migrate(
        &dir,
        &src_sock,
        "weaker",
        "host",
        &[("VMM_TEST_HOST_LACKS", "tsc-deadline")],
    );
    assert_eq!(m["status"], "failed", "{m}");
    let why = m["error-desc"].as_str().unwrap_or_default();
    assert!(
        why.contains("this host lacks tsc-deadline (leaf 0x1 ecx)") && why.contains("-cpu host"),
        "{m}"
    );
    let mut q = Qmp::connect(&src_sock, T);
    assert_eq!(q.execute("query-status", json!({}))["status"], "running");
    src.wait_ticks(src.ticks() + 3, T);
    verify(&mut src);
    drop(src);

    let (rome, rome_sock) = node(&dir, "rome", "EPYC-Rome,check=on", &[], &[]);
    rome.wait_prefix("mem.filled", T);
    let (mut dst, m) = migrate(
        &dir,
        &rome_sock,
        "weaker-rome",
        "EPYC-Rome,check=on",
        &[("VMM_TEST_HOST_LACKS", "tsc-deadline")],
    );
    assert_eq!(m["status"], "completed", "{m}");
    drop(rome);
    runs_on(&mut dst);
}

/// A destination started with another `-cpu` that would change the
/// guest's CPU refuses it, naming the difference; one with the source's
/// `-cpu` takes it.
#[test]
fn a_destination_with_another_cpu_refuses_and_one_with_the_same_takes_it() {
    let dir = TempDir::new("cpu-other");
    let (src, src_sock) = node(&dir, "src", "host", &[], &[]);
    src.wait_prefix("mem.filled", T);
    let (_dst, m) = migrate(&dir, &src_sock, "other", "host,-x2apic", &[]);
    assert_eq!(m["status"], "failed", "{m}");
    let why = m["error-desc"].as_str().unwrap_or_default();
    assert!(
        why.contains("this destination's -cpu does not give the guest x2apic"),
        "{m}"
    );
    let (mut dst, m) = migrate(&dir, &src_sock, "same", "host", &[]);
    assert_eq!(m["status"], "completed", "{m}");
    drop(src);
    runs_on(&mut dst);
}

/// XSAVE state travels: the guest's YMM registers keep their pattern
/// through a save to a file and its restore, and through a live move.
#[test]
fn vector_registers_survive_save_restore_and_migration() {
    let dir = TempDir::new("cpu-avx");
    let (src, src_sock) = node(&dir, "src", "host", &[], &[]);
    src.wait_prefix("avx.loaded", T);
    src.wait_prefix("mem.filled", T);
    let file = dir.path("saved.vmm");
    let mut q = Qmp::connect(&src_sock, T);
    q.execute(
        "migrate",
        json!({ "uri": format!("file:{}", file.display()) }),
    );
    assert_eq!(q.wait_migration(T)["status"], "completed");
    drop(src);
    let incoming = format!("file:{}", file.display());
    let (mut restored, restored_sock) =
        node(&dir, "restored", "host", &[], &["-incoming", &incoming]);
    runs_on(&mut restored);
    let (mut dst, m) = migrate(&dir, &restored_sock, "moved", "host", &[]);
    assert_eq!(m["status"], "completed", "{m}");
    drop(restored);
    runs_on(&mut dst);
}

/// QEMU's QMP view of the models: every one defined, with what this host
/// lacks; a model expanded to its features with the props applied.
#[test]
fn qmp_lists_and_expands_the_models() {
    let dir = TempDir::new("cpu-qmp");
    let (_vm, sock) = node(&dir, "qmp", "host", &[], &[]);
    let mut q = Qmp::connect(&sock, T);
    let defs = q.execute("query-cpu-definitions", json!({}));
    let defs = defs.as_array().unwrap();
    assert_eq!(defs.len(), cpu::models().len() + 1);
    let (_, help, _) = vmm(&["-cpu", "help"]);
    for d in defs.iter().filter(|d| d["name"] != "host") {
        let name = d["name"].as_str().unwrap();
        let lacking: Vec<&str> = d["unavailable-features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        let line = help
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap();
        match line.split("[this host lacks: ").nth(1) {
            Some(l) => assert_eq!(
                l.trim_end_matches(']').split(' ').collect::<Vec<_>>(),
                lacking
            ),
            None => assert!(lacking.is_empty(), "{name}: {lacking:?}"),
        }
    }
    let e = q.execute(
        "query-cpu-model-expansion",
        json!({"type": "full", "model": {"name": "Haswell-noTSX", "props": {"avx2": false, "avx512f": true}}}),
    );
    let props = &e["model"]["props"];
    assert_eq!(props["fma"], true, "{e}");
    assert_eq!(props["hle"], false, "{e}");
    assert_eq!(props["avx2"], false, "{e}");
    assert_eq!(props["avx512f"], true, "{e}");
    assert_eq!(props["model"], 60, "{e}");
    let bad = q.try_execute(
        "query-cpu-model-expansion",
        json!({"type": "full", "model": {"name": "Haswel"}}),
    );
    assert!(bad.unwrap_err()["desc"]
        .as_str()
        .unwrap()
        .contains("unknown CPU model 'Haswel'"),);
}

/// A guest given an invariant TSC moves only to a host whose TSC runs at
/// the same rate (this one's KVM cannot scale it): a destination taken to
/// run at another rate (the test switch) refuses it, naming both; a guest
/// without invtsc (`-cpu host`'s default) moves there.
#[test]
fn an_invariant_tsc_moves_only_at_its_rate() {
    let dir = TempDir::new("cpu-tsc");
    let other = [("VMM_TEST_TSC_KHZ", "1234567")];
    let (src, src_sock) = node(&dir, "invtsc", "host,migratable=off", &[], &[]);
    src.wait_prefix("mem.filled", T);
    let (_dst, m) = migrate(&dir, &src_sock, "other-rate", "host,migratable=off", &other);
    assert_eq!(m["status"], "failed", "{m}");
    let why = m["error-desc"].as_str().unwrap_or_default();
    assert!(
        why.contains("invariant TSC") && why.contains("1234567 kHz"),
        "{m}"
    );
    drop(src);
    let (src, src_sock) = node(&dir, "plain", "host", &[], &[]);
    src.wait_prefix("mem.filled", T);
    let (mut dst, m) = migrate(&dir, &src_sock, "other-rate-ok", "host", &other);
    assert_eq!(m["status"], "completed", "{m}");
    drop(src);
    runs_on(&mut dst);
}

/// A destination whose KVM cannot restore an MSR the guest's state holds
/// (the time-stamp counter's, by the test switch) refuses the guest,
/// naming the MSR; the source runs on.
#[test]
fn a_destination_that_cannot_restore_an_msr_refuses() {
    let dir = TempDir::new("cpu-msr");
    let (mut src, src_sock) = node(&dir, "src", "host", &[], &[]);
    src.wait_prefix("mem.filled", T);
    let lack = [("VMM_TEST_MSRS_LACK", "0x10")];
    let (_dst, m) = migrate(&dir, &src_sock, "no-tsc-msr", "host", &lack);
    assert_eq!(m["status"], "failed", "{m}");
    assert!(
        m["error-desc"]
            .as_str()
            .unwrap_or_default()
            .contains("MSRs this host's KVM cannot restore: 0x10"),
        "{m}"
    );
    src.wait_ticks(src.ticks() + 2, T);
    verify(&mut src);
}

/// The machine type's compat entries reach the CPU as QEMU's do: on
/// pc-q35-2.7 Skylake-Server keeps MPX and lacks PKU (pc_compat_3_1,
/// 3_0), Haswell has stepping 1 (2_8), and every CPU lacks topoext
/// (2_12) — the guest sees that one; on the newest type none of it.
#[test]
fn old_machine_types_give_the_cpu_qemus_old_defaults() {
    let dir = TempDir::new("cpu-compat");
    let expand = |machine: &str, model: &str| {
        let (_vm, sock) = node(&dir, machine, "host", &[], &["-M", machine]);
        let mut q = Qmp::connect(&sock, T);
        q.execute(
            "query-cpu-model-expansion",
            json!({"type": "full", "model": {"name": model}}),
        )["model"]["props"]
            .clone()
    };
    let old = expand("pc-q35-2.7", "Skylake-Server");
    let new = expand("pc-q35-10.0", "Skylake-Server");
    assert_eq!((&old["mpx"], &old["pku"]), (&json!(true), &json!(false)));
    assert_eq!((&new["mpx"], &new["pku"]), (&json!(false), &json!(true)));
    assert_eq!(expand("pc-q35-2.8", "Haswell")["stepping"], 1);
    assert_eq!(expand("pc-q35-10.0", "Haswell")["stepping"], 4);
    let topoext = |machine: &str| {
        let vm = Vmm::new()
            .args(["-M", machine, "-m", "64M"])
            .append("cpus=1")
            .spawn(&format!("topoext-{machine}"));
        sees(&guest_cpuid(&vm), "topoext")
    };
    assert!(!topoext("pc-q35-2.7"));
    assert!(topoext("pc-q35-10.0"));
}

/// What the guest found of its topology: each CPU's APIC ID (agreeing
/// among its local APIC, CPUID leaf 1 and leaf 0xB: the guest checks),
/// threads per core and logical processors per package (CPUID 0xB).
fn topology_seen(vm: &Vm) -> (Vec<u32>, u32, u32) {
    vm.wait_prefix("smp.topology", T);
    let ids = vm
        .lines()
        .iter()
        .filter(|l| l.starts_with("smp.cpu") && l.contains("lapic_id="))
        .filter_map(|l| l.split("lapic_id=").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    let num = |k: &str| {
        vm.value("smp.topology", k)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (ids, num("threads_per_core"), num("logical_per_package"))
}

/// `-smp` with QEMU's syntax: the guest's CPUID, its APIC IDs and the
/// MADT agree (the guest starts every CPU the MADT lists by its APIC ID
/// and checks CPUID gives each the same); the default split follows the
/// machine type (sockets first before 6.2, cores since).
#[test]
fn topology_shows_in_cpuid_apic_ids_and_the_madt() {
    for (machine, smp, ids, threads, per_pkg) in [
        (
            "pc-q35-10.0",
            "8,sockets=2,cores=2,threads=2",
            vec![0, 1, 2, 3, 4, 5, 6, 7],
            2,
            4,
        ),
        (
            "pc-q35-10.0",
            "6,sockets=2,cores=3",
            vec![0, 1, 2, 4, 5, 6],
            1,
            3,
        ),
        ("pc-q35-10.0", "4", vec![0, 1, 2, 3], 1, 4),
        ("pc-q35-5.2", "4", vec![0, 1, 2, 3], 1, 1),
        ("pc-q35-10.0", "2,maxcpus=4", vec![0, 1], 1, 4),
    ] {
        let cpus = smp.split(',').next().unwrap();
        let mut vm = Vmm::new()
            .args(["-M", machine, "-smp", smp, "-m", "128M"])
            .append(&format!("cpus={cpus}"))
            .spawn(&format!("smp-{smp}"));
        assert_eq!(
            topology_seen(&vm),
            (ids, threads, per_pkg),
            "{machine} -smp {smp}\n{}",
            vm.log()
        );
        vm.assert_pass(T);
    }
    let (code, _, err) = vmm(&["-smp", "8,sockets=3,cores=2", "--print-config"]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("sockets (3) * dies (1) * cores (2) * threads (1) != maxcpus (8)"),
        "{err}"
    );
}

/// The topology travels with the guest: a destination started with
/// another split of the same vCPUs gives the guest its source's (same
/// APIC IDs, so the vCPUs fit), which a reset there keeps; one whose
/// split would number the vCPUs otherwise refuses, naming both.
#[test]
fn a_guests_topology_travels_with_it() {
    let dir = TempDir::new("cpu-smp");
    let guest = ["-M", "pc-q35-5.2", "-smp"];
    let (src, src_sock) = node(
        &dir,
        "src",
        "host",
        &[],
        &[&guest[..], &["4,cores=4"]].concat(),
    );
    src.wait_prefix("mem.filled", T);
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let (dst, dst_sock) = node(
        &dir,
        "sockets",
        "host",
        &[],
        &[&guest[..], &["4", "-incoming", &uri]].concat(),
    );
    let mut q = Qmp::connect(&src_sock, T);
    q.execute("migrate", json!({ "uri": uri }));
    assert_eq!(q.wait_migration(T)["status"], "completed");
    drop(src);
    assert!(
        dst.log()
            .contains("-smp 4,maxcpus=4,sockets=1,dies=1,cores=4,threads=1"),
        "{}",
        dst.log()
    );
    Qmp::connect(&dst_sock, T).execute("system_reset", json!({}));
    assert_eq!(topology_seen(&dst).2, 4, "{}", dst.log());
    drop(dst);

    let (src, src_sock) = node(&dir, "odd", "host", &[], &["-smp", "6,sockets=2,cores=3"]);
    src.wait_prefix("mem.filled", T);
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let (_dst, _) = node(&dir, "flat", "host", &[], &["-smp", "6", "-incoming", &uri]);
    let mut q = Qmp::connect(&src_sock, T);
    q.execute("migrate", json!({ "uri": uri }));
    let m = q.wait_migration(T);
    assert_eq!(m["status"], "failed", "{m}");
    let why = m["error-desc"].as_str().unwrap_or_default();
    assert!(
        why.contains("APIC IDs [0, 1, 2, 4, 5, 6]") && why.contains("[0, 1, 2, 3, 4, 5]"),
        "{m}"
    );
}

/// Side by side with QEMU 7.2 on the same host: the test guest under
/// `qemu -cpu MODEL` and `vmm -cpu MODEL,check=on` sees the same identity
/// and the same bit for every feature QEMU names (both leave out what
/// KVM here does not give, and add QEMU's KVM defaults).
#[test]
fn qemu_and_vmm_give_a_model_the_same_cpuid() {
    for model in ["EPYC-Rome", "Skylake-Server-noTSX-IBRS"] {
        let qemu = Qemu::new("q35")
            .append("cpus=1")
            .args(["-cpu", model])
            .spawn(&format!("qemu-{model}"));
        let q = guest_cpuid(&qemu);
        let v = guest_cpuid(&boot(&format!("{model},check=on")));
        let differ: Vec<&str> = cpu::features()
            .iter()
            .filter(|f| sees(&q, f.name) != sees(&v, f.name))
            .map(|f| f.name)
            .collect();
        assert!(
            differ.is_empty(),
            "{model}: QEMU and vmm differ on {differ:?}"
        );
        for leaf in [(0, 0), (1, 0), (0x8000_0000, 0), (0x8000_0002, 0)] {
            assert_eq!(q[&leaf][0], v[&leaf][0], "{model}: leaf {leaf:x?} eax");
        }
    }
}
