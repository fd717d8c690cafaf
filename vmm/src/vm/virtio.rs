//! The virtio-pci devices of the board: each built by its type in the
//! device registry from its resolved properties and the backend its type
//! names, and put on the virtio-pci transport at its address.

use super::GuestMemoryMmap;
use crate::config::{DeviceConfig, VmConfig};
use crate::hypervisor::Vm;
use anyhow::{anyhow, Context, Result};
use devices::model::property::OnOffAuto;
use devices::model::Props;
use devices::pci::{Bdf, PciRoot};
use devices::registry::{Backend, BackendKind, Build};
use devices::virtio::{self, pci::TransportConfig};
use std::fs::File;
use std::sync::Arc;

/// Creates every virtio-pci device with its backend and puts it on the
/// root bus.
/// `claim`: lock disk images now (an incoming VM claims them at GO).
pub(super) fn add_virtio_devices(
    cfg: &VmConfig,
    root: &mut PciRoot,
    vm: &Arc<dyn Vm>,
    mem: &GuestMemoryMmap,
    claim: bool,
) -> Result<()> {
    for (i, d) in cfg.devices.iter().enumerate() {
        if let Some((bdf, f)) = virtio_function(cfg, i, d, vm, mem, claim)? {
            root.add(bdf, Box::new(f))?;
        }
    }
    Ok(())
}

/// Device `d`, the `index`-th of `cfg`'s (its properties may differ from
/// the entry's: a configuration carried by a migration), as a virtio-pci
/// function with its backend, and its address; `None` if it is not a
/// virtio device.
pub(super) fn virtio_function(
    cfg: &VmConfig,
    index: usize,
    d: &DeviceConfig,
    vm: &Arc<dyn Vm>,
    mem: &GuestMemoryMmap,
    claim: bool,
) -> Result<Option<(Bdf, virtio::pci::VirtioPci)>> {
    let ty = d.props.type_name;
    let Some(Build::Virtio(vt)) = devices::registry::find(ty).map(|t| &t.build) else {
        return Ok(None);
    };
    let devfn = d
        .devfn
        .ok_or_else(|| anyhow!("{ty} without a PCI address"))?;
    let name = match &d.id {
        Some(id) => format!("{ty} '{id}'"),
        None => format!("{ty} at {:02x}:{:02x}.{}", d.bus, devfn >> 3, devfn & 7),
    };
    // A console device takes the console port of its rank among them.
    let takes_console = |d: &DeviceConfig| {
        matches!(
            devices::registry::find(d.props.type_name).map(|t| &t.build),
            Some(Build::Virtio(v)) if v.backend == BackendKind::Console
        )
    };
    let rank = cfg.devices[..index]
        .iter()
        .filter(|d| takes_console(d))
        .count();
    let mut consoles = cfg
        .devices
        .iter()
        .filter(|d| d.props.type_name == devices::virtio::console::PORT.info.name)
        .skip(rank);
    let backend =
        backend(cfg, d, vt.backend, claim, &mut consoles).with_context(|| name.clone())?;
    let dev = (vt.create)(&d.props, backend).map_err(|e| anyhow!(e).context(name.clone()))?;
    let slot = devfn >> 3;
    let gsi = match cfg.machine.arch {
        // PIRQ E-H style: GSIs 16-23 by slot.
        machine::Arch::X86_64 => 16 + u32::from(slot & 7),
        // The bridge's pin for INTA of the slot.
        machine::Arch::Ppc64 => super::spapr::intx_source(cfg, slot),
    };
    let tc = transport_config(
        &d.props,
        d.bus != 0,
        gsi,
        interrupt_line(cfg.machine.arch, gsi),
    );
    let ops: Arc<dyn virtio::VmOps> = vm.clone();
    let f = virtio::pci::VirtioPci::new(name, dev, &tc, ops, mem.clone(), vt.vmstate)?;
    Ok(Some((Bdf::new(d.bus, devfn >> 3, devfn & 7), f)))
}

/// A function's interrupt line register at reset, as firmware would have
/// left it: on x86 its GSI; on pseries 0 (no firmware writes it; the
/// guest finds its pin in the tree's interrupt-map, as with QEMU's).
pub(crate) fn interrupt_line(arch: machine::Arch, gsi: u32) -> u8 {
    match arch {
        machine::Arch::X86_64 => gsi as u8,
        machine::Arch::Ppc64 => 0,
    }
}

/// The virtio-pci transport a device's resolved properties ask for, behind
/// a PCIe port or not, its INTx line `intx_gsi` (`interrupt_line` in its
/// configuration space).
pub(crate) fn transport_config(
    props: &Props,
    on_pcie_port: bool,
    intx_gsi: u32,
    interrupt_line: u8,
) -> TransportConfig {
    let vectors = props.uint("vectors").unwrap_or(virtio::pci::AUTO_VECTORS);
    TransportConfig {
        disable_legacy: match props.on_off_auto("disable-legacy") {
            Some(OnOffAuto::On) => Some(true),
            Some(OnOffAuto::Off) => Some(false),
            _ => None,
        },
        disable_modern: props.bool("disable-modern").unwrap_or(false),
        ignore_backend_features: props.bool("x-ignore-backend-features").unwrap_or(false),
        on_pcie_port,
        vectors: u16::try_from(vectors).unwrap_or(u16::MAX),
        page_per_vq: props.bool("page-per-vq").unwrap_or(false),
        intx_gsi,
        interrupt_line,
    }
}

/// Opens the backend device `d`'s type takes (`kind`); a console takes the
/// next console port's chardev.
fn backend<'a>(
    cfg: &'a VmConfig,
    d: &DeviceConfig,
    kind: BackendKind,
    claim: bool,
    consoles: &mut impl Iterator<Item = &'a DeviceConfig>,
) -> Result<Backend> {
    let prop = |p: &str| d.props.str(p).unwrap_or_default();
    Ok(match kind {
        BackendKind::None => Backend::None,
        BackendKind::Drive(p) => {
            let drive = cfg
                .backends
                .drives
                .iter()
                .find(|x| x.id == prop(p))
                .ok_or_else(|| anyhow!("drive '{}' not found", prop(p)))?;
            Backend::Drive {
                path: drive.path.clone(),
                read_only: drive.read_only,
                version_1: drive.version_1,
                claim,
            }
        }
        BackendKind::Netdev(p) => {
            let nd = cfg
                .backends
                .netdevs
                .iter()
                .find(|x| x.id == prop(p))
                .ok_or_else(|| anyhow!("netdev '{}' not found", prop(p)))?;
            Backend::Tap {
                ifname: nd.ifname.clone(),
                version_1: nd.version_1,
            }
        }
        BackendKind::Console => {
            let chardev = consoles
                .next()
                .map(|c| c.props.str("chardev").unwrap_or_default());
            let kind = chardev.as_ref().and_then(|id| {
                cfg.backends
                    .chardevs
                    .iter()
                    .find(|x| &x.id == id)
                    .map(|x| &x.kind)
            });
            match (kind, chardev) {
                (Some(crate::backends::ChardevKind::File(p)), Some(id)) => {
                    Backend::Output(Box::new(File::create(p).with_context(|| {
                        format!("chardev '{id}': cannot create {}", p.display())
                    })?))
                }
                _ => Backend::Output(Box::new(std::io::sink())),
            }
        }
    })
}
