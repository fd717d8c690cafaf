//! virtio-blk: capacity and queue count from config space, then write a
//! seeded pattern, flush, read it back and compare. The host can check the
//! same pattern in its image file (`blk_pattern` in the test harness).

use super::Dev;
use crate::alloc::alloc;
use crate::clock;
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

/// Queues the driver sets up at most.
const MAX_QUEUES: usize = 16;

/// Writes 8 sectors of the pattern at `sector` through `q`, flushes, reads
/// them back; true if every step succeeded and the data came back.
fn write_read(dev: &Dev, q: &mut super::Queue, r: &Req, seed: u64, sector: u64) -> bool {
    let sectors = 8u64;
    let len = (sectors * 512) as u32;
    for s in 0..sectors {
        for w in 0..64 {
            write64(r.data + s * 512 + w * 8, pattern(seed, sector + s, w));
        }
    }
    let wst = request(dev, q, r, T_OUT, sector, len);
    let fst = if dev.features & F_FLUSH != 0 {
        request(dev, q, r, T_FLUSH, 0, 0)
    } else {
        Some(0)
    };
    for w in 0..(sectors * 64) {
        write64(r.data + w * 8, 0);
    }
    let rst = request(dev, q, r, T_IN, sector, len);
    let mut bad = 0;
    for s in 0..sectors {
        for w in 0..64 {
            if read64(r.data + s * 512 + w * 8) != pattern(seed, sector + s, w) {
                bad += 1;
            }
        }
    }
    println!(
        "virtio.{}.blk queue={} sector={} sectors={} write={:?} flush={:?} read={:?} bad_words={}",
        BdfFmt(dev.bdf),
        q.index,
        sector,
        sectors,
        wst,
        fst,
        rst,
        bad
    );
    wst == Some(0) && fst == Some(0) && rst == Some(0) && bad == 0
}

/// `blk_mb=N`: N MiB of the pattern from `blk_big_sector`, written in
/// 256 KiB requests, flushed, read back and compared word by word.
fn big(dev: &Dev, q: &mut super::Queue, cmd: &Cmdline, capacity: u64) -> bool {
    const CHUNK: u64 = 256 * 1024;
    let mb = cmd.u64("blk_mb", 0);
    let seed = cmd.u64("seed", 1);
    let start = cmd.u64("blk_big_sector", 8192);
    let (Some(hdr), Some(data), Some(status)) =
        (alloc(16, 16), alloc(CHUNK as usize, 4096), alloc(1, 1))
    else {
        return false;
    };
    let r = Req { hdr, data, status };
    let chunks = (mb << 20) / CHUNK;
    let per = CHUNK / 512;
    if start + chunks * per > capacity {
        println!(
            "virtio.{}.blk big_mb={} does_not_fit capacity={}",
            BdfFmt(dev.bdf),
            mb,
            capacity
        );
        return false;
    }
    let t0 = clock::now_ns(0);
    let mut errors = 0u32;
    for c in 0..chunks {
        let sector = start + c * per;
        for s in 0..per {
            for w in 0..64 {
                write64(data + s * 512 + w * 8, pattern(seed, sector + s, w));
            }
        }
        if request(dev, q, &r, T_OUT, sector, CHUNK as u32) != Some(0) {
            errors += 1;
        }
    }
    if dev.features & F_FLUSH != 0 && request(dev, q, &r, T_FLUSH, 0, 0) != Some(0) {
        errors += 1;
    }
    let t1 = clock::now_ns(0);
    let mut bad = 0u64;
    for c in 0..chunks {
        let sector = start + c * per;
        if request(dev, q, &r, T_IN, sector, CHUNK as u32) != Some(0) {
            errors += 1;
        }
        for s in 0..per {
            for w in 0..64 {
                if read64(data + s * 512 + w * 8) != pattern(seed, sector + s, w) {
                    bad += 1;
                }
            }
        }
    }
    let t2 = clock::now_ns(0);
    println!(
        "virtio.{}.blk big_mb={} sector={} errors={} bad_words={} write_ms={} read_ms={}",
        BdfFmt(dev.bdf),
        mb,
        start,
        errors,
        bad,
        (t1 - t0) / 1_000_000,
        (t2 - t1) / 1_000_000
    );
    errors == 0 && bad == 0
}

/// `blk_bench=1`: sequential write and read of `bench_mb` MiB in 1 MiB
/// requests, then 4 KiB random reads for `bench_ms` with `bench_qd`
/// requests in flight. Throughput as the guest sees it.
fn bench(dev: &Dev, q: &mut super::Queue, cmd: &Cmdline, capacity: u64) {
    const SEQ: u64 = 1 << 20;
    const QD_MAX: usize = 32;
    let mb = cmd.u64("bench_mb", 64).min((capacity * 512) >> 20);
    let ms = cmd.u64("bench_ms", 2000);
    let qd = (cmd.u64("bench_qd", 8) as usize).clamp(1, QD_MAX);
    let (Some(hdr), Some(data), Some(status)) =
        (alloc(16, 16), alloc(SEQ as usize, 4096), alloc(1, 1))
    else {
        return;
    };
    let r = Req { hdr, data, status };
    let n = (mb << 20) / SEQ;
    let mut seq = |ty: u32| {
        let t0 = clock::now_ns(0);
        let mut ok = true;
        for i in 0..n {
            ok &= request(dev, q, &r, ty, i * (SEQ / 512), SEQ as u32) == Some(0);
        }
        let dt = (clock::now_ns(0) - t0).max(1);
        (ok, (n * SEQ) * 1000 / dt) // MB/s (bytes per µs)
    };
    let (wok, wmbs) = seq(T_OUT);
    let (rok, rmbs) = seq(T_IN);
    // Random 4 KiB reads, `qd` in flight.
    let mut reqs: [Option<Req>; QD_MAX] = Default::default();
    for slot in reqs.iter_mut().take(qd) {
        *slot = match (alloc(16, 16), alloc(4096, 4096), alloc(1, 1)) {
            (Some(hdr), Some(data), Some(status)) => Some(Req { hdr, data, status }),
            _ => None,
        };
    }
    let blocks = (capacity / 8).max(1);
    let mut x = cmd.u64("seed", 1) | 1;
    let mut next_sector = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % blocks) * 8
    };
    let post = |q: &mut super::Queue, r: &Req, sector: u64| -> u16 {
        write32(r.hdr, T_IN);
        write32(r.hdr + 4, 0);
        write64(r.hdr + 8, sector);
        write8(r.status, 0xff);
        q.push(&[
            (r.hdr, 16, false),
            (r.data, 4096, true),
            (r.status, 1, true),
        ])
    };
    let mut heads = [0u16; QD_MAX];
    let mut posted = 0;
    for (i, r) in reqs.iter().enumerate().take(qd) {
        if let Some(r) = r {
            heads[i] = post(q, r, next_sector());
            posted += 1;
        }
    }
    dev.kick(q.index);
    let t0 = clock::now_ns(0);
    let (mut done, mut errors) = (0u64, 0u64);
    while posted > 0 {
        let Some((id, _)) = dev.wait_used(q) else {
            errors += 1;
            break;
        };
        posted -= 1;
        done += 1;
        let Some(i) = heads.iter().take(qd).position(|&h| h as u32 == id) else {
            errors += 1;
            break;
        };
        let Some(r) = &reqs[i] else { break };
        if read8(r.status) != 0 {
            errors += 1;
        }
        if clock::now_ns(0) - t0 < ms * 1_000_000 {
            heads[i] = post(q, r, next_sector());
            posted += 1;
            dev.kick(q.index);
        }
    }
    let dt = (clock::now_ns(0) - t0).max(1);
    println!(
        "virtio.{}.blk.bench seq_mb={} seq_write_mbs={} seq_read_mbs={} rand_qd={} rand_read_iops={} rand_reads={} errors={}",
        BdfFmt(dev.bdf),
        mb,
        wmbs,
        rmbs,
        qd,
        done * 1_000_000_000 / dt,
        done,
        errors + (!wok) as u64 + (!rok) as u64
    );
    report::check("virtio.blk.bench", wok && rok && errors == 0);
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
    let nq = (queues as usize).clamp(1, MAX_QUEUES);
    let mut qs: [Option<super::Queue>; MAX_QUEUES] = Default::default();
    for (i, slot) in qs.iter_mut().enumerate().take(nq) {
        *slot = dev.queue(i as u16);
    }
    let seed = cmd.u64("seed", 1);
    let (Some(hdr), Some(data), Some(status)) = (alloc(16, 16), alloc(8 * 512, 4096), alloc(1, 1))
    else {
        report::check("virtio.blk.io", false);
        return;
    };
    if qs.iter().take(nq).any(Option::is_none) {
        report::check("virtio.blk.io", false);
        return;
    }
    dev.driver_ok();
    let r = Req { hdr, data, status };
    if ro {
        let Some(q) = qs[0].as_mut() else { return };
        let st = request(dev, q, &r, T_IN, 0, 4096);
        println!("virtio.{}.blk read status={:?}", BdfFmt(dev.bdf), st);
        report::check("virtio.blk.io", st == Some(0));
        let wst = request(dev, q, &r, T_OUT, 0, 4096);
        println!(
            "virtio.{}.blk write_read_only status={:?}",
            BdfFmt(dev.bdf),
            wst
        );
        report::check("virtio.blk.read_only_refused", wst == Some(1));
        return;
    }
    // Every queue carries a request: 8 sectors each, side by side.
    let base = cmd
        .u64("blk_sector", 2048)
        .min(capacity.saturating_sub(8 * nq as u64));
    let mut used = 0;
    for (i, q) in qs.iter_mut().enumerate().take(nq) {
        if let Some(q) = q {
            if write_read(dev, q, &r, seed, base + 8 * i as u64) {
                used += 1;
            }
        }
    }
    println!(
        "virtio.{}.blk queues_used={} of={}",
        BdfFmt(dev.bdf),
        used,
        nq
    );
    report::check("virtio.blk.io", used == nq);
    let Some(q0) = qs[0].as_mut() else { return };
    if cmd.u64("blk_mb", 0) > 0 {
        report::check("virtio.blk.big", big(dev, q0, cmd, capacity));
    }
    if cmd.flag("blk_bench") {
        bench(dev, q0, cmd, capacity);
    }
}
