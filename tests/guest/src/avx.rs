//! `work=avx`: the upper halves of the 16 YMM registers hold a pattern
//! derived from `seed`, loaded once and checked on `v` and at the end.
//! The guest is compiled without AVX, and SSE instructions leave the
//! upper halves alone, so nothing here changes them: they survive only if
//! the VMM saves and restores the vCPU's XSAVE state whole (every exit, a
//! save and restore, a migration).

use crate::{io, println, report};
use core::arch::asm;

/// Register `r`'s upper half (two u64 words).
fn pattern(seed: u64, r: usize) -> [u64; 2] {
    let x = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(r as u64 * 0x0100_0000_01b3);
    [x, !x.rotate_left(17)]
}

/// Loads the upper half of ymm`$r` from `$p`, stores it to `$p`.
macro_rules! each_ymm {
    ($op:literal, $buf:expr) => {
        // SAFETY: the instructions read or write the 16 bytes at each
        // address, inside `$buf`; they touch only the upper halves of the
        // YMM registers, which compiled code does not use.
        unsafe {
            let b = $buf.as_mut_ptr();
            asm!(
                concat!($op, " 0"), concat!($op, " 1"), concat!($op, " 2"), concat!($op, " 3"),
                concat!($op, " 4"), concat!($op, " 5"), concat!($op, " 6"), concat!($op, " 7"),
                concat!($op, " 8"), concat!($op, " 9"), concat!($op, " 10"), concat!($op, " 11"),
                concat!($op, " 12"), concat!($op, " 13"), concat!($op, " 14"), concat!($op, " 15"),
                in("rdi") b,
                options(att_syntax, nostack, preserves_flags),
            );
        }
    };
}

core::arch::global_asm!(
    ".macro ymm_load n",
    "vinsertf128 $1, 16*\\n(%rdi), %ymm\\n, %ymm\\n",
    ".endm",
    ".macro ymm_store n",
    "vextractf128 $1, %ymm\\n, 16*\\n(%rdi)",
    ".endm",
    options(att_syntax)
);

/// Turns AVX on and loads the pattern.
pub fn start(seed: u64) {
    io::enable_avx();
    let mut buf = [[0u64; 2]; 16];
    for (r, b) in buf.iter_mut().enumerate() {
        *b = pattern(seed, r);
    }
    each_ymm!("ymm_load", buf);
    println!("avx.loaded registers=16 seed={}", seed);
}

/// Checks every register still holds its pattern.
pub fn verify(seed: u64, reason: &str) {
    let mut buf = [[0u64; 2]; 16];
    each_ymm!("ymm_store", buf);
    let bad = (0..16).filter(|&r| buf[r] != pattern(seed, r)).count();
    for r in (0..16).filter(|&r| buf[r] != pattern(seed, r)) {
        println!(
            "avx.bad register=ymm{} have={:#x},{:#x} want={:#x},{:#x}",
            r,
            buf[r][0],
            buf[r][1],
            pattern(seed, r)[0],
            pattern(seed, r)[1]
        );
    }
    println!("avx.verify registers=16 bad={} reason={}", bad, reason);
    report::check("avx.registers", bad == 0);
}
