//! The qtest client's requests, served on the board (`-accel qtest`): the
//! port and memory accesses a vCPU would make, through the same buses;
//! RAM through the backend (its dirty log sees them), doorbells first as
//! KVM's ioeventfds would take them.

use super::board::{Board, Platform};
use crate::qtest::protocol::{to_base64, to_hex, Request, Width};
use crate::qtest::{QtestVm, Rang};
use crate::runstate::RunState;
use std::collections::VecDeque;

/// How the board's CPU orders bytes (QEMU's "target endianness").
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Endian {
    Little,
    Big,
}

impl Endian {
    pub(super) fn of(arch: machine::Arch) -> Endian {
        match arch {
            machine::Arch::X86_64 => Endian::Little,
            // QEMU's ppc64 target is big-endian, whatever the guest runs.
            machine::Arch::Ppc64 => Endian::Big,
        }
    }
}

/// Serves the waiting requests, in order, while the VM runs; once its
/// guest has gone to a migration's destination they fail (the guest never
/// runs here again); otherwise they wait.
pub(super) fn serve(
    board: &Board,
    endian: Endian,
    status: RunState,
    waiting: &mut VecDeque<crate::qtest::Call>,
) {
    if !matches!(status, RunState::Running | RunState::PostMigrate) {
        return;
    }
    while let Some(call) = waiting.pop_front() {
        let reply = if status == RunState::Running {
            execute(board, endian, call.request)
        } else {
            "FAIL the guest has moved to its migration's destination: nothing runs here".into()
        };
        // A client that left no longer waits for it.
        let _ = call.reply.send(reply);
    }
}

fn execute(board: &Board, endian: Endian, request: Request) -> String {
    let Some(q) = board.vm.qtest() else {
        return "FAIL this VM is not run by the qtest accelerator".into();
    };
    let mem = Mem { board, q };
    match request {
        Request::Out { width, port, value } => {
            let bytes = u64::from(value).to_le_bytes();
            let data = &bytes[..width.bytes()];
            if let Rang::No = q.ring_pio(port, data) {
                board.buses.io.write(u64::from(port), data);
            }
            "OK".into()
        }
        Request::In { width, port } => {
            // An unassigned port reads as all ones (QEMU's too).
            let mut bytes = [0xff; 8];
            board.buses.io.read(u64::from(port), &mut bytes[..width.bytes()]);
            let v = width.truncate(u64::from_le_bytes(bytes));
            format!("OK 0x{v:04x}")
        }
        Request::Write { width, addr, value } => {
            let v = width.truncate(value);
            let n = width.bytes();
            let bytes = match endian {
                Endian::Little => v.to_le_bytes()[..n].to_vec(),
                Endian::Big => v.to_be_bytes()[8 - n..].to_vec(),
            };
            mem.write(addr, &bytes);
            "OK".into()
        }
        Request::Read { width, addr } => {
            let n = width.bytes();
            let mut bytes = [0; 8];
            let v = match endian {
                Endian::Little => {
                    mem.read(addr, &mut bytes[..n]);
                    u64::from_le_bytes(bytes)
                }
                Endian::Big => {
                    mem.read(addr, &mut bytes[8 - n..]);
                    u64::from_be_bytes(bytes)
                }
            };
            format!("OK 0x{:016x}", width.truncate(v))
        }
        Request::ReadBuf { addr, len, base64 } => {
            let mut data = vec![0; len as usize];
            mem.read(addr, &mut data);
            if base64 {
                format!("OK {}", to_base64(&data))
            } else {
                format!("OK 0x{}", to_hex(&data))
            }
        }
        Request::WriteBuf { addr, data } => {
            mem.write(addr, &data);
            "OK".into()
        }
        Request::Memset { addr, len, byte } => {
            mem.write(addr, &vec![byte; len as usize]);
            "OK".into()
        }
        Request::Endianness => match endian {
            Endian::Little => "OK little".into(),
            Endian::Big => "OK big".into(),
        },
        Request::ClockStep(None) => {
            // No device of vmm's runs a timer on the virtual clock.
            "FAIL cannot advance clock to the next deadline because there is no pending deadline"
                .into()
        }
        Request::ClockStep(Some(ns)) => {
            let now = board.vm.clock().unwrap_or_default();
            let to = now.saturating_add(ns);
            if to > now && board.vm.set_clock(to).is_ok() {
                format!("OK {to}")
            } else {
                "FAIL could not advance time".into()
            }
        }
        Request::ClockSet(ns) => {
            let now = board.vm.clock().unwrap_or_default();
            // The clock only moves forward; QEMU answers FAIL with where
            // it is when it cannot be where asked.
            if ns > now && board.vm.set_clock(ns).is_ok() {
                format!("OK {ns}")
            } else if ns == now {
                format!("OK {now}")
            } else {
                format!("FAIL {now}")
            }
        }
        Request::IrqIntercept { path, .. } | Request::SetIrqIn { path } => format!(
            "FAIL {path}: vmm's qtest does not reach interrupt lines yet (MSI-X messages land in guest memory, where the device was told to write them)"
        ),
        Request::Rtas {
            name,
            nargs,
            args,
            nret,
            ret,
        } => {
            if !matches!(board.platform, Platform::Spapr { .. }) {
                return format!("FAIL rtas {name}: this machine has no RTAS (sPAPR machines do)");
            }
            // RTAS cells are big-endian 32-bit words in guest memory.
            let argv: Vec<u32> = (0..u64::from(nargs))
                .map(|i| {
                    let mut b = [0; 4];
                    mem.read(args + 4 * i, &mut b);
                    u32::from_be_bytes(b)
                })
                .collect();
            match super::spapr::rtas(board, &name, &argv, nret as usize) {
                Some(rets) => {
                    for (i, r) in rets.iter().take(nret as usize).enumerate() {
                        mem.write(ret + 4 * i as u64, &r.to_be_bytes());
                    }
                    // QEMU answers H_SUCCESS; the call's status is in
                    // its first result.
                    "OK 0".into()
                }
                // QEMU answers H_PARAMETER (-4) as an unsigned number.
                None => {
                    log::debug!("qtest: no RTAS call '{name}'");
                    format!("OK {}", -4i64 as u64)
                }
            }
        }
    }
}

/// The guest-physical address space as a vCPU sees it: RAM, else MMIO.
struct Mem<'a> {
    board: &'a Board,
    q: &'a QtestVm,
}

impl Mem<'_> {
    fn read(&self, addr: u64, data: &mut [u8]) {
        if self.q.read_ram(addr, data) {
            return;
        }
        for (at, chunk) in pieces(addr, data.len()) {
            let buf = &mut data[chunk];
            if !self.q.read_ram(at, buf) && !self.board.buses.mmio.read(at, buf) {
                // Unassigned memory reads as zeros (QEMU's too).
                buf.fill(0);
            }
        }
    }

    fn write(&self, addr: u64, data: &[u8]) {
        if self.q.write_ram(addr, data) {
            return;
        }
        for (at, chunk) in pieces(addr, data.len()) {
            let buf = &data[chunk];
            if self.q.write_ram(at, buf) {
                continue;
            }
            if let Rang::No = self.q.ring_mmio(at) {
                if !self.board.buses.mmio.write(at, buf) {
                    log::debug!("qtest: write to unassigned memory {at:#x} dropped");
                }
            }
        }
    }
}

/// `len` bytes from `addr` as naturally aligned accesses of at most 8
/// bytes (how a CPU's accesses reach a device register).
fn pieces(addr: u64, len: usize) -> impl Iterator<Item = (u64, std::ops::Range<usize>)> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        if off >= len {
            return None;
        }
        let at = addr.wrapping_add(off as u64);
        let mut size = Width::Q.bytes();
        while size > 1 && (!at.is_multiple_of(size as u64) || size > len - off) {
            size /= 2;
        }
        let r = off..off + size;
        off += size;
        Some((at, r))
    })
}

#[cfg(test)]
mod tests {
    use super::pieces;

    #[test]
    fn bulk_accesses_split_into_aligned_pieces() {
        let p: Vec<_> = pieces(0x1003, 14).map(|(a, r)| (a, r.len())).collect();
        assert_eq!(p, vec![(0x1003, 1), (0x1004, 4), (0x1008, 8), (0x1010, 1)]);
        assert_eq!(pieces(0x1000, 0).count(), 0);
    }
}
