//! spapr-vty: the sPAPR virtual terminal on the VIO bus (QEMU's
//! `hw/char/spapr_vty.c`), the console a pseries guest writes with
//! `H_PUT_TERM_CHAR` and reads with `H_GET_TERM_CHAR`, 16 bytes at most a
//! call. Input waits in a 16-byte ring (its `in`/`out` counters and bytes
//! migrate, section `spapr_vty`, as QEMU's).

use crate::spapr_vio::{VioAddr, VioState};
use migration::vmstate::{Description, LoadError, State, Vmstate};
use std::io::Write;

/// `VTERM_BUFSIZE`: the input ring, and the most one call moves.
pub const BUF_SIZE: usize = 16;

migration::vmstate! {
    pub static VMSTATE = "spapr_vty", version 1, minimum 1;
    pub struct VtyState {
        sdev: VioState,
        #[wire("in")]
        in_: u32,
        out: u32,
        buf: [u8; BUF_SIZE],
    }
}

/// Raises the vty's interrupt source (an edge).
pub type Raise = Box<dyn Fn() + Send>;

/// The device: where its output goes, and its input ring (`in` and `out`
/// count bytes ever queued and taken; they wrap, as QEMU's).
pub struct SpaprVty {
    addr: VioAddr,
    raise: Raise,
    signal_state: u64,
    in_: u32,
    out: u32,
    buf: [u8; BUF_SIZE],
    output: Box<dyn Write + Send>,
}

impl SpaprVty {
    pub fn new(addr: VioAddr, output: Box<dyn Write + Send>, raise: Raise) -> SpaprVty {
        SpaprVty {
            addr,
            raise,
            signal_state: 0,
            in_: 0,
            out: 0,
            buf: [0; BUF_SIZE],
            output,
        }
    }

    pub fn addr(&self) -> VioAddr {
        self.addr
    }

    /// The section's name in the stream, QEMU's: the device's path on the
    /// VIO bus (`vty@71000000`), then the description's name.
    pub fn section(&self) -> String {
        format!("vty@{:x}/{}", self.addr.reg, VMSTATE.name)
    }

    /// Queues host input for the guest; how many bytes fit (the rest waits
    /// with the host, as QEMU's `can_receive` makes it). Input into an
    /// empty ring raises the interrupt, as QEMU's.
    pub fn input(&mut self, bytes: &[u8]) -> usize {
        let room = BUF_SIZE - self.in_.wrapping_sub(self.out) as usize;
        let n = room.min(bytes.len());
        if n > 0 && self.in_ == self.out {
            (self.raise)();
        }
        for &b in &bytes[..n] {
            self.buf[self.in_ as usize % BUF_SIZE] = b;
            self.in_ = self.in_.wrapping_add(1);
        }
        n
    }

    /// `H_PUT_TERM_CHAR`'s bytes, written through.
    pub fn put_chars(&mut self, bytes: &[u8]) {
        if let Err(e) = self
            .output
            .write_all(bytes)
            .and_then(|()| self.output.flush())
        {
            log::warn!("spapr-vty: console output lost: {e}");
        }
    }

    /// `H_GET_TERM_CHAR`: up to `max` queued bytes. A call stops before a
    /// `\0` that would follow a `\r` in its batch (QEMU's since 4.2:
    /// guests drop a `\0` after `\r`, a workaround for an old PowerVM
    /// bug), so the `\0` comes first in the next.
    pub fn get_chars(&mut self, max: usize) -> Vec<u8> {
        let mut got = Vec::with_capacity(max);
        while got.len() < max && self.out != self.in_ {
            let b = self.buf[self.out as usize % BUF_SIZE];
            if b == 0 && got.last() == Some(&b'\r') {
                break;
            }
            got.push(b);
            self.out = self.out.wrapping_add(1);
        }
        got
    }
}

impl migration::vmstate::Migratable for SpaprVty {
    fn description(&self) -> &'static Description {
        &VMSTATE
    }

    fn section(&self) -> String {
        SpaprVty::section(self)
    }

    fn state(&self) -> State {
        VtyState {
            sdev: VioState {
                reg: self.addr.reg,
                irq: self.addr.irq,
                signal_state: self.signal_state,
                ..Default::default()
            },
            in_: self.in_,
            out: self.out,
            buf: self.buf,
        }
        .to_state()
    }

    /// Refuses a vty at another address or interrupt (the guest found it
    /// there in its device tree); nothing changes then.
    fn load(&mut self, st: &State) -> Result<(), LoadError> {
        let s = VtyState::from_state(st, VMSTATE.name)?;
        let (reg, irq) = (s.sdev.reg, s.sdev.irq);
        if (reg, irq) != (self.addr.reg, self.addr.irq) {
            return Err(LoadError::new(
                self.section(),
                format!(
                    "the source's vty is at {reg:#x} with interrupt {irq:#x}, this one at {:#x} with {:#x}",
                    self.addr.reg, self.addr.irq
                ),
            ));
        }
        if s.in_.wrapping_sub(s.out) as usize > BUF_SIZE {
            return Err(LoadError::new(
                self.section(),
                format!(
                    "{} bytes waiting in a ring of {BUF_SIZE}",
                    s.in_.wrapping_sub(s.out)
                ),
            ));
        }
        self.signal_state = s.sdev.signal_state;
        (self.in_, self.out, self.buf) = (s.in_, s.out, s.buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Sink;
    use migration::stream::{decode_state, encode_state};
    use migration::vmstate::Migratable;
    use std::sync::{Arc, Mutex};

    const AT: VioAddr = VioAddr {
        reg: 0x7100_0000,
        irq: 0x1100,
    };

    #[test]
    fn input_waits_in_the_ring_and_a_nul_after_a_return_waits_a_call() {
        let mut v = SpaprVty::new(AT, Box::new(Sink::default()), Box::new(|| {}));
        assert_eq!(v.input(&[b'x'; 20]), BUF_SIZE, "the ring holds 16");
        assert_eq!(v.input(b"y"), 0);
        assert_eq!(v.get_chars(BUF_SIZE), vec![b'x'; BUF_SIZE]);
        assert!(v.get_chars(BUF_SIZE).is_empty());
        assert_eq!(v.input(b"a\rb\r\0c"), 6);
        assert_eq!(v.get_chars(2), b"a\r");
        // A real NUL after a return starts the next batch, or a guest
        // would drop it.
        assert_eq!(v.get_chars(BUF_SIZE), b"b\r");
        assert_eq!(v.get_chars(BUF_SIZE), b"\0c");
    }

    /// Input into an empty ring raises the interrupt; more input into a
    /// ring that holds some does not.
    #[test]
    fn input_raises_the_interrupt_once() {
        let raised = Arc::new(Mutex::new(0));
        let r = raised.clone();
        let mut v = SpaprVty::new(
            AT,
            Box::new(Sink::default()),
            Box::new(move || *r.lock().unwrap() += 1),
        );
        v.input(b"a");
        v.input(b"b");
        assert_eq!(*raised.lock().unwrap(), 1);
        v.get_chars(BUF_SIZE);
        v.input(b"c");
        assert_eq!(*raised.lock().unwrap(), 2);
    }

    #[test]
    fn output_goes_through() {
        let sink = Sink::default();
        let mut v = SpaprVty::new(AT, Box::new(sink.clone()), Box::new(|| {}));
        v.put_chars(b"hvc0");
        assert_eq!(*sink.0.lock().unwrap(), b"hvc0");
    }

    /// Waiting input survives a migration; a vty elsewhere refuses it.
    #[test]
    fn the_ring_travels_and_the_address_is_checked() {
        let mut a = SpaprVty::new(AT, Box::new(Sink::default()), Box::new(|| {}));
        for _ in 0..3 {
            a.input(b"0123456789");
            a.get_chars(BUF_SIZE);
        }
        a.input(b"left");
        let st = decode_state(&VMSTATE, 1, &encode_state(&VMSTATE, &a.state()).unwrap()).unwrap();
        let mut b = SpaprVty::new(AT, Box::new(Sink::default()), Box::new(|| {}));
        b.load(&st).unwrap();
        assert_eq!(b.get_chars(BUF_SIZE), b"left");
        let mut c = SpaprVty::new(
            VioAddr {
                reg: 0x7100_0001,
                irq: 0x1101,
            },
            Box::new(Sink::default()),
            Box::new(|| {}),
        );
        let e = c.load(&st).unwrap_err().to_string();
        assert!(
            e.contains("vty@71000001") && e.contains("0x71000000"),
            "{e}"
        );
    }
}
