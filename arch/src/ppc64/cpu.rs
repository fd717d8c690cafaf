//! The pseries machine types' CPUs as their device tree shows them: the
//! model QEMU makes by default for each machine type (checked against QEMU
//! 7.2's `dumpdtb` under TCG), and the hash MMU's page sizes the machine
//! lets a guest map (QEMU's POWER7 segment table, which its POWER8 and
//! POWER9 share, filtered as `spapr_pagesize_cb` filters it). On KVM-PPC
//! QEMU takes the model, clocks and page sizes from the host instead.

/// One CPU model's device tree constants.
#[derive(Debug, PartialEq, Eq)]
pub struct CpuModel {
    /// The node's name before `@` (QEMU's `fw_name`).
    pub fw_name: &'static str,
    /// The processor version register (`cpu-version`).
    pub pvr: u32,
    /// `ibm,pa-features` (QEMU's table for the ISA level, with 1 TiB
    /// segments' cache-inhibited large pages; no transactional memory:
    /// `cap-htm` off).
    pub pa_features: &'static [u8],
    /// `ibm,processor-radix-AP-encodings` (ISA 3.0 and later).
    pub radix_ap: &'static [u32],
    /// `ibm,dec-bits`: the large decrementer's width (`cap-large-decr`).
    pub dec_bits: Option<u32>,
}

pub const POWER7: CpuModel = CpuModel {
    fw_name: "PowerPC,POWER7",
    pvr: 0x003f_0203,
    pa_features: &[0x06, 0x00, 0xf6, 0x3f, 0xc7, 0x00, 0x80, 0xc0],
    radix_ap: &[],
    dec_bits: None,
};

pub const POWER8: CpuModel = CpuModel {
    fw_name: "PowerPC,POWER8",
    pvr: 0x004d_0200,
    pa_features: &[
        0x18, 0x00, 0xf6, 0x3f, 0xc7, 0xc0, 0x80, 0xf0, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x80, 0x00, 0x80, 0x00, 0x80, 0x00, 0x00, 0x00,
    ],
    radix_ap: &[],
    dec_bits: None,
};

pub const POWER9: CpuModel = CpuModel {
    fw_name: "PowerPC,POWER9",
    pvr: 0x004e_1200,
    pa_features: &[
        0x42, 0x00, 0xf6, 0x3f, 0xc7, 0xc0, 0x80, 0xf0, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x80, 0x00, 0x80, 0x00, 0x80, 0x00, 0x00, 0x00, 0x80, 0x00, 0x80, 0x00,
        0x80, 0x00, 0x80, 0x00, 0x80, 0x00, 0xc0, 0x00, 0x80, 0x00, 0x80, 0x00, 0x80, 0x00, 0x80,
        0x00, 0x80, 0x00, 0x80, 0x00, 0x80, 0x00, 0x80, 0x00, 0x80, 0x00, 0x80, 0x00, 0x80, 0x00,
        0x80, 0x00, 0x80, 0x00, 0x80, 0x00, 0x00, 0x00,
    ],
    radix_ap: &[0x0c, 0xa000_0010, 0x2000_0015, 0x4000_001e],
    dec_bits: Some(56),
};

/// The CPU QEMU makes by default for pseries machine type `version`:
/// POWER7 v2.3 up to 2.7, POWER8 v2.0 up to 3.1, then POWER9 v2.0 (as
/// QEMU 7.2 and 8.0; QEMU 9.0 and later make POWER9 v2.2 for pseries-8.2
/// and older and POWER10 for newer types, which vmm does not model).
pub fn default_for(version: (u32, u32)) -> &'static CpuModel {
    if version <= (2, 7) {
        &POWER7
    } else if version <= (3, 1) {
        &POWER8
    } else {
        &POWER9
    }
}

/// The largest page a guest of machine type `version` may map: QEMU's
/// `cap-hpt-max-page-size`, 64 KiB from pseries-3.0; before, all the CPU
/// has (16 GiB, what QEMU picks outside KVM).
pub fn max_page_shift(version: (u32, u32)) -> u32 {
    if version <= (2, 12) {
        34
    } else {
        16
    }
}

/// One segment page size: its SLB encoding and the page sizes (shift,
/// HPTE encoding in the RPN's low bits) a segment of it may hold.
struct Segment {
    shift: u32,
    slb_enc: u32,
    pages: &'static [(u32, u32)],
}

/// QEMU's POWER7 table, less what `spapr_pagesize_cb` always drops: a
/// 64 KiB page in a 4 KiB segment (KVM takes mixed sizes only for 16 MiB
/// pages).
const SEGMENTS: [Segment; 4] = [
    Segment {
        shift: 12,
        slb_enc: 0x000,
        pages: &[(12, 0x0), (24, 0x38)],
    },
    Segment {
        shift: 16,
        slb_enc: 0x110,
        pages: &[(16, 0x1), (24, 0x8)],
    },
    Segment {
        shift: 24,
        slb_enc: 0x100,
        pages: &[(24, 0x0)],
    },
    Segment {
        shift: 34,
        slb_enc: 0x120,
        pages: &[(34, 0x3)],
    },
];

fn segments(max_shift: u32) -> impl Iterator<Item = (&'static Segment, Vec<(u32, u32)>)> {
    SEGMENTS
        .iter()
        .filter(move |s| s.shift <= max_shift)
        .map(move |s| {
            let pages = s
                .pages
                .iter()
                .copied()
                .filter(|p| p.0 <= max_shift)
                .collect();
            (s, pages)
        })
}

/// `ibm,segment-page-sizes`: per segment size, its shift, SLB encoding,
/// page count, then each page's shift and encoding.
pub fn segment_page_sizes(max_shift: u32) -> Vec<u32> {
    let mut v = vec![];
    for (s, pages) in segments(max_shift) {
        v.extend_from_slice(&[s.shift, s.slb_enc, pages.len() as u32]);
        for (shift, enc) in pages {
            v.extend_from_slice(&[shift, enc]);
        }
    }
    v
}

/// The large-page encodings an HPTE may carry, in the order QEMU's
/// `ppc_hash64_hpte_page_shift_noslb` tries them: (page shift, encoding).
pub fn large_page_encodings(max_shift: u32) -> Vec<(u32, u64)> {
    segments(max_shift)
        .flat_map(|(_, pages)| pages)
        .filter(|p| p.0 != 12)
        .map(|(shift, enc)| (shift, u64::from(enc)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cells QEMU 7.2's dumpdtb shows (pseries-2.7 and 2.8: every
    /// size; from 3.0: 4 KiB and 64 KiB).
    #[test]
    fn page_sizes_are_qemus() {
        assert_eq!(
            segment_page_sizes(max_page_shift((2, 8))),
            [
                0x0c, 0x00, 0x02, 0x0c, 0x00, 0x18, 0x38, 0x10, 0x110, 0x02, 0x10, 0x01, 0x18,
                0x08, 0x18, 0x100, 0x01, 0x18, 0x00, 0x22, 0x120, 0x01, 0x22, 0x03
            ]
        );
        assert_eq!(
            segment_page_sizes(max_page_shift((7, 2))),
            [0x0c, 0x00, 0x01, 0x0c, 0x00, 0x10, 0x110, 0x01, 0x10, 0x01]
        );
        assert_eq!(large_page_encodings(16), [(16, 1)]);
        assert_eq!(
            large_page_encodings(34),
            [(24, 0x38), (16, 1), (24, 8), (24, 0), (34, 3)]
        );
    }

    #[test]
    fn each_machine_types_cpu() {
        assert_eq!(default_for((2, 7)).pvr, 0x003f_0203);
        assert_eq!(default_for((2, 8)).pvr, 0x004d_0200);
        assert_eq!(default_for((3, 1)).pvr, 0x004d_0200);
        assert_eq!(default_for((4, 0)).pvr, 0x004e_1200);
        // The length byte counts what follows the two-byte header.
        for m in [&POWER7, &POWER8, &POWER9] {
            assert_eq!(
                m.pa_features[0] as usize,
                m.pa_features.len() - 2,
                "{}",
                m.fw_name
            );
        }
    }
}
