//! Test-only fault injection: pauses at named points of a migration, so a
//! test can kill a process inside a window that is otherwise too short to
//! hit. Compiled in only with the cargo feature `fault-injection` (the
//! tests build a binary of their own with it, `scripts/setup.sh`); a
//! release binary has none of it and reads no such variable.

/// Sleeps for the milliseconds in environment variable `hook`, if set.
#[cfg(feature = "fault-injection")]
pub fn delay(hook: &str) {
    if let Some(ms) = std::env::var(hook).ok().and_then(|v| v.parse().ok()) {
        log::warn!("fault injection: {hook}: sleeping {ms} ms");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Without the feature: nothing.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn delay(_hook: &str) {}

/// Panics here if `VMM_TEST_PANIC` names this point: how a test sees what
/// a bug in one thread does to the whole VMM.
#[cfg(feature = "fault-injection")]
pub fn panic_point(point: &str) {
    if std::env::var("VMM_TEST_PANIC").is_ok_and(|p| p == point) {
        panic!("fault injection: a panic at {point}");
    }
}

/// Without the feature: nothing.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn panic_point(_point: &str) {}

/// The CPUID features `VMM_TEST_HOST_LACKS` names (comma-separated): a
/// destination that believes its host lacks them, as a weaker host would.
#[cfg(feature = "fault-injection")]
pub fn host_lacks() -> Vec<&'static arch::x86_64::cpu::Feature> {
    let Ok(v) = std::env::var("VMM_TEST_HOST_LACKS") else {
        return vec![];
    };
    log::warn!("fault injection: this host is taken to lack {v}");
    v.split(',')
        .filter_map(arch::x86_64::cpu::feature)
        .collect()
}

/// Without the feature: the host is what KVM says.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn host_lacks() -> Vec<&'static arch::x86_64::cpu::Feature> {
    vec![]
}

/// `VMM_TEST_TSC_KHZ`: the TSC frequency this host is taken to have.
#[cfg(feature = "fault-injection")]
pub fn tsc_khz() -> Option<u32> {
    std::env::var("VMM_TEST_TSC_KHZ").ok()?.parse().ok()
}

/// Without the feature: the host's.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn tsc_khz() -> Option<u32> {
    None
}

/// `VMM_TEST_MSRS_LACK`: MSRs (comma-separated, hex) this host's KVM is
/// taken not to save or restore.
#[cfg(feature = "fault-injection")]
pub fn msrs_lack() -> Vec<u32> {
    std::env::var("VMM_TEST_MSRS_LACK")
        .unwrap_or_default()
        .split(',')
        .filter_map(|m| u32::from_str_radix(m.trim_start_matches("0x"), 16).ok())
        .collect()
}

/// Without the feature: none.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn msrs_lack() -> Vec<u32> {
    vec![]
}
