//! The `vmm` binary under test (built by `cargo build --release`).

use crate::console::Vm;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// The release binary; tests need it built (scripts/setup.sh does).
pub fn binary() -> PathBuf {
    let p = std::env::var_os("VMM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace().join("target/release/vmm"));
    assert!(
        p.is_file(),
        "vmm binary not found at {}: run cargo build --release",
        p.display()
    );
    p
}

/// The vmm built with the `fault-injection` feature (scripts/setup.sh), for
/// the tests that pause a migration at a named point to kill a process
/// there.
pub fn fault_injection_binary() -> PathBuf {
    let p = crate::workspace().join("target/fault-injection/release/vmm");
    assert!(
        p.is_file(),
        "{} not found: run scripts/setup.sh (it builds vmm with --features fault-injection)",
        p.display()
    );
    p
}

/// A vmm command line for the test guest, with the debug-exit port.
pub struct Vmm {
    pub args: Vec<String>,
    pub append: String,
    pub kernel: PathBuf,
    /// The binary: the release build unless a test needs another.
    pub binary: Option<PathBuf>,
    /// vmm is started as root and left so (the test makes it someone
    /// else itself); otherwise it runs as [`crate::vmm_user`].
    pub as_root: bool,
}

impl Vmm {
    pub fn new() -> Vmm {
        Vmm {
            args: vec![
                "-device".into(),
                "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
            ],
            append: String::new(),
            kernel: crate::guest_kernel(),
            binary: None,
            as_root: false,
        }
    }
    pub fn arg(mut self, a: impl AsRef<str>) -> Self {
        self.args.push(a.as_ref().to_string());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, a: I) -> Self {
        self.args
            .extend(a.into_iter().map(|s| s.as_ref().to_string()));
        self
    }
    pub fn append(mut self, a: &str) -> Self {
        if !self.append.is_empty() {
            self.append.push(' ');
        }
        self.append.push_str(a);
        self
    }
    /// The test guest packed as a bzImage (Linux boot protocol).
    pub fn bzimage(mut self) -> Self {
        self.kernel = self.kernel.with_extension("bzImage");
        assert!(
            self.kernel.is_file(),
            "{} missing: run scripts/build-guest.sh",
            self.kernel.display()
        );
        self
    }
    /// Leaves vmm started as root: the test makes it someone itself
    /// (`-runas`, or its own `Command::uid`).
    pub fn as_root(mut self) -> Self {
        self.as_root = true;
        self
    }
    /// The command line, run as [`crate::vmm_user`] unless [`Vmm::as_root`]:
    /// with `-runas` (this build's binaries, which may also be started by
    /// `ip netns exec`), or started as that user (a recorded release,
    /// which may predate `-runas`).
    pub fn command(&self) -> Command {
        crate::require_kvm();
        let bin = self.binary.clone().unwrap_or_else(binary);
        let mut c = Command::new(&bin);
        if let Some((uid, gid)) = crate::vmm_user().filter(|_| !self.as_root) {
            if bin.starts_with(crate::workspace().join("target")) {
                c.args(["-runas", "vmm-test"]);
            } else {
                c.uid(uid).gid(gid);
            }
        }
        c.args(&self.args);
        c.arg("-kernel").arg(&self.kernel);
        c.args(["-append", &self.append]);
        c
    }
    pub fn spawn(&self, name: &str) -> Vm {
        Vm::spawn(name, self.command())
    }
    /// The same, inside network namespace `ns` (a second "host").
    pub fn spawn_in(&self, ns: &str, name: &str) -> Vm {
        Vm::spawn(name, in_netns(ns, self.command()))
    }
}

/// Command `c` run inside network namespace `ns` (`ip netns exec` execs
/// it: the process is `c`'s own).
pub fn in_netns(ns: &str, c: Command) -> Command {
    let mut w = Command::new("ip");
    w.args(["netns", "exec", ns])
        .arg(c.get_program())
        .args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => w.env(k, v),
            None => w.env_remove(k),
        };
    }
    w
}

impl Default for Vmm {
    fn default() -> Self {
        Self::new()
    }
}

/// Options for one of every virtio device: a raw disk `img`, a network
/// card on `netdev` (a `-netdev` value with id `n0`), rng, and a console on a null
/// chardev.
pub fn every_virtio_device(img: &std::path::Path, netdev: &str) -> Vec<String> {
    [
        "-drive",
        &format!("file={},if=none,id=d0,format=raw", img.display()),
        "-device",
        "virtio-blk-pci,drive=d0",
        "-netdev",
        netdev,
        "-device",
        "virtio-net-pci,netdev=n0",
        "-device",
        "virtio-rng-pci",
        "-device",
        "virtio-serial-pci",
        "-chardev",
        "null,id=c0",
        "-device",
        "virtconsole,chardev=c0",
    ]
    .map(String::from)
    .to_vec()
}
