//! INTx lines several functions share: a line is up while any of them
//! holds it (QEMU's `pci_bus` irq_count). Each function reports only its
//! own changes (`VirtioPci` does); the board passes a line's change on.

use std::collections::HashMap;
use std::sync::Mutex;

/// How many functions hold each line up.
#[derive(Debug, Default)]
pub struct SharedLines(Mutex<HashMap<u32, u32>>);

impl SharedLines {
    /// A function raised (`level`) or lowered line `line`: the line's new
    /// level if it changed.
    pub fn set(&self, line: u32, level: bool) -> Option<bool> {
        let mut held = self.0.lock().expect("intx lock");
        let n = held.entry(line).or_default();
        let before = *n > 0;
        *n = if level {
            n.saturating_add(1)
        } else {
            n.saturating_sub(1)
        };
        let after = *n > 0;
        (before != after).then_some(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_line_stays_up_while_any_function_holds_it() {
        let l = SharedLines::default();
        assert_eq!(l.set(0x1200, true), Some(true));
        assert_eq!(l.set(0x1200, true), None, "a second function");
        assert_eq!(l.set(0x1201, true), Some(true), "another line");
        assert_eq!(l.set(0x1200, false), None, "one still holds it");
        assert_eq!(l.set(0x1200, false), Some(false));
        assert_eq!(l.set(0x1200, false), None, "not below zero");
        assert_eq!(l.set(0x1200, true), Some(true));
    }
}
