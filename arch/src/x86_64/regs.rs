//! Initial vCPU registers for the 32-bit entries: 32-bit protected mode,
//! flat segments (CS 0x10, data 0x18), paging off. PVH passes start_info in
//! %ebx; Linux's 32-bit boot protocol passes the zero page in %esi. Both
//! ABIs want exactly this state.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};

fn flat(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// General registers for a 32-bit entry point.
pub fn boot_regs(entry: u64, rbx: u64, rsi: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rbx,
        rsi,
        rflags: 0x2,
        ..Default::default()
    }
}

/// Special registers for a 32-bit entry point, based on the vCPU's current
/// ones (KVM's reset state).
pub fn boot_sregs(mut s: kvm_sregs) -> kvm_sregs {
    s.cs = flat(0x10, 0xb); // execute/read, accessed
    let data = flat(0x18, 0x3); // read/write, accessed
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = kvm_segment {
        base: 0,
        limit: 0x67,
        selector: 0x20,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
    s.ldt = kvm_segment {
        unusable: 1,
        type_: 2,
        present: 1,
        ..Default::default()
    };
    s.cr0 = 0x11; // PE | ET
    s.cr4 = 0;
    s.efer = 0;
    s
}

/// FPU state after FNINIT, with the default MXCSR.
pub fn fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}
