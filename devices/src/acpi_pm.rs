//! ACPI PM1a event and control registers and the PM timer (the FADT points
//! at them): S5 through `SLP_TYP`/`SLP_EN` powers the VM off.

use crate::bus::BusDevice;
use crate::{EventSink, VmEvent};
use migration::vmstate::{Description, LoadError, Migratable, State, Vmstate};
use std::time::Instant;
use vmm_sys_util::eventfd::EventFd;

const SCI_EN: u16 = 1;
const PWRBTN: u16 = 1 << 8;
const SLP_EN: u16 = 1 << 13;
const PM_TIMER_HZ: u128 = 3_579_545;

migration::vmstate! {
    /// PM1 registers and the PM timer's value (which continues from it).
    pub static VMSTATE = "acpi-pm", version 1, minimum 1;
    pub struct AcpiPmState {
        pm1_status: u16,
        pm1_enable: u16,
        pm1_control: u16,
        pm_timer: u32,
    }
}

/// The whole 12-byte block: PM1a_EVT (status, enable), PM1a_CNT, PM_TMR.
pub struct AcpiPm {
    status: u16,
    enable: u16,
    control: u16,
    s5_slp_typ: u8,
    /// The PM timer counts on from `timer_base` since `start`.
    timer_base: u32,
    start: Instant,
    events: EventSink,
    /// The SCI (IRQ 9), raised when an enabled status bit is set.
    sci: EventFd,
}

impl AcpiPm {
    pub fn new(s5_slp_typ: u8, events: EventSink, sci: EventFd) -> AcpiPm {
        // No SMI_CMD: ACPI mode is always on, so SCI_EN reads as set.
        AcpiPm {
            status: 0,
            enable: 0,
            control: SCI_EN,
            s5_slp_typ,
            timer_base: 0,
            start: Instant::now(),
            events,
            sci,
        }
    }

    /// The ACPI power button (QMP `system_powerdown`): PWRBTN_STS, and the
    /// SCI if the guest enabled it. Guests that poll PM1 status see it too.
    pub fn power_button(&mut self) {
        self.status |= PWRBTN;
        if self.enable & PWRBTN != 0 {
            if let Err(e) = self.sci.write(1) {
                log::warn!("ACPI: cannot raise the SCI: {e}");
            }
        }
    }

    fn timer(&self) -> u32 {
        let ticks = self.start.elapsed().as_nanos() * PM_TIMER_HZ / 1_000_000_000;
        self.timer_base.wrapping_add(ticks as u32)
    }

    fn regs(&self) -> [u8; 12] {
        let mut r = [0u8; 12];
        r[0..2].copy_from_slice(&self.status.to_le_bytes());
        r[2..4].copy_from_slice(&self.enable.to_le_bytes());
        r[4..6].copy_from_slice(&self.control.to_le_bytes());
        r[8..12].copy_from_slice(&self.timer().to_le_bytes());
        r
    }
}

impl Migratable for AcpiPm {
    fn description(&self) -> &'static Description {
        &VMSTATE
    }

    fn state(&self) -> State {
        AcpiPmState {
            pm1_status: self.status,
            pm1_enable: self.enable,
            pm1_control: self.control,
            pm_timer: self.timer(),
        }
        .to_state()
    }

    /// The PM timer continues from the saved value.
    fn load(&mut self, st: &State) -> Result<(), LoadError> {
        let s = AcpiPmState::from_state(st, "acpi-pm")?;
        self.status = s.pm1_status;
        self.enable = s.pm1_enable;
        self.control = s.pm1_control | SCI_EN;
        // Counted on from the value, not from a start time moved back by
        // it: a host up for less than the timer's value has no such
        // instant.
        self.timer_base = s.pm_timer;
        self.start = Instant::now();
        Ok(())
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let r = self.regs();
        for (i, b) in data.iter_mut().enumerate() {
            *b = r.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut r = self.regs();
        for (i, b) in data.iter().enumerate() {
            if let Some(x) = r.get_mut(offset as usize + i) {
                *x = *b;
            }
        }
        let touches = |lo: u64, hi: u64| offset < hi && offset + data.len() as u64 > lo;
        if touches(0, 2) {
            // Status bits are write-one-to-clear.
            self.status &= !u16::from_le_bytes([r[0], r[1]]);
        }
        if touches(2, 4) {
            self.enable = u16::from_le_bytes([r[2], r[3]]);
        }
        if touches(4, 6) {
            let v = u16::from_le_bytes([r[4], r[5]]);
            self.control = (v & !SLP_EN) | SCI_EN;
            let typ = ((v >> 10) & 7) as u8;
            if v & SLP_EN != 0 {
                if typ == self.s5_slp_typ {
                    log::info!("ACPI: guest entered S5, powering off");
                    (self.events)(VmEvent::PowerOff);
                } else {
                    crate::guest_warn!("ACPI: guest asked for unsupported sleep type {typ}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn s5_powers_off_and_timer_runs() {
        let seen = Arc::new(Mutex::new(vec![]));
        let s = seen.clone();
        let sci = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let mut pm = AcpiPm::new(
            5,
            Arc::new(move |e| s.lock().unwrap().push(e)),
            sci.try_clone().unwrap(),
        );
        let mut t1 = [0u8; 4];
        pm.read(8, &mut t1);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut t2 = [0u8; 4];
        pm.read(8, &mut t2);
        assert!(u32::from_le_bytes(t2) > u32::from_le_bytes(t1));
        pm.write(4, &((3u16 << 10) | SLP_EN).to_le_bytes());
        assert!(seen.lock().unwrap().is_empty());
        pm.write(4, &((5u16 << 10) | SLP_EN).to_le_bytes());
        assert_eq!(*seen.lock().unwrap(), vec![VmEvent::PowerOff]);
        // Power button: status bit, SCI only once enabled, W1C.
        pm.power_button();
        let mut st = [0u8; 2];
        pm.read(0, &mut st);
        assert_eq!(u16::from_le_bytes(st) & PWRBTN, PWRBTN);
        assert!(sci.read().is_err(), "no SCI while disabled");
        pm.write(2, &PWRBTN.to_le_bytes());
        pm.power_button();
        assert_eq!(sci.read().unwrap(), 1);
        pm.write(0, &PWRBTN.to_le_bytes());
        pm.read(0, &mut st);
        assert_eq!(u16::from_le_bytes(st) & PWRBTN, 0);
        // Round trip: registers kept, the timer continues from its value.
        pm.power_button();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let saved = pm.state();
        let mut other = AcpiPm::new(
            5,
            Arc::new(|_| {}),
            EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap(),
        );
        other.load(&saved).unwrap();
        let again = other.state();
        assert_eq!(saved.get("pm1_status"), again.get("pm1_status"));
        assert_eq!(saved.get("pm1_enable"), again.get("pm1_enable"));
        assert!(again.uint("pm_timer").unwrap() >= saved.uint("pm_timer").unwrap());
        assert!(again.uint("pm_timer").unwrap() < saved.uint("pm_timer").unwrap() + 3_579_545 / 10);
    }
}
