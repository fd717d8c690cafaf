//! Carried configuration: a running guest's hardware never changes under
//! it. A migration's stream carries every PCI function's configuration as
//! the source's guest has it (`snapshot::carried`); the destination builds
//! each function with those values where its own differ (its machine type
//! may define them otherwise: a later release fixed a compat entry, an
//! operator set a `-global`), before the function takes its state. The
//! adopted values keep the provenance `migration` (`--print-config`,
//! `qom-get`), last across resets, and travel on with every later
//! migration; the machine type's own values apply when the guest is
//! started fresh. A value this build cannot provide (a property it does
//! not have, a value that does not fit it) refuses the stream before the
//! guest runs here, naming the device, the property and the value.

use super::board::Board;
use super::virtio::virtio_function;
use crate::config::VmConfig;
use devices::model::Props;
use devices::pci::root_port::{RootPort, RootPortConfig};
use devices::pci::{Bdf, PciFunction};
use devices::registry::Build;
use migration::vmstate::LoadError;
use serde_json::{Map, Value};

/// What a migration made of one device's configuration: its index in the
/// VM's devices and its properties with the adopted values.
pub(super) type Adopted = (usize, Props);

/// Rebuilds the function at `bdf` of `board` with the source's `carried`
/// properties where `cfg`'s differ; `None` when nothing differs.
pub(super) fn adopt(
    cfg: &VmConfig,
    board: &Board,
    bdf: Bdf,
    type_name: &str,
    carried: &Map<String, Value>,
) -> Result<Option<Adopted>, LoadError> {
    let at = bdf.to_string();
    let index = cfg
        .devices
        .iter()
        .position(|d| {
            d.devfn
                .is_some_and(|f| Bdf::new(d.bus, f >> 3, f & 7) == bdf)
        })
        .ok_or_else(|| {
            LoadError::new(
                &at,
                "the source has a PCI function here that this VM does not",
            )
        })?;
    let d = &cfg.devices[index];
    // An inferred configuration (a source that carried none) names no type.
    let type_name = if type_name.is_empty() {
        d.props.type_name
    } else {
        type_name
    };
    if d.props.type_name != type_name {
        return Err(LoadError::new(
            &at,
            format!(
                "the source has a {type_name} here, this VM a {}",
                d.props.type_name
            ),
        ));
    }
    let device = format!("{at} {type_name}");
    let host = crate::snapshot::host_side(type_name);
    let mut props = d.props.clone();
    let mut changed = vec![];
    for (name, v) in carried.iter().filter(|(n, _)| !host.contains(&n.as_str())) {
        let value = v.as_str().unwrap_or_default();
        let was = props.adopt(name, value).map_err(|e| {
            LoadError::new(
                &device,
                format!(
                    "the source's guest has {name}={value}, which this build cannot give it: {e}"
                ),
            )
        })?;
        if let Some(was) = was {
            changed.push(format!("{name}={value} (here {was})"));
        }
    }
    if changed.is_empty() {
        return Ok(None);
    }
    if cfg.strict_config {
        // QEMU's behaviour: nothing adopted; the function's own load then
        // refuses what its guest would see differently, naming the
        // register or the field.
        log::info!(
            "incoming migration: {device}: the source's guest has {}; not adopted (-global migration.x-strict-config=on)",
            changed.join(", ")
        );
        return Ok(None);
    }
    log::info!(
        "incoming migration: {device} keeps its guest's hardware: {}",
        changed.join(", ")
    );
    let mut rebuilt = d.clone();
    rebuilt.props = props.clone();
    let build_error = |e: anyhow::Error| {
        LoadError::new(
            &device,
            format!("cannot build it with its source's configuration: {e:#}"),
        )
    };
    let mut root = board.pci.lock().expect("pci lock");
    // The old function goes first: it holds its backend (a tap attaches
    // once).
    drop(root.remove(bdf));
    let mut f: Box<dyn PciFunction> =
        match devices::registry::find(type_name).map(|t| &t.build) {
            Some(Build::Virtio(_)) => {
                // Disk images are claimed at GO, as for any incoming VM.
                let (_, f) = virtio_function(cfg, index, &rebuilt, &board.vm, &board.mem, false)
                    .map_err(build_error)?
                    .ok_or_else(|| LoadError::new(&device, "not a virtio device"))?;
                Box::new(f)
            }
            _ if type_name == "pcie-root-port" => {
                let secondary_bus = cfg.devices[..=index]
                    .iter()
                    .filter(|d| d.props.type_name == "pcie-root-port")
                    .count() as u8;
                Box::new(RootPort::new(&RootPortConfig {
                    chassis: props.uint("chassis").unwrap_or(0) as u8,
                    slot: props.uint("slot").unwrap_or(0) as u16,
                    port: props.uint("port").unwrap_or(0) as u8,
                    cap_present: props.bits("cap_present"),
                    secondary_bus,
                }))
            }
            _ => return Err(LoadError::new(
                &device,
                "its configuration differs from the source's, and this build cannot build it anew",
            )),
        };
    // Like every function of an incoming VM: still until GO.
    f.pause();
    root.add(bdf, f)
        .map_err(|e| LoadError::new(&device, e.to_string()))?;
    Ok(Some((index, props)))
}

/// Records what a migration adopted in the VM's configuration: it lasts
/// across resets and goes on with the next migration.
pub(super) fn record(cfg: &mut VmConfig, adopted: Vec<Adopted>) {
    for (i, props) in adopted {
        cfg.devices[i].props = props;
    }
}
