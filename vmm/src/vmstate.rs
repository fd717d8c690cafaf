//! `-dump-vmstate FILE`: every state description a machine type migrates,
//! as JSON, for `vmmctl vmstate-check` and the dumps kept in
//! `tests/compat/`.

use anyhow::{Context, Result};
use migration::vmstate::Description;
use std::path::Path;

/// The descriptions of machine type `m`'s migratable state: exactly the
/// sections a save writes (the hypervisor's, then the board's). The
/// hypervisor is KVM for q35, the qtest accelerator for pseries (the one
/// that runs it on this host).
pub fn descriptions(m: &machine::MachineType) -> Vec<&'static Description> {
    let hypervisor: &[&'static Description] = match m.arch {
        machine::Arch::X86_64 => crate::kvm::DESCRIPTIONS,
        machine::Arch::Ppc64 => &[&crate::qtest::QTEST],
    };
    hypervisor
        .iter()
        .copied()
        .chain(crate::snapshot::descriptions(m))
        .collect()
}

pub fn dump(path: &Path, m: &'static machine::MachineType) -> Result<()> {
    let sections: serde_json::Map<String, serde_json::Value> = descriptions(m)
        .into_iter()
        .map(|d| (d.name.to_string(), d.to_json()))
        .collect();
    let json = serde_json::json!({"machine": m.name, "vmm": env!("CARGO_PKG_VERSION"), "sections": sections});
    let text =
        serde_json::to_string_pretty(&json).context("cannot encode the descriptions")? + "\n";
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
