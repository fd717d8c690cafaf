//! vmm's test guest. See docs/testing.md.
//!
//! CPL0 lives in boot.S; everything here runs at CPL3 with IOPL=3.

#![no_std]
#![no_main]

mod acpi;
mod alloc;
mod avx;
mod clock;
mod cmdline;
mod io;
mod memcheck;
mod paging;
mod pci;
mod pvh;
mod report;
mod rt;
mod serial;
mod smp;
mod virtio;
mod work;

use core::arch::global_asm;

global_asm!(include_str!("boot.S"), options(att_syntax));

static mut BOOT: pvh::BootInfo = pvh::BootInfo {
    protocol: "",
    version: 0,
    memmap: [pvh::E820 {
        addr: 0,
        size: 0,
        kind: 0,
    }; pvh::MAX_E820],
    memmap_len: 0,
    cmdline: [0; 1024],
    cmdline_len: 0,
    rsdp: 0,
};

/// Every CPU arrives here at CPL3 from boot.S.
#[no_mangle]
extern "C" fn cpu_entry(index: u64, start_info: u64, boot_params: u64) -> ! {
    if index != 0 {
        smp::ap_entry(index as usize);
        ap_loop(index as usize)
    }
    serial::init();
    mask_pic();
    println!("guest=vmm-test-guest version={}", env!("CARGO_PKG_VERSION"));
    // SAFETY: only the BSP touches BOOT, before any AP runs.
    let boot = unsafe { &mut *core::ptr::addr_of_mut!(BOOT) };
    // PVH passes start_info in %ebx; Linux's 32-bit protocol the zero page
    // in %esi (and %ebx is then 0, or at least not start_info).
    let pvh_ok = start_info != 0 && io::read32(start_info) == pvh::START_INFO_MAGIC;
    let parsed = if pvh_ok || boot_params == 0 {
        pvh::parse(start_info, boot)
    } else {
        pvh::parse_linux(boot_params, boot)
    };
    if let Err(e) = parsed {
        match e {
            pvh::Error::BadMagic(m) => println!("pvh.error=bad_magic value={:#x}", m),
            pvh::Error::BadZeroPage(m) => println!("boot.error=bad_zero_page header={:#x}", m),
            pvh::Error::NoMemmap(v) => println!("pvh.error=no_memmap version={}", v),
        }
        report::finish(Some("bad_boot_info"));
    }
    let cmd = cmdline::Cmdline(boot.cmdline());
    println!(
        "boot.protocol={} version={:#x} cmdline=\"{}\"",
        boot.protocol,
        boot.version,
        boot.cmdline()
    );
    if let Some(p) = cmd.get("exit_port") {
        report::EXIT_PORT.store(
            cmdline::parse_u64(p).unwrap_or(0) as u32,
            core::sync::atomic::Ordering::SeqCst,
        );
    }

    memcheck::check(boot.memmap(), cmd.get("mem").and_then(cmdline::parse_u64));

    let required = cmd.get("acpi_require").unwrap_or("FACP,APIC,DSDT");
    let Some(acpi) = acpi::probe(boot.rsdp, required) else {
        report::finish(Some("no_acpi"));
    };
    report::PM1A_CNT.store(acpi.pm1a_cnt as u64, core::sync::atomic::Ordering::SeqCst);
    report::PM1A_EVT.store(acpi.pm1a_evt, core::sync::atomic::Ordering::SeqCst);
    report::S5_SLP_TYP.store(
        acpi.s5_slp_typ.unwrap_or(0) as u32,
        core::sync::atomic::Ordering::SeqCst,
    );
    if let Some(want) = cmd.get("cpus").and_then(cmdline::parse_u64) {
        println!("cpus.expected={} madt={}", want, acpi.cpus);
        report::check("cpus.count", want as usize == acpi.cpus);
    }

    // The CPU the VMM gave this vCPU (CPUID at CPL0), one line per leaf.
    for (leaf, sub) in io::REPORTED_LEAVES {
        let (a, b, c, d) = io::cpuid_vm(leaf, sub);
        println!(
            "cpu.cpuid leaf={:#x} index={} eax={:#x} ebx={:#x} ecx={:#x} edx={:#x}",
            leaf, sub, a, b, c, d
        );
    }

    clock::init_cpu(0, acpi.pm_tmr);
    smp::start_aps(&acpi, cmd.u64("ap_timeout_ms", 5000));
    clock::check(
        0,
        cmd.u64("clock_samples", 200_000) as u32,
        cmd.u64("max_jump_ms", 50),
    );

    let ecam = acpi.has_mcfg.then_some((acpi.ecam_base, acpi.ecam_end_bus));
    let bus = pci::probe(ecam);
    if cmd.get("pci_ecam").is_some() {
        report::check("pci.ecam_present", acpi.has_mcfg);
    }
    virtio::run(&bus, &cmd);

    let reason = work::run(boot.memmap(), &cmd);
    match cmd.get("end") {
        // Lifecycle tests of the VMM: leave some other way than the port.
        Some("reset") => report::reset(),
        Some("triple-fault") => {
            println!("ending with a triple fault");
            io::triple_fault()
        }
        Some("acpi") => report::EXIT_PORT.store(0, core::sync::atomic::Ordering::SeqCst),
        _ => {}
    }
    report::finish(reason)
}

/// Remaps the 8259 PICs away from the exception vectors (firmware leaves
/// them at 8) and masks every line: the guest only takes MSI-X.
fn mask_pic() {
    for (port, v) in [
        (0x20, 0x11),
        (0xa0, 0x11),
        (0x21, 0x20),
        (0xa1, 0x28),
        (0x21, 4),
        (0xa1, 2),
        (0x21, 1),
        (0xa1, 1),
    ] {
        io::outb(port, v);
    }
    io::outb(0x21, 0xff);
    io::outb(0xa1, 0xff);
}

fn ap_loop(index: usize) -> ! {
    work::ap_main(index)
}

/// Exceptions land here (boot.S rewrites the frame): print and fail.
#[no_mangle]
extern "C" fn fault_entry(vector: u64, error: u64, rip: u64, cr2: u64, cs: u64, cpu: u64) -> ! {
    serial::force_unlock();
    println!(
        "exception vector={} error={:#x} rip={:#x} cr2={:#x} cpl={} cpu={}",
        vector,
        error,
        rip,
        cr2,
        cs & 3,
        cpu
    );
    report::finish(Some("exception"))
}
