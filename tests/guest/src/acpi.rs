//! ACPI: find the RSDP, walk the XSDT (or RSDT), validate every checksum,
//! and pull out what the other checks need (MADT CPUs, MCFG base, FADT PM1
//! control block, the DSDT's \_S5 sleep type).

use crate::io::{read32, read64, read8};
use crate::println;
use crate::report;

pub const MAX_CPUS: usize = 32;

/// Where the RSDP was found, for `recheck`.
static RSDP: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Walks the tables again (the host's `a` command): catches tables that
/// changed after boot.
pub fn recheck() {
    let _ = probe(RSDP.load(core::sync::atomic::Ordering::SeqCst), "");
}

#[derive(Default)]
pub struct Acpi {
    pub rsdp: u64,
    pub revision: u8,
    pub root_is_xsdt: bool,
    pub lapic_base: u64,
    pub apic_ids: [u32; MAX_CPUS],
    pub cpus: usize,
    pub ioapics: usize,
    pub ecam_base: u64,
    pub ecam_end_bus: u8,
    pub has_mcfg: bool,
    pub pm1a_cnt: u32,
    pub pm1a_evt: u32,
    pub pm_tmr: u32,
    pub hw_reduced: bool,
    /// HW-reduced ACPI's SLEEP_CONTROL_REG: (address space, address).
    pub sleep_control: Option<(u8, u64)>,
    pub s5_slp_typ: Option<u8>,
    pub tables_seen: [[u8; 4]; 32],
    pub ntables: usize,
    pub bad_checksums: u32,
}

fn checksum(addr: u64, len: u64) -> u8 {
    (0..len).fold(0u8, |s, i| s.wrapping_add(read8(addr + i)))
}

fn sig(addr: u64) -> [u8; 4] {
    [
        read8(addr),
        read8(addr + 1),
        read8(addr + 2),
        read8(addr + 3),
    ]
}

fn sig_str(s: &[u8; 4]) -> &str {
    core::str::from_utf8(s).unwrap_or("????")
}

fn find_rsdp(hint: u64) -> Option<u64> {
    if hint != 0 && &sig(hint) == b"RSD " && read32(hint + 4) == 0x2052_5450 {
        return Some(hint);
    }
    // The BIOS area, 16-byte aligned, as ACPI specifies.
    (0xe0000u64..0x100000)
        .step_by(16)
        .find(|&a| read64(a) == u64::from_le_bytes(*b"RSD PTR "))
}

/// Parses and checks every table. Prints `acpi.*` lines and `check.acpi.*`.
pub fn probe(hint: u64, required: &str) -> Option<Acpi> {
    let mut a = Acpi::default();
    let Some(rsdp) = find_rsdp(hint) else {
        report::check("acpi.rsdp", false);
        return None;
    };
    a.rsdp = rsdp;
    RSDP.store(rsdp, core::sync::atomic::Ordering::SeqCst);
    a.revision = read8(rsdp + 15);
    let mut ok = checksum(rsdp, 20) == 0;
    if a.revision >= 2 {
        ok &= checksum(rsdp, read32(rsdp + 20) as u64) == 0;
    }
    println!(
        "acpi.rsdp={:#x} revision={} from_start_info={}",
        rsdp,
        a.revision,
        hint == rsdp
    );
    report::check("acpi.rsdp", ok);

    let xsdt = if a.revision >= 2 {
        read64(rsdp + 24)
    } else {
        0
    };
    let (root, entry_size) = if xsdt != 0 {
        (xsdt, 8)
    } else {
        (read32(rsdp + 16) as u64, 4)
    };
    a.root_is_xsdt = xsdt != 0;
    let mut tables = [0u64; 32];
    let mut n = 0;
    if root != 0 && table_ok(&mut a, root) {
        let len = read32(root + 4) as u64;
        let mut off = 36;
        while off + entry_size <= len && n < tables.len() {
            tables[n] = if entry_size == 8 {
                read64(root + off)
            } else {
                read32(root + off) as u64
            };
            n += 1;
            off += entry_size;
        }
    }
    println!(
        "acpi.root={} addr={:#x} entries={}",
        if a.root_is_xsdt { "XSDT" } else { "RSDT" },
        root,
        n
    );
    for &t in &tables[..n] {
        if !table_ok(&mut a, t) {
            continue;
        }
        match &sig(t) {
            b"FACP" => fadt(&mut a, t),
            b"APIC" => madt(&mut a, t),
            b"MCFG" => mcfg(&mut a, t),
            _ => {}
        }
    }
    report::check("acpi.checksums", a.bad_checksums == 0);
    for want in required.split(',').filter(|s| !s.is_empty()) {
        let have = a.tables_seen[..a.ntables]
            .iter()
            .any(|s| sig_str(s) == want);
        println!(
            "acpi.require.{}={}",
            want,
            if have { "present" } else { "missing" }
        );
        if !have {
            report::check("acpi.required_tables", false);
        }
    }
    Some(a)
}

/// Records a table, checks its checksum, prints it.
fn table_ok(a: &mut Acpi, t: u64) -> bool {
    let s = sig(t);
    let len = read32(t + 4) as u64;
    if !(36..=(1 << 20)).contains(&len) {
        println!(
            "acpi.table.{}={:#x} length={} bad_length",
            sig_str(&s),
            t,
            len
        );
        a.bad_checksums += 1;
        return false;
    }
    let good = checksum(t, len) == 0;
    if !good {
        a.bad_checksums += 1;
    }
    if a.ntables < a.tables_seen.len() {
        a.tables_seen[a.ntables] = s;
        a.ntables += 1;
    }
    println!(
        "acpi.table.{}={:#x} length={} revision={} checksum={}",
        sig_str(&s),
        t,
        len,
        read8(t + 8),
        if good { "ok" } else { "BAD" }
    );
    good
}

fn fadt(a: &mut Acpi, t: u64) {
    let len = read32(t + 4) as u64;
    a.pm1a_cnt = read32(t + 64);
    a.pm1a_evt = read32(t + 56);
    a.pm_tmr = read32(t + 76);
    let flags = if len >= 116 { read32(t + 112) } else { 0 };
    a.hw_reduced = flags & (1 << 20) != 0;
    if a.hw_reduced && len >= 256 && read64(t + 248) != 0 {
        a.sleep_control = Some((read8(t + 244), read64(t + 248)));
    }
    let x_dsdt = if len >= 148 { read64(t + 140) } else { 0 };
    let dsdt = if x_dsdt != 0 {
        x_dsdt
    } else {
        read32(t + 40) as u64
    };
    println!(
        "acpi.fadt pm1a_cnt={:#x} pm_tmr={:#x} hw_reduced={} sleep_control={:#x} dsdt={:#x}",
        a.pm1a_cnt,
        a.pm_tmr,
        a.hw_reduced,
        a.sleep_control.map_or(0, |s| s.1),
        dsdt
    );
    if dsdt != 0 && table_ok(a, dsdt) {
        a.s5_slp_typ = find_s5(dsdt);
        match a.s5_slp_typ {
            Some(v) => println!("acpi.dsdt.s5_slp_typ={}", v),
            None => println!("acpi.dsdt.s5=absent"),
        }
        println!(
            "acpi.dsdt.qword_memory_windows={}",
            qword_memory_windows(dsdt)
        );
        match pci0_uid(dsdt) {
            Some(v) => println!("acpi.dsdt.pci0_uid={}", v),
            None => println!("acpi.dsdt.pci0_uid=absent"),
        }
    }
}

/// `Name (_UID, n)` in Device (PCI0): the first `_UID` after `PCI0`.
fn pci0_uid(dsdt: u64) -> Option<u8> {
    let len = read32(dsdt + 4) as u64;
    let pci0 = (36..len.saturating_sub(4)).find(|&i| &sig(dsdt + i) == b"PCI0")?;
    let at = (pci0..len.saturating_sub(6)).find(|&i| &sig(dsdt + i) == b"_UID")?;
    if read8(dsdt + at - 1) != 0x08 {
        return None;
    }
    match read8(dsdt + at + 4) {
        0x00 => Some(0),
        0x01 => Some(1),
        0x0a => Some(read8(dsdt + at + 5)),
        _ => None,
    }
}

/// QWord Address Space Descriptors of memory (tag 0x8a, length 0x2b,
/// resource type 0) in the AML: the 64-bit PCI window of a _CRS.
fn qword_memory_windows(dsdt: u64) -> u32 {
    let len = read32(dsdt + 4) as u64;
    let mut n = 0;
    for i in 36..len.saturating_sub(3) {
        let at = |o: u64| read8(dsdt + i + o);
        if at(0) == 0x8a && at(1) == 0x2b && at(2) == 0 && at(3) == 0 {
            n += 1;
        }
    }
    n
}

/// Finds `_S5_` Package { SLP_TYPa, ... } in the AML and returns SLP_TYPa.
fn find_s5(dsdt: u64) -> Option<u8> {
    let len = read32(dsdt + 4) as u64;
    let mut i = 36;
    while i + 8 < len {
        if &sig(dsdt + i) == b"_S5_" && read8(dsdt + i + 4) == 0x12 {
            // PackageOp, PkgLength (1..4 bytes), NumElements, first element.
            let lead = read8(dsdt + i + 5);
            let mut p = i + 5 + 1 + (lead >> 6) as u64 + 1;
            let op = read8(dsdt + p);
            return Some(match op {
                0x0a => {
                    p += 1;
                    read8(dsdt + p)
                }
                0x00 => 0,
                0x01 => 1,
                v => v,
            });
        }
        i += 1;
    }
    None
}

fn madt(a: &mut Acpi, t: u64) {
    let len = read32(t + 4) as u64;
    a.lapic_base = read32(t + 36) as u64;
    let mut off = 44;
    while off + 2 <= len {
        let (ty, elen) = (read8(t + off), read8(t + off + 1) as u64);
        if elen < 2 {
            break;
        }
        match ty {
            0 => {
                let flags = read32(t + off + 4);
                if flags & 1 != 0 && a.cpus < MAX_CPUS {
                    a.apic_ids[a.cpus] = read8(t + off + 3) as u32;
                    a.cpus += 1;
                }
            }
            9 => {
                let flags = read32(t + off + 8);
                if flags & 1 != 0 && a.cpus < MAX_CPUS {
                    a.apic_ids[a.cpus] = read32(t + off + 4);
                    a.cpus += 1;
                }
            }
            1 => a.ioapics += 1,
            _ => {}
        }
        off += elen;
    }
    println!(
        "acpi.madt lapic={:#x} cpus={} ioapics={}",
        a.lapic_base, a.cpus, a.ioapics
    );
}

fn mcfg(a: &mut Acpi, t: u64) {
    let len = read32(t + 4) as u64;
    let mut off = 44;
    while off + 16 <= len {
        let base = read64(t + off);
        let seg = read32(t + off + 8) & 0xffff;
        let (start, end) = (read8(t + off + 10), read8(t + off + 11));
        println!(
            "acpi.mcfg base={:#x} segment={} buses={}-{}",
            base, seg, start, end
        );
        if seg == 0 && start == 0 && !a.has_mcfg {
            a.has_mcfg = true;
            a.ecam_base = base;
            a.ecam_end_bus = end;
        }
        off += 16;
    }
}
