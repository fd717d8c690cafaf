//! Per-architecture guest setup: where things live in guest-physical
//! memory, the firmware tables a guest reads (ACPI), the boot protocols
//! (PVH; Linux's), CPUID and the vCPUs' initial registers. Depends on
//! rust-vmm crates only; nothing here touches a VM.

#![forbid(unsafe_code)]

pub mod elf;
pub mod ppc64;
pub mod x86_64;
