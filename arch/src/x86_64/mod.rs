//! x86_64: the q35-style board's layout, ACPI tables, boot and CPU set-up.

pub mod acpi;
pub mod cpu;
pub mod cpuid;
pub mod elf;
pub mod layout;
pub mod linux;
pub mod pvh;
pub mod regs;
pub mod topology;

/// E820 / PVH memory map entry types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    Ram = 1,
    Reserved = 2,
}

/// One range of the guest's memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}
