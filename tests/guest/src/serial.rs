//! COM1 (16550 at 0x3f8), polled: the console for results and the
//! host's commands.

use crate::io::{inb, outb};
use core::sync::atomic::{AtomicBool, Ordering};

const COM1: u16 = 0x3f8;
static LOCK: AtomicBool = AtomicBool::new(false);

pub fn init() {
    outb(COM1 + 1, 0x00); // no interrupts
    outb(COM1 + 3, 0x80); // DLAB
    outb(COM1, 0x01); // 115200
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8N1
    outb(COM1 + 2, 0x07); // FIFO on, cleared
    outb(COM1 + 4, 0x03); // DTR, RTS
}

/// Bytes that may still be written before LSR must be polled again: with
/// the FIFO on, THRE means the 16-byte transmit FIFO is empty. Every poll
/// is a VM exit, so this halves the exits per character.
static FIFO_ROOM: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

fn put(b: u8) {
    if FIFO_ROOM.load(Ordering::Relaxed) == 0 {
        let mut spins = 0u32;
        // Wait for THR empty, but never hang on a UART that does not answer.
        while inb(COM1 + 5) & 0x20 == 0 && spins < 100_000 {
            spins += 1;
        }
        FIFO_ROOM.store(16, Ordering::Relaxed);
    }
    FIFO_ROOM.fetch_sub(1, Ordering::Relaxed);
    outb(COM1, b);
}

/// A received byte, if any.
pub fn try_read() -> Option<u8> {
    if inb(COM1 + 5) & 1 != 0 {
        Some(inb(COM1))
    } else {
        None
    }
}

pub struct Console;

impl core::fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                put(b'\r');
            }
            put(b);
        }
        Ok(())
    }
}

/// Serialises whole lines from several CPUs.
pub fn with_lock<R>(f: impl FnOnce() -> R) -> R {
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    let r = f();
    LOCK.store(false, Ordering::Release);
    r
}

/// Forces the lock free: used by the fault reporter, which may interrupt a
/// CPU that holds it.
pub fn force_unlock() {
    LOCK.store(false, Ordering::Release);
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        $crate::serial::with_lock(|| {
            let _ = writeln!($crate::serial::Console, $($arg)*);
        })
    }};
}
