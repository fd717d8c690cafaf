//! Log lines a guest can cause (a misprogrammed device, a broken queue),
//! rate-limited per place in the code: a guest that does the same wrong
//! thing in a loop must not fill the host's logs. Each place logs its
//! first [`BURST`] lines of an [`INTERVAL`], then stays quiet until the
//! next interval, whose first line says how many were left out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const BURST: u32 = 10;
pub const INTERVAL: Duration = Duration::from_secs(60);

/// One place's budget.
pub struct Limit {
    burst: u32,
    interval: Duration,
    /// The interval's start, lines logged in it, lines left out since the
    /// last one logged.
    state: Mutex<Option<(Instant, u32, u64)>>,
}

impl Limit {
    pub const fn new(burst: u32, interval: Duration) -> Limit {
        Limit {
            burst,
            interval,
            state: Mutex::new(None),
        }
    }

    /// Whether to log now, and if so how many lines were left out before
    /// this one.
    pub fn admit(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (start, logged, skipped) = s.get_or_insert((now, 0, 0));
        if now.duration_since(*start) >= self.interval {
            *start = now;
            *logged = 0;
        }
        if *logged < self.burst {
            *logged += 1;
            Some(std::mem::take(skipped))
        } else {
            *skipped += 1;
            None
        }
    }
}

/// `log::warn!` for something the guest did, rate-limited at this place.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)*) => {{
        static LIMIT: $crate::guest_log::Limit =
            $crate::guest_log::Limit::new($crate::guest_log::BURST, $crate::guest_log::INTERVAL);
        match LIMIT.admit() {
            Some(0) => log::warn!($($arg)*),
            Some(n) => log::warn!("{} ({n} more like it left out)", format_args!($($arg)*)),
            None => {}
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_quiet_then_a_count_of_what_was_left_out() {
        let l = Limit::new(3, Duration::from_millis(200));
        let first: Vec<_> = (0..10).map(|_| l.admit()).collect();
        assert_eq!(
            first,
            [
                Some(0),
                Some(0),
                Some(0),
                None,
                None,
                None,
                None,
                None,
                None,
                None
            ]
        );
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(
            l.admit(),
            Some(7),
            "the next interval says what was left out"
        );
        assert_eq!(l.admit(), Some(0));
    }
}
