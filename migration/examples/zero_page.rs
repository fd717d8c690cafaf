//! The zero-page check the migration runs on every page it sends, on
//! guest memory (volatile loads, `stream::is_zero_page`) against the
//! plain-slice check it replaced (`stream::is_zero`, only sound on memory
//! nobody writes meanwhile). Run by `scripts/bench/zero-page.sh`.

use migration::stream::{is_zero, is_zero_page, PAGE_SIZE};
use std::time::Instant;
use vm_memory::VolatileSlice;

/// Nanoseconds per page for `check` over `mem`, best of five passes;
/// and how many pages it found zero.
fn time(mem: &mut [u8], check: &dyn Fn(&mut [u8]) -> bool) -> (f64, usize) {
    let pages = mem.len() / PAGE_SIZE;
    let mut best = f64::MAX;
    let mut zero = 0;
    for _ in 0..5 {
        let t = Instant::now();
        zero = mem
            .chunks_mut(PAGE_SIZE)
            .map(|p| check(std::hint::black_box(p)))
            .filter(|&z| z)
            .count();
        best = best.min(t.elapsed().as_nanos() as f64 / pages as f64);
    }
    (best, zero)
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    // Touched, so that every page is real memory (an untouched one is the
    // shared zero page and always in cache).
    let mut mem = vec![1u8; mib << 20];
    mem.fill(0);
    let plain = |p: &mut [u8]| is_zero(p);
    let volatile = |p: &mut [u8]| is_zero_page(&VolatileSlice::from(p));
    println!("{mib} MiB of touched memory, ns per page (best of 5)");
    println!("{:<28} {:>12} {:>12}", "pages", "plain slice", "volatile");
    for (what, every) in [("all zero", 0), ("every other has data", 2)] {
        if every > 0 {
            // The byte that differs is the page's last: the worst case.
            for p in mem.chunks_mut(PAGE_SIZE).step_by(every) {
                p[PAGE_SIZE - 1] = 1;
            }
        }
        let (a, za) = time(&mut mem, &plain);
        let (b, zb) = time(&mut mem, &volatile);
        assert_eq!(za, zb, "the two checks disagree");
        println!("{what:<28} {a:>12.1} {b:>12.1}");
    }
}
