//! Workloads, chosen with `work=` on the command line:
//!
//! * `mem`: fill `mem_mb` MiB (or `mem_pages` pages) with a pattern derived from `seed`, the page
//!   number and the page's generation, then keep rewriting pages (each CPU
//!   its own, at `mem_rate` pages/s per CPU or as fast as it can), bumping
//!   the page's generation each time. A verify (every `verify_ms`, on `v`
//!   from the host on the serial console, and at the end) checks every page
//!   holds what its generation explains; a page that does not is reported
//!   with its address. This is what judges a migration.
//! * `avx`: YMM registers holding a pattern (`avx.rs`), checked with memory.
//! * `counter`: `tick` lines every `tick_ms` with the clock, which must
//!   never go backwards nor stall for more than `max_gap_ms`.
//!
//! The run ends after `duration_ms`, or on `q` from the host. Other
//! console commands: `v` verify now, `a` re-check the ACPI tables, `s`
//! print statistics. The ACPI power button ends the run with S5.

use crate::cmdline::Cmdline;
use crate::io::{read32, read64, write32, write64};
use crate::pvh::{E820, E820_RAM};
use crate::{clock, memcheck, paging, println, report, serial, smp};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

static BASE: AtomicU64 = AtomicU64::new(0);
static GENS: AtomicU64 = AtomicU64::new(0);
static PAGES: AtomicU64 = AtomicU64::new(0);
static SEED: AtomicU64 = AtomicU64::new(0);
static RATE: AtomicU64 = AtomicU64::new(0);
static NCPU: AtomicU32 = AtomicU32::new(1);
static GO: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);
static FILLED: AtomicU32 = AtomicU32::new(0);
static EPOCH: AtomicU64 = AtomicU64::new(0);
static ACKS: AtomicU32 = AtomicU32::new(0);
static BAD: AtomicU64 = AtomicU64::new(0);
static WRITES: AtomicU64 = AtomicU64::new(0);

const PAGE: u64 = 4096;

/// The first word of `page` at generation `gen`; word w is this ^ w*K.
fn page_base(seed: u64, page: u64, gen: u32) -> u64 {
    let mut z = seed ^ (page << 20) ^ ((gen as u64) << 52);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
const K: u64 = 0x9e37_79b9_7f4a_7c15;

fn write_page(p: u64, gen: u32) {
    let (base, seed) = (BASE.load(Ordering::Relaxed), SEED.load(Ordering::Relaxed));
    let addr = base + p * PAGE;
    let b = page_base(seed, p, gen);
    for w in 0..PAGE / 8 {
        write64(addr + w * 8, b ^ w.wrapping_mul(K));
    }
    write32(GENS.load(Ordering::Relaxed) + p * 4, gen);
}

/// Checks the pages of `cpu`; returns the number of bad pages.
fn verify_own(cpu: u64) -> u64 {
    let (base, seed, pages) = (
        BASE.load(Ordering::Relaxed),
        SEED.load(Ordering::Relaxed),
        PAGES.load(Ordering::Relaxed),
    );
    let (gens, n) = (
        GENS.load(Ordering::Relaxed),
        NCPU.load(Ordering::Relaxed) as u64,
    );
    let mut bad = 0;
    let mut p = cpu;
    while p < pages {
        let gen = read32(gens + p * 4);
        let addr = base + p * PAGE;
        let b = page_base(seed, p, gen);
        for w in 0..PAGE / 8 {
            let got = read64(addr + w * 8);
            let want = b ^ w.wrapping_mul(K);
            if got != want {
                if bad < 8 {
                    println!(
                        "mem.bad addr={:#x} page={} gen={} word={} expected={:#x} got={:#x} cpu={}",
                        addr + w * 8,
                        p,
                        gen,
                        w,
                        want,
                        got,
                        cpu
                    );
                }
                bad += 1;
                break;
            }
        }
        p += n;
    }
    bad
}

/// Writer loop of one CPU; returns when STOP is set (after acking it).
fn writer(cpu: u64, bsp_poll: &mut dyn FnMut() -> bool) {
    let (pages, n) = (
        PAGES.load(Ordering::Relaxed),
        NCPU.load(Ordering::Relaxed) as u64,
    );
    let gens = GENS.load(Ordering::Relaxed);
    let mut p = cpu;
    while p < pages {
        write_page(p, 1);
        p += n;
    }
    FILLED.fetch_add(1, Ordering::SeqCst);
    let rate = RATE.load(Ordering::Relaxed);
    let t0 = clock::now_ns(cpu as usize);
    let (mut mine, mut epoch, mut p) = (0u64, 0u64, cpu);
    loop {
        // The BSP also serves the console; it returns true to stop.
        if bsp_poll() || STOP.load(Ordering::SeqCst) {
            return;
        }
        let e = EPOCH.load(Ordering::SeqCst);
        if e != epoch {
            BAD.fetch_add(verify_own(cpu), Ordering::SeqCst);
            epoch = e;
            ACKS.fetch_add(1, Ordering::SeqCst);
        }
        if p >= pages {
            p = cpu;
        }
        if p >= pages {
            continue; // more CPUs than pages
        }
        if rate != 0 && mine * 1_000_000_000 > rate * (clock::now_ns(cpu as usize) - t0) {
            continue;
        }
        let gen = read32(gens + p * 4).wrapping_add(1).max(1);
        write_page(p, gen);
        WRITES.fetch_add(1, Ordering::Relaxed);
        mine += 1;
        p += n;
    }
}

/// Runs a verify on every CPU (the BSP's share inline) and prints it.
fn verify_all(reason: &str) -> u64 {
    let before = BAD.load(Ordering::SeqCst);
    ACKS.store(0, Ordering::SeqCst);
    let epoch = EPOCH.fetch_add(1, Ordering::SeqCst) + 1;
    BAD.fetch_add(verify_own(0), Ordering::SeqCst);
    let want = NCPU.load(Ordering::SeqCst) - 1;
    while ACKS.load(Ordering::SeqCst) < want && !STOP.load(Ordering::SeqCst) {
        core::hint::spin_loop();
    }
    let bad = BAD.load(Ordering::SeqCst) - before;
    println!(
        "mem.verify epoch={} reason={} pages={} bad_pages={} writes={}",
        epoch,
        reason,
        PAGES.load(Ordering::Relaxed),
        bad,
        WRITES.load(Ordering::Relaxed)
    );
    bad
}

/// Chooses the pattern region: the largest RAM range, above the image.
fn region(map: &[E820], bytes: u64) -> Option<u64> {
    let (_, img_hi) = memcheck::image_range();
    map.iter()
        .filter(|e| e.kind == E820_RAM)
        .filter_map(|e| {
            let start = e.addr.max(img_hi).max(2 << 20).next_multiple_of(2 << 20);
            let end = e.addr + e.size;
            (end > start && end - start >= bytes).then_some((start, end - start))
        })
        .max_by_key(|r| r.1)
        .map(|r| r.0)
}

/// APs park here until the BSP hands out work.
pub fn ap_main(cpu: usize) -> ! {
    while !GO.load(Ordering::SeqCst) {
        core::hint::spin_loop();
    }
    if (cpu as u32) < NCPU.load(Ordering::SeqCst) {
        writer(cpu as u64, &mut || false);
        ACKS.fetch_add(1, Ordering::SeqCst);
    }
    loop {
        core::hint::spin_loop();
    }
}

/// The BSP's part: set up, run, verify, and return the verdict's reason.
pub fn run(map: &[E820], cmd: &Cmdline) -> Option<&'static str> {
    let mem = cmd.list_has("work", "mem");
    let counter = cmd.list_has("work", "counter") || cmd.get("tick_ms").is_some();
    let avx = cmd.list_has("work", "avx");
    if !mem && !counter && !avx {
        return None;
    }
    if avx {
        crate::avx::start(cmd.u64("seed", 1));
    }
    let duration_ms = cmd.u64("duration_ms", 0);
    let tick_ms = cmd.u64("tick_ms", if counter { 100 } else { 0 });
    let max_gap_ms = cmd.u64("max_gap_ms", 0);
    let verify_ms = cmd.u64("verify_ms", 0);
    if mem {
        let pages = cmd.u64("mem_pages", cmd.u64("mem_mb", 16) * 256).max(1);
        let gens_bytes = (pages * 4).next_multiple_of(PAGE);
        let Some(gens) = region(map, pages * PAGE + gens_bytes) else {
            println!("mem.error=no_region pages={}", pages);
            return Some("mem_region");
        };
        if paging::map(gens, pages * PAGE + gens_bytes).is_err() {
            return Some("mem_map");
        }
        GENS.store(gens, Ordering::SeqCst);
        BASE.store(gens + gens_bytes, Ordering::SeqCst);
        PAGES.store(pages, Ordering::SeqCst);
        SEED.store(cmd.u64("seed", 1), Ordering::SeqCst);
        RATE.store(cmd.u64("mem_rate", 0), Ordering::SeqCst);
        let ncpu = cmd
            .u64("mem_cpus", smp::online() as u64)
            .clamp(1, smp::online() as u64);
        NCPU.store(ncpu as u32, Ordering::SeqCst);
        println!(
            "mem.region base={:#x} pages={} gens={:#x} cpus={} rate={} seed={}",
            gens + gens_bytes,
            pages,
            gens,
            ncpu,
            RATE.load(Ordering::SeqCst),
            SEED.load(Ordering::SeqCst)
        );
        GO.store(true, Ordering::SeqCst);
    }
    let t0 = clock::now_ns(0);
    let (mut next_tick, mut ticks, mut prev_ns) = (t0 + tick_ms * 1_000_000, 0u64, t0);
    let mut next_verify = t0 + verify_ms * 1_000_000;
    let mut filled_reported = false;
    let mut clock_bad: Option<&'static str> = None;
    let mut quit = false;
    let mut iter = 0u32;
    let mut poll = || -> bool {
        iter = iter.wrapping_add(1);
        if mem && iter % 16 != 0 {
            return false;
        }
        let now = clock::now_ns(0);
        if now < prev_ns {
            println!("clock.backwards prev={} now={}", prev_ns, now);
            clock_bad = Some("clock_backwards");
        }
        if max_gap_ms != 0 && now - prev_ns > max_gap_ms * 1_000_000 {
            println!(
                "clock.gap_ms={} limit_ms={}",
                (now - prev_ns) / 1_000_000,
                max_gap_ms
            );
            clock_bad = Some("clock_gap");
        }
        prev_ns = now;
        if mem && !filled_reported && FILLED.load(Ordering::SeqCst) == NCPU.load(Ordering::SeqCst) {
            filled_reported = true;
            println!(
                "mem.filled pages={} ms={}",
                PAGES.load(Ordering::Relaxed),
                (now - t0) / 1_000_000
            );
        }
        if tick_ms != 0 && now >= next_tick {
            ticks += 1;
            println!("tick n={} ns={}", ticks, now - t0);
            next_tick = now + tick_ms * 1_000_000;
        }
        if mem && verify_ms != 0 && now >= next_verify && filled_reported {
            verify_all("timer");
            next_verify = now + verify_ms * 1_000_000;
        }
        if report::power_button_pressed() {
            // Answer like an OS: finish, then ACPI S5 rather than the port.
            println!("acpi.power_button=pressed");
            report::EXIT_PORT.store(0, Ordering::SeqCst);
            quit = true;
        }
        match serial::try_read() {
            Some(b'v') if mem || avx => {
                if avx {
                    crate::avx::verify(cmd.u64("seed", 1), "request");
                }
                if mem {
                    verify_all("request");
                }
            }
            Some(b'q') => quit = true,
            Some(b'a') => crate::acpi::recheck(),
            Some(b's') => println!(
                "stats writes={} ticks={}",
                WRITES.load(Ordering::Relaxed),
                ticks
            ),
            _ => {}
        }
        quit || (duration_ms != 0 && now - t0 >= duration_ms * 1_000_000)
    };
    if mem {
        writer(0, &mut poll);
    } else {
        while !poll() {}
    }
    if avx {
        crate::avx::verify(cmd.u64("seed", 1), "final");
    }
    let bad = if mem { verify_all("final") } else { 0 };
    STOP.store(true, Ordering::SeqCst);
    if mem {
        report::check("mem.verify", BAD.load(Ordering::SeqCst) == 0 && bad == 0);
    }
    if counter {
        report::check("clock.ticks", clock_bad.is_none());
    }
    None
}
