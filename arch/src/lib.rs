//! Per-architecture guest setup (x86_64 boot protocol, page tables, CPUID,
//! ACPI tables; ppc64 device tree later). Depends on rust-vmm crates only.
//!
//! Empty until the boot issue (#3) lands the x86_64 board.
