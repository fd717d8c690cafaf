//! QEMU, the reference the test guest is proven against.

use crate::console::Vm;
use std::path::Path;
use std::process::Command;

/// A QEMU command line for the test guest.
pub struct Qemu {
    pub machine: String,
    pub accel: String,
    pub smp: u32,
    pub mem: String,
    pub append: String,
    pub args: Vec<String>,
}

impl Qemu {
    pub fn new(machine: &str) -> Qemu {
        Qemu {
            machine: machine.to_string(),
            accel: "kvm".to_string(),
            smp: 1,
            mem: "256M".to_string(),
            append: String::new(),
            args: Vec::new(),
        }
    }
    pub fn accel(mut self, a: &str) -> Self {
        self.accel = a.to_string();
        self
    }
    pub fn smp(mut self, n: u32) -> Self {
        self.smp = n;
        self
    }
    pub fn mem(mut self, m: &str) -> Self {
        self.mem = m.to_string();
        self
    }
    /// Guest command line options (appended, space-separated).
    pub fn append(mut self, a: &str) -> Self {
        if !self.append.is_empty() {
            self.append.push(' ');
        }
        self.append.push_str(a);
        self
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
    pub fn device(self, d: &str) -> Self {
        self.arg("-device").arg(d)
    }

    pub fn command(&self, kernel: &Path) -> Command {
        if self.accel == "kvm" {
            crate::require_kvm();
        }
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-M", &self.machine, "-accel", &self.accel]);
        // -cpu host fails on MSR 0x10a (arch-capabilities) on these hosts.
        c.args([
            "-cpu",
            if self.accel == "kvm" {
                "host,-arch-capabilities"
            } else {
                "max"
            },
        ]);
        c.args(["-m", &self.mem, "-smp", &self.smp.to_string()]);
        c.args([
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
        ]);
        c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        c.arg("-kernel").arg(kernel);
        c.args(["-append", &self.append]);
        c.args(&self.args);
        c
    }

    pub fn spawn(&self, name: &str) -> Vm {
        Vm::spawn(name, self.command(&crate::guest_kernel()))
    }
}
