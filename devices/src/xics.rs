//! The XICS interrupt source controller of a pseries board (QEMU's
//! `ics-spapr`, section `ics`): per interrupt source, the server it is
//! routed to, its priority and the priority `ibm,int-off` saved, as RTAS
//! `ibm,set-xive`, `ibm,get-xive`, `ibm,int-off` and `ibm,int-on` set
//! them. The presentation side (ICPs, one per vCPU) comes with vCPUs.

use crate::rtas::PARAM_ERROR;
use migration::vmstate::{Description, LoadError, State, Vmstate};

migration::vmstate! {
    /// One interrupt source.
    pub static IRQ = "ics/irq", version 2, minimum 1;
    pub struct IcsIrq {
        server: u32,
        priority: u8,
        saved_priority: u8,
        status: u8,
        flags: u8,
    }
}

migration::vmstate! {
    /// Every source's routing.
    pub static VMSTATE = "ics", version 1, minimum 1;
    pub struct IcsState {
        nr_irqs: u32,
        #[count(nr_irqs)]
        irqs: Vec<IcsIrq>,
    }
}

/// `XICS_IRQ_BASE`: the first source's number.
pub const IRQ_BASE: u32 = 0x1000;
/// A masked source's priority.
pub const MASKED: u8 = 0xff;
/// `XICS_FLAGS_IRQ_LSI`: a level-triggered source.
pub const FLAG_LSI: u8 = 1;
/// `XICS_FLAGS_IRQ_MSI`: a message-signalled (edge) source.
pub const FLAG_MSI: u8 = 2;

/// The source controller: `irqs[n]` is source `IRQ_BASE + n`.
#[derive(Debug)]
pub struct Ics {
    irqs: Vec<IcsIrq>,
    /// Interrupt servers there are (a source may be routed to these).
    servers: u32,
}

impl Ics {
    /// `nr_irqs` sources for `servers` servers, masked and routed to
    /// server 0 (QEMU's reset); `lsi` of them claimed level-triggered,
    /// `msi` message-signalled.
    pub fn new(nr_irqs: u32, servers: u32, lsi: &[u32], msi: &[u32]) -> Ics {
        let irqs = (IRQ_BASE..IRQ_BASE + nr_irqs)
            .map(|n| IcsIrq {
                priority: MASKED,
                saved_priority: MASKED,
                flags: if lsi.contains(&n) {
                    FLAG_LSI
                } else if msi.contains(&n) {
                    FLAG_MSI
                } else {
                    0
                },
                ..Default::default()
            })
            .collect();
        Ics { irqs, servers }
    }

    fn irq(&mut self, nr: u32) -> Result<&mut IcsIrq, i32> {
        nr.checked_sub(IRQ_BASE)
            .and_then(|i| self.irqs.get_mut(i as usize))
            .ok_or(PARAM_ERROR)
    }

    /// `ibm,set-xive`: routes source `nr` to `server` at `priority`.
    pub fn set_xive(&mut self, nr: u32, server: u32, priority: u32) -> Result<(), i32> {
        if server >= self.servers || priority > u32::from(MASKED) {
            return Err(PARAM_ERROR);
        }
        let irq = self.irq(nr)?;
        irq.server = server;
        irq.priority = priority as u8;
        irq.saved_priority = priority as u8;
        Ok(())
    }

    /// `ibm,get-xive`: (server, priority) of source `nr`.
    pub fn get_xive(&mut self, nr: u32) -> Result<(u32, u32), i32> {
        let irq = self.irq(nr)?;
        Ok((irq.server, irq.priority.into()))
    }

    /// `ibm,int-off`: masks source `nr`, saving its priority.
    pub fn int_off(&mut self, nr: u32) -> Result<(), i32> {
        let irq = self.irq(nr)?;
        irq.saved_priority = irq.priority;
        irq.priority = MASKED;
        Ok(())
    }

    /// `ibm,int-on`: gives source `nr` back the priority it had.
    pub fn int_on(&mut self, nr: u32) -> Result<(), i32> {
        let irq = self.irq(nr)?;
        irq.priority = irq.saved_priority;
        Ok(())
    }
}

impl migration::vmstate::Migratable for Ics {
    fn description(&self) -> &'static Description {
        &VMSTATE
    }

    fn state(&self) -> State {
        IcsState {
            nr_irqs: self.irqs.len() as u32,
            irqs: self.irqs.clone(),
        }
        .to_state()
    }

    fn load(&mut self, st: &State) -> Result<(), LoadError> {
        let s = IcsState::from_state(st, VMSTATE.name)?;
        // QEMU's VMSTATE_UINT32_EQUAL: the machine types' source counts.
        if s.nr_irqs as usize != self.irqs.len() {
            return Err(LoadError::new(
                VMSTATE.name,
                format!(
                    "the stream has {} interrupt sources, this board {}",
                    s.nr_irqs,
                    self.irqs.len()
                ),
            ));
        }
        self.irqs = s.irqs;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use migration::stream::{decode_state, encode_state};
    use migration::vmstate::Migratable;

    #[test]
    fn routing_masking_and_its_migration() {
        let mut ics = Ics::new(0x1000, 8, &[0x1200], &[0x1100]);
        assert_eq!(ics.get_xive(0x1200), Ok((0, 0xff)), "masked at reset");
        ics.set_xive(0x1200, 3, 5).unwrap();
        assert_eq!(ics.get_xive(0x1200), Ok((3, 5)));
        ics.int_off(0x1200).unwrap();
        assert_eq!(ics.get_xive(0x1200), Ok((3, 0xff)));
        ics.int_on(0x1200).unwrap();
        assert_eq!(ics.get_xive(0x1200), Ok((3, 5)));
        assert_eq!(ics.set_xive(0x2000, 0, 5), Err(-3), "no such source");
        assert_eq!(ics.set_xive(0xfff, 0, 5), Err(-3), "below the first");
        assert_eq!(ics.set_xive(0x1200, 8, 5), Err(-3), "no such server");
        assert_eq!(ics.set_xive(0x1200, 0, 0x100), Err(-3), "no such priority");

        let bytes = encode_state(&VMSTATE, &ics.state()).unwrap();
        assert_eq!(bytes.len(), 4 + 0x1000 * 8);
        let mut there = Ics::new(0x1000, 8, &[0x1200], &[0x1100]);
        there
            .load(&decode_state(&VMSTATE, 1, &bytes).unwrap())
            .unwrap();
        assert_eq!(there.get_xive(0x1200), Ok((3, 5)));
        assert_eq!(there.irqs[0x200].flags, FLAG_LSI);
        assert_eq!(there.irqs[0x100].flags, FLAG_MSI);
        let mut legacy = Ics::new(0x400, 8, &[], &[]);
        let e = legacy
            .load(&decode_state(&VMSTATE, 1, &bytes).unwrap())
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("4096 interrupt sources, this board 1024"),
            "{e}"
        );
    }
}
