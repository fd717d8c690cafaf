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
pub mod qtest;
pub mod strace;
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

/// Who the tests run vmm as: `vmm-test` (uid, gid) when the tests run as
/// root, as CI does; `None` when they already run as an ordinary user.
/// Nothing in vmm needs root (docs/security.md): the suite proves it.
pub fn vmm_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid cannot fail.
    (unsafe { libc::geteuid() } == 0).then(unprivileged_user)
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
        let dir = TempDir(p);
        // vmm, run as its user, writes its sockets and files here.
        dir.give(&dir.0);
        dir
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// A sparse file of `len` bytes, `name` in the directory, that vmm
    /// (run as its user) may write: a disk image.
    pub fn image(&self, name: &str, len: u64) -> PathBuf {
        self.file(name, |f| f.set_len(len))
    }
    /// A file `name` in the directory holding `bytes`, that vmm may write.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        self.file(name, |mut f| std::io::Write::write_all(&mut f, bytes))
    }
    /// A FIFO `name` in the directory that vmm may open for writing.
    pub fn fifo(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("a path");
        // SAFETY: a NUL-terminated path.
        let r = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(
            r,
            0,
            "mkfifo {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
        self.give(&p);
        p
    }
    fn give(&self, p: &std::path::Path) {
        if let Some((uid, gid)) = vmm_user() {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown");
        }
    }
    fn file(&self, name: &str, fill: impl FnOnce(std::fs::File) -> std::io::Result<()>) -> PathBuf {
        let p = self.path(name);
        std::fs::File::create(&p)
            .and_then(fill)
            .unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        self.give(&p);
        p
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

/// A free TCP port on loopback, for a vmm to listen on next.
///
/// Taken below Linux's ephemeral range (32768-60999 by default): a port
/// from that range, bound and released, may become some connection's own
/// port before the vmm binds it (tests run in parallel, and each migration
/// connects). Spread by process and call, and checked free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    const FIRST: u64 = 20_000;
    const COUNT: u64 = 12_000;
    let pid = u64::from(std::process::id());
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let mixed = ((pid << 32) | n).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        let port = (FIRST + mixed % COUNT) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port in {FIRST}..{}", FIRST + COUNT);
}
