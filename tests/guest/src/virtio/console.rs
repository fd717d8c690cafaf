//! virtio-console, port 0 without MULTIPORT: one line on the transmit queue
//! (queue 1), which the host finds in its chardev.

use super::Dev;
use crate::alloc::alloc;
use crate::cmdline::Cmdline;
use crate::pci::BdfFmt;
use crate::{println, report};

pub fn test(dev: &Dev, cmd: &Cmdline) {
    let (Some(_rx), Some(mut tx), Some(buf)) = (dev.queue(0), dev.queue(1), alloc(128, 64)) else {
        report::check("virtio.console.write", false);
        return;
    };
    dev.driver_ok();
    let mut line = crate::pci::Buf::new();
    use core::fmt::Write;
    let _ = writeln!(
        line,
        "virtio-console hello from the test guest seed={}",
        cmd.u64("seed", 1)
    );
    let bytes = line.as_str().as_bytes();
    // SAFETY: buf is a fresh 128-byte DMA allocation; the line is shorter.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), buf as *mut u8, bytes.len()) };
    tx.push(&[(buf, bytes.len() as u32, false)]);
    dev.kick(1);
    let done = dev.wait_used(&mut tx).is_some();
    println!(
        "virtio.{}.console wrote={} completed={}",
        BdfFmt(dev.bdf),
        bytes.len(),
        done
    );
    report::check("virtio.console.write", done);
}
