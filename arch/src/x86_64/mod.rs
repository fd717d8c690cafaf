//! x86_64: the q35-style board's layout, ACPI tables, boot and CPU set-up.

pub mod acpi;
pub mod cpu;
pub mod cpuid;
pub mod elf;
pub mod layout;
/// Linux's boot protocol (bzImage): linux-loader has it for x86 hosts only.
#[cfg(target_arch = "x86_64")]
pub mod linux;
pub mod pvh;
/// The vCPUs' first registers, as KVM x86 takes them.
#[cfg(target_arch = "x86_64")]
pub mod regs;
pub mod topology;

/// One CPUID leaf as KVM x86 takes it (`struct kvm_cpuid_entry2`).
#[cfg(target_arch = "x86_64")]
pub use kvm_bindings::kvm_cpuid_entry2;

/// One CPUID leaf in `struct kvm_cpuid_entry2`'s layout, where
/// kvm-bindings has no x86 (a ppc64 build still parses and checks an x86
/// board's configuration, and runs it under qtest).
#[cfg(not(target_arch = "x86_64"))]
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Default, Copy, Clone, PartialEq, Eq)]
pub struct kvm_cpuid_entry2 {
    pub function: u32,
    pub index: u32,
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
    pub padding: [u32; 3],
}

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
