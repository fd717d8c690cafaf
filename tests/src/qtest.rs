//! A qtest client (QEMU's line protocol, as libqtest speaks it): the test
//! listens on a unix socket, starts `vmm -accel qtest -qtest unix:PATH`,
//! and drives the board's ports and memory.

use crate::console::Vm;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Qtest {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qtest {
    /// Starts vmm with `args` under the qtest accelerator, its client
    /// socket at `sock`, and waits for it to connect.
    pub fn spawn(name: &str, sock: &Path, args: &[&str]) -> (Vm, Qtest) {
        Qtest::spawn_with(name, sock, Command::new(crate::vmm::binary()), args)
    }

    /// The same with the command `c` that runs vmm (another build, or
    /// one under an emulator).
    pub fn spawn_with(name: &str, sock: &Path, mut c: Command, args: &[&str]) -> (Vm, Qtest) {
        let _ = std::fs::remove_file(sock);
        let l = UnixListener::bind(sock).expect("bind the qtest socket");
        c.args(["-accel", "qtest", "-qtest"])
            .arg(format!("unix:{}", sock.display()))
            .args(args);
        let mut vm = Vm::spawn(name, c);
        l.set_nonblocking(true).expect("nonblocking listener");
        let deadline = Instant::now() + Duration::from_secs(20);
        let s = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "{name}: vmm did not connect to {}\n{}",
                        sock.display(),
                        vm.log()
                    );
                    if let Some(st) = vm.try_exit() {
                        panic!("{name}: vmm exited ({st}) before connecting\n{}", vm.log());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("qtest accept: {e}"),
            }
        };
        s.set_nonblocking(false).expect("blocking socket");
        (vm, Qtest::new(s))
    }

    pub fn new(s: UnixStream) -> Qtest {
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("socket timeout");
        Qtest {
            r: BufReader::new(s.try_clone().expect("clone socket")),
            w: s,
        }
    }

    /// Another handle on the same connection (for a request sent from
    /// another thread; the protocol answers in order).
    pub fn try_clone(&self) -> Qtest {
        Qtest::new(self.w.try_clone().expect("clone the qtest socket"))
    }

    /// Sends one request line; its reply line.
    pub fn cmd(&mut self, line: &str) -> String {
        self.w
            .write_all(format!("{line}\n").as_bytes())
            .unwrap_or_else(|e| panic!("qtest: cannot send '{line}': {e}"));
        let mut reply = String::new();
        match self.r.read_line(&mut reply) {
            Ok(0) => panic!("qtest: vmm closed the connection before answering '{line}'"),
            Ok(_) => reply.trim_end().to_string(),
            Err(e) => panic!("qtest: no reply to '{line}': {e}"),
        }
    }

    /// A request that must succeed; what follows `OK`.
    pub fn ok(&mut self, line: &str) -> String {
        let r = self.cmd(line);
        match r.strip_prefix("OK") {
            Some(rest) => rest.trim_start().to_string(),
            None => panic!("qtest: '{line}' answered '{r}'"),
        }
    }

    fn value(&mut self, line: &str) -> u64 {
        let v = self.ok(line);
        u64::from_str_radix(v.trim_start_matches("0x"), 16)
            .unwrap_or_else(|_| panic!("qtest: '{line}' answered OK '{v}'"))
    }

    pub fn outl(&mut self, port: u16, v: u32) {
        self.ok(&format!("outl {port:#x} {v:#x}"));
    }

    pub fn inl(&mut self, port: u16) -> u32 {
        self.value(&format!("inl {port:#x}")) as u32
    }

    pub fn readl(&mut self, addr: u64) -> u32 {
        self.value(&format!("readl {addr:#x}")) as u32
    }

    pub fn writel(&mut self, addr: u64, v: u32) {
        self.ok(&format!("writel {addr:#x} {v:#x}"));
    }

    pub fn readw(&mut self, addr: u64) -> u16 {
        self.value(&format!("readw {addr:#x}")) as u16
    }

    pub fn writew(&mut self, addr: u64, v: u16) {
        self.ok(&format!("writew {addr:#x} {v:#x}"));
    }

    pub fn writeb(&mut self, addr: u64, v: u8) {
        self.ok(&format!("writeb {addr:#x} {v:#x}"));
    }

    pub fn readb(&mut self, addr: u64) -> u8 {
        self.value(&format!("readb {addr:#x}")) as u8
    }

    /// `read ADDR LEN`, decoded.
    pub fn read(&mut self, addr: u64, len: usize) -> Vec<u8> {
        let hex = self.ok(&format!("read {addr:#x} {len}"));
        let hex = hex.strip_prefix("0x").expect("hex data");
        (0..len)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex byte"))
            .collect()
    }

    /// `write ADDR LEN 0xDATA`.
    pub fn write(&mut self, addr: u64, data: &[u8]) {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        self.ok(&format!("write {addr:#x} {} 0x{hex}", data.len()));
    }

    /// A PCI configuration dword through ports 0xcf8/0xcfc.
    pub fn pci_read32(&mut self, bus: u8, dev: u8, func: u8, off: u8) -> u32 {
        self.outl(0xcf8, cf8(bus, dev, func, off));
        self.inl(0xcfc)
    }

    pub fn pci_write32(&mut self, bus: u8, dev: u8, func: u8, off: u8, v: u32) {
        self.outl(0xcf8, cf8(bus, dev, func, off));
        self.outl(0xcfc, v);
    }
}

fn cf8(bus: u8, dev: u8, func: u8, off: u8) -> u32 {
    0x8000_0000
        | u32::from(bus) << 16
        | u32::from(dev) << 11
        | u32::from(func) << 8
        | u32::from(off & 0xfc)
}
