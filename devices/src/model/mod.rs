//! The device model: types with inheritance and typed properties, and the
//! resolution of every property's value, with where the value came from.
//!
//! Precedence, lowest to highest: the type's default, the machine type's
//! compat arrays (in the order given: newest array first, so the machine's
//! own version wins), `-global TYPE.PROP=VALUE`, `-device TYPE,PROP=VALUE`.
//! An entry for a parent type reaches every subtype.

pub mod property;
pub mod types;

use property::{BadValue, PropKind, Value};
use std::fmt;

/// Where a property's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    /// A machine compat array, by name (`hw_compat_7_2`).
    Compat(&'static str),
    Global,
    Device,
    /// An `auto` setting resolved when the device is realized, from what
    /// the board has (the reason, e.g. `-smp 4`).
    Auto(String),
    /// The value the guest had on the source of a migration: a running
    /// guest's hardware does not change under it (carried configuration).
    Migration,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::Compat(a) => write!(f, "compat:{a}"),
            Source::Global => write!(f, "global"),
            Source::Device => write!(f, "device"),
            Source::Auto(why) => write!(f, "auto: {why}"),
            Source::Migration => write!(f, "migration"),
        }
    }
}

/// One compat entry: (array, type, property, value).
#[derive(Clone, Copy, Debug)]
pub struct CompatEntry {
    pub array: &'static str,
    pub type_name: &'static str,
    pub property: &'static str,
    pub value: &'static str,
}

/// A `-global TYPE.PROP=VALUE`.
#[derive(Clone, Debug)]
pub struct Global {
    pub type_name: String,
    pub property: String,
    pub value: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("unknown device type '{name}'{hint}; `-device help` lists them")]
    UnknownType { name: String, hint: String },
    #[error("device type '{0}' is abstract and cannot be created")]
    Abstract(String),
    #[error("device '{type_name}' has no property '{property}'; its properties: {valid}")]
    UnknownProperty {
        type_name: String,
        property: String,
        valid: String,
    },
    #[error("{type_name}: {source}")]
    BadValue {
        type_name: String,
        #[source]
        source: BadValue,
    },
    #[error("invalid -global '{0}': expected TYPE.PROP=VALUE")]
    GlobalSyntax(String),
    #[error("invalid property '{0}': expected PROP=VALUE")]
    PropertySyntax(String),
}

/// A property's resolved value.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub name: &'static str,
    pub kind: PropKind,
    /// What the guest sees.
    pub value: Value,
    pub source: Source,
    /// For a value resolved from an `auto` setting: the setting, and
    /// where it came from.
    pub setting: Option<(Value, Source)>,
}

/// Every property of a device, resolved.
#[derive(Clone, Debug)]
pub struct Props {
    pub type_name: &'static str,
    pub values: Vec<Resolved>,
}

impl Props {
    pub fn get(&self, name: &str) -> Option<&Resolved> {
        self.values.iter().find(|r| r.name == name)
    }
    /// Replaces an automatic setting of `name` with the value the device
    /// really has, keeping the setting beside it; `why` is where the value
    /// came from. A property the type does not have is left alone.
    pub fn resolve_auto(&mut self, name: &str, value: Value, why: String) {
        let source = Source::Auto(why);
        if let Some(r) = self.values.iter_mut().find(|r| r.name == name) {
            let setting = std::mem::replace(&mut r.value, value);
            let was = std::mem::replace(&mut r.source, source);
            r.setting = Some((setting, was));
        } else if let Some(decl) = types::properties(self.type_name)
            .into_iter()
            .find(|p| p.name == name)
        {
            // A property without a default (`addr`): nothing was set.
            self.values.push(Resolved {
                name: decl.name,
                kind: decl.kind,
                value,
                source,
                setting: None,
            });
        }
    }
    /// Takes `value` for property `name` from a migration's source (its
    /// guest's hardware), in `-device` syntax. Returns the value it had
    /// here when that differs (now with source `migration`), `None` when
    /// it was the same; an error when this device has no such property or
    /// the value does not fit it.
    pub fn adopt(&mut self, name: &str, value: &str) -> Result<Option<Value>, Error> {
        let type_name = self.type_name;
        let Some(r) = self.values.iter_mut().find(|r| r.name == name) else {
            return Err(Error::UnknownProperty {
                type_name: type_name.to_string(),
                property: name.to_string(),
                valid: valid_props(type_name),
            });
        };
        let v = property::parse(name, r.kind, value).map_err(|source| Error::BadValue {
            type_name: type_name.to_string(),
            source,
        })?;
        if v == r.value {
            return Ok(None);
        }
        r.setting = None;
        r.source = Source::Migration;
        Ok(Some(std::mem::replace(&mut r.value, v)))
    }
    pub fn uint(&self, name: &str) -> Option<u64> {
        match self.get(name)?.value {
            Value::Uint(v) => Some(v),
            _ => None,
        }
    }
    pub fn bool(&self, name: &str) -> Option<bool> {
        match self.get(name)?.value {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn str(&self, name: &str) -> Option<String> {
        match &self.get(name)?.value {
            Value::Str(s) => Some(s.clone()),
            _ => None,
        }
    }
    pub fn on_off_auto(&self, name: &str) -> Option<property::OnOffAuto> {
        match self.get(name)?.value {
            Value::OnOffAuto(v) => Some(v),
            _ => None,
        }
    }
    /// The flags word assembled from its `Bit` properties.
    pub fn bits(&self, word: &str) -> u64 {
        self.values
            .iter()
            .filter_map(|r| match (r.kind, &r.value) {
                (PropKind::Bit { word: w, bit }, Value::Bool(true)) if w == word => {
                    Some(1u64 << bit)
                }
                _ => None,
            })
            .fold(0, |a, b| a | b)
    }
}

fn unknown_type(name: &str) -> Error {
    let near = types::nearest(name);
    let hint = if near.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", near.join(", "))
    };
    Error::UnknownType {
        name: name.to_string(),
        hint,
    }
}

fn valid_props(ty: &str) -> String {
    types::properties(ty)
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks a `-global` (the type and property must exist) and parses it.
pub fn parse_global(s: &str) -> Result<Global, Error> {
    let (tp, value) = s
        .split_once('=')
        .ok_or_else(|| Error::GlobalSyntax(s.to_string()))?;
    // QEMU splits at the first dot: type names have none, properties may
    // (`pre-2.8-migration`).
    let (ty, prop) = tp
        .split_once('.')
        .ok_or_else(|| Error::GlobalSyntax(s.to_string()))?;
    let decl = lookup(ty, prop)?;
    property::parse(prop, decl.kind, value).map_err(|source| Error::BadValue {
        type_name: ty.to_string(),
        source,
    })?;
    Ok(Global {
        type_name: ty.to_string(),
        property: prop.to_string(),
        value: value.to_string(),
    })
}

fn lookup(ty: &str, prop: &str) -> Result<&'static types::PropDecl, Error> {
    if types::find(ty).is_none() {
        return Err(unknown_type(ty));
    }
    types::properties(ty)
        .into_iter()
        .find(|p| p.name == prop)
        .ok_or_else(|| Error::UnknownProperty {
            type_name: ty.to_string(),
            property: prop.to_string(),
            valid: valid_props(ty),
        })
}

/// Resolves every property of a `type_name` device.
pub fn resolve(
    type_name: &str,
    compat: &[CompatEntry],
    globals: &[Global],
    device: &[(String, String)],
) -> Result<Props, Error> {
    let info = types::find(type_name).ok_or_else(|| unknown_type(type_name))?;
    if info.abstract_ {
        return Err(Error::Abstract(type_name.to_string()));
    }
    let bad = |source| Error::BadValue {
        type_name: type_name.to_string(),
        source,
    };
    let mut values = vec![];
    for decl in types::properties(type_name) {
        let mut value = if decl.default == "auto" && decl.kind == PropKind::PciDevfn {
            None
        } else {
            Some(property::parse(decl.name, decl.kind, decl.default).map_err(bad)?)
        };
        let mut source = Source::Default;
        for c in compat
            .iter()
            .filter(|c| c.property == decl.name && types::is_a(type_name, c.type_name))
        {
            value = Some(property::parse(decl.name, decl.kind, c.value).map_err(bad)?);
            source = Source::Compat(c.array);
        }
        for g in globals
            .iter()
            .filter(|g| g.property == decl.name && types::is_a(type_name, &g.type_name))
        {
            value = Some(property::parse(decl.name, decl.kind, &g.value).map_err(bad)?);
            source = Source::Global;
        }
        for (k, v) in device.iter().filter(|(k, _)| k == decl.name) {
            value = Some(property::parse(k, decl.kind, v).map_err(bad)?);
            source = Source::Device;
        }
        if let Some(value) = value {
            values.push(Resolved {
                name: decl.name,
                kind: decl.kind,
                value,
                source,
                setting: None,
            });
        }
    }
    if let Some((k, _)) = device
        .iter()
        .find(|(k, _)| !types::properties(type_name).iter().any(|p| p.name == k))
    {
        return Err(Error::UnknownProperty {
            type_name: type_name.to_string(),
            property: k.clone(),
            valid: valid_props(type_name),
        });
    }
    Ok(Props {
        type_name: info.name,
        values,
    })
}

/// `-device TYPE,help`: the properties, their kinds, defaults and help.
pub fn help(type_name: &str) -> Result<String, Error> {
    let info = types::find(type_name).ok_or_else(|| unknown_type(type_name))?;
    let mut s = format!("{} options ({}):\n", info.name, info.description);
    for p in types::properties(type_name) {
        s += &format!(
            "  {}=<{}> - {} (default: {})\n",
            p.name,
            p.kind.name(),
            p.help,
            p.default
        );
    }
    Ok(s)
}

/// `-device help`: every type that can be created.
pub fn list() -> String {
    let mut s = String::from("Devices:\n");
    for t in crate::registry::DEVICES.iter().map(|d| &d.info) {
        s += &format!(
            "  name \"{}\", bus {}, desc \"{}\"\n",
            t.name,
            t.bus.unwrap_or("none"),
            t.description
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const C72: CompatEntry = CompatEntry {
        array: "hw_compat_7_2",
        type_name: "pci-device",
        property: "x-pcie-err-unc-mask",
        value: "off",
    };

    fn dev(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn default_then_parent_compat_then_global_then_device() {
        let p = resolve("pcie-root-port", &[], &[], &[]).unwrap();
        let r = p.get("x-pcie-err-unc-mask").unwrap();
        assert_eq!(
            (r.value.clone(), r.source.clone()),
            (Value::Bool(true), Source::Default)
        );
        assert_eq!(p.bits("cap_present"), 1 << 4);
        // A pci-device compat entry reaches the pcie-root-port subtype.
        let p = resolve("pcie-root-port", &[C72], &[], &[]).unwrap();
        let r = p.get("x-pcie-err-unc-mask").unwrap();
        assert_eq!(
            (r.value.clone(), r.source.clone()),
            (Value::Bool(false), Source::Compat("hw_compat_7_2"))
        );
        assert_eq!(p.bits("cap_present"), 0);
        // -global beats compat.
        let g = parse_global("pcie-root-port.x-pcie-err-unc-mask=on").unwrap();
        let p = resolve("pcie-root-port", &[C72], std::slice::from_ref(&g), &[]).unwrap();
        assert_eq!(p.get("x-pcie-err-unc-mask").unwrap().source, Source::Global);
        assert_eq!(p.bool("x-pcie-err-unc-mask"), Some(true));
        // -device beats -global.
        let p = resolve(
            "pcie-root-port",
            &[C72],
            &[g],
            &dev(&[("x-pcie-err-unc-mask", "off")]),
        )
        .unwrap();
        assert_eq!(p.get("x-pcie-err-unc-mask").unwrap().source, Source::Device);
        assert_eq!(p.bool("x-pcie-err-unc-mask"), Some(false));
        // Compat for another type does not leak.
        let other = CompatEntry {
            type_name: "isa-debug-exit",
            property: "iobase",
            value: "0x99",
            array: "x",
        };
        assert_eq!(
            resolve("pcie-root-port", &[other], &[], &[])
                .unwrap()
                .get("addr")
                .map(|r| r.source.clone()),
            None
        );
        // Later compat arrays (older machine versions) win over earlier ones.
        let newer = CompatEntry {
            array: "hw_compat_8_0",
            value: "on",
            ..C72
        };
        let p = resolve("pcie-root-port", &[newer, C72], &[], &[]).unwrap();
        assert_eq!(
            p.get("x-pcie-err-unc-mask").unwrap().source,
            Source::Compat("hw_compat_7_2")
        );
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let e = resolve("pcie-root-prot", &[], &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'pcie-root-prot'") && e.contains("did you mean pcie-root-port"),
            "{e}"
        );
        let e = resolve("pcie-root-port", &[], &[], &dev(&[("chasis", "1")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no property 'chasis'")
                && e.contains("chassis")
                && e.contains("x-pcie-err-unc-mask"),
            "{e}"
        );
        let e = resolve("pcie-root-port", &[], &[], &dev(&[("chassis", "300")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'300'") && e.contains("0 to 255"), "{e}");
        assert!(matches!(
            parse_global("nosuch.x=1"),
            Err(Error::UnknownType { .. })
        ));
        assert!(matches!(
            parse_global("pcie-root-port=1"),
            Err(Error::GlobalSyntax(_))
        ));
        assert!(matches!(
            resolve("pci-device", &[], &[], &[]),
            Err(Error::Abstract(_))
        ));
        assert!(help("pcie-root-port")
            .unwrap()
            .contains("x-pcie-err-unc-mask=<bool>"));
        assert!(list().contains("pcie-root-port") && !list().contains("\"pci-device\""));
    }
}
