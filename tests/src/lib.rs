//! Harness for vmm's integration tests: real processes (vmm, and QEMU as
//! the reference), the real test guest, real KVM, real sockets and files.
//!
//! A VM's serial console is its stdout; the harness collects its lines and
//! lets a test wait for one, send bytes to the guest, and read the verdict.

pub mod console;
pub mod netns;
pub mod peer;
pub mod qemu;
pub mod qmp;
pub mod vmm;

use std::path::PathBuf;

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The test guest kernel, built by `scripts/build-guest.sh`.
pub fn guest_kernel() -> PathBuf {
    let p = std::env::var_os("VMM_TEST_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/guest/test-guest"));
    assert!(
        p.is_file(),
        "test guest not found at {}: run scripts/build-guest.sh",
        p.display()
    );
    p
}

/// Fails the test loudly when /dev/kvm cannot be used: a KVM test must
/// never pass by not running.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("this test needs KVM, and /dev/kvm cannot be opened: {e}");
    }
}

/// The unprivileged user the tests run vmm as (`vmm-test`, in group
/// `kvm`, made by scripts/setup.sh): its uid and gid.
pub fn unprivileged_user() -> (u32, u32) {
    let id = |flag: &str| {
        let out = std::process::Command::new("id")
            .args([flag, "vmm-test"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "the user vmm-test is missing: run scripts/setup.sh (it makes it, in group kvm)"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("vmm-test-{}-{}-{}", tag, std::process::id(), n));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// Hands the directory to `uid`:`gid` (an unprivileged vmm writes its
    /// sockets and files there).
    pub fn give_to(&self, uid: u32, gid: u32) {
        std::os::unix::fs::chown(&self.0, Some(uid), Some(gid)).expect("chown the temp dir");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The word the guest's virtio-blk test writes at `word` of `sector`
/// (the same splitmix64 as tests/guest/src/virtio/blk.rs).
pub fn blk_pattern(seed: u64, sector: u64, word: u64) -> u64 {
    let mut z = seed ^ (sector << 16) ^ word;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}
