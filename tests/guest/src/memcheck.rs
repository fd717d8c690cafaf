//! The memory map against the RAM the VMM was given: totals, RAM above
//! 4 GiB, and every RAM range really readable and writable at both ends.

use crate::io::{read64, write64};
use crate::pvh::{E820, E820_RAM};
use crate::{paging, println, report};

extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

pub fn image_range() -> (u64, u64) {
    (
        core::ptr::addr_of!(__image_start) as u64,
        core::ptr::addr_of!(__image_end) as u64,
    )
}

/// `expected`: the `-m` size in bytes, from `mem=` on the command line.
pub fn check(map: &[E820], expected: Option<u64>) {
    let (img_lo, img_hi) = image_range();
    let (mut total, mut above_4g, mut ranges) = (0u64, 0u64, 0u32);
    let mut touch_ok = true;
    for e in map.iter().filter(|e| e.kind == E820_RAM && e.size != 0) {
        ranges += 1;
        total += e.size;
        let end = e.addr + e.size;
        if end > 1 << 32 {
            above_4g += end - e.addr.max(1 << 32);
        }
        if paging::map(e.addr, e.size).is_err() {
            println!("mem.map_failed addr={:#x}", e.addr);
            touch_ok = false;
            continue;
        }
        for page in [e.addr.next_multiple_of(4096), (end & !4095) - 4096] {
            if page < e.addr || page + 4096 > end || (page < img_hi && page + 4096 > img_lo) {
                continue;
            }
            let old = read64(page);
            let probe = 0x5a5a_0000_0000_0000 ^ page;
            write64(page, probe);
            let back = read64(page);
            write64(page, old);
            if back != probe {
                println!(
                    "mem.touch_failed addr={:#x} wrote={:#x} read={:#x}",
                    page, probe, back
                );
                touch_ok = false;
            }
        }
    }
    println!(
        "mem.ram_total={} mem.ram_above_4g={} mem.ranges={}",
        total, above_4g, ranges
    );
    report::check("mem.touch", touch_ok);
    if let Some(want) = expected {
        // Firmware holes (the 640K-1M area, BIOS/ACPI data) come out of RAM;
        // anything more than 4 MiB missing, or any RAM beyond -m, is wrong.
        let ok = total <= want && total + (4 << 20) >= want;
        println!(
            "mem.expected={} mem.missing={}",
            want,
            want as i64 - total as i64
        );
        report::check("mem.size", ok);
    }
}
