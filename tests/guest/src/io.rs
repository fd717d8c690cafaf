//! Port I/O, MMIO, CPUID, TSC and the gate to the CPL0 stub.
//!
//! Everything here runs at CPL3 with IOPL=3 (port I/O allowed through the
//! TSS I/O bitmap), identity-mapped, user-accessible memory.

use core::arch::asm;

pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O has no memory effects; IOPL=3 and the TSS bitmap allow it.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    }
}
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as outb.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    }
    v
}
pub fn outw(port: u16, v: u16) {
    // SAFETY: as outb.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags))
    }
}
pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: as outb.
    unsafe {
        asm!("in ax, dx", in("dx") port, out("ax") v, options(nomem, nostack, preserves_flags))
    }
    v
}
pub fn outl(port: u16, v: u32) {
    // SAFETY: as outb.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    }
}
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as outb.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Volatile MMIO / physical memory accessors (identity mapping).
pub fn read32(addr: u64) -> u32 {
    // SAFETY: the caller names a mapped physical address (RAM or MMIO).
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}
pub fn write32(addr: u64, v: u32) {
    // SAFETY: as read32.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}
pub fn read8(addr: u64) -> u8 {
    // SAFETY: as read32.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}
pub fn write8(addr: u64, v: u8) {
    // SAFETY: as read32.
    unsafe { core::ptr::write_volatile(addr as *mut u8, v) }
}
pub fn read16(addr: u64) -> u16 {
    // SAFETY: as read32.
    unsafe { core::ptr::read_volatile(addr as *const u16) }
}
pub fn write16(addr: u64, v: u16) {
    // SAFETY: as read32.
    unsafe { core::ptr::write_volatile(addr as *mut u16, v) }
}
pub fn read64(addr: u64) -> u64 {
    // SAFETY: as read32.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}
pub fn write64(addr: u64, v: u64) {
    // SAFETY: as read32.
    unsafe { core::ptr::write_volatile(addr as *mut u64, v) }
}

/// CPUID at CPL3: on a PVM host without CPUID faulting, the host's.
pub fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// CPUID through the CPL0 gate: what the VMM configured for this vCPU.
pub fn cpuid_vm(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    let ab = gate(6, leaf as u64, sub as u64);
    let cd = gate(7, leaf as u64, sub as u64);
    (ab as u32, (ab >> 32) as u32, cd as u32, (cd >> 32) as u32)
}

/// The leaves (and sub-leaves) that hold QEMU's feature words, and the
/// identity: what the guest reports of its CPU at boot.
pub const REPORTED_LEAVES: [(u32, u32); 12] = [
    (0, 0),
    (1, 0),
    (6, 0),
    (7, 0),
    (7, 1),
    (0xd, 0),
    (0xd, 1),
    (0x8000_0000, 0),
    (0x8000_0001, 0),
    (0x8000_0007, 0),
    (0x8000_0008, 0),
    (0x8000_0002, 0),
];

pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc is allowed at CPL3 (CR4.TSD is clear).
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn gate(op: u64, a: u64, b: u64) -> u64 {
    let ret: u64;
    // SAFETY: cpl0_gate (boot.S) performs the operation at CPL0 via its #UD
    // handler and returns, clobbering only rax, rcx and rdx. No `nostack`:
    // the call pushes a return address, so the red zone is not in use.
    unsafe {
        asm!("call cpl0_gate",
            inout("rax") op => ret,
            in("rdi") a, in("rsi") b,
            out("rcx") _, out("rdx") _);
    }
    ret
}

#[allow(dead_code)] // kept beside wrmsr for diagnostics
/// rdmsr through the CPL0 gate. A missing MSR faults (reported as #GP).
pub fn rdmsr(msr: u32) -> u64 {
    gate(1, msr as u64, 0)
}

/// wrmsr through the CPL0 gate.
pub fn wrmsr(msr: u32, v: u64) {
    gate(2, msr as u64, v);
}

/// Enables interrupts at CPL3 (through the gate: PVM faults on `sti`).
pub fn enable_interrupts() {
    gate(3, 0, 0);
}

/// Disables interrupts at CPL3.
pub fn disable_interrupts() {
    gate(4, 0, 0);
}

/// Turns AVX on for this CPU (CR4.OSXSAVE, XCR0 with the YMM state).
pub fn enable_avx() {
    gate(8, 0, 0);
}

/// Shuts the CPU down with a triple fault (an empty IDT, then #UD).
pub fn triple_fault() -> ! {
    gate(5, 0, 0);
    loop {
        pause();
    }
}

pub fn pause() {
    core::hint::spin_loop();
}
