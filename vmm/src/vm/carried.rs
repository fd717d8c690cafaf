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
//!
//! The CPU travels the same way: the source's `-cpu` and the CPUID table
//! its guest was given. A destination whose host cannot give every
//! feature the guest has refuses the stream before any vCPU takes its
//! state, naming what it lacks; one started with another `-cpu` that
//! would give the guest a different CPU refuses too; one with the same
//! `-cpu` whose table differs (another host, another release's model)
//! gives the guest its source's table.
//!
//! The board's host bridge is carried too (the machine's properties that
//! shape the firmware tables): adopting them rebuilds nothing, since the
//! tables the guest has came with its RAM; they shape the tables of every
//! later reset. A source up to vmm 0.2.0 carried nothing: what it gave
//! its guest is known ([`as_released`]).

use super::board::Board;
use super::virtio::virtio_function;
use crate::config::{CarriedCpu, VmConfig};
use crate::hypervisor::CpuidEntry;
use crate::snapshot::HOST_BRIDGE;
use arch::x86_64::cpu::CpuSpec;
use arch::x86_64::topology::Topology;
use devices::model::Props;
use devices::pci::root_port::{RootPort, RootPortConfig};
use devices::pci::{Bdf, PciFunction};
use devices::registry::Build;
use migration::vmstate::{LoadError, State};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// What a migration made of one device's configuration: the device, and
/// its properties with the adopted values.
pub(super) enum Adopted {
    /// The VM's device of that index.
    Device(usize, Props),
    /// The board's host bridge.
    HostBridge(Props),
    /// The vCPUs' CPU.
    Cpu(CarriedCpu),
}

/// A destination's adoption of what its source's stream carries, for the
/// stream's load (`snapshot::Target`); [`record`] keeps it afterwards.
pub(super) struct Adoption<'a> {
    cfg: &'a VmConfig,
    board: &'a Board,
    pub(super) adopted: Vec<Adopted>,
}

impl<'a> Adoption<'a> {
    pub(super) fn new(cfg: &'a VmConfig, board: &'a Board) -> Adoption<'a> {
        Adoption {
            cfg,
            board,
            adopted: vec![],
        }
    }
}

impl crate::snapshot::Adopt for Adoption<'_> {
    fn function(
        &mut self,
        bdf: Bdf,
        carried: Option<&Value>,
        state: &State,
    ) -> Result<(), LoadError> {
        let a = adopt(self.cfg, self.board, bdf, carried, state)?;
        self.adopted.extend(a);
        Ok(())
    }

    fn cpu(&mut self, carried: Option<&Value>) -> Result<(), LoadError> {
        let a = cpu(self.cfg, self.board, carried)?;
        self.adopted.extend(a.map(Adopted::Cpu));
        Ok(())
    }
}

/// Checks the CPU the guest was given (`carried`: the source's `-cpu`,
/// CPUID table, topology, TSC rate and MSRs; `None` from vmm up to
/// 0.2.0) against what this VM gives and its host can; gives the vCPUs
/// the guest's CPU where this VM's differs and may.
fn cpu(
    cfg: &VmConfig,
    board: &Board,
    carried: Option<&Value>,
) -> Result<Option<CarriedCpu>, LoadError> {
    const CPU: &str = "cpu";
    let host = board
        .vm
        .x86_64()
        .ok_or_else(|| LoadError::new(CPU, "not an x86_64 VM"))?
        .supported_cpuid();
    let here: &[CpuidEntry] = &board.cpuid;
    let here_topo = cfg.topology();
    let Some(c) = carried else {
        // vmm up to 0.2.0 had no -cpu and no topology: its guests got the
        // host's CPU as KVM supports it, invtsc included, as one socket of
        // cores. Nothing to check the CPU against.
        let topo = Topology::released_0_2(cfg.vcpus as u32);
        same_apic_ids(&topo, &here_topo)?;
        let plain_host =
            cfg.cpu.base == arch::x86_64::cpu::Base::Host && cfg.cpu.changes.is_empty();
        if !plain_host || cfg.strict_config {
            log::warn!(
                "incoming migration: the source (vmm up to 0.2.0) says nothing of its CPU; the guest gets this VM's -cpu {} -smp {here_topo}",
                cfg.cpu
            );
            return Ok(None);
        }
        let released = CpuSpec {
            migratable: false,
            ..CpuSpec::default()
        };
        let (t, _) = arch::x86_64::cpu::build(&released, host)
            .map_err(|e| LoadError::new(CPU, e.to_string()))?;
        if t == here && topo == here_topo {
            return Ok(None);
        }
        log::info!(
            "incoming migration: the guest keeps its CPU: -cpu {released} -smp {topo}, as vmm up to 0.2.0 gave it"
        );
        return give(board, t, topo, None).map(Some);
    };
    let spec = c["spec"].as_str().unwrap_or("?");
    let guest = crate::snapshot::cpuid_table(&c["cpuid"])
        .ok_or_else(|| LoadError::new(CPU, "the stream's CPUID table is not a list of leaves"))?;
    let topo = topology(&c["topology"]).unwrap_or(here_topo);
    let scaled = tsc(board, &guest, c["tsc_khz"].as_u64())?;
    msrs(board, &c["msrs"])?;
    if guest == here && topo == here_topo && scaled.is_none() {
        return Ok(None);
    }
    let d = arch::x86_64::cpu::differences(&guest, here, host);
    let said = d.sentences().join("; ");
    if !d.host_can_give() {
        return Err(LoadError::new(
            CPU,
            format!("the guest's CPU (-cpu {spec} on its source) cannot run on this host: {said}"),
        )
        .hint("move it to a host that has these, or start guests with a -cpu model every host of the fleet can give"));
    }
    if !d.is_empty() && (spec != cfg.cpu.to_string() || cfg.strict_config) {
        return Err(LoadError::new(
            CPU,
            format!(
                "the guest's CPU (-cpu {spec} on its source) is not what this destination's -cpu {} gives: {said}",
                cfg.cpu
            ),
        )
        .hint("start the destination with the source's -cpu"));
    }
    if topo != here_topo {
        same_apic_ids(&topo, &here_topo)?;
        if cfg.strict_config {
            return Err(LoadError::new(
                CPU,
                format!("the guest's vCPUs are arranged -smp {topo}, this destination's -smp {here_topo}"),
            )
            .hint("start the destination with the source's -smp"));
        }
    }
    log::info!(
        "incoming migration: the guest keeps its CPU (-cpu {spec} -smp {topo}, as its source gave it){}",
        if said.is_empty() { String::new() } else { format!(": {said}") }
    );
    if cfg.strict_config && scaled.is_none() {
        // QEMU's behaviour: the destination's own table, where no named
        // feature differs.
        return Ok(None);
    }
    give(board, guest, topo, scaled).map(Some)
}

/// The topology a stream carries.
fn topology(v: &Value) -> Option<Topology> {
    let n = |k: &str| v[k].as_u64().and_then(|x| u32::try_from(x).ok());
    Some(Topology {
        cpus: n("cpus")?,
        maxcpus: n("maxcpus")?,
        sockets: n("sockets")?,
        dies: n("dies")?,
        cores: n("cores")?,
        threads: n("threads")?,
        full_cpuid: v["full_cpuid"].as_bool().unwrap_or(true),
    })
}

/// The vCPUs were made with this VM's APIC IDs: a guest whose topology
/// numbers them otherwise cannot take them.
fn same_apic_ids(guest: &Topology, here: &Topology) -> Result<(), LoadError> {
    let ids = |t: &Topology| (0..here.cpus).map(|i| t.apic_id(i)).collect::<Vec<_>>();
    if ids(guest) == ids(here) {
        return Ok(());
    }
    Err(LoadError::new(
        "cpu",
        format!(
            "the guest's vCPUs have APIC IDs {:?} (-smp {guest}), this destination's -smp {here} gives {:?}",
            ids(guest),
            ids(here)
        ),
    )
    .hint("start the destination with the source's -smp"))
}

/// A guest given an invariant TSC counts on its rate: it runs here only at
/// the source's (scaled, where KVM can), as QEMU does with `invtsc`.
/// Returns the rate the vCPUs were scaled to, if they were. Rates within
/// KVM's own tolerance (250 ppm, `tsc_tolerance_ppm`) count as the same.
fn tsc(
    board: &Board,
    guest: &[CpuidEntry],
    source_khz: Option<u64>,
) -> Result<Option<u32>, LoadError> {
    let invtsc = arch::x86_64::cpu::feature("invtsc").expect("invtsc is a feature");
    let (Some(want), Some(have)) = (source_khz, board.tsc_khz) else {
        return Ok(None);
    };
    if !arch::x86_64::cpu::has(guest, invtsc)
        || want.abs_diff(have as u64) * 1_000_000 <= have as u64 * 250
    {
        return Ok(None);
    }
    let scaling = board.vm.x86_64().is_some_and(|v| v.tsc_scaling());
    if !scaling {
        return Err(LoadError::new(
            "cpu",
            format!(
                "the guest was given an invariant TSC (invtsc) running at {want} kHz; this host's runs at {have} kHz and its KVM cannot scale it (no KVM_CAP_TSC_CONTROL)"
            ),
        )
        .hint("move it to a host with the same TSC frequency, or start guests without invtsc (-cpu host leaves it out unless migratable=off)"));
    }
    for v in &board.vcpu_objs {
        let mut v = v.lock().expect("vcpu lock");
        if let Some(x) = v.x86_64() {
            x.set_tsc_khz(want as u32)
                .map_err(|e| LoadError::new("cpu", format!("{e}: {}", e.source)))?;
        }
    }
    log::info!("incoming migration: the guest's TSC runs at its source's {want} kHz (this host's: {have} kHz)");
    Ok(Some(want as u32))
}

/// Every MSR the source's vCPU state holds must be one this host's KVM
/// restores: KVM would stop at the first it refuses.
fn msrs(board: &Board, carried: &Value) -> Result<(), LoadError> {
    let here = board.vm.x86_64().map_or(&[][..], |v| v.msrs());
    let missing: Vec<String> = carried
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_u64())
        .filter(|m| !here.contains(&(*m as u32)))
        .map(|m| format!("{m:#x}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(LoadError::new(
        "cpu",
        format!(
            "the guest's state holds MSRs this host's KVM cannot restore: {}",
            missing.join(", ")
        ),
    ))
}

/// Gives every vCPU (none has run) the CPUID table `t` as `topo` numbers
/// it.
fn give(
    board: &Board,
    t: Vec<CpuidEntry>,
    topo: Topology,
    tsc_khz: Option<u32>,
) -> Result<CarriedCpu, LoadError> {
    for (i, v) in board.vcpu_objs.iter().enumerate() {
        let mut v = v.lock().expect("vcpu lock");
        v.x86_64()
            .ok_or_else(|| LoadError::new("cpu", "not an x86_64 vCPU"))?
            .set_cpuid(&t, topo.apic_id(i as u32), &topo)
            .map_err(|e| LoadError::new("cpu", format!("{e}: {}", e.source)))?;
    }
    Ok(CarriedCpu {
        cpuid: Arc::new(t),
        topology: topo,
        tsc_khz,
    })
}

/// Gives the function at `bdf` of `board` the source's configuration
/// (`carried`, or what a source that carried none gave its guest, from
/// the function's `state`) where `cfg`'s differs, rebuilding it; `None`
/// when nothing differs.
fn adopt(
    cfg: &VmConfig,
    board: &Board,
    bdf: Bdf,
    carried: Option<&Value>,
    state: &State,
) -> Result<Option<Adopted>, LoadError> {
    let at = bdf.to_string();
    // q35's host bridge is the function at 00:00.0; on pseries a device is.
    let index = if bdf == HOST_BRIDGE && cfg.machine.arch.board().host_bridge_is_function {
        None
    } else {
        Some(
            cfg.devices
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
                })?,
        )
    };
    let here = match index {
        Some(i) => &cfg.devices[i].props,
        None => &cfg.host_bridge,
    };
    let inferred;
    let carried = match carried {
        Some(c) => c,
        None => {
            inferred = as_released(here.type_name, state);
            &inferred
        }
    };
    // An inferred configuration names no type.
    let type_name = carried["type"].as_str().unwrap_or(here.type_name);
    if here.type_name != type_name {
        return Err(LoadError::new(
            &at,
            format!(
                "the source has a {type_name} here, this VM a {}",
                here.type_name
            ),
        ));
    }
    let device = format!("{at} {type_name}");
    let host = crate::snapshot::host_side(type_name);
    let (props, changed, problems) = merge(here, &device, &host, carried);
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
    let Some(index) = index else {
        // The host bridge's properties shape only the firmware tables.
        return Ok(Some(Adopted::HostBridge(props)));
    };
    let mut rebuilt = cfg.devices[index].clone();
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
    Ok(Some(Adopted::Device(index, props)))
}

/// What vmm up to 0.2.0, whose streams carry no configuration, gave a
/// guest where this build's machine types may give another: read from
/// the state where it tells (a virtio function's MSI-X table size is its
/// `vectors`), and what 0.2.0 gave on every machine type where it does
/// not (the Secondary Latency Timer read-only, a link of x1 at 2.5 GT/s,
/// the whole 64-bit window in ACPI, PCI0._UID 0). What else a guest could see differently, the function's own
/// load refuses (its read-only registers).
fn as_released(type_name: &str, state: &State) -> Value {
    let properties = match type_name {
        "q35-pcihost" => json!({"x-pci-hole64-fix": "on", "x-pci-root-uid": "0"}),
        "pcie-root-port" => json!({
            "x-pci-express-writeable-slt-bug": "off",
            "x-speed": "2_5",
            "x-width": "1",
        }),
        _ => match devices::virtio::pci::vectors_in_state(state) {
            Some(v) => json!({"vectors": v.to_string()}),
            None => json!({}),
        },
    };
    json!({ "properties": properties })
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
    for a in adopted {
        match a {
            Adopted::Device(i, props) => cfg.devices[i].props = props,
            Adopted::HostBridge(props) => cfg.host_bridge = props,
            Adopted::Cpu(t) => cfg.cpu_carried = Some(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream from vmm 0.2.0 carries no configuration: its root port's
    /// Secondary Latency Timer was read-only and its DSDT had the 64-bit
    /// window on every machine type, which this build's pc-q35-2.7 gives
    /// otherwise; the merge brings 0.2.0's back.
    #[test]
    fn a_source_that_carried_nothing_gave_what_0_2_0_gave() {
        let compat = machine::compat_props(machine::find("pc-q35-2.7").unwrap());
        let state = State::default();
        for (ty, name, want) in [
            ("pcie-root-port", "x-pci-express-writeable-slt-bug", false),
            ("q35-pcihost", "x-pci-hole64-fix", true),
        ] {
            let here = devices::model::resolve(ty, &compat, &[], &[]).unwrap();
            assert_eq!(here.bool(name), Some(!want), "{ty} on pc-q35-2.7 here");
            let (props, changed, problems) = merge(&here, ty, &[], &as_released(ty, &state));
            assert!(problems.is_empty(), "{problems:?}");
            // pc-q35-2.7's x-pci-root-uid (1) differs too; its link is
            // 0.2.0's already.
            let others = usize::from(ty == "q35-pcihost");
            assert_eq!(changed.len(), 1 + others, "{changed:?}");
            assert_eq!(props.bool(name), Some(want), "{ty}");
            let r = props.values.iter().find(|r| r.name == name).unwrap();
            assert_eq!(r.source, devices::model::Source::Migration);
        }
    }

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
