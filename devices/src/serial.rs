//! The 16550A UART at 0x3f8/IRQ 4 (vm-superio's), its interrupt an eventfd
//! the VMM registers as an irqfd, its output any writer (stdout, a file,
//! nothing), its input fed by the VMM.

use crate::bus::BusDevice;
use migration::vmstate::{Description, LoadError, Migratable, State, Vmstate};
use std::io::Write;
use vm_superio::serial::SerialState;
use vm_superio::{Serial as Uart, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// The receive FIFO's size (bytes in flight from the host to the guest).
pub const FIFO_SIZE: usize = 64;

migration::vmstate! {
    /// The UART's registers and the bytes waiting in its receive FIFO.
    pub static VMSTATE = "serial", version 1, minimum 1;
    pub struct UartState {
        divisor_low: u8,
        divisor_high: u8,
        ier: u8,
        iir: u8,
        lcr: u8,
        lsr: u8,
        mcr: u8,
        msr: u8,
        scr: u8,
        /// How many bytes of `rx` are in the FIFO.
        rx_len: u8,
        rx: [u8; FIFO_SIZE],
    }
}

fn fifo(len: u8) -> LoadError {
    LoadError::new(
        "serial",
        format!("{len} bytes in flight, more than the {FIFO_SIZE}-byte FIFO"),
    )
}

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

    fn to_state(&self) -> State {
        let s = self.uart.state();
        let mut rx = [0u8; FIFO_SIZE];
        let len = s.in_buffer.len().min(FIFO_SIZE);
        rx[..len].copy_from_slice(&s.in_buffer[..len]);
        UartState {
            divisor_low: s.baud_divisor_low,
            divisor_high: s.baud_divisor_high,
            ier: s.interrupt_enable,
            iir: s.interrupt_identification,
            lcr: s.line_control,
            lsr: s.line_status,
            mcr: s.modem_control,
            msr: s.modem_status,
            scr: s.scratch,
            rx_len: len as u8,
            rx,
        }
        .to_state()
    }

    /// Builds a UART from a saved state (restore by construction).
    pub fn from_state(
        st: &State,
        irq: EventFd,
        out: Box<dyn Write + Send>,
    ) -> Result<Serial, LoadError> {
        let s = UartState::from_state(st, "serial")?;
        let in_buffer =
            s.rx.get(..s.rx_len as usize)
                .ok_or_else(|| fifo(s.rx_len))?
                .to_vec();
        let state = SerialState {
            baud_divisor_low: s.divisor_low,
            baud_divisor_high: s.divisor_high,
            interrupt_enable: s.ier,
            interrupt_identification: s.iir,
            line_control: s.lcr,
            line_status: s.lsr,
            modem_control: s.mcr,
            modem_status: s.msr,
            scratch: s.scr,
            in_buffer,
        };
        let uart = Uart::from_state(&state, IrqTrigger(irq), vm_superio::serial::NoEvents, out)
            .map_err(|_| fifo(s.rx_len))?;
        Ok(Serial { uart })
    }

    /// Takes over a saved state in place, keeping this UART's output and
    /// interrupt line. Nothing changes if the state is refused.
    fn restore(&mut self, st: &State) -> Result<(), LoadError> {
        let irq = |u: &Self| {
            u.uart.interrupt_evt().0.try_clone().map_err(|e| {
                LoadError::new("serial", format!("cannot keep its interrupt line: {e}"))
            })
        };
        Serial::from_state(st, irq(self)?, Box::new(std::io::sink()))?;
        let placeholder = Uart::new(
            IrqTrigger(irq(self)?),
            Box::new(std::io::sink()) as Box<dyn Write + Send>,
        );
        let old = std::mem::replace(&mut self.uart, placeholder);
        let evt = old.interrupt_evt().0.try_clone().map_err(|e| {
            LoadError::new("serial", format!("cannot keep its interrupt line: {e}"))
        })?;
        *self = Serial::from_state(st, evt, old.into_writer())?;
        Ok(())
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

impl Migratable for Serial {
    fn description(&self) -> &'static Description {
        &VMSTATE
    }

    fn state(&self) -> State {
        self.to_state()
    }

    /// Keeps this UART's output and interrupt line.
    fn load(&mut self, st: &State) -> Result<(), LoadError> {
        self.restore(st)
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

#[cfg(test)]
mod tests {
    use super::*;
    use migration::stream::{NoRam, Reader, Record, Writer};
    use migration::vmstate::Val;

    fn evt() -> EventFd {
        EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap()
    }

    /// build → use → save → encode → decode → restore → compare.
    #[test]
    fn round_trip_keeps_registers_and_bytes_in_flight() {
        let mut s = Serial::new(evt(), Box::new(std::io::sink()));
        s.write(3, &[0x03]); // 8N1
        s.write(7, &[0x5a]); // scratch
        s.write(1, &[0x01]); // receive interrupts on
        assert_eq!(s.input(b"abc"), 3);
        let saved = s.state();
        let mut w = Writer::new(Vec::new(), "pc-q35-8.0").unwrap();
        w.section("serial", 0, &VMSTATE, &saved).unwrap();
        let bytes = w.finish().unwrap();
        let mut r = Reader::new(&bytes[..], "pc-q35-8.0").unwrap();
        let Record::Section { state, .. } =
            r.next_record(&|_, _| Some(&VMSTATE), &mut NoRam).unwrap()
        else {
            panic!()
        };
        let mut restored = Serial::from_state(&state, evt(), Box::new(std::io::sink())).unwrap();
        assert_eq!(restored.state(), saved);
        let mut b = [0u8; 1];
        for want in *b"abc" {
            restored.read(0, &mut b);
            assert_eq!(b[0], want);
        }
        restored.read(7, &mut b);
        assert_eq!(b[0], 0x5a);
    }

    #[test]
    fn hostile_state_is_refused() {
        let mut st = Serial::new(evt(), Box::new(std::io::sink())).state();
        st.set("rx_len", Val::Uint(200));
        let e = Serial::from_state(&st, evt(), Box::new(std::io::sink()))
            .err()
            .expect("refused");
        assert_eq!(
            e.to_string(),
            "serial: 200 bytes in flight, more than the 64-byte FIFO"
        );
    }
}
