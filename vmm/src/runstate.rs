//! The VM's run state and a migration's status, as QMP spells them, with
//! QEMU's table of the run-state changes that may happen
//! (`runstate_transitions_def` in QEMU's `system/runstate.c`, restricted
//! to the states vmm has).

use std::fmt;

/// QEMU's `RunState`, for the states a vmm VM can be in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Started with `-S`: built, never run.
    Prelaunch,
    /// Waiting for (or loading) an incoming migration.
    InMigrate,
    Running,
    /// Stopped by `stop` (or `-S` after an incoming migration).
    Paused,
    /// Stopped to send the last of its state to a destination.
    FinishMigrate,
    /// Its state went to a destination, which now runs the guest.
    PostMigrate,
}

use RunState::*;

/// The changes QEMU allows between these states.
const TRANSITIONS: &[(RunState, RunState)] = &[
    (InMigrate, Paused),
    (InMigrate, Running),
    (InMigrate, FinishMigrate),
    (InMigrate, Prelaunch),
    (InMigrate, PostMigrate),
    (Paused, Running),
    (Paused, FinishMigrate),
    (Paused, PostMigrate),
    (Paused, Prelaunch),
    (PostMigrate, Running),
    (PostMigrate, FinishMigrate),
    (PostMigrate, Prelaunch),
    (Prelaunch, Running),
    (Prelaunch, FinishMigrate),
    (Prelaunch, InMigrate),
    (FinishMigrate, Running),
    (FinishMigrate, Paused),
    (FinishMigrate, PostMigrate),
    (FinishMigrate, Prelaunch),
    (Running, Paused),
    (Running, FinishMigrate),
];

impl RunState {
    /// The name `query-status` answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Prelaunch => "prelaunch",
            InMigrate => "inmigrate",
            Running => "running",
            Paused => "paused",
            FinishMigrate => "finish-migrate",
            PostMigrate => "postmigrate",
        }
    }

    /// Whether the VM may go from this state to `to` (staying is allowed).
    pub fn can_become(self, to: RunState) -> bool {
        self == to || TRANSITIONS.contains(&(self, to))
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub use migration::status::MigrationStatus;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lifecycle_vmm_drives_is_allowed_and_the_rest_is_not() {
        // Start, stop, resume; migrate out (succeeding, or failing back to
        // paused and resuming); come in and run or stay paused.
        for (from, to) in [
            (Prelaunch, Running),
            (Running, Paused),
            (Paused, Running),
            (Running, FinishMigrate),
            (Paused, FinishMigrate),
            (FinishMigrate, PostMigrate),
            (FinishMigrate, Paused),
            (PostMigrate, Running),
            (InMigrate, Running),
            (InMigrate, Paused),
        ] {
            assert!(from.can_become(to), "{from} -> {to}");
        }
        // A guest never runs on the side that gave it away without a
        // failed migration in between, nor is a running VM "incoming".
        for (from, to) in [
            (Running, InMigrate),
            (Running, PostMigrate),
            (Running, Prelaunch),
            (Paused, InMigrate),
            (PostMigrate, Paused),
        ] {
            assert!(!from.can_become(to), "{from} -> {to}");
        }
        assert_eq!(FinishMigrate.to_string(), "finish-migrate");
    }
}
