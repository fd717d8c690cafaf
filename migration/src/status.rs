//! A migration's status, its tunables (`migrate-set-parameters`) and the
//! progress `query-migrate` reports while it runs.

use crate::stream::PAGE_SIZE;
use serde_json::json;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// QEMU's `MigrationStatus`, for the statuses vmm reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MigrationStatus {
    /// No migration yet (`query-migrate` answers `{}`).
    #[default]
    None,
    Setup,
    Active,
    Completed,
    Failed,
    Cancelled,
}

impl MigrationStatus {
    /// The name `query-migrate` and the `MIGRATION` event use.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationStatus::None => "none",
            MigrationStatus::Setup => "setup",
            MigrationStatus::Active => "active",
            MigrationStatus::Completed => "completed",
            MigrationStatus::Failed => "failed",
            MigrationStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tunables, as QEMU's `migrate-set-parameters` / `-capabilities`.
#[derive(Debug, Clone)]
pub struct Params {
    pub downtime_limit_ms: u64,
    /// Bytes per second; 0 = no limit.
    pub max_bandwidth: u64,
    pub multifd_channels: u64,
    pub auto_converge: bool,
    /// RAM on `multifd_channels` connections of its own when the
    /// destination takes them (it is asked first): on by default, unlike
    /// QEMU, where both sides must be told. Off: one stream.
    pub multifd: bool,
    /// Auto-converge: the first throttle and each step, percent.
    pub throttle_initial: u64,
    pub throttle_increment: u64,
    pub max_throttle: u64,
    /// The `tls-creds-x509` object migrations use (empty: no TLS).
    pub tls_creds: String,
    /// The name the destination's certificate must carry (empty: the
    /// URI's host).
    pub tls_hostname: String,
    /// The `authz-simple` object naming the one client a destination
    /// admits (empty: any client the CA vouches for).
    pub tls_authz: String,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            downtime_limit_ms: 300,
            max_bandwidth: 0,
            multifd_channels: 4,
            auto_converge: false,
            multifd: true,
            throttle_initial: 20,
            throttle_increment: 10,
            max_throttle: 99,
            tls_creds: String::new(),
            tls_hostname: String::new(),
            tls_authz: String::new(),
        }
    }
}

impl Params {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "downtime-limit": self.downtime_limit_ms,
            "max-bandwidth": self.max_bandwidth,
            "multifd-channels": self.multifd_channels,
            "cpu-throttle-initial": self.throttle_initial,
            "cpu-throttle-increment": self.throttle_increment,
            "max-cpu-throttle": self.max_throttle,
            "tls-creds": self.tls_creds,
            "tls-hostname": self.tls_hostname,
            "tls-authz": self.tls_authz,
        })
    }

    /// Applies `migrate-set-parameters` arguments; an unknown or invalid
    /// one changes nothing.
    pub fn set(&mut self, args: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
        let mut next = self.clone();
        for (k, v) in args {
            // The string parameters: TLS credentials (an -object id; ""
            // turns TLS off), the name the server's certificate carries,
            // the authz-simple object naming the one client admitted.
            let text = match k.as_str() {
                "tls-creds" => Some(&mut next.tls_creds),
                "tls-hostname" => Some(&mut next.tls_hostname),
                "tls-authz" => Some(&mut next.tls_authz),
                _ => None,
            };
            if let Some(text) = text {
                // null is "" (QEMU's StrOrNull).
                *text = match v {
                    serde_json::Value::Null => String::new(),
                    v => v
                        .as_str()
                        .ok_or_else(|| format!("Parameter '{k}' expects a string"))?
                        .to_string(),
                };
                continue;
            }
            let n = v
                .as_u64()
                .ok_or_else(|| format!("Parameter '{k}' expects a non-negative integer"))?;
            match k.as_str() {
                "downtime-limit" if (1..=2_000_000).contains(&n) => next.downtime_limit_ms = n,
                "downtime-limit" => return Err(format!("Parameter 'downtime-limit' expects an integer in the range of 1 to 2000000 milliseconds, not {n}")),
                "max-bandwidth" => next.max_bandwidth = n,
                "multifd-channels" if (1..=255).contains(&n) => next.multifd_channels = n,
                "multifd-channels" => return Err(format!("Parameter 'multifd-channels' expects a value between 1 and 255, not {n}")),
                "cpu-throttle-initial" if (1..=99).contains(&n) => next.throttle_initial = n,
                "cpu-throttle-increment" if (1..=99).contains(&n) => next.throttle_increment = n,
                "max-cpu-throttle" if (1..=99).contains(&n) => next.max_throttle = n,
                "cpu-throttle-initial" | "cpu-throttle-increment" | "max-cpu-throttle" => {
                    return Err(format!("Parameter '{k}' expects an integer in the range of 1 to 99, not {n}"))
                }
                _ => return Err(format!("Parameter '{k}' is unexpected")),
            }
        }
        *self = next;
        Ok(())
    }
}

/// What `query-migrate` reports while a migration runs, updated by the
/// migration thread.
#[derive(Default)]
pub struct Progress {
    pub transferred: AtomicU64,
    pub remaining: AtomicU64,
    pub duplicate: AtomicU64,
    pub normal: AtomicU64,
    pub passes: AtomicU64,
    pub pages_per_second: AtomicU64,
    pub dirty_pages_rate: AtomicU64,
    pub mbps_x100: AtomicU64,
    pub setup_ms: AtomicU64,
    pub downtime_ms: AtomicU64,
    pub expected_downtime_ms: AtomicU64,
    pub throttle_pct: AtomicU64,
    /// multifd connections carrying RAM (0: the main stream does).
    pub channels: AtomicU64,
    /// Why the migration has not converged yet, when it has not.
    pub not_converging: Mutex<Option<String>>,
    pub cancel: AtomicBool,
    /// GO was sent: the guest is the destination's from here, whatever
    /// happens next.
    pub committed: AtomicBool,
    /// The destination said RUNNING after GO (its vCPUs run).
    pub running_confirmed: AtomicBool,
}

impl Progress {
    /// `pages` dirty pages handed to the connection: `remaining` counts
    /// down through a pass, so progress shows while the pass runs.
    pub(crate) fn pages_sent(&self, pages: u64) {
        let _ = self
            .remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r.saturating_sub(pages * PAGE_SIZE as u64))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked_and_a_bad_one_changes_nothing() {
        let mut p = Params::default();
        let args = |v: serde_json::Value| v.as_object().unwrap().clone();
        p.set(&args(json!({"downtime-limit": 50, "multifd-channels": 4})))
            .unwrap();
        assert_eq!((p.downtime_limit_ms, p.multifd_channels), (50, 4));
        let e = p
            .set(&args(json!({"max-bandwidth": 1, "downtime-limit": 0})))
            .unwrap_err();
        assert!(e.contains("downtime-limit"), "{e}");
        assert_eq!(
            (p.downtime_limit_ms, p.max_bandwidth),
            (50, 0),
            "nothing changed"
        );
        assert!(p
            .set(&args(json!({"bogus": 1})))
            .unwrap_err()
            .contains("bogus"));
        assert_eq!(MigrationStatus::Cancelled.to_string(), "cancelled");
    }
}
