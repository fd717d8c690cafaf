//! The parts of the `vmm` binary (src/main.rs is its entry point): the
//! command line, the VM and its threads, the monitor, the migration
//! orchestration. A library so that the fuzzers (`fuzz/`) reach the
//! monitor's framing and dispatch as the binary runs them; nothing else
//! depends on it.

pub mod abi;
pub mod backends;
pub mod cli;
pub mod config;
pub mod fault;
pub mod hypervisor;
/// The KVM x86_64 backend (kvm-ioctls has no ppc64).
#[cfg(target_arch = "x86_64")]
pub mod kvm;
/// The KVM-PPC backend (powerpc64 hosts) and the state it migrates.
pub mod kvm_ppc;
pub mod qmp;
pub mod qtest;
pub mod runstate;
pub mod snapshot;
pub mod vm;
pub mod vmstate;
