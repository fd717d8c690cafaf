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
        while let Some(chain) = io::pop(&mut queues.queues[q], mem) {
            for b in chain.readable() {
                let mut bytes = vec![0u8; b.len as usize];
                io::read(mem, b.addr, &mut bytes)?;
                if let Err(e) = self.out.write_all(&bytes).and_then(|_| self.out.flush()) {
                    log::warn!("virtconsole: output lost: {e}");
                }
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
