//! Time: kvm-clock (pvclock, per CPU) when the hypervisor offers it, else
//! the ACPI PM timer, else the TSC at an assumed 1 GHz. Plus the
//! monotonicity check.

use crate::acpi::MAX_CPUS;
use crate::io::{cpuid, inl, rdtsc, read32, read64, read8, wrmsr};
use crate::{println, report};
use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct PvClock([u8; 64]);
static mut PVCLOCK: [PvClock; MAX_CPUS] = [PvClock([0; 64]); MAX_CPUS];

/// 0 = TSC guess, 1 = ACPI PM timer, 2 = kvm-clock.
static SOURCE: AtomicU32 = AtomicU32::new(0);
static PM_TMR: AtomicU32 = AtomicU32::new(0);
/// PM timer extension to 64 bits (BSP only reads it before kvm-clock exists).
static PM_LAST: AtomicU64 = AtomicU64::new(0);

pub fn source_name() -> &'static str {
    match SOURCE.load(Ordering::Relaxed) {
        2 => "kvm-clock",
        1 => "acpi-pm-timer",
        _ => "tsc-1ghz-guess",
    }
}

/// Whether the hypervisor is KVM with kvm-clock (KVM_FEATURE_CLOCKSOURCE2).
pub fn kvm_clock_available() -> bool {
    let (max, b, c, d) = cpuid(0x4000_0000, 0);
    let kvm = b == u32::from_le_bytes(*b"KVMK")
        && c == u32::from_le_bytes(*b"VMKV")
        && d == u32::from_le_bytes(*b"M\0\0\0");
    if !kvm || max < 0x4000_0001 {
        return false;
    }
    cpuid(0x4000_0001, 0).0 & (1 << 3) != 0
}

fn pvclock_addr(cpu: usize) -> u64 {
    // SAFETY: only the address is taken.
    unsafe { core::ptr::addr_of!(PVCLOCK[cpu]) as u64 }
}

/// Per-CPU set-up; the BSP calls it first with the PM timer port.
pub fn init_cpu(cpu: usize, pm_tmr: u32) {
    if cpu == 0 {
        PM_TMR.store(pm_tmr, Ordering::Relaxed);
        if pm_tmr != 0 {
            SOURCE.store(1, Ordering::Relaxed);
        }
    }
    if kvm_clock_available() {
        wrmsr(MSR_KVM_SYSTEM_TIME_NEW, pvclock_addr(cpu) | 1);
        if cpu == 0 {
            SOURCE.store(2, Ordering::Relaxed);
        }
    }
}

/// Nanoseconds since an arbitrary origin, on CPU `cpu`.
pub fn now_ns(cpu: usize) -> u64 {
    match SOURCE.load(Ordering::Relaxed) {
        2 => kvmclock_ns(cpu),
        1 => pm_timer_ns(),
        _ => rdtsc(),
    }
}

fn kvmclock_ns(cpu: usize) -> u64 {
    let p = pvclock_addr(cpu);
    loop {
        let v1 = read32(p);
        fence(Ordering::Acquire);
        let tsc_ts = read64(p + 8);
        let sys = read64(p + 16);
        let mul = read32(p + 24);
        let shift = read8(p + 28) as i8;
        let tsc = rdtsc();
        fence(Ordering::Acquire);
        let v2 = read32(p);
        if v1 & 1 != 0 || v1 != v2 {
            continue;
        }
        let mut delta = tsc.wrapping_sub(tsc_ts);
        if shift < 0 {
            delta >>= -shift as u32;
        } else {
            delta <<= shift as u32;
        }
        return sys.wrapping_add(((delta as u128 * mul as u128) >> 32) as u64);
    }
}

/// TSC frequency in kHz from the pvclock scale, if kvm-clock runs.
pub fn tsc_khz() -> Option<u64> {
    if SOURCE.load(Ordering::Relaxed) != 2 {
        return None;
    }
    let p = pvclock_addr(0);
    let (mul, shift) = (read32(p + 24) as u128, read8(p + 28) as i8);
    if mul == 0 {
        return None;
    }
    // ns = (ticks << shift) * mul >> 32  =>  Hz = 1e9 << 32 / (mul << shift)
    let denom = if shift >= 0 {
        mul << shift
    } else {
        mul >> -shift
    };
    Some(((1_000_000u128 << 32) / denom.max(1)) as u64)
}

fn pm_timer_ns() -> u64 {
    // 24-bit counter at 3.579545 MHz, extended with the last value seen.
    let port = PM_TMR.load(Ordering::Relaxed) as u16;
    let now = (inl(port) & 0xff_ffff) as u64;
    let last = PM_LAST.load(Ordering::Relaxed);
    let mut ext = (last & !0xff_ffff) | now;
    if ext < last {
        ext += 1 << 24;
    }
    PM_LAST.store(ext, Ordering::Relaxed);
    ext * 1_000_000_000 / 3_579_545
}

/// Busy-waits `us` microseconds.
pub fn delay_us(cpu: usize, us: u64) {
    let end = now_ns(cpu) + us * 1000;
    while now_ns(cpu) < end {
        core::hint::spin_loop();
    }
}

/// TSC and the clock source sampled back to back: both must never go
/// backwards, and no step may exceed `max_jump_ms`.
pub fn check(cpu: usize, samples: u32, max_jump_ms: u64) {
    let (mut t_prev, mut c_prev) = (rdtsc(), now_ns(cpu));
    let (mut tsc_back, mut clk_back, mut max_step) = (0u32, 0u32, 0u64);
    let start = c_prev;
    for _ in 0..samples {
        let (t, c) = (rdtsc(), now_ns(cpu));
        tsc_back += (t < t_prev) as u32;
        clk_back += (c < c_prev) as u32;
        max_step = max_step.max(c.wrapping_sub(c_prev));
        (t_prev, c_prev) = (t, c);
    }
    println!(
        "clock.source={} tsc_khz={} samples={} elapsed_ns={} max_step_ns={} tsc_backwards={} clock_backwards={}",
        source_name(),
        tsc_khz().unwrap_or(0),
        samples,
        c_prev.wrapping_sub(start),
        max_step,
        tsc_back,
        clk_back
    );
    report::check("clock.tsc_monotonic", tsc_back == 0);
    report::check("clock.monotonic", clk_back == 0);
    report::check("clock.no_jump", max_step <= max_jump_ms * 1_000_000);
}
