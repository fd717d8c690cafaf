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
    carried: &Value,
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
    let (props, changed, problems) = merge(&d.props, &device, &host, carried);
    if cfg.strict_config {
        // QEMU's behaviour: nothing adopted; the function's own load then
        // refuses what its guest would see differently, naming the
        // register or the field.
        if !changed.is_empty() || !problems.is_empty() {
            log::info!(
                "incoming migration: {device}: not adopted (-global migration.x-strict-config=on): {}",
                changed.iter().chain(&problems).cloned().collect::<Vec<_>>().join("; ")
            );
        }
        return Ok(None);
    }
    if let Some(p) = problems.first() {
        return Err(LoadError::new(&device, p.clone()));
    }
    if changed.is_empty() {
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
                Box::new(RootPort::new(&RootPortConfig::from_props(
                    &props,
                    secondary_bus,
                )))
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

/// `props` with the values of the source's configuration (`carried`:
/// its `properties`, and the names of those at their type's default),
/// what that changed, and what this build cannot give; `device` names the
/// function in messages, `host` the properties never carried.
fn merge(
    props: &Props,
    device: &str,
    host: &[&str],
    carried: &Value,
) -> (Props, Vec<String>, Vec<String>) {
    let mut props = props.clone();
    let (mut changed, mut problems) = (vec![], vec![]);
    let none = Map::new();
    let properties = carried["properties"].as_object().unwrap_or(&none);
    let at_default = |name: &str| {
        carried["defaults"]
            .as_array()
            .is_some_and(|d| d.iter().any(|n| n == name))
    };
    for (name, v) in properties
        .iter()
        .filter(|(n, _)| !host.contains(&n.as_str()))
    {
        let Some(value) = v.as_str() else {
            problems.push(format!(
                "the stream gives {name} as {v}, not a property value"
            ));
            continue;
        };
        match props.adopt(name, value) {
            Ok(Some(was)) => changed.push(format!("{name}={value} (here {was})")),
            Ok(None) => {}
            // A property this build does not have, at the source's type
            // default: a later release's, which an earlier one goes
            // without (what the guest sees is then up to the state's own
            // load, as in QEMU).
            Err(devices::model::Error::UnknownProperty { .. }) if at_default(name) => {
                log::debug!("incoming migration: {device}: no property {name} here (the source's is at its default)");
            }
            Err(e) => problems.push(format!(
                "the source's guest has {name}={value}, which this build cannot give it: {e}"
            )),
        }
    }
    (props, changed, problems)
}

/// Records what a migration adopted in the VM's configuration: it lasts
/// across resets and goes on with the next migration.
pub(super) fn record(cfg: &mut VmConfig, adopted: Vec<Adopted>) {
    for (i, props) in adopted {
        cfg.devices[i].props = props;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the source carries is taken value by value: a difference is
    /// adopted, a property this build lacks is gone without only if the
    /// source's was at its default, a value that does not fit is refused.
    #[test]
    fn a_carried_configuration_is_merged_property_by_property() {
        let here = devices::model::resolve("virtio-rng-pci", &[], &[], &[]).unwrap();
        let carried = serde_json::json!({
            "properties": {"vectors": "5", "x-from-later": "on", "disable-modern": "off"},
            "defaults": ["x-from-later", "disable-modern"],
        });
        let (props, changed, problems) = merge(&here, "00:03.0 virtio-rng-pci", &[], &carried);
        assert_eq!(props.uint("vectors"), Some(5));
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert!(changed[0].starts_with("vectors=5 (here "), "{changed:?}");
        assert!(problems.is_empty(), "{problems:?}");
        let vectors = props.values.iter().find(|r| r.name == "vectors").unwrap();
        assert_eq!(vectors.source, devices::model::Source::Migration);

        let carried = serde_json::json!({
            "properties": {"x-set-later": "on", "vectors": "many", "id": 3},
            "defaults": [],
        });
        let (_, changed, problems) = merge(&here, "00:03.0 virtio-rng-pci", &[], &carried);
        assert!(changed.is_empty());
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems.iter().any(|p| p.contains("x-set-later=on")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("vectors=many")),
            "{problems:?}"
        );
    }
}
