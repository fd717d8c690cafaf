//! Results: `key=value` lines, a count of failed checks, and the final
//! `RESULT PASS` / `RESULT FAIL reason=...` with the exit.
//!
//! Exit: the isa-debug-exit port (QEMU's `-device isa-debug-exit,iobase=0xf4`:
//! the process exits with `(value << 1) | 1`, so 1 = pass, 3 = fail), then
//! ACPI S5 through the FADT's PM1 control block as a fallback.

use crate::io::{outl, outw, pause};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

static FAILURES: AtomicU32 = AtomicU32::new(0);
/// PM1a control port and SLP_TYPa for S5, filled from ACPI (0 = unknown).
pub static PM1A_CNT: AtomicU64 = AtomicU64::new(0);
/// PM1a event block (status, enable), for the power button.
pub static PM1A_EVT: AtomicU32 = AtomicU32::new(0);
pub static S5_SLP_TYP: AtomicU32 = AtomicU32::new(0);
/// HW-reduced ACPI sleep control register: address, and 1 = I/O, 0 = MMIO
/// in bit 63 (0 = none).
pub static SLEEP_CONTROL: AtomicU64 = AtomicU64::new(0);
/// Exit port, `exit_port=` on the command line (0 = none).
pub static EXIT_PORT: AtomicU32 = AtomicU32::new(0xf4);

/// Records one check: prints `check.NAME=ok` or `check.NAME=FAIL`.
pub fn check(name: &str, ok: bool) -> bool {
    if ok {
        crate::println!("check.{}=ok", name);
    } else {
        FAILURES.fetch_add(1, Ordering::SeqCst);
        crate::println!("check.{}=FAIL", name);
    }
    ok
}

pub fn failures() -> u32 {
    FAILURES.load(Ordering::SeqCst)
}

/// Prints the verdict and leaves the VM. Never returns.
pub fn finish(reason: Option<&str>) -> ! {
    let failed = failures();
    match (reason, failed) {
        (None, 0) => crate::println!("RESULT PASS"),
        (Some(r), _) => crate::println!("RESULT FAIL reason={}", r),
        (None, n) => crate::println!("RESULT FAIL reason=checks_failed count={}", n),
    }
    let code = if reason.is_none() && failed == 0 {
        0
    } else {
        1
    };
    exit(code)
}

pub fn exit(code: u32) -> ! {
    let port = EXIT_PORT.load(Ordering::SeqCst);
    if port != 0 {
        outl(port as u16, code);
    }
    poweroff()
}

/// Whether the ACPI power button was pressed (PWRBTN_STS); clears it.
pub fn power_button_pressed() -> bool {
    let port = PM1A_EVT.load(Ordering::Relaxed) as u16;
    if port == 0 || crate::io::inw(port) & (1 << 8) == 0 {
        return false;
    }
    crate::io::outw(port, 1 << 8); // write-one-to-clear
    true
}

/// Resets the platform through the reset control register (0xCF9, which
/// the FADT's RESET_REG names on q35 boards).
pub fn reset() -> ! {
    crate::println!("reset: writing 0x06 to port 0xcf9");
    crate::io::outb(0xcf9, 0x06);
    crate::println!("reset: the platform did not reset");
    loop {
        pause();
    }
}

/// ACPI S5; spins if the platform does not take it.
pub fn poweroff() -> ! {
    let pm1a = PM1A_CNT.load(Ordering::SeqCst);
    if pm1a != 0 {
        let typ = S5_SLP_TYP.load(Ordering::SeqCst) as u16;
        outw(pm1a as u16, (typ << 10) | (1 << 13));
    }
    let sc = SLEEP_CONTROL.load(Ordering::SeqCst);
    if sc != 0 {
        let typ = S5_SLP_TYP.load(Ordering::SeqCst) as u8;
        let v = ((typ & 7) << 2) | (1 << 5);
        let addr = sc & !(1 << 63);
        if sc >> 63 == 1 {
            crate::io::outb(addr as u16, v);
        } else {
            crate::io::write8(addr, v);
        }
    }
    crate::println!("exit: the platform did not power off");
    loop {
        pause();
    }
}
