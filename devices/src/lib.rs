//! The device model: buses (port I/O, MMIO, PCI) and every device.
//!
//! Devices never stop the VM themselves: lifecycle requests (power off,
//! reset, the debug-exit port) go to the VMM through an [`EventSink`].

// Device models parse what a guest writes: only the modules that move
// bytes between guest memory and host files or devices use unsafe code.
#![deny(unsafe_code)]

pub mod acpi_pm;
pub mod bus;
pub mod debug_exit;
pub mod guest_log;
pub mod model;
pub mod pci;
pub mod registry;
pub mod rtas;
pub mod serial;
pub mod spapr_hpt;
pub mod spapr_nvram;
pub mod spapr_rtc;
pub mod spapr_vio;
pub mod spapr_vty;
pub mod virtio;
pub mod xics;

use std::sync::Arc;

/// What a device can ask of the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmEvent {
    /// ACPI S5: the guest powered off.
    PowerOff,
    /// The guest asked for a reset (reset control register).
    Reset,
    /// The debug-exit port: leave with this process exit status.
    Exit(i32),
    /// The guest's operating system says it cannot go on (sPAPR's
    /// `ibm,os-term`): QEMU's guest panic, whose default action powers
    /// the machine off.
    Panicked,
}

/// Where devices send [`VmEvent`]s.
pub type EventSink = Arc<dyn Fn(VmEvent) + Send + Sync>;

/// What the devices' tests share.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::{Arc, Mutex};

    /// A console's output the test reads back.
    #[derive(Clone, Default)]
    pub(crate) struct Sink(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
