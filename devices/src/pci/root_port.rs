//! `pcie-root-port`: a PCI Express root port (QEMU's 1b36:000c identity)
//! with the PCIe capability and the AER extended capability.
//!
//! AER's `PCI_ERR_UNCOR_MASK` follows `x-pcie-err-unc-mask` (a bit of
//! `cap_present`, as in QEMU): on, it starts at `INTN | TLP_PRF_BLOCKED` and
//! the guest may write the supported bits (QEMU 8.0); off, it is a
//! read-only zero (QEMU 7.2). `hw_compat_7_2` turns it off.
//!
//! The Secondary Latency Timer (0x1b) means nothing on PCI Express and is
//! read-only zero, as QEMU 8.2 made it; `x-pci-express-writeable-slt-bug`
//! (on through `hw_compat_8_1`) keeps it guest-writable, as QEMU up to 8.1
//! left it.

use super::config::{self, ConfigSpace};
use super::PciFunction;
use crate::model::property::PropKind;
use crate::model::types::{p, TypeInfo};
use crate::registry::{Build, DeviceType};

/// The `pcie-root-port` type: the board gives each the next bus number.
pub static DEVICE: DeviceType = DeviceType {
    info: TypeInfo {
        name: "pcie-root-port",
        parent: Some("pci-device"),
        abstract_: false,
        bus: Some("PCI"),
        description: "PCI Express root port, with the AER capability",
        props: &[
            p(
                "chassis",
                PropKind::U8,
                "0",
                "chassis number (with slot, unique on the board)",
            ),
            p(
                "slot",
                PropKind::U16,
                "0",
                "physical slot number in the Slot Capabilities",
            ),
            p(
                "port",
                PropKind::U8,
                "0",
                "port number in the Link Capabilities",
            ),
            p(
                "x-speed",
                PropKind::Enum {
                    name: "PCIELinkSpeed",
                    values: &LINK_SPEEDS,
                },
                "16",
                "maximum link speed in GT/s in the Link Capabilities (2_5: QEMU 3.1's fixed 2.5 GT/s)",
            ),
            p(
                "x-width",
                PropKind::Enum {
                    name: "PCIELinkWidth",
                    values: &LINK_WIDTHS,
                },
                "32",
                "maximum link width in the Link Capabilities (1: QEMU 3.1's fixed x1)",
            ),
            p(
                "x-pci-express-writeable-slt-bug",
                PropKind::Bool,
                "off",
                "keep the Secondary Latency Timer (0x1b) guest-writable, as QEMU up to 8.1 (off: read-only zero)",
            ),
        ],
    },
    build: Build::Board,
};

/// `x-speed`'s values, in the Link Capabilities' encoding order (1 = 2.5
/// GT/s).
pub const LINK_SPEEDS: [&str; 6] = ["2_5", "5", "8", "16", "32", "64"];
/// `x-width`'s values.
pub const LINK_WIDTHS: [&str; 7] = ["1", "2", "4", "8", "12", "16", "32"];

/// `cap_present` bit of `x-pcie-err-unc-mask` (QEMU_PCIE_ERR_UNC_MASK_BITNR).
pub const CAP_ERR_UNC_MASK: u64 = 1 << 4;

pub const PCIE_CAP: u16 = 0x40;
pub const AER_CAP: u16 = 0x100;
pub const AER_UNCOR_STATUS: u16 = AER_CAP + 0x04;
pub const AER_UNCOR_MASK: u16 = AER_CAP + 0x08;
pub const AER_UNCOR_SEVER: u16 = AER_CAP + 0x0c;
pub const AER_COR_STATUS: u16 = AER_CAP + 0x10;
pub const AER_COR_MASK: u16 = AER_CAP + 0x14;
pub const AER_CAP_CTRL: u16 = AER_CAP + 0x18;
pub const AER_ROOT_CMD: u16 = AER_CAP + 0x2c;
pub const AER_ROOT_STATUS: u16 = AER_CAP + 0x30;

/// Uncorrectable errors the port models (DLP .. TLP prefix blocked).
pub const UNC_SUPPORTED: u32 = 0x03ff_f030;
/// QEMU 8.0's initial mask: uncorrectable internal error, TLP prefix blocked.
pub const UNC_MASK_DEFAULT: u32 = 0x0240_0000;
pub const UNC_SEVERITY_DEFAULT: u32 = 0x0046_2030;
pub const COR_SUPPORTED: u32 = 0x0000_f1c1;
pub const COR_MASK_DEFAULT: u32 = 0x0000_e000;

/// What the board decides for the port.
pub struct RootPortConfig {
    pub chassis: u8,
    pub slot: u16,
    pub port: u8,
    /// The `cap_present` word assembled from the device's bit properties.
    pub cap_present: u64,
    /// Bus number behind the port, as firmware would assign it.
    pub secondary_bus: u8,
    /// `x-pci-express-writeable-slt-bug`: the Secondary Latency Timer is
    /// guest-writable.
    pub writeable_slt: bool,
    /// `x-speed` as the Link Capabilities encode it (1 = 2.5 GT/s ... 6 =
    /// 64 GT/s).
    pub link_speed: u8,
    /// `x-width`: lanes.
    pub link_width: u8,
}

impl RootPortConfig {
    /// The port `-device pcie-root-port` with resolved properties `props`
    /// describes, with bus `secondary_bus` behind it.
    pub fn from_props(props: &crate::model::Props, secondary_bus: u8) -> RootPortConfig {
        RootPortConfig {
            chassis: props.uint("chassis").unwrap_or(0) as u8,
            slot: props.uint("slot").unwrap_or(0) as u16,
            port: props.uint("port").unwrap_or(0) as u8,
            cap_present: props.bits("cap_present"),
            secondary_bus,
            writeable_slt: props.bool("x-pci-express-writeable-slt-bug") == Some(true),
            link_speed: props
                .str("x-speed")
                .and_then(|v| LINK_SPEEDS.iter().position(|s| *s == v))
                .map_or(1, |i| i as u8 + 1),
            link_width: props
                .str("x-width")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
        }
    }
}

pub struct RootPort {
    cfg: ConfigSpace,
}

impl RootPort {
    pub fn new(c: &RootPortConfig) -> RootPort {
        let mut cfg = ConfigSpace::new(0x1b36, 0x000c, 0x06_04_00, 0);
        cfg.set_u8(config::HEADER_TYPE, 0x01);
        cfg.set_wmask_u16(config::COMMAND, 0x0547);
        cfg.set_u16(config::STATUS, 0x0010); // capability list
        cfg.set_w1cmask_u16(config::STATUS, 0xf900);
        // Bus numbers, windows and bridge control are the guest's to set.
        cfg.set_u8(0x18, 0);
        cfg.set_u8(0x19, c.secondary_bus);
        cfg.set_u8(0x1a, c.secondary_bus);
        // Primary, secondary and subordinate bus; the Secondary Latency
        // Timer only with the 8.1-and-older bug.
        cfg.set_wmask_u32(
            0x18,
            if c.writeable_slt {
                0xffff_ffff
            } else {
                0x00ff_ffff
            },
        );
        cfg.set_wmask_u16(0x1c, 0xf0f0); // I/O base/limit
        cfg.set_w1cmask_u16(0x1e, 0xf900); // secondary status
        cfg.set_wmask_u32(0x20, 0xfff0_fff0); // memory base/limit
        cfg.set_u32(0x24, 0x0001_0001); // 64-bit prefetchable window
        cfg.set_wmask_u32(0x24, 0xfff0_fff0);
        cfg.set_wmask_u32(0x28, 0xffff_ffff);
        cfg.set_wmask_u32(0x2c, 0xffff_ffff);
        cfg.set_wmask_u32(0x30, 0xffff_ffff); // I/O upper 16 bits
        cfg.set_u8(0x34, PCIE_CAP as u8);
        cfg.set_u8(0x3d, 1); // INTA
        cfg.set_wmask_u16(0x3e, 0x0fff); // bridge control
        cfg.set_u8(0x3c, 0);
        cfg.wmask[0x3c] = 0xff; // interrupt line

        // PCI Express capability, version 2, root port, slot implemented.
        let p = PCIE_CAP;
        cfg.set_u8(p, 0x10);
        cfg.set_u8(p + 1, 0);
        cfg.set_u16(p + 2, 2 | (4 << 4) | (1 << 8));
        cfg.set_u32(p + 4, 1 << 15); // role-based error reporting
        cfg.set_wmask_u16(p + 8, 0x7cff); // device control
        cfg.set_w1cmask_u16(p + 0x0a, 0x000f); // device status
                                               // Link: the port number, DLL active reporting, the maximum width
                                               // and speed; wider or faster than x1 at 2.5 GT/s, also bandwidth
                                               // notification, the target speed and the supported speeds (QEMU's
                                               // pcie_cap_fill_slot_lnk). The link status stays x1 at 2.5 GT/s,
                                               // what a device behind the port negotiates in QEMU.
        let (speed, width) = (c.link_speed as u32, c.link_width as u32);
        let mut lnkcap = (c.port as u32) << 24 | (1 << 20) | (width << 4) | speed;
        if width > 1 || speed > 1 {
            lnkcap |= 1 << 21;
        }
        cfg.set_u32(p + 0x0c, lnkcap);
        if speed > 1 {
            cfg.set_u16(p + 0x30, speed as u16); // LNKCTL2: target link speed
        }
        if speed > 2 {
            cfg.set_u32(p + 0x2c, (1 << (speed + 1)) - 2); // LNKCAP2: 2.5 GT/s up to it
        }
        cfg.set_wmask_u16(p + 0x10, 0x01fb);
        cfg.set_u16(p + 0x12, 0x2011); // link status: DLL active, x1, 2.5GT/s
        cfg.set_u32(p + 0x14, (c.slot as u32) << 19);
        cfg.set_wmask_u16(p + 0x18, 0x1fff); // slot control
        cfg.set_w1cmask_u16(p + 0x1a, 0x011f); // slot status
        cfg.set_wmask_u16(p + 0x1c, 0x001f); // root control
        cfg.set_w1cmask_u16(p + 0x22, 0x0001); // root status: PME status
        cfg.set_wmask_u16(p + 0x28, 0x0400); // device control 2: ARI forwarding

        // AER, version 2, the last extended capability.
        cfg.set_u32(AER_CAP, 0x0001 | (2 << 16));
        cfg.w1cmask[AER_UNCOR_STATUS as usize..AER_UNCOR_STATUS as usize + 4]
            .copy_from_slice(&UNC_SUPPORTED.to_le_bytes());
        if c.cap_present & CAP_ERR_UNC_MASK != 0 {
            cfg.set_u32(AER_UNCOR_MASK, UNC_MASK_DEFAULT);
            cfg.set_wmask_u32(AER_UNCOR_MASK, UNC_SUPPORTED);
        }
        cfg.set_u32(AER_UNCOR_SEVER, UNC_SEVERITY_DEFAULT);
        cfg.set_wmask_u32(AER_UNCOR_SEVER, UNC_SUPPORTED);
        cfg.w1cmask[AER_COR_STATUS as usize..AER_COR_STATUS as usize + 4]
            .copy_from_slice(&COR_SUPPORTED.to_le_bytes());
        cfg.set_u32(AER_COR_MASK, COR_MASK_DEFAULT);
        cfg.set_wmask_u32(AER_COR_MASK, COR_SUPPORTED);
        cfg.set_u32(AER_CAP_CTRL, 0x02a0); // ECRC generation/check, multi-header capable
        cfg.set_wmask_u32(AER_CAP_CTRL, 0x0540);
        cfg.set_wmask_u32(AER_ROOT_CMD, 0x7);
        cfg.w1cmask[AER_ROOT_STATUS as usize] = 0x7f;
        RootPort { cfg }
    }
}

impl PciFunction for RootPort {
    fn config(&self) -> &ConfigSpace {
        &self.cfg
    }

    fn register_name(&self, offset: u16) -> Option<&'static str> {
        let known = [
            (0x00, "PCI_VENDOR_ID/PCI_DEVICE_ID"),
            (0x08, "PCI_CLASS_REVISION"),
            (
                0x18,
                "PCI_PRIMARY_BUS/SECONDARY_BUS/SUBORDINATE_BUS/SEC_LATENCY_TIMER",
            ),
            (PCIE_CAP, "PCI_EXP capability header"),
            (PCIE_CAP + 0x0c, "PCI_EXP_LNKCAP"),
            (PCIE_CAP + 0x2c, "PCI_EXP_LNKCAP2"),
            (PCIE_CAP + 0x30, "PCI_EXP_LNKCTL2"),
            (AER_CAP, "PCI_EXT_CAP (AER header)"),
            (AER_UNCOR_STATUS, "PCI_ERR_UNCOR_STATUS"),
            (AER_UNCOR_MASK, "PCI_ERR_UNCOR_MASK"),
            (AER_UNCOR_SEVER, "PCI_ERR_UNCOR_SEVER"),
            (AER_COR_STATUS, "PCI_ERR_COR_STATUS"),
            (AER_COR_MASK, "PCI_ERR_COR_MASK"),
            (AER_CAP_CTRL, "PCI_ERR_CAP"),
        ];
        known.iter().find(|k| k.0 == offset).map(|k| k.1)
    }

    fn reconcile_hint(&self, offset: u16, stream: u32) -> Option<String> {
        (offset == AER_UNCOR_MASK).then(|| {
            format!(
                "the two sides disagree on x-pcie-err-unc-mask: set -global pcie-root-port.x-pcie-err-unc-mask={} on the destination to match the source",
                if stream != 0 { "on" } else { "off" }
            )
        })
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(cap_present: u64) -> RootPort {
        RootPort::new(&RootPortConfig {
            chassis: 1,
            slot: 2,
            port: 0,
            cap_present,
            secondary_bus: 1,
            writeable_slt: false,
            link_speed: 1,
            link_width: 1,
        })
    }

    /// QEMU's root port link at 16 GT/s x32 (its default since 4.0) and
    /// at 2.5 GT/s x1 (hw_compat_3_1's), register by register.
    #[test]
    fn the_link_follows_speed_and_width() {
        let props = |speed: &str, width: &str| {
            let set = [
                ("x-speed".to_string(), speed.to_string()),
                ("x-width".to_string(), width.to_string()),
                ("port".to_string(), "3".to_string()),
            ];
            crate::model::resolve("pcie-root-port", &[], &[], &set).unwrap()
        };
        let fast = RootPort::new(&RootPortConfig::from_props(&props("16", "32"), 1));
        let r = |f: &RootPort, o: u16, n| f.config().read(PCIE_CAP + o, n);
        assert_eq!(
            r(&fast, 0x0c, 4),
            0x0330_0204,
            "LNKCAP: port 3, LBNC, DLLLARC, x32, 16 GT/s"
        );
        assert_eq!(
            r(&fast, 0x12, 2),
            0x2011,
            "LNKSTA: DLL active, x1, 2.5 GT/s"
        );
        assert_eq!(r(&fast, 0x2c, 4), 0x1e, "LNKCAP2: 2.5 to 16 GT/s");
        assert_eq!(r(&fast, 0x30, 2), 4, "LNKCTL2: target 16 GT/s");
        let slow = RootPort::new(&RootPortConfig::from_props(&props("2_5", "1"), 1));
        assert_eq!(r(&slow, 0x0c, 4), 0x0310_0011, "LNKCAP as vmm 0.2.0 had it");
        assert_eq!(r(&slow, 0x2c, 4), 0);
        assert_eq!(r(&slow, 0x30, 2), 0);
    }

    /// The Secondary Latency Timer reads back what the guest wrote only
    /// with `x-pci-express-writeable-slt-bug` (QEMU up to 8.1).
    #[test]
    fn secondary_latency_timer_follows_the_property() {
        let props = |v: &str| {
            let set = [("x-pci-express-writeable-slt-bug".to_string(), v.to_string())];
            crate::model::resolve("pcie-root-port", &[], &[], &set).unwrap()
        };
        for (v, want) in [("off", 0), ("on", 0x40)] {
            let mut port = RootPort::new(&RootPortConfig::from_props(&props(v), 1));
            port.config_write(0x1b, 1, 0x40);
            assert_eq!(port.config_read(0x1b, 1), want, "slt bug {v}");
            port.config_write(0x1a, 1, 0x05);
            assert_eq!(
                port.config_read(0x1a, 1),
                0x05,
                "subordinate bus, slt bug {v}"
            );
        }
    }

    #[test]
    fn uncor_mask_follows_the_property() {
        let mut on = port(CAP_ERR_UNC_MASK);
        assert_eq!(on.config_read(AER_UNCOR_MASK, 4), UNC_MASK_DEFAULT);
        on.config_write(AER_UNCOR_MASK, 4, 0xffff_ffff);
        assert_eq!(on.config_read(AER_UNCOR_MASK, 4), UNC_SUPPORTED);
        let mut off = port(0);
        assert_eq!(off.config_read(AER_UNCOR_MASK, 4), 0);
        off.config_write(AER_UNCOR_MASK, 4, 0xffff_ffff);
        assert_eq!(off.config_read(AER_UNCOR_MASK, 4), 0, "read-only, as 7.2");
        // Everything else is the same either way.
        assert_eq!(
            on.config_read(AER_UNCOR_SEVER, 4),
            off.config_read(AER_UNCOR_SEVER, 4)
        );
    }

    /// The AER seed: a pc-q35-8.0 root port's state, through a real
    /// stream, does not load into a pc-q35-7.2 one, and the error names
    /// the register, the device and the property; with the property set
    /// on the destination (QEMU 8.0.1's recovery) it loads.
    #[test]
    fn aer_seed_8_0_stream_into_7_2() {
        use crate::pci::PciFunction;
        use migration::stream::{NoRam, Reader, Record, Writer};
        let mut src = port(CAP_ERR_UNC_MASK);
        src.config_write(AER_UNCOR_SEVER, 4, 0x0000_0010); // guest state travels
        let mut w = Writer::new(Vec::new(), "pc-q35-7.2").unwrap();
        w.section(
            "0000:00:01.0/pcie-root-port",
            0,
            &config::VMSTATE,
            &src.state(),
        )
        .unwrap();
        let bytes = w.finish().unwrap();
        let load = |dst: &mut RootPort| {
            let mut r = Reader::new(&bytes[..], "pc-q35-7.2").unwrap();
            match r
                .next_record(&|_, _| Some(&config::VMSTATE), &mut NoRam)
                .unwrap()
            {
                Record::Section { state, .. } => dst.load("pcie-root-port 'rp0' (00:01.0)", &state),
                other => panic!("{other:?}"),
            }
        };
        let e = load(&mut port(0)).unwrap_err().to_string();
        for want in [
            "'rp0'",
            "PCI_ERR_UNCOR_MASK",
            "0x108",
            "0x02400000",
            "x-pcie-err-unc-mask=on",
        ] {
            assert!(e.contains(want), "{want} missing: {e}");
        }
        let mut dst = port(CAP_ERR_UNC_MASK);
        load(&mut dst).unwrap();
        assert_eq!(dst.config_read(AER_UNCOR_SEVER, 4), 0x10);
        // The other way: 7.2 (read-only zero) into 8.0 (writable) loads, as in QEMU.
        let mut w = Writer::new(Vec::new(), "pc-q35-7.2").unwrap();
        w.section(
            "0000:00:01.0/pcie-root-port",
            0,
            &config::VMSTATE,
            &port(0).state(),
        )
        .unwrap();
        let old = w.finish().unwrap();
        let mut r = Reader::new(&old[..], "pc-q35-7.2").unwrap();
        let Record::Section { state, .. } = r
            .next_record(&|_, _| Some(&config::VMSTATE), &mut NoRam)
            .unwrap()
        else {
            panic!()
        };
        let mut dst = port(CAP_ERR_UNC_MASK);
        dst.load("rp0", &state).unwrap();
        assert_eq!(dst.config_read(AER_UNCOR_MASK, 4), 0);
    }

    #[test]
    fn header_and_capabilities() {
        let p = port(CAP_ERR_UNC_MASK);
        assert_eq!(p.config().read(0, 4), 0x000c_1b36);
        assert_eq!(p.config().read(config::HEADER_TYPE, 1), 1);
        assert_eq!(p.config().read(0x34, 1), 0x40);
        assert_eq!(p.config().read(PCIE_CAP, 1), 0x10);
        assert_eq!(
            (p.config().read(PCIE_CAP + 2, 2) >> 4) & 0xf,
            4,
            "root port"
        );
        assert_eq!(
            p.config().read(PCIE_CAP + 0x14, 4) >> 19,
            2,
            "physical slot"
        );
        assert_eq!(p.config().read(AER_CAP, 4) & 0xffff, 1, "AER");
        assert_eq!(p.config().read(0x19, 1), 1, "secondary bus");
    }
}
