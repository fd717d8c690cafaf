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
        #[cfg(target_arch = "x86_64")]
        machine::Arch::X86_64 => crate::kvm::DESCRIPTIONS,
        // Elsewhere a q35 board runs under qtest only.
        #[cfg(not(target_arch = "x86_64"))]
        machine::Arch::X86_64 => &[&crate::qtest::QTEST],
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

#[cfg(test)]
mod tests {
    use super::*;
    use migration::vmstate::Kind;

    /// A counted array's count is an earlier integer field of the same
    /// description, a sized buffer's size an earlier `uint32` (a
    /// declaration the macro cannot check).
    fn check(d: &Description) {
        for (i, f) in d.fields.iter().enumerate() {
            let nested = match f.kind {
                Kind::VarArray(elem, count) => {
                    let c = d.fields[..i]
                        .iter()
                        .find(|g| g.name == count)
                        .unwrap_or_else(|| {
                            panic!("{}.{}: no earlier field '{count}'", d.name, f.name)
                        });
                    assert!(
                        matches!(c.kind, Kind::I32 | Kind::U32 | Kind::U16 | Kind::U8),
                        "{}.{}: '{count}' is no count",
                        d.name,
                        f.name
                    );
                    Some(elem)
                }
                Kind::VBuffer(size) => {
                    let c = d.fields[..i].iter().find(|g| g.name == size);
                    assert!(
                        c.is_some_and(|c| matches!(c.kind, Kind::U32)),
                        "{}.{}: '{size}' is no earlier uint32",
                        d.name,
                        f.name
                    );
                    None
                }
                Kind::Array(elem, _) => Some(elem),
                _ => None,
            };
            if let Kind::Struct(s) = nested.copied().unwrap_or(f.kind) {
                check(s);
            }
        }
        for s in d.subsections {
            check(s.desc);
        }
    }

    #[test]
    fn every_counted_array_and_sized_buffer_names_an_earlier_count() {
        for m in machine::all() {
            descriptions(m).into_iter().for_each(check);
        }
    }
}
