//! The XICS interrupt controller of a pseries board, emulated (QEMU's
//! `hw/intc/xics.c`; on KVM-PPC the kernel's XICS does this):
//!
//! * the source controller (`ics-spapr`, section `ics`): per source, the
//!   server it is routed to, its priority and the priority `ibm,int-off`
//!   saved, as RTAS `ibm,set-xive`, `ibm,get-xive`, `ibm,int-off` and
//!   `ibm,int-on` set them, and whether it is asserted, presented or
//!   rejected;
//! * the presentation controllers (ICPs, sections `icp/server`, one per
//!   vCPU): what each server presents (XIRR: its current priority and the
//!   source), the priority of that, and the inter-processor interrupt's
//!   (MFRR), as the hypercalls `H_XIRR`, `H_CPPR`, `H_EOI`, `H_IPI` and
//!   `H_IPOLL` read and set them.

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

migration::vmstate! {
    /// One server's presentation controller.
    pub static ICP = "icp/server", version 1, minimum 1;
    pub struct Icp {
        xirr: u32,
        pending_priority: u8,
        mfrr: u8,
    }
}

/// `XICS_IRQ_BASE`: the first source's number.
pub const IRQ_BASE: u32 = 0x1000;
/// `XICS_IPI`: the source an inter-processor interrupt presents as.
pub const IPI: u32 = 0x2;
const XISR_MASK: u32 = 0x00ff_ffff;
const STATUS_ASSERTED: u8 = 0x1;
const STATUS_SENT: u8 = 0x2;
const STATUS_REJECTED: u8 = 0x4;
const STATUS_MASKED_PENDING: u8 = 0x8;
/// A masked source's priority.
pub const MASKED: u8 = 0xff;
/// `XICS_FLAGS_IRQ_LSI`: a level-triggered source.
pub const FLAG_LSI: u8 = 1;
/// `XICS_FLAGS_IRQ_MSI`: a message-signalled (edge) source.
pub const FLAG_MSI: u8 = 2;

/// The controller: `irqs[n]` is source `IRQ_BASE + n`; `icps` the
/// presentation controllers, by server number.
#[derive(Debug)]
pub struct Ics {
    irqs: Vec<IcsIrq>,
    /// Interrupt servers there are (a source may be routed to these).
    servers: u32,
    icps: Vec<(u32, Icp)>,
    mirror: Option<Mirror>,
}

/// A source's routing as an in-kernel controller takes it (what QEMU's
/// `ics_set_kvm_state_one` sends): its server, its priority (`MASKED`
/// while masked) and the one it had before, whether it is level-triggered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub server: u32,
    pub priority: u8,
    pub saved_priority: u8,
    pub lsi: bool,
}

/// Where a source's routing goes each time it changes, besides this
/// model: the in-kernel XICS on KVM-PPC, which presents the interrupts
/// there (the board keeps the routing RTAS reads back).
pub struct Mirror(pub Box<dyn Fn(u32, Route) + Send>);

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mirror")
    }
}

impl Icp {
    /// At reset: nothing presented, every priority taken (CPPR 0), no IPI.
    fn reset() -> Icp {
        Icp {
            xirr: 0,
            pending_priority: MASKED,
            mfrr: MASKED,
        }
    }

    fn cppr(&self) -> u8 {
        (self.xirr >> 24) as u8
    }

    fn xisr(&self) -> u32 {
        self.xirr & XISR_MASK
    }
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
        Ics {
            irqs,
            servers,
            icps: vec![],
            mirror: None,
        }
    }

    /// With every routing change also sent to `mirror`; the sources
    /// claimed so far are sent now (QEMU's `ics_set_irq_type` sends each
    /// as it is claimed: the level-triggered ones must be so there).
    pub fn with_mirror(mut self, mirror: Mirror) -> Ics {
        self.mirror = Some(mirror);
        for n in 0..self.irqs.len() as u32 {
            if self.irqs[n as usize].flags != 0 {
                self.mirror(IRQ_BASE + n);
            }
        }
        self
    }

    /// Sends source `nr`'s routing to the mirror, if there is one.
    fn mirror(&self, nr: u32) {
        let (Some(m), Some(irq)) = (
            &self.mirror,
            nr.checked_sub(IRQ_BASE)
                .and_then(|i| self.irqs.get(i as usize)),
        ) else {
            return;
        };
        (m.0)(
            nr,
            Route {
                server: irq.server,
                priority: irq.priority,
                saved_priority: irq.saved_priority,
                lsi: irq.flags & FLAG_LSI != 0,
            },
        );
    }

    /// With a presentation controller for each of the vCPUs' `servers`.
    pub fn with_icps(mut self, servers: &[u32]) -> Ics {
        self.icps = servers.iter().map(|&s| (s, Icp::reset())).collect();
        self
    }

    fn icp(&mut self, server: u32) -> Option<&mut Icp> {
        self.icps
            .iter_mut()
            .find(|(s, _)| *s == server)
            .map(|(_, i)| i)
    }

    /// The servers with a presentation controller, in vCPU order.
    pub fn icp_servers(&self) -> Vec<u32> {
        self.icps.iter().map(|(s, _)| *s).collect()
    }

    /// Presents source `nr` at `priority` on `server`, or rejects it
    /// (QEMU's `icp_irq`): a server takes it if the priority is more
    /// favoured (lower) than its current one and than what it presents.
    fn present(&mut self, server: u32, nr: u32, priority: u8) {
        let Some(icp) = self.icp(server) else {
            self.reject(nr);
            return;
        };
        if priority >= icp.cppr() || (icp.xisr() != 0 && icp.pending_priority <= priority) {
            self.reject(nr);
            return;
        }
        let displaced = icp.xisr();
        icp.xirr = (icp.xirr & !XISR_MASK) | (nr & XISR_MASK);
        icp.pending_priority = priority;
        if displaced != 0 {
            self.reject(displaced);
        }
    }

    /// The server gave `nr` back (QEMU's `ics_reject`): a message waits
    /// for a resend, a level is sent again while it holds.
    fn reject(&mut self, nr: u32) {
        if nr == IPI {
            return;
        }
        if let Ok(irq) = self.irq(nr) {
            if irq.flags & FLAG_LSI != 0 {
                irq.status &= !STATUS_SENT;
            } else {
                irq.status |= STATUS_REJECTED;
            }
        }
    }

    /// Delivers source `nr` if it should be now (QEMU's `ics_resend_*` and
    /// `ics_set_irq_*`).
    fn deliver(&mut self, nr: u32) {
        let Ok(irq) = self.irq(nr) else {
            return;
        };
        let (server, priority) = (irq.server, irq.priority);
        if irq.flags & FLAG_LSI != 0 {
            if irq.status & STATUS_ASSERTED == 0 || irq.status & STATUS_SENT != 0 {
                return;
            }
            if priority == MASKED {
                return;
            }
            irq.status |= STATUS_SENT;
        } else {
            let waiting = irq.status & (STATUS_REJECTED | STATUS_MASKED_PENDING) != 0;
            if !waiting {
                return;
            }
            if priority == MASKED {
                irq.status = (irq.status & !STATUS_REJECTED) | STATUS_MASKED_PENDING;
                return;
            }
            irq.status &= !(STATUS_REJECTED | STATUS_MASKED_PENDING);
        }
        self.present(server, nr, priority);
    }

    /// Sources the servers gave back, again (QEMU's `ics_resend`).
    fn resend(&mut self) {
        for n in 0..self.irqs.len() as u32 {
            self.deliver(IRQ_BASE + n);
        }
    }

    /// Claims `num` free sources (held by no device) from `from` on,
    /// message-signalled; the first (QEMU's `spapr_irq_msi_alloc`, or
    /// `spapr_irq_find` on pseries-3.0 and older: the first free run).
    pub fn claim_msis(&mut self, from: u32, num: u32) -> Option<u32> {
        let start = from.checked_sub(IRQ_BASE)? as usize;
        let n = num as usize;
        let first = (start..self.irqs.len().checked_sub(n)? + 1)
            .find(|&i| self.irqs[i..i + n].iter().all(|irq| irq.flags == 0))?;
        // Claimed with an in-kernel controller, a source starts masked
        // there and here (QEMU's `ics_set_irq_type` resets it only then).
        let reset = self.mirror.is_some();
        for irq in &mut self.irqs[first..first + n] {
            irq.flags = FLAG_MSI;
            if reset {
                irq.priority = MASKED;
                irq.saved_priority = MASKED;
                irq.status = 0;
            }
        }
        let first = IRQ_BASE + first as u32;
        for nr in first..first + num {
            self.mirror(nr);
        }
        Some(first)
    }

    /// Gives back `num` sources from `first` (a function's MSIs).
    pub fn free(&mut self, first: u32, num: u32) {
        for nr in first..first.saturating_add(num) {
            if let Ok(irq) = self.irq(nr) {
                irq.flags = 0;
                irq.status = 0;
            }
        }
    }

    /// A message-signalled source fires (an edge: the vty's input, an
    /// MSI). Masked, it waits until unmasked.
    pub fn pulse(&mut self, nr: u32) {
        if let Ok(irq) = self.irq(nr) {
            irq.status |= STATUS_MASKED_PENDING;
            self.deliver(nr);
        }
    }

    /// A level-triggered source's line.
    pub fn set_level(&mut self, nr: u32, level: bool) {
        if let Ok(irq) = self.irq(nr) {
            if level {
                irq.status |= STATUS_ASSERTED;
            } else {
                irq.status &= !STATUS_ASSERTED;
            }
            self.deliver(nr);
        }
    }

    /// An IPI's priority changed: present it if it is more favoured than
    /// what the server has (QEMU's `icp_check_ipi`).
    fn check_ipi(&mut self, server: u32) {
        let Some(icp) = self.icp(server) else {
            return;
        };
        if icp.xisr() != 0 && icp.pending_priority <= icp.mfrr {
            return;
        }
        let displaced = icp.xisr();
        icp.xirr = (icp.xirr & !XISR_MASK) | IPI;
        icp.pending_priority = icp.mfrr;
        if displaced != 0 {
            self.reject(displaced);
        }
    }

    /// What the server takes once nothing is presented (QEMU's
    /// `icp_resend`).
    fn icp_resend(&mut self, server: u32) {
        if let Some(icp) = self.icp(server) {
            if icp.mfrr < icp.cppr() {
                self.check_ipi(server);
            }
        }
        self.resend();
    }

    /// `H_XIRR`: takes what `server` presents; its XIRR before (the old
    /// priority and the source), its priority now that of the source.
    pub fn accept(&mut self, server: u32) -> Option<u32> {
        let icp = self.icp(server)?;
        let xirr = icp.xirr;
        icp.xirr = u32::from(icp.pending_priority) << 24;
        icp.pending_priority = MASKED;
        Some(xirr)
    }

    /// `H_IPOLL`: what `server` presents, not taken, and its MFRR.
    pub fn poll(&mut self, server: u32) -> Option<(u32, u8)> {
        let icp = self.icp(server)?;
        Some((icp.xirr, icp.mfrr))
    }

    /// `H_CPPR`: the server's current priority. A more favoured one
    /// rejects what it presents unless that is still more favoured; a
    /// less favoured one takes what waited.
    pub fn set_cppr(&mut self, server: u32, cppr: u8) -> Option<()> {
        let icp = self.icp(server)?;
        let old = icp.cppr();
        icp.xirr = (icp.xirr & XISR_MASK) | u32::from(cppr) << 24;
        if cppr < old {
            if icp.xisr() != 0 && cppr <= icp.pending_priority {
                let was = icp.xisr();
                icp.xirr &= !XISR_MASK;
                icp.pending_priority = MASKED;
                self.reject(was);
            }
        } else if icp.xisr() == 0 {
            self.icp_resend(server);
        }
        Some(())
    }

    /// `H_IPI`: `server`'s inter-processor interrupt at `mfrr`.
    pub fn set_mfrr(&mut self, server: u32, mfrr: u8) -> Option<()> {
        let icp = self.icp(server)?;
        icp.mfrr = mfrr;
        if mfrr < icp.cppr() {
            self.check_ipi(server);
        }
        Some(())
    }

    /// `H_EOI`: the server is done with the source `xirr` names and goes
    /// back to `xirr`'s priority; a level still held is sent again.
    pub fn eoi(&mut self, server: u32, xirr: u32) -> Option<()> {
        let icp = self.icp(server)?;
        icp.xirr = (icp.xirr & XISR_MASK) | (xirr & !XISR_MASK);
        let idle = icp.xisr() == 0;
        if let Ok(irq) = self.irq(xirr & XISR_MASK) {
            if irq.flags & FLAG_LSI != 0 {
                irq.status &= !STATUS_SENT;
            }
        }
        if idle {
            self.icp_resend(server);
        }
        Some(())
    }

    /// Server `server`'s presentation controller as a migratable section
    /// (`icp/server`, instance: the vCPU).
    pub fn icp_state(&self, server: u32) -> Option<State> {
        self.icps
            .iter()
            .find(|(s, _)| *s == server)
            .map(|(_, i)| i.to_state())
    }

    pub fn load_icp(&mut self, server: u32, st: &State) -> Result<(), LoadError> {
        let i = Icp::from_state(st, ICP.name)?;
        let icp = self
            .icp(server)
            .ok_or_else(|| LoadError::new(ICP.name, format!("no interrupt server {server}")))?;
        *icp = i;
        Ok(())
    }

    fn irq(&mut self, nr: u32) -> Result<&mut IcsIrq, i32> {
        nr.checked_sub(IRQ_BASE)
            .and_then(|i| self.irqs.get_mut(i as usize))
            .ok_or(PARAM_ERROR)
    }

    /// `ibm,set-xive`: routes source `nr` to `server` at `priority`.
    /// Where the presentation side is emulated, only to a server that has
    /// a controller (QEMU 7.2's `xics_icp_get` check); else to any server
    /// number there is.
    pub fn set_xive(&mut self, nr: u32, server: u32, priority: u32) -> Result<(), i32> {
        let no_icp = !self.icps.is_empty() && !self.icps.iter().any(|(s, _)| *s == server);
        if server >= self.servers || no_icp || priority > u32::from(MASKED) {
            return Err(PARAM_ERROR);
        }
        let irq = self.irq(nr)?;
        irq.server = server;
        irq.priority = priority as u8;
        irq.saved_priority = priority as u8;
        self.mirror(nr);
        self.deliver(nr);
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
        self.mirror(nr);
        Ok(())
    }

    /// `ibm,int-on`: gives source `nr` back the priority it had (and
    /// delivers what waited while masked).
    pub fn int_on(&mut self, nr: u32) -> Result<(), i32> {
        let irq = self.irq(nr)?;
        irq.priority = irq.saved_priority;
        self.mirror(nr);
        self.deliver(nr);
        Ok(())
    }
}

/// Server `server`'s presentation controller as its own section
/// (`icp/server`, instance: the vCPU's index, as QEMU's), in the XICS it
/// is part of.
pub struct IcpSection {
    pub xics: std::sync::Arc<std::sync::Mutex<Ics>>,
    pub server: u32,
    pub vcpu: u32,
}

impl migration::vmstate::Migratable for IcpSection {
    fn description(&self) -> &'static Description {
        &ICP
    }

    fn instance(&self) -> u32 {
        self.vcpu
    }

    fn state(&self) -> State {
        self.xics
            .lock()
            .expect("xics lock")
            .icp_state(self.server)
            .unwrap_or_default()
    }

    fn load(&mut self, st: &State) -> Result<(), LoadError> {
        self.xics
            .lock()
            .expect("xics lock")
            .load_icp(self.server, st)
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

    /// What an in-kernel controller is sent: the claimed sources at
    /// once (the pins level-triggered), then each routing change, a
    /// masked source with the priority it will get back.
    #[test]
    fn the_mirror_gets_every_claim_and_routing_change() {
        use std::sync::{Arc, Mutex};
        let sent: Arc<Mutex<Vec<(u32, Route)>>> = Arc::default();
        let log = sent.clone();
        let mut ics = Ics::new(0x1000, 8, &[0x1200], &[0x1100]).with_mirror(Mirror(Box::new(
            move |nr, r| log.lock().unwrap().push((nr, r)),
        )));
        let route = |server, priority, saved_priority, lsi| Route {
            server,
            priority,
            saved_priority,
            lsi,
        };
        let take = || std::mem::take(&mut *sent.lock().unwrap());
        assert_eq!(
            take(),
            [
                (0x1100, route(0, MASKED, MASKED, false)),
                (0x1200, route(0, MASKED, MASKED, true))
            ]
        );
        ics.set_xive(0x1200, 3, 5).unwrap();
        ics.int_off(0x1200).unwrap();
        ics.int_on(0x1200).unwrap();
        assert_eq!(
            take(),
            [
                (0x1200, route(3, 5, 5, true)),
                (0x1200, route(3, MASKED, 5, true)),
                (0x1200, route(3, 5, 5, true))
            ]
        );
        // A refused call sends nothing.
        assert_eq!(ics.set_xive(0x1200, 8, 5), Err(-3));
        assert!(take().is_empty());
        // MSIs claimed later start masked, whatever they had before (with
        // a mirror only: the emulated controller keeps the routing, as
        // QEMU's without an in-kernel one).
        ics.set_xive(0x1300, 1, 4).unwrap();
        take();
        assert_eq!(ics.claim_msis(0x1300, 2), Some(0x1300));
        assert_eq!(ics.get_xive(0x1300), Ok((1, 0xff)));
        assert_eq!(
            take(),
            [
                (0x1300, route(1, MASKED, MASKED, false)),
                (0x1301, route(0, MASKED, MASKED, false))
            ]
        );
        let mut emulated = Ics::new(0x1000, 8, &[], &[]);
        emulated.set_xive(0x1300, 1, 4).unwrap();
        assert_eq!(emulated.claim_msis(0x1300, 1), Some(0x1300));
        assert_eq!(
            emulated.get_xive(0x1300),
            Ok((1, 4)),
            "kept without a mirror"
        );
    }

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

    /// QEMU's presentation rules: a source reaches a server only above its
    /// current priority, a more favoured one rejects what is presented and
    /// a less favoured one takes it back; the IPI; a level source sent
    /// again after its EOI while it holds; masked sources wait.
    #[test]
    fn sources_are_presented_taken_and_ended() {
        let mut x = Ics::new(0x1000, 8, &[0x1200], &[0x1100]).with_icps(&[0, 1]);
        x.set_xive(0x1100, 0, 5).unwrap();
        x.set_cppr(0, 0xff).unwrap();
        x.pulse(0x1100);
        assert_eq!(x.poll(0), Some((0xff00_1100, 0xff)));
        // CPPR 0: given back; 0xff again: presented again.
        x.set_cppr(0, 0).unwrap();
        assert_eq!(x.poll(0), Some((0, 0xff)));
        x.set_cppr(0, 0xff).unwrap();
        assert_eq!(x.accept(0), Some(0xff00_1100));
        assert_eq!(
            x.poll(0).unwrap().0 >> 24,
            5,
            "CPPR is the source's priority"
        );
        x.eoi(0, 0xff00_1100).unwrap();
        assert_eq!(x.poll(0), Some((0xff00_0000, 0xff)));
        // The IPI (withdrawn before its EOI, as Linux does: it would be
        // presented again), and a server that is not there.
        x.set_mfrr(0, 3).unwrap();
        assert_eq!(x.accept(0), Some(0xff00_0002));
        x.set_mfrr(0, 0xff).unwrap();
        x.eoi(0, 0xff00_0002).unwrap();
        assert_eq!(x.poll(0), Some((0xff00_0000, 0xff)));
        assert_eq!(x.set_mfrr(7, 3), None);
        assert_eq!(
            x.set_xive(0x1100, 2, 5),
            Err(-3),
            "no controller for server 2"
        );
        // A level source held through its EOI comes back.
        x.set_xive(0x1200, 0, 4).unwrap();
        x.set_level(0x1200, true);
        assert_eq!(x.accept(0), Some(0xff00_1200));
        x.eoi(0, 0xff00_1200).unwrap();
        assert_eq!(x.poll(0).unwrap().0, 0xff00_1200, "still asserted");
        x.set_level(0x1200, false);
        assert_eq!(x.accept(0), Some(0xff00_1200));
        x.eoi(0, 0xff00_1200).unwrap();
        assert_eq!(x.poll(0).unwrap().0, 0xff00_0000);
        // Masked, a message waits for ibm,int-on.
        x.int_off(0x1100).unwrap();
        x.pulse(0x1100);
        assert_eq!(x.poll(0).unwrap().0, 0xff00_0000);
        x.int_on(0x1100).unwrap();
        assert_eq!(x.poll(0).unwrap().0, 0xff00_1100);
    }

    /// What a server presents travels in its own section.
    #[test]
    fn a_presented_source_travels_with_its_server() {
        let xics = std::sync::Arc::new(std::sync::Mutex::new(
            Ics::new(0x1000, 2, &[], &[0x1100]).with_icps(&[0, 1]),
        ));
        {
            let mut x = xics.lock().unwrap();
            x.set_xive(0x1100, 1, 5).unwrap();
            x.set_cppr(1, 0xff).unwrap();
            x.pulse(0x1100);
        }
        let icp = IcpSection {
            xics: xics.clone(),
            server: 1,
            vcpu: 1,
        };
        assert_eq!(icp.instance(), 1);
        let bytes = encode_state(&ICP, &icp.state()).unwrap();
        assert_eq!(bytes, [0xff, 0, 0x11, 0, 5, 0xff]);
        let there = std::sync::Arc::new(std::sync::Mutex::new(
            Ics::new(0x1000, 2, &[], &[0x1100]).with_icps(&[0, 1]),
        ));
        let mut icp = IcpSection {
            xics: there.clone(),
            server: 1,
            vcpu: 1,
        };
        icp.load(&decode_state(&ICP, 1, &bytes).unwrap()).unwrap();
        assert_eq!(there.lock().unwrap().accept(1), Some(0xff00_1100));
    }
}
