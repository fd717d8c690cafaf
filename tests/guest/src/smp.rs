//! Application processors: INIT-SIPI-SIPI through the local APIC (MMIO,
//! from CPL3), one at a time; each AP comes up through boot.S's trampoline
//! to CPL3 and reports in.

use crate::acpi::{Acpi, MAX_CPUS};
use crate::io::{read32, write32};
use crate::{clock, println, report};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const TRAMPOLINE: u64 = 0x8000;
const APIC_ID: u64 = 0x20;
const APIC_SVR: u64 = 0xf0;
const APIC_ICR_LO: u64 = 0x300;
const APIC_ICR_HI: u64 = 0x310;

extern "C" {
    static ap_tramp_start: u8;
    static ap_tramp_end: u8;
    static mut boot_cpu_index: u64;
}

/// APIC ID each CPU saw for itself (u32::MAX = not alive).
pub static ALIVE_APIC_ID: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];
/// The APIC IDs CPUID gave each CPU: leaf 1 EBX[31:24], leaf 0xB EDX.
static CPUID_APIC_ID: [[AtomicU32; 2]; MAX_CPUS] =
    [const { [AtomicU32::new(u32::MAX), AtomicU32::new(u32::MAX)] }; MAX_CPUS];

/// Records what CPUID (the VM's, at CPL0) says this CPU's APIC ID is.
fn note_cpuid_apic_id(index: usize) {
    let leaf1 = crate::io::cpuid_vm(1, 0).1 >> 24;
    let leaf_b = crate::io::cpuid_vm(0xb, 0).3;
    CPUID_APIC_ID[index][0].store(leaf1, Ordering::SeqCst);
    CPUID_APIC_ID[index][1].store(leaf_b, Ordering::SeqCst);
}
static ONLINE: AtomicU32 = AtomicU32::new(1);
pub static LAPIC_BASE: AtomicU64 = AtomicU64::new(0xfee0_0000);

pub fn online() -> u32 {
    ONLINE.load(Ordering::SeqCst)
}

/// This CPU's APIC ID, from its local APIC's ID register. Not from CPUID:
/// a PVM host without CPUID faulting runs CPL3 `cpuid` natively, and leaf
/// 1 then reports the host CPU's APIC ID (seen: 1 on a 1-vCPU guest, so
/// the BSP sent INIT to itself).
pub fn apic_id_self() -> u32 {
    read32(LAPIC_BASE.load(Ordering::SeqCst) + APIC_ID) >> 24
}

fn wait_icr_idle(lapic: u64) {
    for _ in 0..1_000_000 {
        if read32(lapic + APIC_ICR_LO) & (1 << 12) == 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

/// Starts every enabled MADT CPU but the BSP, then checks they are all
/// alive with the APIC IDs the MADT promised.
pub fn start_aps(acpi: &Acpi, timeout_ms: u64) {
    let lapic = if acpi.lapic_base != 0 {
        acpi.lapic_base
    } else {
        0xfee0_0000
    };
    LAPIC_BASE.store(lapic, Ordering::SeqCst);
    let bsp_id = apic_id_self();
    ALIVE_APIC_ID[0].store(bsp_id, Ordering::SeqCst);
    note_cpuid_apic_id(0);
    // Software-enable the local APIC, spurious vector 0xff.
    write32(lapic + APIC_SVR, 0x1ff);
    // SAFETY: both are boot.S symbols; the trampoline is position-dependent
    // code assembled for 0x8000, which is conventional RAM below 640 KiB
    // that nothing else uses after start_info has been copied.
    unsafe {
        let start = core::ptr::addr_of!(ap_tramp_start);
        let len = core::ptr::addr_of!(ap_tramp_end) as usize - start as usize;
        core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, len);
    }
    let mut index = 1usize;
    for &id in &acpi.apic_ids[..acpi.cpus] {
        if id == bsp_id {
            continue;
        }
        if index >= MAX_CPUS {
            break;
        }
        // SAFETY: boot_cpu_index is read by the AP's CPL0 code only after the SIPI.
        unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!(boot_cpu_index), index as u64) };
        core::sync::atomic::fence(Ordering::SeqCst);
        write32(lapic + APIC_ICR_HI, id << 24);
        write32(lapic + APIC_ICR_LO, 0x4500); // INIT
        wait_icr_idle(lapic);
        clock::delay_us(0, 10_000);
        for _ in 0..2 {
            write32(lapic + APIC_ICR_HI, id << 24);
            write32(lapic + APIC_ICR_LO, 0x4600 | (TRAMPOLINE >> 12) as u32); // SIPI
            wait_icr_idle(lapic);
            clock::delay_us(0, 200);
        }
        let t0 = clock::now_ns(0);
        while ALIVE_APIC_ID[index].load(Ordering::SeqCst) == u32::MAX
            && clock::now_ns(0) - t0 < timeout_ms * 1_000_000
        {
            core::hint::spin_loop();
        }
        let seen = ALIVE_APIC_ID[index].load(Ordering::SeqCst);
        println!(
            "smp.cpu{} apic_id={} alive={} start_ms={}",
            index,
            id,
            seen == id,
            (clock::now_ns(0) - t0) / 1_000_000
        );
        if seen == id {
            ONLINE.fetch_add(1, Ordering::SeqCst);
        }
        index += 1;
    }
    println!("smp.online={} madt_cpus={}", online(), acpi.cpus);
    report::check("smp.all_alive", online() as usize == acpi.cpus);
    // Each CPU's APIC ID as its local APIC, CPUID leaf 1 and leaf 0xB say.
    let mut agree = true;
    for i in 0..(online() as usize).min(MAX_CPUS) {
        let lapic = ALIVE_APIC_ID[i].load(Ordering::SeqCst);
        let [a, b] = [0, 1].map(|k| CPUID_APIC_ID[i][k].load(Ordering::SeqCst));
        println!(
            "smp.cpu{} lapic_id={} cpuid1_id={} cpuid_b_id={}",
            i, lapic, a, b
        );
        agree &= a == lapic & 0xff && b == lapic;
    }
    report::check("smp.cpuid_apic_ids", agree);
    // The topology CPUID describes.
    let smt = crate::io::cpuid_vm(0xb, 0);
    let pkg = crate::io::cpuid_vm(0xb, 1);
    let (_, b1, _, _) = crate::io::cpuid_vm(1, 0);
    let (_, _, c8, _) = crate::io::cpuid_vm(0x8000_0008, 0);
    println!(
        "smp.topology threads_per_core={} logical_per_package={} leaf1_count={} amd_nc={} apic_id_bits={}",
        smt.1 & 0xffff,
        pkg.1 & 0xffff,
        (b1 >> 16) & 0xff,
        (c8 & 0xff) + 1,
        pkg.0 & 0x1f
    );
}

/// An AP's first CPL3 code.
pub fn ap_entry(index: usize) {
    clock::init_cpu(index, 0);
    note_cpuid_apic_id(index);
    ALIVE_APIC_ID[index].store(apic_id_self(), Ordering::SeqCst);
}
