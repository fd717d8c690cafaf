//! Versioned machine types. A machine type pins the hardware ABI a guest
//! sees; its name and compat history mirror QEMU's for the devices vmm
//! implements, so management stacks that say `pc-q35-5.1` work unchanged.
//! The compat property arrays (`hw_compat_X_Y`) arrive with the device
//! model (issue #4); this is the registry they hang from.

/// One machine type.
#[derive(Debug, PartialEq, Eq)]
pub struct MachineType {
    pub name: &'static str,
    pub version: (u32, u32),
    pub description: &'static str,
}

/// Every x86_64 machine type, oldest first; the last is the newest and
/// the default.
pub const PC_Q35: &[MachineType] = &[
    MachineType {
        name: "pc-q35-2.7",
        version: (2, 7),
        description: "Standard PC (Q35 + ICH9, 2009), ABI of QEMU 2.7",
    },
    MachineType {
        name: "pc-q35-2.8",
        version: (2, 8),
        description: "Standard PC (Q35 + ICH9, 2009), ABI of QEMU 2.8",
    },
    MachineType {
        name: "pc-q35-5.1",
        version: (5, 1),
        description: "Standard PC (Q35 + ICH9, 2009), ABI of QEMU 5.1",
    },
    MachineType {
        name: "pc-q35-5.2",
        version: (5, 2),
        description: "Standard PC (Q35 + ICH9, 2009), ABI of QEMU 5.2",
    },
    MachineType {
        name: "pc-q35-7.2",
        version: (7, 2),
        description: "Standard PC (Q35 + ICH9, 2009), ABI of QEMU 7.2",
    },
    MachineType {
        name: "pc-q35-8.0",
        version: (8, 0),
        description: "Standard PC (Q35 + ICH9, 2009), ABI of QEMU 8.0",
    },
    MachineType {
        name: "pc-q35-10.0",
        version: (10, 0),
        description: "Standard PC (Q35 + ICH9, 2009), ABI of QEMU 10.0",
    },
];

/// Names that mean "the newest".
pub const ALIASES: &[&str] = &["q35", "pc-q35"];

/// Machine properties accepted after the type (`-M TYPE,prop=value`).
pub const PROPERTIES: &[(&str, &str)] = &[("accel", "the accelerator; only `kvm` exists")];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("unknown machine type '{name}'; valid machine types: {valid}")]
    Unknown { name: String, valid: String },
    #[error("machine property '{0}' needs a value (PROP=VALUE)")]
    PropertyWithoutValue(String),
    #[error("unknown machine property '{name}'; valid properties: {valid}")]
    UnknownProperty { name: String, valid: String },
    #[error("machine property accel={0} is not supported; only kvm is")]
    Accel(String),
}

pub fn newest() -> &'static MachineType {
    PC_Q35.last().expect("at least one machine type")
}

/// Every accepted name, for error messages and `-M help`.
pub fn valid_names() -> String {
    let mut v: Vec<&str> = PC_Q35.iter().map(|m| m.name).collect();
    v.extend(ALIASES);
    v.join(", ")
}

pub fn find(name: &str) -> Result<&'static MachineType, Error> {
    if ALIASES.contains(&name) {
        return Ok(newest());
    }
    PC_Q35
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| Error::Unknown {
            name: name.to_string(),
            valid: valid_names(),
        })
}

/// A parsed `-M` argument.
#[derive(Debug)]
pub struct MachineSpec {
    pub machine: &'static MachineType,
    pub properties: Vec<(String, String)>,
}

/// Parses `TYPE[,prop=value...]` (an empty TYPE means the default).
pub fn parse(spec: &str) -> Result<MachineSpec, Error> {
    let mut parts = spec.split(',');
    let name = parts.next().unwrap_or("");
    let machine = if name.is_empty() {
        newest()
    } else {
        find(name)?
    };
    let mut properties = vec![];
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| Error::PropertyWithoutValue(p.to_string()))?;
        match k {
            "accel" if v == "kvm" => {}
            "accel" => return Err(Error::Accel(v.to_string())),
            _ => {
                let valid = PROPERTIES
                    .iter()
                    .map(|p| p.0)
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Error::UnknownProperty {
                    name: k.to_string(),
                    valid,
                });
            }
        }
        properties.push((k.to_string(), v.to_string()));
    }
    Ok(MachineSpec {
        machine,
        properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_default_are_the_newest() {
        assert_eq!(find("q35").unwrap(), newest());
        assert_eq!(parse("").unwrap().machine, newest());
        assert_eq!(parse("pc-q35-5.1").unwrap().machine.version, (5, 1));
        for v in ["2.7", "2.8", "5.1", "5.2", "7.2", "8.0"] {
            find(&format!("pc-q35-{v}")).unwrap();
        }
    }

    #[test]
    fn unknown_type_lists_the_valid_ones() {
        let e = parse("pc-q35-1.0").unwrap_err().to_string();
        assert!(
            e.contains("'pc-q35-1.0'") && e.contains("pc-q35-5.1") && e.contains("q35"),
            "{e}"
        );
        assert!(matches!(
            parse("q35,foo=1"),
            Err(Error::UnknownProperty { .. })
        ));
        assert!(matches!(parse("q35,accel=tcg"), Err(Error::Accel(_))));
        assert!(parse("q35,accel=kvm").is_ok());
    }
}
