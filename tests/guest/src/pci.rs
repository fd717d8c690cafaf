//! PCI enumeration through the legacy 0xCF8/0xCFC ports and through ECAM
//! (the MCFG window), which must see the same functions with the same
//! configuration space; BAR sizing; capability and PCIe extended capability
//! lists, with the AER registers.

use crate::io::{inl, inw, outl, outw, read16, read32, write16, write32};
use crate::{paging, println, report};

pub const MAX_FUNCS: usize = 64;

#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub enum BarKind {
    #[default]
    None,
    Io,
    Mem32,
    Mem64,
}

#[derive(Clone, Copy, Default)]
pub struct Bar {
    pub addr: u64,
    pub size: u64,
    pub kind: BarKind,
    pub prefetch: bool,
}

#[derive(Clone, Copy, Default)]
pub struct Func {
    pub bdf: u16,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub hdr: u8,
    pub bars: [Bar; 6],
    pub caps: [(u8, u8); 16],
    pub ncaps: usize,
    pub ext_caps: [(u16, u16); 16],
    pub next_caps: usize,
}

impl Func {
    pub fn cap(&self, id: u8) -> Option<u8> {
        self.caps[..self.ncaps]
            .iter()
            .find(|c| c.0 == id)
            .map(|c| c.1)
    }
    pub fn caps(&self) -> &[(u8, u8)] {
        &self.caps[..self.ncaps]
    }
}

pub struct BdfFmt(pub u16);
impl core::fmt::Display for BdfFmt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{}",
            self.0 >> 8,
            (self.0 >> 3) & 0x1f,
            self.0 & 7
        )
    }
}

/// One way to reach configuration space.
#[derive(Clone, Copy)]
pub enum Cfg {
    Ports,
    Ecam(u64),
}

impl Cfg {
    pub fn read32(self, bdf: u16, off: u16) -> u32 {
        match self {
            Cfg::Ports => {
                outl(0xcf8, 0x8000_0000 | (bdf as u32) << 8 | (off as u32 & 0xfc));
                inl(0xcfc)
            }
            Cfg::Ecam(base) => read32(base + ((bdf as u64) << 12) + (off as u64 & !3)),
        }
    }
    pub fn write32(self, bdf: u16, off: u16, v: u32) {
        match self {
            Cfg::Ports => {
                outl(0xcf8, 0x8000_0000 | (bdf as u32) << 8 | (off as u32 & 0xfc));
                outl(0xcfc, v)
            }
            Cfg::Ecam(base) => write32(base + ((bdf as u64) << 12) + (off as u64 & !3), v),
        }
    }
    pub fn read16(self, bdf: u16, off: u16) -> u16 {
        match self {
            Cfg::Ports => {
                outl(0xcf8, 0x8000_0000 | (bdf as u32) << 8 | (off as u32 & 0xfc));
                inw(0xcfc + (off & 2))
            }
            Cfg::Ecam(base) => read16(base + ((bdf as u64) << 12) + (off as u64 & !1)),
        }
    }
    pub fn write16(self, bdf: u16, off: u16, v: u16) {
        match self {
            Cfg::Ports => {
                outl(0xcf8, 0x8000_0000 | (bdf as u32) << 8 | (off as u32 & 0xfc));
                outw(0xcfc + (off & 2), v)
            }
            Cfg::Ecam(base) => write16(base + ((bdf as u64) << 12) + (off as u64 & !1), v),
        }
    }
    pub fn read8(self, bdf: u16, off: u16) -> u8 {
        (self.read32(bdf, off) >> ((off & 3) * 8)) as u8
    }
}

pub struct Bus {
    pub funcs: [Func; MAX_FUNCS],
    pub n: usize,
    pub ecam: Option<u64>,
}

impl Bus {
    pub fn funcs(&self) -> &[Func] {
        &self.funcs[..self.n]
    }
    /// The configuration access to use for everything after enumeration.
    pub fn cfg(&self) -> Cfg {
        self.ecam.map(Cfg::Ecam).unwrap_or(Cfg::Ports)
    }
}

/// Lists bdfs reachable from bus 0 (bridges followed through their
/// secondary bus numbers).
fn scan(cfg: Cfg, bus: u8, depth: u32, out: &mut [u16; MAX_FUNCS], n: &mut usize) {
    for dev in 0..32u16 {
        let bdf0 = (bus as u16) << 8 | dev << 3;
        if cfg.read32(bdf0, 0) & 0xffff == 0xffff {
            continue;
        }
        let multi = cfg.read8(bdf0, 0x0e) & 0x80 != 0;
        for func in 0..if multi { 8 } else { 1 } {
            let bdf = bdf0 | func;
            if cfg.read32(bdf, 0) & 0xffff == 0xffff {
                continue;
            }
            if *n < MAX_FUNCS {
                out[*n] = bdf;
                *n += 1;
            }
            if cfg.read8(bdf, 0x0e) & 0x7f == 1 && depth < 8 {
                let secondary = cfg.read8(bdf, 0x19);
                if secondary > bus {
                    scan(cfg, secondary, depth + 1, out, n);
                }
            }
        }
    }
}

fn size_bars(cfg: Cfg, f: &mut Func) {
    let nbars = match f.hdr & 0x7f {
        0 => 6,
        1 => 2,
        _ => 0,
    };
    let cmd = cfg.read16(f.bdf, 4);
    cfg.write16(f.bdf, 4, cmd & !3); // no decoding while sizing
    let mut i = 0;
    while i < nbars {
        let off = 0x10 + 4 * i as u16;
        let orig = cfg.read32(f.bdf, off);
        cfg.write32(f.bdf, off, 0xffff_ffff);
        let probe = cfg.read32(f.bdf, off);
        cfg.write32(f.bdf, off, orig);
        if probe == 0 {
            i += 1;
            continue;
        }
        let bar = &mut f.bars[i];
        if orig & 1 != 0 {
            bar.kind = BarKind::Io;
            bar.addr = (orig & !3) as u64;
            bar.size = ((!(probe & !3)).wrapping_add(1) & 0xffff) as u64;
        } else if (orig >> 1) & 3 == 2 && i + 1 < nbars {
            let hoff = off + 4;
            let horig = cfg.read32(f.bdf, hoff);
            cfg.write32(f.bdf, hoff, 0xffff_ffff);
            let hprobe = cfg.read32(f.bdf, hoff);
            cfg.write32(f.bdf, hoff, horig);
            let mask = (hprobe as u64) << 32 | (probe & !0xf) as u64;
            bar.kind = BarKind::Mem64;
            bar.prefetch = orig & 8 != 0;
            bar.addr = (horig as u64) << 32 | (orig & !0xf) as u64;
            bar.size = (!mask).wrapping_add(1);
            i += 1;
        } else {
            bar.kind = BarKind::Mem32;
            bar.prefetch = orig & 8 != 0;
            bar.addr = (orig & !0xf) as u64;
            bar.size = (!(probe & !0xf)).wrapping_add(1) as u64;
        }
        i += 1;
    }
    cfg.write16(f.bdf, 4, cmd);
}

fn walk_caps(cfg: Cfg, f: &mut Func) {
    if cfg.read16(f.bdf, 6) & 0x10 == 0 {
        return;
    }
    let mut ptr = cfg.read8(f.bdf, 0x34) & 0xfc;
    let mut guard = 0;
    while ptr >= 0x40 && guard < 48 && f.ncaps < f.caps.len() {
        let id = cfg.read8(f.bdf, ptr as u16);
        f.caps[f.ncaps] = (id, ptr);
        f.ncaps += 1;
        ptr = cfg.read8(f.bdf, ptr as u16 + 1) & 0xfc;
        guard += 1;
    }
}

fn walk_ext_caps(cfg: Cfg, f: &mut Func) {
    let mut off = 0x100u16;
    let mut guard = 0;
    while guard < 64 && f.next_caps < f.ext_caps.len() {
        let hdr = cfg.read32(f.bdf, off);
        if hdr == 0 || hdr == 0xffff_ffff {
            break;
        }
        f.ext_caps[f.next_caps] = ((hdr & 0xffff) as u16, off);
        f.next_caps += 1;
        let next = ((hdr >> 20) & 0xffc) as u16;
        if next < 0x100 {
            break;
        }
        off = next;
        guard += 1;
    }
}

/// Enumerates, sizes, prints and cross-checks. `ecam`: base and last bus
/// from the MCFG, if any.
pub fn probe(ecam: Option<(u64, u8)>) -> Bus {
    let mut bus = Bus {
        funcs: [Func::default(); MAX_FUNCS],
        n: 0,
        ecam: None,
    };
    let mut port_bdfs = [0u16; MAX_FUNCS];
    let mut nports = 0;
    scan(Cfg::Ports, 0, 0, &mut port_bdfs, &mut nports);

    let ecam_cfg = ecam.and_then(|(base, end)| {
        let len = ((end as u64) + 1) << 20;
        match paging::map(base, len) {
            Ok(()) => Some(Cfg::Ecam(base)),
            Err(_) => {
                println!("pci.ecam_unmappable base={:#x}", base);
                None
            }
        }
    });
    bus.ecam = ecam_cfg.map(|c| match c {
        Cfg::Ecam(b) => b,
        Cfg::Ports => 0,
    });

    for &bdf in &port_bdfs[..nports] {
        let mut f = Func {
            bdf,
            ..Default::default()
        };
        let id = Cfg::Ports.read32(bdf, 0);
        f.vendor = id as u16;
        f.device = (id >> 16) as u16;
        f.class = Cfg::Ports.read32(bdf, 8) >> 8;
        f.hdr = Cfg::Ports.read8(bdf, 0x0e);
        size_bars(Cfg::Ports, &mut f);
        walk_caps(Cfg::Ports, &mut f);
        if let (Some(cfg), true) = (ecam_cfg, f.cap(0x10).is_some()) {
            walk_ext_caps(cfg, &mut f);
        }
        bus.funcs[bus.n] = f;
        bus.n += 1;
    }
    println!(
        "pci.functions={} access=cf8{}",
        bus.n,
        if ecam_cfg.is_some() { "+ecam" } else { "" }
    );
    for f in bus.funcs() {
        print_func(f, ecam_cfg);
    }

    if let Some(cfg) = ecam_cfg {
        let mut ecam_bdfs = [0u16; MAX_FUNCS];
        let mut necam = 0;
        scan(cfg, 0, 0, &mut ecam_bdfs, &mut necam);
        let same_set = port_bdfs[..nports] == ecam_bdfs[..necam];
        let mut mismatches = 0;
        for &bdf in &port_bdfs[..nports] {
            for off in (0..256u16).step_by(4) {
                let (a, b) = (Cfg::Ports.read32(bdf, off), cfg.read32(bdf, off));
                if a != b {
                    mismatches += 1;
                    println!(
                        "pci.{}.mismatch offset={:#x} cf8={:#x} ecam={:#x}",
                        BdfFmt(bdf),
                        off,
                        a,
                        b
                    );
                }
            }
        }
        println!(
            "pci.ecam_functions={} cf8_functions={} config_mismatches={}",
            necam, nports, mismatches
        );
        report::check("pci.cf8_ecam_agree", same_set && mismatches == 0);
    }
    bus
}

fn print_func(f: &Func, ecam: Option<Cfg>) {
    use core::fmt::Write;
    let mut caps = Buf::new();
    for (i, (id, _)) in f.caps().iter().enumerate() {
        let _ = write!(caps, "{}{:02x}", if i > 0 { "," } else { "" }, id);
    }
    let mut ext = Buf::new();
    for (i, (id, _)) in f.ext_caps[..f.next_caps].iter().enumerate() {
        let _ = write!(ext, "{}{:04x}", if i > 0 { "," } else { "" }, id);
    }
    println!(
        "pci.{} vendor={:#06x} device={:#06x} class={:#08x} hdr={:#04x} caps={} ext_caps={}",
        BdfFmt(f.bdf),
        f.vendor,
        f.device,
        f.class,
        f.hdr,
        caps.as_str(),
        ext.as_str()
    );
    for (i, b) in f.bars.iter().enumerate() {
        let kind = match b.kind {
            BarKind::None => continue,
            BarKind::Io => "io",
            BarKind::Mem32 => "mem32",
            BarKind::Mem64 => "mem64",
        };
        println!(
            "pci.{}.bar{}={:#x} size={:#x} type={}{}",
            BdfFmt(f.bdf),
            i,
            b.addr,
            b.size,
            kind,
            if b.prefetch { ",prefetch" } else { "" }
        );
    }
    if f.hdr & 0x7f == 1 {
        // A bridge: whether the guest may set its Secondary Latency Timer
        // (QEMU up to 8.1 let it on PCI Express; 8.2 made it read-only).
        let slt = Cfg::Ports.read8(f.bdf, 0x1b);
        let dword = Cfg::Ports.read32(f.bdf, 0x18);
        Cfg::Ports.write32(f.bdf, 0x18, dword | 0xff00_0000);
        let writable = Cfg::Ports.read8(f.bdf, 0x1b);
        Cfg::Ports.write32(f.bdf, 0x18, dword);
        println!(
            "pci.{}.bridge secondary_latency_timer={:#x} writable={:#x}",
            BdfFmt(f.bdf),
            slt,
            writable
        );
    }
    if let Some(pcie) = f.cap(0x10) {
        let flags = Cfg::Ports.read16(f.bdf, pcie as u16 + 2);
        let lnkcap = Cfg::Ports.read32(f.bdf, pcie as u16 + 0x0c);
        println!(
            "pci.{}.pcie version={} port_type={} link_max_speed={} link_max_width={}",
            BdfFmt(f.bdf),
            flags & 0xf,
            (flags >> 4) & 0xf,
            lnkcap & 0xf,
            (lnkcap >> 4) & 0x3f
        );
    }
    if let (Some(cfg), Some(&(_, off))) =
        (ecam, f.ext_caps[..f.next_caps].iter().find(|c| c.0 == 1))
    {
        let r = |o: u16| cfg.read32(f.bdf, off + o);
        // Which PCI_ERR_UNCOR_MASK bits the guest may change: write all
        // ones, read back, restore.
        let mask = r(0x08);
        cfg.write32(f.bdf, off + 0x08, 0xffff_ffff);
        let writable = r(0x08);
        cfg.write32(f.bdf, off + 0x08, mask);
        println!(
            "pci.{}.aer offset={:#x} uncor_status={:#x} uncor_mask={:#x} uncor_severity={:#x} cor_status={:#x} cor_mask={:#x} cap_control={:#x} uncor_mask_writable={:#x}",
            BdfFmt(f.bdf),
            off,
            r(0x04),
            r(0x08),
            r(0x0c),
            r(0x10),
            r(0x14),
            r(0x18),
            writable
        );
    }
}

/// A small stack string for building lines.
pub struct Buf {
    b: [u8; 160],
    n: usize,
}
impl Buf {
    pub fn new() -> Self {
        Buf { b: [0; 160], n: 0 }
    }
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.b[..self.n]).unwrap_or("")
    }
}
impl core::fmt::Write for Buf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let take = s.len().min(self.b.len() - self.n);
        self.b[self.n..self.n + take].copy_from_slice(&s.as_bytes()[..take]);
        self.n += take;
        Ok(())
    }
}
