//! The qtest client's requests, served on the board (`-accel qtest`): the
//! port and memory accesses a vCPU would make, through the same buses;
//! RAM through the board's guest memory, doorbells first as KVM's
//! ioeventfds would take them.

use super::board::{Board, Platform};
use crate::qtest::protocol::{to_base64, to_hex, Request};
use crate::qtest::{Call, QtestVm};
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
        if arch.board().big_endian {
            Endian::Big
        } else {
            Endian::Little
        }
    }
}

/// What becomes of a request in the VM's state.
enum Turn {
    Serve,
    /// Until the state changes: a write now could escape the migration
    /// (its last pass, or the stream being loaded, would not see it).
    Hold,
    /// The guest runs on the migration's destination now.
    Refuse,
}

fn turn(request: &Request, status: RunState, handed_over: bool) -> Turn {
    if matches!(request, Request::Endianness) {
        return Turn::Serve;
    }
    if handed_over {
        return Turn::Refuse;
    }
    match status {
        RunState::InMigrate | RunState::FinishMigrate => Turn::Hold,
        _ => Turn::Serve,
    }
}

/// Serves the waiting requests in order, up to the first that must wait
/// (QEMU serves every request at once; vmm holds those that touch the
/// guest while a migration takes or gives its state).
pub(super) fn serve(
    board: &Board,
    endian: Endian,
    status: RunState,
    handed_over: bool,
    waiting: &mut VecDeque<Call>,
) {
    while let Some(call) = waiting.front() {
        let reply = match turn(&call.request, status, handed_over) {
            Turn::Hold => return,
            Turn::Refuse => {
                "FAIL the guest has moved to its migration's destination: nothing runs here".into()
            }
            Turn::Serve => execute(board, endian, &call.request),
        };
        let call = waiting.pop_front().expect("the front");
        call.answer(reply);
    }
}

fn execute(board: &Board, endian: Endian, request: &Request) -> String {
    let Some(q) = board.vm.qtest() else {
        return "FAIL this VM is not run by the qtest accelerator".into();
    };
    let mem = Mem { board, q };
    match *request {
        Request::Out { width, port, value } => {
            let bytes = u64::from(value).to_le_bytes();
            let data = &bytes[..width.bytes()];
            if !q.ring_pio(port, data) {
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
            let n = width.bytes();
            let v = width.truncate(value);
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
        Request::WriteBuf { addr, ref data } => {
            mem.write(addr, data);
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
            match u64::try_from(ns).ok().and_then(|ns| now.checked_add(ns)) {
                Some(to) if to > now && board.vm.set_clock(to).is_ok() => format!("OK {to}"),
                _ => "FAIL could not advance time".into(),
            }
        }
        Request::ClockSet(ns) => {
            let now = board.vm.clock().unwrap_or_default();
            // The clock only moves forward; QEMU answers FAIL with where
            // it is when it cannot be where asked.
            match u64::try_from(ns) {
                Ok(to) if to > now && board.vm.set_clock(to).is_ok() => format!("OK {to}"),
                Ok(to) if to == now => format!("OK {now}"),
                _ => format!("FAIL {now}"),
            }
        }
        Request::IrqIntercept { ref path, .. } | Request::SetIrqIn { ref path } => format!(
            "FAIL {path}: vmm's qtest does not reach interrupt lines yet (MSI-X messages land in guest memory, where the device was told to write them)"
        ),
        Request::Rtas {
            ref name,
            nargs,
            args,
            nret,
            ret,
        } => {
            let Platform::Spapr(papr) = &board.platform else {
                return format!("FAIL rtas {name}: this machine has no RTAS (sPAPR machines do)");
            };
            if super::spapr::rtas_in_memory(papr, 0, name, nargs, args, nret, ret) {
                // QEMU answers H_SUCCESS; the call's status is in its
                // first result.
                "OK 0".into()
            } else {
                // QEMU answers H_PARAMETER (-4) as an unsigned number.
                format!("OK {}", -4i64 as u64)
            }
        }
        Request::Hcall { opcode, ref args } => {
            let Platform::Spapr(papr) = &board.platform else {
                return format!("FAIL hcall {opcode:#x}: this machine has no hypercalls (sPAPR machines do)");
            };
            let mut regs = [0u64; 9];
            regs[..args.len()].copy_from_slice(args);
            let r3 = super::spapr::hcall(papr, 0, opcode, &mut regs);
            let regs: Vec<String> = regs.iter().map(|r| format!("{r:#x}")).collect();
            format!("OK {:#x} {}", r3 as u64, regs.join(" "))
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
            if self.q.write_ram(at, buf) || self.q.ring_mmio(at) {
                continue;
            }
            if !self.board.buses.mmio.write(at, buf) {
                log::debug!("qtest: write to unassigned memory {at:#x} dropped");
            }
        }
    }
}

/// The widest access a device register takes (PCI configuration space,
/// virtio's registers): wider ones are split, as QEMU splits by a region's
/// largest access size.
const MAX_MMIO_ACCESS: usize = 4;

/// `len` bytes from `addr` as naturally aligned accesses of at most
/// [`MAX_MMIO_ACCESS`] bytes (how a CPU's accesses reach a register).
fn pieces(addr: u64, len: usize) -> impl Iterator<Item = (u64, std::ops::Range<usize>)> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        if off >= len {
            return None;
        }
        let at = addr.wrapping_add(off as u64);
        let mut size = MAX_MMIO_ACCESS;
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
    use super::*;
    use crate::qtest::protocol::Width;

    #[test]
    fn bulk_accesses_split_into_aligned_register_accesses() {
        let p: Vec<_> = pieces(0x1003, 14).map(|(a, r)| (a, r.len())).collect();
        assert_eq!(
            p,
            vec![
                (0x1003, 1),
                (0x1004, 4),
                (0x1008, 4),
                (0x100c, 4),
                (0x1010, 1)
            ]
        );
        assert_eq!(pieces(0x1000, 0).count(), 0);
        // An 8-byte read of a register is two 4-byte ones.
        assert_eq!(pieces(0x2000, 8).count(), 2);
    }

    #[test]
    fn requests_wait_only_while_a_migration_takes_or_gives_the_state() {
        let read = Request::Read {
            width: Width::L,
            addr: 0,
        };
        let serves = |r: &Request, s, h| matches!(turn(r, s, h), Turn::Serve);
        // libqtest's first request, on a VM waiting for its stream.
        assert!(serves(&Request::Endianness, RunState::InMigrate, false));
        assert!(matches!(
            turn(&read, RunState::InMigrate, false),
            Turn::Hold
        ));
        assert!(matches!(
            turn(&read, RunState::FinishMigrate, false),
            Turn::Hold
        ));
        for s in [
            RunState::Running,
            RunState::Paused,
            RunState::Prelaunch,
            RunState::PostMigrate,
        ] {
            assert!(serves(&read, s, false), "{s}");
        }
        assert!(matches!(
            turn(&read, RunState::PostMigrate, true),
            Turn::Refuse
        ));
    }
}
