//! The pseries RTC (QEMU's `spapr-rtc`): the guest's time of day as the
//! host's wall clock plus an offset, read and set through RTAS
//! `get-time-of-day` / `set-time-of-day`. The offset migrates (section
//! `spapr/rtc`, as QEMU's), so a guest that set its clock keeps it on
//! another host.

use migration::vmstate::{Description, LoadError, State, Vmstate};
use std::time::{SystemTime, UNIX_EPOCH};

migration::vmstate! {
    /// The guest's clock as an offset from the host's, in nanoseconds.
    pub static VMSTATE = "spapr/rtc", version 1, minimum 1;
    pub struct RtcState {
        ns_offset: i64,
    }
}

const NS: i64 = 1_000_000_000;

/// A date and time of day (UTC), as RTAS passes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: u32,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// Within the second.
    pub ns: u32,
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `days` after 1970-01-01: (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl DateTime {
    /// Nanoseconds since the Unix epoch; `None` for a date that is none
    /// (month 13, hour 24, ...).
    pub fn to_unix_ns(self) -> Option<i64> {
        let month_days = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        let y = self.year;
        let leap = (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
        let max_day = if self.month == 2 && leap {
            29
        } else {
            *month_days.get(self.month.checked_sub(1)? as usize)?
        };
        if self.day == 0
            || self.day > max_day
            || self.hour > 23
            || self.minute > 59
            || self.second > 59
            || self.ns >= NS as u32
        {
            return None;
        }
        let days = days_from_civil(self.year.into(), self.month.into(), self.day.into());
        let s = days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second);
        s.checked_mul(NS)?.checked_add(self.ns.into())
    }

    pub fn from_unix_ns(ns: i64) -> DateTime {
        let (s, sub) = (ns.div_euclid(NS), ns.rem_euclid(NS));
        let (days, secs) = (s.div_euclid(86_400), s.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        DateTime {
            year: y.clamp(0, u32::MAX.into()) as u32,
            month: m as u32,
            day: d as u32,
            hour: (secs / 3600) as u32,
            minute: (secs / 60 % 60) as u32,
            second: (secs % 60) as u32,
            ns: sub as u32,
        }
    }
}

fn host_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The RTC: the guest's time is the host's plus `ns_offset`.
#[derive(Debug, Default)]
pub struct SpaprRtc {
    ns_offset: i64,
}

impl SpaprRtc {
    /// The guest's time now.
    pub fn read(&self) -> DateTime {
        DateTime::from_unix_ns(host_ns().saturating_add(self.ns_offset))
    }

    /// Sets the guest's time (to the second, as QEMU's); `None` for a
    /// date that is none.
    pub fn set(&mut self, t: DateTime) -> Option<()> {
        let want = DateTime { ns: 0, ..t }.to_unix_ns()?;
        self.ns_offset = want - host_ns();
        Some(())
    }
}

impl migration::vmstate::Migratable for SpaprRtc {
    fn description(&self) -> &'static Description {
        &VMSTATE
    }

    fn state(&self) -> State {
        RtcState {
            ns_offset: self.ns_offset,
        }
        .to_state()
    }

    fn load(&mut self, st: &State) -> Result<(), LoadError> {
        self.ns_offset = RtcState::from_state(st, VMSTATE.name)?.ns_offset;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        for (ns, want) in [
            (0, (1970, 1, 1, 0, 0, 0)),
            (951_782_400 * NS, (2000, 2, 29, 0, 0, 0)),
            (981_173_106 * NS + 7, (2001, 2, 3, 4, 5, 6)),
            (4_102_444_799 * NS, (2099, 12, 31, 23, 59, 59)),
        ] {
            let t = DateTime::from_unix_ns(ns);
            assert_eq!((t.year, t.month, t.day, t.hour, t.minute, t.second), want);
            assert_eq!(t.to_unix_ns(), Some(ns));
        }
        let bad = |f: fn(&mut DateTime)| {
            let mut t = DateTime::from_unix_ns(0);
            f(&mut t);
            t.to_unix_ns()
        };
        assert_eq!(bad(|t| t.month = 13), None);
        assert_eq!(bad(|t| t.month = 0), None);
        assert_eq!(bad(|t| t.hour = 24), None);
        assert_eq!(
            bad(|t| (t.month, t.day) = (2, 29)),
            None,
            "1970 is no leap year"
        );
    }

    /// A guest that set its clock keeps it through a migration.
    #[test]
    fn the_offset_travels() {
        use migration::vmstate::Migratable;
        let mut a = SpaprRtc::default();
        let then = DateTime {
            year: 2001,
            month: 2,
            day: 3,
            hour: 4,
            minute: 5,
            second: 6,
            ns: 0,
        };
        a.set(then).unwrap();
        let mut b = SpaprRtc::default();
        b.load(&a.state()).unwrap();
        let t = b.read();
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute),
            (2001, 2, 3, 4, 5)
        );
        assert!(t.second - 6 <= 1);
    }
}
