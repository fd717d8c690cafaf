//! virtio-serial with one console port (`virtconsole`), without the
//! MULTIPORT feature: queue 0 carries host-to-guest bytes, queue 1
//! guest-to-host bytes, written to the port's chardev.

use super::io;
use super::*;
use crate::model::property::PropKind;
use crate::model::types::{p, TypeInfo};
use crate::registry::{Backend, BackendKind, Build, DeviceType, VirtioType};
use migration::vmstate::Vmstate;
use std::io::Write;

/// Its queues: the console port's receive and transmit.
pub const QUEUES: usize = 2;

/// Bytes copied out at a time.
const CHUNK: usize = 64 * 1024;

/// The `virtio-serial-pci` type: its console port writes where the port's
/// chardev says.
pub static DEVICE: DeviceType = DeviceType {
    info: TypeInfo {
        name: "virtio-serial-pci",
        parent: Some("virtio-pci"),
        abstract_: false,
        bus: Some("PCI"),
        description: "virtio serial device with one console port (attach a virtconsole)",
        props: &[],
    },
    build: Build::Virtio(VirtioType {
        vmstate: &PCI_VMSTATE,
        queues: |_| QUEUES as u64,
        auto: |_, _| {},
        backend: BackendKind::Console,
        create: |_, backend| match backend {
            Backend::Output(out) => Ok(Box::new(Console::new(out))),
            _ => Ok(Box::new(Console::new(Box::new(std::io::sink())))),
        },
    }),
};

/// The `virtconsole` type: the port of a virtio-serial-pci.
pub static PORT: DeviceType = DeviceType {
    info: TypeInfo {
        name: "virtconsole",
        parent: Some("device"),
        abstract_: false,
        bus: Some("virtio-serial-bus"),
        description: "the console port of a virtio-serial-pci",
        props: &[p(
            "chardev",
            PropKind::Str,
            "",
            "the -chardev id the port writes to",
        )],
    },
    build: Build::Board,
};

pub struct Console {
    out: Box<dyn Write + Send>,
    cols: u16,
    rows: u16,
}

impl Console {
    pub fn new(out: Box<dyn Write + Send>) -> Console {
        Console {
            out,
            cols: 80,
            rows: 25,
        }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u16 {
        TYPE_CONSOLE
    }

    fn features(&self) -> u64 {
        F_RING_INDIRECT_DESC | F_VERSION_1
    }

    fn queue_sizes(&self) -> Vec<u16> {
        vec![128; QUEUES]
    }

    fn config_read(&self, offset: u64, data: &mut [u8]) {
        let mut c = [0u8; 12];
        c[0..2].copy_from_slice(&self.cols.to_le_bytes());
        c[2..4].copy_from_slice(&self.rows.to_le_bytes());
        c[4..8].copy_from_slice(&1u32.to_le_bytes());
        read_config_bytes(&c, offset, data);
    }

    fn process(&mut self, q: usize, queues: &mut Queues) -> Result<(), GuestError> {
        if q != 1 {
            return Ok(()); // receive buffers wait for input (none yet)
        }
        let mem = queues.mem;
        // The guest says how long its buffers are (up to 4 GiB each): they
        // go out through one bounded buffer, never allocated at its word.
        let mut bytes = [0u8; CHUNK];
        while let Some(chain) = io::pop(&mut queues.queues[q], mem) {
            for b in chain.readable() {
                let mut done = 0u64;
                while done < u64::from(b.len) {
                    let n = (u64::from(b.len) - done).min(CHUNK as u64) as usize;
                    io::read(
                        mem,
                        vm_memory::GuestAddress(b.addr.0.wrapping_add(done)),
                        &mut bytes[..n],
                    )?;
                    if let Err(e) = self.out.write_all(&bytes[..n]) {
                        log::warn!("virtconsole: output lost: {e}");
                    }
                    done += n as u64;
                }
            }
            if let Err(e) = self.out.flush() {
                log::warn!("virtconsole: output lost: {e}");
            }
            queues.add_used(q, chain.head, 0)?;
        }
        Ok(())
    }

    fn vmstate(&self) -> &'static Description {
        &VMSTATE
    }

    fn state(&self) -> State {
        ConsoleState {
            cols: self.cols,
            rows: self.rows,
        }
        .to_state()
    }

    fn load(&mut self, st: &State) -> Result<(), LoadError> {
        let s = ConsoleState::from_state(st, "virtio-console")?;
        self.cols = s.cols;
        self.rows = s.rows;
        Ok(())
    }
}

migration::vmstate! {
    /// The console's size as the guest last saw it.
    pub static VMSTATE = "virtio-console-device", version 1, minimum 1;
    pub struct ConsoleState {
        cols: u16,
        rows: u16,
    }
}

crate::virtio_pci_vmstate!(PCI_VMSTATE, "virtio-console", ConsoleState);

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    /// The process's peak virtual size, in KiB.
    fn vm_peak_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmPeak:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    }

    /// A guest buffer that claims 4 GiB (in 1 MiB of RAM) does not make
    /// the VMM allocate 4 GiB: it is refused as a guest error, with the
    /// VMM's memory where it was; a real buffer still goes out.
    #[test]
    fn a_4_gib_descriptor_costs_no_4_gib() {
        let mem = Memory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let (desc, avail, used, data) = (0x1000u64, 0x2000u64, 0x3000u64, 0x8000u64);
        let post = |i: u16, len: u32| {
            let d = desc + 16 * u64::from(i);
            mem.write_obj(data, GuestAddress(d)).unwrap();
            mem.write_obj(len, GuestAddress(d + 8)).unwrap();
            mem.write_obj(0u16, GuestAddress(d + 12)).unwrap();
            mem.write_obj(i, GuestAddress(avail + 4 + 2 * u64::from(i)))
                .unwrap();
            mem.write_obj(i + 1, GuestAddress(avail + 2)).unwrap();
        };
        let mut q = Queue::new(16).unwrap();
        q.set_desc_table_address(Some(desc as u32), Some(0));
        q.set_avail_ring_address(Some(avail as u32), Some(0));
        q.set_used_ring_address(Some(used as u32), Some(0));
        q.set_ready(true);
        let mut queues = [Queue::new(16).unwrap(), q];
        let out = crate::testing::Sink::default();
        let mut c = Console::new(Box::new(out.clone()));
        mem.write_slice(b"hello", GuestAddress(data)).unwrap();
        post(0, 5);
        let mut used_list = vec![];
        let mut qs = Queues {
            mem: &mem,
            queues: &mut queues,
            used: &mut used_list,
        };
        c.process(1, &mut qs).unwrap();
        assert_eq!(&out.0.lock().unwrap()[..], b"hello");
        let before = vm_peak_kib();
        post(1, 0xffff_fff0);
        assert!(c.process(1, &mut qs).is_err(), "4 GiB in 1 MiB of RAM");
        let grown = vm_peak_kib() - before;
        assert!(
            grown < 64 << 10,
            "the VMM grew {grown} KiB for one descriptor"
        );
    }
}
