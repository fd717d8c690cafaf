//! The pseries device tree (QEMU's `spapr_build_fdt` for what vmm's board
//! has): the root, memory, `/chosen`, `/rtas` with its call tokens, the
//! XICS interrupt controller, and PHB 0 with its windows (`ranges`), DMA
//! window and interrupt map, written in the flattened format by `dtb`.
//! Node and property names and encodings are QEMU's, so a guest sees the same tree; `-machine dumpdtb=FILE` writes
//! it. The VIO bus (`/vdevice`) has the console's vty and the NVRAM;
//! `/cpus` a node a core ([`super::cpu`] has the models). What vmm's board
//! does not have (the event sources, dynamic reconfiguration connectors)
//! is not in it yet.

use super::dtb::{Error as FdtError, Writer as FdtWriter};

type FdtWriterResult<T> = Result<T, FdtError>;

/// QEMU's fixed phandle of the interrupt controller (`PHANDLE_INTC`).
pub const PHANDLE_INTC: u32 = 0x1111;

/// One PCI host bridge as the tree describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phb {
    pub buid: u64,
    pub io_win_addr: u64,
    pub io_win_size: u64,
    pub mem_win_addr: u64,
    pub mem_win_size: u64,
    /// The PCI address of the 32-bit window's first byte.
    pub mem_win_pciaddr: u64,
    pub mem64_win_addr: u64,
    pub mem64_win_size: u64,
    pub mem64_win_pciaddr: u64,
    /// The LSI each interrupt pin raises.
    pub lsi: [u32; 4],
    pub dma_liobn: u32,
    pub dma_win_addr: u64,
    pub dma_win_size: u64,
    /// `ibm,pe-total-#msi`: the MSIs the platform can give.
    pub total_msi: u32,
}

/// The vCPUs as `/cpus` shows them: a node a core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cpus {
    pub model: &'static super::cpu::CpuModel,
    pub cores: Vec<Core>,
    /// `ibm,segment-page-sizes` ([`super::cpu::segment_page_sizes`]).
    pub page_sizes: Vec<u32>,
    /// log2 of the hash page table's bytes (`ibm,pft-size`).
    pub hpt_order: u32,
}

/// One core: its threads' interrupt servers (the first is its `reg`) and
/// its socket (`ibm,chip-id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Core {
    pub servers: Vec<u32>,
    pub chip: u32,
}

/// The timebase and core clocks QEMU gives a guest outside KVM (on
/// KVM-PPC they are the host's): 512 MHz, 1 GHz.
pub const TIMEBASE_HZ: u32 = 512_000_000;
pub const CLOCK_HZ: u32 = 1_000_000_000;

/// What the tree says of the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spapr {
    pub ram: u64,
    pub cmdline: String,
    /// `linux,pci-probe-only = 0` in `/chosen` (QEMU's pseries-4.2 and later).
    pub pci_probe: bool,
    /// vCPU servers the interrupt controller serves.
    pub max_cpus: u32,
    pub cpus: Cpus,
    /// The room RTAS has ([`rtas_size`]).
    pub rtas_size: u32,
    pub phb: Phb,
    /// The console's vty on the VIO bus: its address and interrupt source
    /// (also `/chosen`'s stdout), if the board has one.
    pub vty: Option<(u32, u32)>,
    /// The NVRAM on the VIO bus: its address, interrupt source and size.
    pub nvram: (u32, u32, u32),
    /// Where a kernel booted without firmware finds what firmware would
    /// have set up (`-kernel`).
    pub boot: Option<Boot>,
}

/// What a directly booted kernel learns from the tree (as kexec leaves
/// it): where RTAS was put, the initrd, the memory it must not take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boot {
    pub rtas: u64,
    /// Its first byte and one past its last.
    pub initrd: Option<(u64, u64)>,
    /// (address, size) of each range the kernel must leave alone.
    pub reserved: Vec<(u64, u64)>,
}

/// `rtas-size` for a guest of `max_cpus` CPUs, QEMU's: the blob's 20
/// bytes, the error log RTAS may fill (2 KiB), 16 bytes a CPU and 8 more.
pub fn rtas_size(max_cpus: u32) -> u32 {
    20 + 2048 + 16 * max_cpus + 8
}

/// `ranges` of a PCI bus node: per window `phys.hi` (its space), the PCI
/// address, the CPU address, the size (3 + 2 + 2 cells).
fn ranges(p: &Phb) -> Vec<u32> {
    let mut v = vec![];
    let mut window = |space: u32, pci: u64, cpu: u64, size: u64| {
        v.extend_from_slice(&[
            space << 24,
            (pci >> 32) as u32,
            pci as u32,
            (cpu >> 32) as u32,
            cpu as u32,
            (size >> 32) as u32,
            size as u32,
        ]);
    };
    window(1, 0, p.io_win_addr, p.io_win_size);
    window(2, p.mem_win_pciaddr, p.mem_win_addr, p.mem_win_size);
    if p.mem64_win_size != 0 {
        window(3, p.mem64_win_pciaddr, p.mem64_win_addr, p.mem64_win_size);
    }
    v
}

/// `interrupt-map`: for each of the bus's 32 slots and 4 pins, the LSI
/// the pin raises after the usual swizzle (slot + pin).
fn interrupt_map(p: &Phb) -> Vec<u32> {
    let mut v = vec![];
    for slot in 0..32u32 {
        for pin in 0..4u32 {
            let irq = p.lsi[((slot + pin) % 4) as usize];
            v.extend_from_slice(&[slot << 11, 0, 0, pin + 1, PHANDLE_INTC, irq, 1]);
        }
    }
    v
}

fn phb_node(f: &mut FdtWriter, p: &Phb) -> FdtWriterResult<()> {
    let node = f.begin_node(&format!("pci@{:x}", p.buid))?;
    f.property_string("device_type", "pci")?;
    f.property_string("compatible", "IBM,Logical_PHB")?;
    f.property_u32("#interrupt-cells", 1)?;
    f.property_null("used-by-rtas")?;
    f.property_array_u32("bus-range", &[0, 0xff])?;
    f.property_array_u32("ranges", &ranges(p))?;
    f.property_array_u32("reg", &[(p.buid >> 32) as u32, p.buid as u32, 0, 0])?;
    f.property_u32("ibm,pci-config-space-type", 1)?;
    f.property_u32("ibm,pe-total-#msi", p.total_msi)?;
    f.property_array_u32("interrupt-map-mask", &[0xf800, 0, 0, 0xffff_ffff])?;
    f.property_array_u32("interrupt-map", &interrupt_map(p))?;
    f.property_u32("ibm,#dma-address-cells", 2)?;
    f.property_u32("ibm,#dma-size-cells", 2)?;
    f.property_array_u32(
        "ibm,dma-window",
        &[
            p.dma_liobn,
            (p.dma_win_addr >> 32) as u32,
            p.dma_win_addr as u32,
            (p.dma_win_size >> 32) as u32,
            p.dma_win_size as u32,
        ],
    )?;
    f.property_u32("qemu,phb-enumerated", 1)?;
    f.property_u32("#address-cells", 3)?;
    f.property_u32("#size-cells", 2)?;
    f.end_node(node)
}

/// `/cpus`, as QEMU's `spapr_dt_cpus` for what vmm has (no CPU hotplug:
/// no dynamic reconfiguration connectors; one NUMA node).
fn cpus_node(f: &mut FdtWriter, c: &Cpus) -> FdtWriterResult<()> {
    let cpus = f.begin_node("cpus")?;
    f.property_u32("#address-cells", 1)?;
    f.property_u32("#size-cells", 0)?;
    let m = c.model;
    for core in &c.cores {
        let reg = core.servers[0];
        let node = f.begin_node(&format!("{}@{reg:x}", m.fw_name))?;
        f.property_u32("reg", reg)?;
        f.property_string("device_type", "cpu")?;
        f.property_u32("cpu-version", m.pvr)?;
        f.property_u32("d-cache-block-size", 128)?;
        f.property_u32("d-cache-line-size", 128)?;
        f.property_u32("i-cache-block-size", 128)?;
        f.property_u32("i-cache-line-size", 128)?;
        f.property_u32("d-cache-size", 0x8000)?;
        f.property_u32("i-cache-size", 0x8000)?;
        f.property_u32("timebase-frequency", TIMEBASE_HZ)?;
        f.property_u32("clock-frequency", CLOCK_HZ)?;
        f.property_u32("slb-size", 32)?;
        f.property_u32("ibm,slb-size", 32)?;
        f.property_string("status", "okay")?;
        f.property_null("64-bit")?;
        f.property_u32("ibm,purr", 1)?;
        f.property_u32("ibm,spurr", 1)?;
        // 256 MiB and 1 TiB segments.
        f.property_array_u32(
            "ibm,processor-segment-sizes",
            &[0x1c, 0x28, 0xffff_ffff, 0xffff_ffff],
        )?;
        // VSX (cap-vsx), decimal floating point (cap-dfp).
        f.property_u32("ibm,vmx", 2)?;
        f.property_u32("ibm,dfp", 1)?;
        f.property_array_u32("ibm,segment-page-sizes", &c.page_sizes)?;
        f.property("ibm,pa-features", m.pa_features)?;
        f.property_u32("ibm,chip-id", core.chip)?;
        f.property_array_u32("ibm,pft-size", &[0, c.hpt_order])?;
        f.property_array_u32("ibm,ppc-interrupt-server#s", &core.servers)?;
        let gservers: Vec<u32> = core.servers.iter().flat_map(|s| [*s, 0]).collect();
        f.property_array_u32("ibm,ppc-interrupt-gserver#s", &gservers)?;
        if !m.radix_ap.is_empty() {
            f.property_array_u32("ibm,processor-radix-AP-encodings", m.radix_ap)?;
        }
        if let Some(bits) = m.dec_bits {
            f.property_u32("ibm,dec-bits", bits)?;
        }
        f.end_node(node)?;
    }
    f.end_node(cpus)
}

/// The flattened tree.
pub fn build(m: &Spapr) -> FdtWriterResult<Vec<u8>> {
    let reserved: Vec<(u64, u64)> = m.boot.iter().flat_map(|b| b.reserved.clone()).collect();
    let mut f = FdtWriter::new(&reserved);
    let root = f.begin_node("")?;
    f.property_string("device_type", "chrp")?;
    f.property_string("model", "IBM pSeries (emulated by qemu)")?;
    f.property_string("compatible", "qemu,pseries")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;

    let chosen = f.begin_node("chosen")?;
    if !m.cmdline.is_empty() {
        f.property_string("bootargs", &m.cmdline)?;
    }
    if m.pci_probe {
        f.property_u32("linux,pci-probe-only", 0)?;
    }
    if let Some((reg, _)) = m.vty {
        let path = format!("/vdevice/vty@{reg:x}");
        f.property_string("stdout-path", &path)?;
        f.property_string("linux,stdout-path", &path)?;
    }
    if let Some((start, end)) = m.boot.as_ref().and_then(|b| b.initrd) {
        f.property_u32("linux,initrd-start", start as u32)?;
        f.property_u32("linux,initrd-end", end as u32)?;
    }
    f.end_node(chosen)?;

    let rtas = f.begin_node("rtas")?;
    for (name, token) in super::rtas::CALLS {
        f.property_u32(name, *token)?;
    }
    f.property_u32("rtas-size", m.rtas_size)?;
    // As QEMU's: event-scan once a second at most, error logs up to
    // 2 KiB, and ibm,os-term returns (the OS may then dump and go on).
    f.property_u32("rtas-error-log-max", 0x800)?;
    f.property_u32("rtas-event-scan-rate", 1)?;
    f.property_null("ibm,extended-os-term")?;
    // MSI-X through ibm,change-msi.
    f.property_null("ibm,change-msix-capable")?;
    if let Some(b) = &m.boot {
        // Instantiated already, as kexec tells a kernel.
        f.property_u32("linux,rtas-base", b.rtas as u32)?;
        f.property_u32("linux,rtas-entry", b.rtas as u32)?;
    }
    f.end_node(rtas)?;

    // XICS, as QEMU's `spapr_dt_xics`.
    let intc = f.begin_node("interrupt-controller")?;
    f.property_string("device_type", "PowerPC-External-Interrupt-Presentation")?;
    f.property_string("compatible", "IBM,ppc-xicp")?;
    f.property_null("interrupt-controller")?;
    f.property_array_u32("ibm,interrupt-server-ranges", &[0, m.max_cpus])?;
    f.property_u32("#interrupt-cells", 2)?;
    f.property_u32("linux,phandle", PHANDLE_INTC)?;
    f.property_u32("phandle", PHANDLE_INTC)?;
    f.end_node(intc)?;

    // The VIO bus, as QEMU's `spapr_dt_vdevice`: its devices' interrupts
    // are (source, 0: edge) pairs on the XICS.
    let vdevice = f.begin_node("vdevice")?;
    f.property_string("device_type", "vdevice")?;
    f.property_string("compatible", "IBM,vdevice")?;
    f.property_u32("#address-cells", 1)?;
    f.property_u32("#size-cells", 0)?;
    f.property_u32("#interrupt-cells", 2)?;
    f.property_null("interrupt-controller")?;
    if let Some((reg, irq)) = m.vty {
        let vty = f.begin_node(&format!("vty@{reg:x}"))?;
        f.property_u32("reg", reg)?;
        f.property_string("device_type", "serial")?;
        f.property_string("compatible", "hvterm1")?;
        f.property_array_u32("interrupts", &[irq, 0])?;
        f.end_node(vty)?;
    }
    let (reg, irq, bytes) = m.nvram;
    let nvram = f.begin_node(&format!("nvram@{reg:x}"))?;
    f.property_u32("reg", reg)?;
    f.property_string("device_type", "nvram")?;
    f.property_string("compatible", "qemu,spapr-nvram")?;
    f.property_array_u32("interrupts", &[irq, 0])?;
    f.property_u32("#bytes", bytes)?;
    f.end_node(nvram)?;
    f.end_node(vdevice)?;

    cpus_node(&mut f, &m.cpus)?;

    let mem = f.begin_node("memory@0")?;
    f.property_string("device_type", "memory")?;
    f.property_array_u64("reg", &[0, m.ram])?;
    f.end_node(mem)?;

    phb_node(&mut f, &m.phb)?;
    f.end_node(root)?;
    f.finish()
}

pub use super::dtb::{parse, Nodes};

#[cfg(test)]
mod tests {
    use super::*;

    fn phb() -> Phb {
        Phb {
            buid: 0x0800_0000_2000_0000,
            io_win_addr: 0x2000_0000_0000,
            io_win_size: 0x1_0000,
            mem_win_addr: 0x2000_8000_0000,
            mem_win_size: 0x8000_0000,
            mem_win_pciaddr: 0x8000_0000,
            mem64_win_addr: 0x2100_0000_0000,
            mem64_win_size: 0x100_0000_0000,
            mem64_win_pciaddr: 0x2100_0000_0000,
            lsi: [0x1200, 0x1201, 0x1202, 0x1203],
            dma_liobn: 0x8000_0000,
            dma_win_addr: 0,
            dma_win_size: 0x4000_0000,
            total_msi: 0xd00,
        }
    }

    /// QEMU 7.2's cells for PHB 0 (its `dumpdtb` of pseries-7.2).
    #[test]
    fn ranges_and_interrupt_map_are_qemus_cells() {
        assert_eq!(
            ranges(&phb()),
            [
                0x100_0000,
                0,
                0,
                0x2000,
                0,
                0,
                0x1_0000, //
                0x200_0000,
                0,
                0x8000_0000,
                0x2000,
                0x8000_0000,
                0,
                0x8000_0000, //
                0x300_0000,
                0x2100,
                0,
                0x2100,
                0,
                0x100,
                0,
            ]
        );
        let map = interrupt_map(&phb());
        assert_eq!(map.len(), 32 * 4 * 7);
        assert_eq!(map[..7], [0, 0, 0, 1, 0x1111, 0x1200, 1]);
        // Slot 1, pin A: swizzled to the second LSI.
        assert_eq!(map[28..35], [0x800, 0, 0, 1, 0x1111, 0x1201, 1]);
        let dtb = build(&Spapr {
            ram: 256 << 20,
            cmdline: "console=hvc0".into(),
            pci_probe: true,
            max_cpus: 16,
            cpus: Cpus {
                model: &super::super::cpu::POWER8,
                cores: vec![
                    Core {
                        servers: vec![0],
                        chip: 0,
                    },
                    Core {
                        servers: vec![8],
                        chip: 1,
                    },
                ],
                page_sizes: super::super::cpu::segment_page_sizes(16),
                hpt_order: 21,
            },
            rtas_size: rtas_size(1),
            phb: phb(),
            vty: Some((0x7100_0000, 0x1100)),
            nvram: (0x7100_0001, 0x1101, 0x1_0000),
            boot: Some(Boot {
                rtas: 0xfef_f000,
                initrd: Some((0x3_0000, 0x4_0000)),
                reserved: vec![(0, 0x2_0000), (0xfef_f000, 0x1000)],
            }),
        })
        .unwrap();
        assert_eq!(dtb[..4], [0xd0, 0x0d, 0xfe, 0xed]);
        let nodes = parse(&dtb).unwrap();
        assert_eq!(nodes["/"]["compatible"], b"qemu,pseries\0");
        assert_eq!(nodes["/chosen"]["bootargs"], b"console=hvc0\0");
        assert_eq!(nodes["/chosen"]["linux,initrd-start"], [0, 3, 0, 0]);
        assert_eq!(nodes["/rtas"]["linux,rtas-entry"], [0x0f, 0xef, 0xf0, 0]);
        // QEMU 7.2's, for one CPU and for four.
        assert_eq!(nodes["/rtas"]["rtas-size"], 0x82cu32.to_be_bytes());
        assert_eq!(rtas_size(4), 0x85c);
        // The reserve map (after the header): the kernel, then RTAS.
        let off = u32::from_be_bytes(dtb[16..20].try_into().unwrap()) as usize;
        assert_eq!(dtb[off + 8..off + 16], 0x2_0000u64.to_be_bytes());
        assert_eq!(dtb[off + 16..off + 24], 0xfef_f000u64.to_be_bytes());
        assert_eq!(nodes["/chosen"]["stdout-path"], b"/vdevice/vty@71000000\0");
        assert_eq!(
            nodes["/vdevice/vty@71000000"]["interrupts"],
            [0, 0, 0x11, 0, 0, 0, 0, 0]
        );
        let ranges = &nodes["/pci@800000020000000"]["ranges"];
        assert_eq!(ranges.len(), 21 * 4);
        assert_eq!(ranges[..4], [1, 0, 0, 0]);
        // A node a core, by its first thread's server.
        let cpu = &nodes["/cpus/PowerPC,POWER8@8"];
        assert_eq!(cpu["reg"], 8u32.to_be_bytes());
        assert_eq!(cpu["ibm,chip-id"], 1u32.to_be_bytes());
        assert_eq!(cpu["ibm,pft-size"], [0, 0, 0, 0, 0, 0, 0, 21]);
        assert_eq!(cpu["ibm,pa-features"].len(), 26);
        assert!(nodes.contains_key("/cpus/PowerPC,POWER8@0"));
        assert_eq!(
            nodes["/vdevice/nvram@71000001"]["#bytes"],
            0x1_0000u32.to_be_bytes()
        );
        assert!(parse(&dtb[..dtb.len() - 8]).is_none(), "cut short");
        assert!(parse(b"not a tree at all").is_none());
    }
}
