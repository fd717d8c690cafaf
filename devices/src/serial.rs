//! The 16550A UART at 0x3f8/IRQ 4 (vm-superio's), its interrupt an eventfd
//! the VMM registers as an irqfd, its output any writer (stdout, a file,
//! nothing), its input fed by the VMM.

use crate::bus::BusDevice;
use std::io::Write;
use vm_superio::{Serial as Uart, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Raises the UART's interrupt line through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub struct Serial {
    uart: Uart<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl Serial {
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Serial {
        Serial {
            uart: Uart::new(IrqTrigger(irq), out),
        }
    }

    /// Queues input for the guest; returns how many bytes fit.
    pub fn input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        if room == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial: input dropped: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&b) = data.first() {
            if let Err(e) = self.uart.write(offset as u8, b) {
                log::warn!("serial: output failed: {e:?}");
            }
        }
    }
}
