//! virtio-rng: one device-writable buffer, which must come back filled.

use super::Dev;
use crate::alloc::alloc;
use crate::io::read8;
use crate::pci::BdfFmt;
use crate::{println, report};

pub fn test(dev: &Dev) {
    let (Some(mut q), Some(buf)) = (dev.queue(0), alloc(64, 64)) else {
        report::check("virtio.rng.read", false);
        return;
    };
    dev.driver_ok();
    q.push(&[(buf, 64, true)]);
    dev.kick(0);
    let used = dev.wait_used(&mut q);
    let len = used.map(|u| u.1).unwrap_or(0);
    let nonzero = (0..len.min(64) as u64)
        .filter(|&i| read8(buf + i) != 0)
        .count();
    println!(
        "virtio.{}.rng bytes={} nonzero={}",
        BdfFmt(dev.bdf),
        len,
        nonzero
    );
    report::check("virtio.rng.read", len > 0 && nonzero > 0);
}
