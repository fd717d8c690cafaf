//! Why a vCPU left `KVM_RUN`, read from its shared `kvm_run` page, and
//! the answer written back before the next `KVM_RUN`: an MMIO read's
//! bytes, a hypercall's return code and registers. Plain bytes in and
//! out (host order, as the kernel shares them), so it is tested on any
//! host; `sys` maps the page.

use crate::uapi::*;

/// What a vCPU came back for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunExit {
    /// A guest access to an address that is no RAM: `len` bytes, `data`
    /// holding a write's.
    Mmio {
        addr: u64,
        len: usize,
        write: Option<[u8; 8]>,
    },
    /// A PAPR hypercall KVM leaves to userspace: r3 and r4..r12.
    Hcall {
        opcode: u64,
        args: [u64; 9],
    },
    /// A signal interrupted `KVM_RUN`.
    Intr,
    Shutdown,
    /// `KVM_EXIT_SYSTEM_EVENT` of this type.
    SystemEvent(u32),
    InternalError,
    FailEntry(u64),
    Other(u32),
}

fn u32_at(run: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(run[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(run: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(run[at..at + 8].try_into().expect("8 bytes"))
}

/// How much of `kvm_run` this reads and writes.
pub const RUN_BYTES: usize = KVM_RUN_EXIT_OFFSET + 16 + 9 * 8;

/// The exit `run` (at least [`RUN_BYTES`] of `kvm_run`) describes.
pub fn decode(run: &[u8]) -> RunExit {
    let at = KVM_RUN_EXIT_OFFSET;
    match u32_at(run, KVM_RUN_EXIT_REASON_OFFSET) {
        KVM_EXIT_MMIO => {
            let len = (u32_at(run, KVM_RUN_MMIO_LEN) as usize).min(8);
            let data: [u8; 8] = run[KVM_RUN_MMIO_DATA..KVM_RUN_MMIO_DATA + 8]
                .try_into()
                .expect("8 bytes");
            RunExit::Mmio {
                addr: u64_at(run, at),
                len,
                write: (run[KVM_RUN_MMIO_IS_WRITE] != 0).then_some(data),
            }
        }
        KVM_EXIT_PAPR_HCALL => RunExit::Hcall {
            opcode: u64_at(run, at),
            args: std::array::from_fn(|i| u64_at(run, at + 16 + 8 * i)),
        },
        KVM_EXIT_INTR => RunExit::Intr,
        KVM_EXIT_SHUTDOWN => RunExit::Shutdown,
        // `system_event.type` is the union's first word.
        KVM_EXIT_SYSTEM_EVENT => RunExit::SystemEvent(u32_at(run, at)),
        KVM_EXIT_INTERNAL_ERROR => RunExit::InternalError,
        KVM_EXIT_FAIL_ENTRY => RunExit::FailEntry(u64_at(run, at)),
        other => RunExit::Other(other),
    }
}

/// An MMIO read's answer: its bytes, for the guest's register.
pub fn complete_mmio_read(run: &mut [u8], data: &[u8]) {
    let n = data.len().min(8);
    run[KVM_RUN_MMIO_DATA..KVM_RUN_MMIO_DATA + n].copy_from_slice(&data[..n]);
}

/// A hypercall's answer: r3, and r4..r12 as the call left them.
pub fn complete_hcall(run: &mut [u8], ret: i64, args: &[u64; 9]) {
    let at = KVM_RUN_EXIT_OFFSET;
    run[at + 8..at + 16].copy_from_slice(&ret.to_ne_bytes());
    for (i, a) in args.iter().enumerate() {
        run[at + 16 + 8 * i..at + 24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(reason: u32) -> Vec<u8> {
        let mut run = vec![0u8; RUN_BYTES];
        run[8..12].copy_from_slice(&reason.to_ne_bytes());
        run
    }

    #[test]
    fn an_mmio_write_and_a_read_answered() {
        let mut run = page(KVM_EXIT_MMIO);
        run[32..40].copy_from_slice(&0x2000_8000_0010u64.to_ne_bytes());
        run[40..44].copy_from_slice(&[1, 2, 3, 4]);
        run[48..52].copy_from_slice(&4u32.to_ne_bytes());
        run[52] = 1;
        assert_eq!(
            decode(&run),
            RunExit::Mmio {
                addr: 0x2000_8000_0010,
                len: 4,
                write: Some([1, 2, 3, 4, 0, 0, 0, 0])
            }
        );
        run[52] = 0;
        assert!(matches!(decode(&run), RunExit::Mmio { write: None, .. }));
        complete_mmio_read(&mut run, &[9, 8]);
        assert_eq!(run[40..42], [9, 8]);
    }

    /// H_PUT_TERM_CHAR in, H_SUCCESS and the registers back where KVM
    /// copies them to r3 and r4 on.
    #[test]
    fn a_hypercall_and_its_answer() {
        let mut run = page(KVM_EXIT_PAPR_HCALL);
        run[32..40].copy_from_slice(&0x58u64.to_ne_bytes());
        for i in 0..9u64 {
            let at = 48 + 8 * i as usize;
            run[at..at + 8].copy_from_slice(&(100 + i).to_ne_bytes());
        }
        let RunExit::Hcall { opcode, mut args } = decode(&run) else {
            panic!("not a hypercall: {:?}", decode(&run));
        };
        assert_eq!((opcode, args[0], args[8]), (0x58, 100, 108));
        args[0] = 7;
        complete_hcall(&mut run, -4, &args);
        assert_eq!(run[40..48], (-4i64).to_ne_bytes());
        assert_eq!(run[48..56], 7u64.to_ne_bytes());
    }

    #[test]
    fn the_other_exits() {
        assert_eq!(decode(&page(KVM_EXIT_INTR)), RunExit::Intr);
        assert_eq!(decode(&page(KVM_EXIT_SHUTDOWN)), RunExit::Shutdown);
        assert_eq!(decode(&page(99)), RunExit::Other(99));
        let mut run = page(KVM_EXIT_SYSTEM_EVENT);
        run[32..36].copy_from_slice(&2u32.to_ne_bytes());
        assert_eq!(decode(&run), RunExit::SystemEvent(2));
    }
}
