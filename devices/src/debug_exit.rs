//! QEMU's `isa-debug-exit`: a write of `v` ends the VMM with status
//! `(v << 1) | 1`, so a guest's tests exit the same way on vmm and QEMU.

use crate::bus::BusDevice;
use crate::model::property::PropKind;
use crate::model::types::{p, TypeInfo};
use crate::registry::{Build, DeviceType};
use crate::{EventSink, VmEvent};

/// The `isa-debug-exit` type: the board puts it at its `iobase`.
pub static DEVICE: DeviceType = DeviceType {
    info: TypeInfo {
        name: "isa-debug-exit",
        parent: Some("device"),
        abstract_: false,
        bus: Some("ISA"),
        description: "exit the VMM with status (value << 1) | 1 on a port write, as QEMU's",
        props: &[
            p("iobase", PropKind::U32, "0x501", "I/O port"),
            p("iosize", PropKind::U32, "2", "port width in bytes"),
        ],
    },
    build: Build::Board,
};

pub struct DebugExit {
    events: EventSink,
}

impl DebugExit {
    pub fn new(events: EventSink) -> DebugExit {
        DebugExit { events }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        let code = ((u32::from_le_bytes(v) << 1) | 1) as i32;
        log::info!(
            "debug-exit: guest wrote {:#x}, exiting with {}",
            u32::from_le_bytes(v),
            code & 0xff
        );
        (self.events)(VmEvent::Exit(code & 0xff));
    }
}
