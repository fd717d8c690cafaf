//! The virtio-pci devices of the board, built from their resolved
//! properties and their backends.

use super::GuestMemoryMmap;
use crate::config::VmConfig;
use crate::hypervisor::Vm;
use anyhow::{anyhow, bail, Context, Result};
use devices::pci::{Bdf, PciRoot};
use std::fs::File;
use std::io::Write;
use std::sync::Arc;

/// Creates every virtio-pci device with its backend and puts it on the
/// root bus.
pub(super) fn add_virtio_devices(
    cfg: &VmConfig,
    root: &mut PciRoot,
    vm: &Arc<dyn Vm>,
    mem: &GuestMemoryMmap,
) -> Result<()> {
    use devices::model::property::OnOffAuto;
    use devices::virtio::{self, pci::TransportConfig, VirtioDevice};
    let ops: Arc<dyn virtio::VmOps> = vm.clone();
    let consoles: Vec<&crate::config::DeviceConfig> = cfg
        .devices
        .iter()
        .filter(|d| d.props.type_name == "virtconsole")
        .collect();
    let mut serials = 0usize;
    for d in &cfg.devices {
        let ty = d.props.type_name;
        if !devices::model::types::is_a(ty, "virtio-pci") {
            continue;
        }
        let devfn = d
            .devfn
            .ok_or_else(|| anyhow!("{ty} without a PCI address"))?;
        let name = match &d.id {
            Some(id) => format!("{ty} '{id}'"),
            None => format!("{ty} at {:02x}:{:02x}.{}", d.bus, devfn >> 3, devfn & 7),
        };
        let prop = |p: &str| d.props.str(p).unwrap_or_default();
        let (dev, vmstate): (
            Box<dyn VirtioDevice>,
            &'static migration::vmstate::Description,
        ) = match ty {
            "virtio-blk-pci" => {
                let drive = cfg
                    .backends
                    .drives
                    .iter()
                    .find(|x| x.id == prop("drive"))
                    .ok_or_else(|| anyhow!("{name}: drive '{}' not found", prop("drive")))?;
                // Effective values: config::from_args resolved `auto`.
                let nq = d.props.uint("num-queues").unwrap_or(1) as u16;
                let blk = virtio::blk::Blk::new(virtio::blk::BlkConfig {
                    path: drive.path.clone(),
                    read_only: drive.read_only,
                    num_queues: nq,
                    queue_size: d.props.uint("queue-size").unwrap_or(256) as u16,
                    serial: prop("serial"),
                    version_1: drive.version_1,
                })
                .with_context(|| name.clone())?;
                (Box::new(blk), &virtio::blk::PCI_VMSTATE)
            }
            "virtio-net-pci" => {
                let nd = cfg
                    .backends
                    .netdevs
                    .iter()
                    .find(|x| x.id == prop("netdev"))
                    .ok_or_else(|| anyhow!("{name}: netdev '{}' not found", prop("netdev")))?;
                let tap = virtio::net::Tap::open(&nd.ifname).with_context(|| name.clone())?;
                let mac = parse_mac(&prop("mac")).ok_or_else(|| {
                    anyhow!(
                        "{name}: invalid mac '{}': expected six hex bytes like 52:54:00:12:34:56",
                        prop("mac")
                    )
                })?;
                (
                    Box::new(virtio::net::Net::new(tap, mac, nd.version_1)),
                    &virtio::net::PCI_VMSTATE,
                )
            }
            "virtio-rng-pci" => (Box::new(virtio::rng::Rng::new()), &virtio::rng::PCI_VMSTATE),
            "virtio-serial-pci" => {
                let out: Box<dyn Write + Send> = match consoles.get(serials) {
                    Some(c) => {
                        let id = c.props.str("chardev").unwrap_or_default();
                        match cfg
                            .backends
                            .chardevs
                            .iter()
                            .find(|x| x.id == id)
                            .map(|x| &x.kind)
                        {
                            Some(crate::backends::ChardevKind::File(p)) => {
                                Box::new(File::create(p).with_context(|| {
                                    format!("chardev '{id}': cannot create {}", p.display())
                                })?)
                            }
                            _ => Box::new(std::io::sink()),
                        }
                    }
                    None => Box::new(std::io::sink()),
                };
                serials += 1;
                (
                    Box::new(virtio::console::Console::new(out)),
                    &virtio::console::PCI_VMSTATE,
                )
            }
            _ => bail!("{ty} is not implemented"),
        };
        let vectors = d.props.uint("vectors").unwrap_or(virtio::pci::AUTO_VECTORS);
        let tc = TransportConfig {
            disable_legacy: match d.props.on_off_auto("disable-legacy") {
                Some(OnOffAuto::On) => Some(true),
                Some(OnOffAuto::Off) => Some(false),
                _ => None,
            },
            disable_modern: d.props.bool("disable-modern").unwrap_or(false),
            ignore_backend_features: d.props.bool("x-ignore-backend-features").unwrap_or(false),
            on_pcie_port: d.bus != 0,
            vectors: u16::try_from(vectors).unwrap_or(u16::MAX),
            page_per_vq: d.props.bool("page-per-vq").unwrap_or(false),
            // PIRQ E-H style: GSIs 16-23 by slot.
            intx_gsi: 16 + ((devfn >> 3) & 7) as u32,
        };
        let f = virtio::pci::VirtioPci::new(name, dev, &tc, ops.clone(), mem.clone(), vmstate)?;
        root.add(Bdf::new(d.bus, devfn >> 3, devfn & 7), Box::new(f))?;
    }
    Ok(())
}

pub(super) fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    v.try_into().ok()
}
