//! Carried configuration: a running guest's hardware never changes under
//! it. pc-q35-5.2 gives virtio-rng-pci no MSI-X (QEMU's hw_compat_7_1),
//! but a guest that was given MSI-X (by vmm up to 0.2.0, or as here by
//! `vectors=2`) keeps it through migrations to destinations whose 5.2
//! says otherwise, through a reset there, and onward; started fresh, the
//! guest gets the machine type's hardware. (The same with a real 0.2.0
//! source, which carries nothing: tests/tests/release_compat.rs.)

use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vmm_tests::console::Vm;
use vmm_tests::qmp::Qmp;
use vmm_tests::vmm::Vmm;
use vmm_tests::{free_port, TempDir};

const T: Duration = Duration::from_secs(60);
const GUEST: &str = "cpus=1 work=mem,counter mem_mb=32 tick_ms=100 max_gap_ms=5000 msix=1 seed=9";

/// vmm on pc-q35-5.2 with an rng (`rng` its options) and a monitor.
fn node(dir: &TempDir, name: &str, rng: &str, extra: &[&str]) -> (Vm, PathBuf) {
    let sock = dir.path(&format!("{name}.sock"));
    let mut cmd = Vmm::new()
        .args(["-M", "pc-q35-5.2", "-m", "128M", "-device"])
        .arg(format!("virtio-rng-pci,id=rng0{rng}"))
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", sock.display()),
        ])
        .args(extra)
        .append(GUEST)
        .command();
    // The adoption is logged at info.
    cmd.env("RUST_LOG", "info");
    let vm = Vm::spawn(name, cmd);
    Qmp::connect(&sock, T);
    (vm, sock)
}

/// The rng's `vectors` and where its value came from.
fn vectors(sock: &Path) -> (u64, String) {
    let mut q = Qmp::connect(sock, T);
    let path = json!({"path": "/machine/peripheral/rng0", "property": "vectors"});
    let v = q.execute("qom-get", path).as_u64().unwrap_or(u64::MAX);
    let p = json!({"path": "/machine/peripheral/rng0", "property": "x-provenance"});
    let from = q.execute("qom-get", p)["vectors"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (v, from)
}

/// How many times the guest found the rng's MSI-X table with 2 entries
/// (once per boot).
fn msix_boots(vm: &Vm) -> usize {
    vm.lines()
        .iter()
        .filter(|l| l.contains("msix table_size=2"))
        .count()
}

fn migrate(src: &Path, uri: &str) {
    let mut q = Qmp::connect(src, T);
    q.execute("migrate", json!({ "uri": uri }));
    assert_eq!(q.wait_migration(T)["status"], "completed");
}

#[test]
fn a_guest_keeps_its_hardware_through_migrations_and_a_fresh_start_gets_the_machine_types() {
    let dir = TempDir::new("carried");
    let (src, src_sock) = node(&dir, "src", ",vectors=2", &[]);
    src.wait_prefix("mem.filled", T);
    assert_eq!(msix_boots(&src), 1, "{}", src.log());
    assert_eq!(vectors(&src_sock), (2, "device".into()));

    // To a destination whose 5.2 gives the rng no MSI-X.
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let (mut one, one_sock) = node(&dir, "one", "", &["-incoming", &uri]);
    assert_eq!(vectors(&one_sock), (0, "compat:hw_compat_7_1".into()));
    migrate(&src_sock, &uri);
    drop(src);
    one.wait_ticks(one.ticks() + 2, T);
    one.verify_memory(T);
    assert_eq!(vectors(&one_sock), (2, "migration".into()));
    assert!(
        one.log()
            .contains("keeps its guest's hardware: vectors=2 (here 0)"),
        "{}",
        one.log()
    );
    // A reset rebuilds the board: the guest finds its MSI-X again.
    Qmp::connect(&one_sock, T).execute("system_reset", json!({}));
    let deadline = std::time::Instant::now() + T;
    while msix_boots(&one) < 1 {
        assert!(std::time::Instant::now() < deadline, "{}", one.log());
        std::thread::sleep(Duration::from_millis(50));
    }

    // Onward, to another destination that says no MSI-X: still MSI-X.
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let (two, two_sock) = node(&dir, "two", "", &["-incoming", &uri]);
    one.wait_prefix("mem.filled", T);
    migrate(&one_sock, &uri);
    drop(one);
    assert_eq!(vectors(&two_sock), (2, "migration".into()));
    drop(two);

    // Started fresh, the guest gets the machine type's: no MSI-X.
    let (fresh, fresh_sock) = node(&dir, "fresh", "", &[]);
    fresh.wait_prefix("mem.filled", T);
    assert_eq!(vectors(&fresh_sock), (0, "compat:hw_compat_7_1".into()));
    assert_eq!(msix_boots(&fresh), 0, "{}", fresh.log());
}

/// The seeds' 8.0 → 8.0.1 chain, across processes: a guest on pc-q35-7.2
/// whose root port had the AER mask (QEMU 8.0.0's bug, here by `-global`)
/// moves to a fixed destination (7.2 as it should be), keeps the mask,
/// moves on to another one started without any flag and keeps it still;
/// started fresh, it gets 7.2's root port.
#[test]
fn the_aer_chain_keeps_the_guests_root_port_and_a_fresh_start_gets_7_2s() {
    let dir = TempDir::new("carried-aer");
    let mask = |sock: &Path| {
        let mut q = Qmp::connect(sock, T);
        let path = "/machine/peripheral/rp0";
        let v = q.execute(
            "qom-get",
            json!({"path": path, "property": "x-pcie-err-unc-mask"}),
        );
        let from = q.execute("qom-get", json!({"path": path, "property": "x-provenance"}));
        (
            v.as_bool(),
            from["x-pcie-err-unc-mask"].as_str().map(String::from),
        )
    };
    let port = |dir: &TempDir, name: &str, extra: &[&str]| {
        let sock = dir.path(&format!("{name}.sock"));
        let vm = Vmm::new()
            .args(["-M", "pc-q35-7.2", "-m", "128M"])
            .args(["-device", "pcie-root-port,id=rp0,chassis=1"])
            .args([
                "-qmp",
                &format!("unix:{},server=on,wait=off", sock.display()),
            ])
            .args(extra)
            .append(GUEST)
            .spawn(name);
        Qmp::connect(&sock, T);
        (vm, sock)
    };
    let (src, src_sock) = port(
        &dir,
        "8.0.0",
        &["-global", "pcie-root-port.x-pcie-err-unc-mask=on"],
    );
    src.wait_prefix("mem.filled", T);
    assert_eq!(mask(&src_sock), (Some(true), Some("global".into())));
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let (one, one_sock) = port(&dir, "8.0.1", &["-incoming", &uri]);
    assert_eq!(
        mask(&one_sock),
        (Some(false), Some("compat:hw_compat_7_2".into()))
    );
    migrate(&src_sock, &uri);
    drop(src);
    one.wait_ticks(one.ticks() + 2, T);
    assert_eq!(mask(&one_sock), (Some(true), Some("migration".into())));
    let uri = format!("tcp:127.0.0.1:{}", free_port());
    let (mut two, two_sock) = port(&dir, "onward", &["-incoming", &uri]);
    migrate(&one_sock, &uri);
    drop(one);
    two.wait_ticks(two.ticks() + 2, T);
    two.verify_memory(T);
    assert_eq!(mask(&two_sock), (Some(true), Some("migration".into())));
    drop(two);
    let (fresh, fresh_sock) = port(&dir, "fresh", &[]);
    fresh.wait_prefix("mem.filled", T);
    assert_eq!(
        mask(&fresh_sock),
        (Some(false), Some("compat:hw_compat_7_2".into()))
    );
}
