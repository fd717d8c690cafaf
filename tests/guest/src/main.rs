//! vmm's test guest. See docs/testing.md.
//!
//! CPL0 lives in boot.S; everything here runs at CPL3 with IOPL=3.

#![no_std]
#![no_main]

mod cmdline;
mod io;
mod pvh;
mod report;
mod rt;
mod serial;

use core::arch::global_asm;

global_asm!(include_str!("boot.S"), options(att_syntax));

static mut BOOT: pvh::BootInfo = pvh::BootInfo {
    version: 0,
    memmap: [pvh::E820 { addr: 0, size: 0, kind: 0 }; pvh::MAX_E820],
    memmap_len: 0,
    cmdline: [0; 1024],
    cmdline_len: 0,
    rsdp: 0,
};

/// Every CPU arrives here at CPL3 from boot.S.
#[no_mangle]
extern "C" fn cpu_entry(index: u64, start_info: u64) -> ! {
    if index != 0 {
        loop {
            io::pause();
        }
    }
    serial::init();
    println!("guest=vmm-test-guest version={}", env!("CARGO_PKG_VERSION"));
    // SAFETY: only the BSP touches BOOT, before any AP runs.
    let boot = unsafe { &mut *core::ptr::addr_of_mut!(BOOT) };
    if let Err(e) = pvh::parse(start_info, boot) {
        match e {
            pvh::Error::BadMagic(m) => println!("pvh.error=bad_magic value={:#x}", m),
            pvh::Error::NoMemmap(v) => println!("pvh.error=no_memmap version={}", v),
        }
        report::finish(Some("bad_start_info"));
    }
    println!("pvh.version={} cmdline=\"{}\" rsdp={:#x}", boot.version, boot.cmdline(), boot.rsdp);
    for e in boot.memmap() {
        println!("e820 addr={:#x} size={:#x} type={}", e.addr, e.size, e.kind);
    }
    report::finish(None)
}

/// Exceptions land here (boot.S rewrites the frame): print and fail.
#[no_mangle]
extern "C" fn fault_entry(vector: u64, error: u64, rip: u64, cr2: u64, cs: u64, cpu: u64) -> ! {
    serial::force_unlock();
    println!(
        "exception vector={} error={:#x} rip={:#x} cr2={:#x} cpl={} cpu={}",
        vector, error, rip, cr2, cs & 3, cpu
    );
    report::finish(Some("exception"))
}
