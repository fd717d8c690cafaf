//! RTAS calls: QEMU's token numbers (`hw/ppc/spapr_rtas.c`, from
//! `RTAS_TOKEN_BASE` 0x2000), which the guest learns from the device
//! tree's `/rtas` node and passes back in each call.

/// The calls vmm's pseries board serves, with QEMU's tokens.
pub const CALLS: &[(&str, u32)] = &[
    ("display-character", 0x2000),
    ("get-time-of-day", 0x2001),
    ("set-time-of-day", 0x2002),
    ("power-off", 0x2003),
    ("system-reboot", 0x2004),
    ("query-cpu-stopped-state", 0x2005),
    ("start-cpu", 0x2006),
    ("stop-self", 0x2007),
    ("ibm,get-system-parameter", 0x2008),
    ("ibm,set-system-parameter", 0x2009),
    ("ibm,set-xive", 0x200a),
    ("ibm,get-xive", 0x200b),
    ("ibm,int-off", 0x200c),
    ("ibm,int-on", 0x200d),
    ("check-exception", 0x200e),
    ("event-scan", 0x200f),
    ("nvram-fetch", 0x2012),
    ("nvram-store", 0x2013),
    ("read-pci-config", 0x2014),
    ("write-pci-config", 0x2015),
    ("ibm,read-pci-config", 0x2016),
    ("ibm,write-pci-config", 0x2017),
    ("ibm,query-interrupt-source-number", 0x2018),
    ("ibm,change-msi", 0x2019),
    ("ibm,os-term", 0x201f),
];

/// The most argument or result cells a call is read with: RTAS buffers
/// are a page of 4-byte cells.
pub const MAX_CELLS: u32 = 1024;
