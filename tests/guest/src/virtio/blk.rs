//! virtio-blk: capacity and queue count from config space, then write a
//! seeded pattern, flush, read it back and compare. The host can check the
//! same pattern in its image file (`blk_pattern` in the test harness).

use super::Dev;
use crate::alloc::alloc;
use crate::cmdline::Cmdline;
use crate::io::{read64, read8, write32, write64, write8};
use crate::pci::BdfFmt;
use crate::{println, report};

const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_MQ: u64 = 1 << 12;
pub const FEATURES: u64 = F_RO | F_BLK_SIZE | F_FLUSH | F_MQ;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;

/// The word the guest writes at `word` of `sector` (splitmix64).
pub fn pattern(seed: u64, sector: u64, word: u64) -> u64 {
    let mut z = seed ^ (sector << 16) ^ word;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Req {
    hdr: u64,
    data: u64,
    status: u64,
}

fn request(dev: &Dev, q: &mut super::Queue, r: &Req, ty: u32, sector: u64, len: u32) -> Option<u8> {
    write32(r.hdr, ty);
    write32(r.hdr + 4, 0);
    write64(r.hdr + 8, sector);
    write8(r.status, 0xff);
    if ty == T_FLUSH {
        q.push(&[(r.hdr, 16, false), (r.status, 1, true)]);
    } else {
        q.push(&[
            (r.hdr, 16, false),
            (r.data, len, ty == T_IN),
            (r.status, 1, true),
        ]);
    }
    dev.kick(q.index);
    dev.wait_used(q).map(|_| read8(r.status))
}

pub fn test(dev: &Dev, cmd: &Cmdline) {
    let capacity = dev.t.config64(0);
    let queues = if dev.features & F_MQ != 0 {
        dev.t.config16(34)
    } else {
        1
    };
    let ro = dev.features & F_RO != 0;
    println!(
        "virtio.{}.blk capacity_sectors={} num_queues={} read_only={} flush={} transport_queues={}",
        BdfFmt(dev.bdf),
        capacity,
        queues,
        ro,
        dev.features & F_FLUSH != 0,
        dev.t.num_queues()
    );
    let sectors = 8u64;
    let sector = cmd
        .u64("blk_sector", 2048)
        .min(capacity.saturating_sub(sectors));
    let seed = cmd.u64("seed", 1);
    let (Some(mut q), Some(hdr), Some(data), Some(status)) = (
        dev.queue(0),
        alloc(16, 16),
        alloc(sectors as usize * 512, 4096),
        alloc(1, 1),
    ) else {
        report::check("virtio.blk.io", false);
        return;
    };
    dev.driver_ok();
    let r = Req { hdr, data, status };
    let len = (sectors * 512) as u32;
    if ro {
        let st = request(dev, &mut q, &r, T_IN, sector, len);
        println!("virtio.{}.blk read status={:?}", BdfFmt(dev.bdf), st);
        report::check("virtio.blk.io", st == Some(0));
        return;
    }
    for s in 0..sectors {
        for w in 0..64 {
            write64(data + s * 512 + w * 8, pattern(seed, sector + s, w));
        }
    }
    let wst = request(dev, &mut q, &r, T_OUT, sector, len);
    let fst = if dev.features & F_FLUSH != 0 {
        request(dev, &mut q, &r, T_FLUSH, 0, 0)
    } else {
        Some(0)
    };
    for w in 0..(sectors * 64) {
        write64(data + w * 8, 0);
    }
    let rst = request(dev, &mut q, &r, T_IN, sector, len);
    let mut bad = 0;
    for s in 0..sectors {
        for w in 0..64 {
            if read64(data + s * 512 + w * 8) != pattern(seed, sector + s, w) {
                bad += 1;
            }
        }
    }
    println!(
        "virtio.{}.blk sector={} sectors={} write={:?} flush={:?} read={:?} bad_words={}",
        BdfFmt(dev.bdf),
        sector,
        sectors,
        wst,
        fst,
        rst,
        bad
    );
    report::check(
        "virtio.blk.io",
        wst == Some(0) && fst == Some(0) && rst == Some(0) && bad == 0,
    );
}
