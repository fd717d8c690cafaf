//! Typed device properties (QEMU's `DEFINE_PROP_*`): the kinds, their
//! accepted spellings, and parsed values.

use std::fmt;

/// What a property holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropKind {
    Bool,
    /// on / off / auto.
    OnOffAuto,
    U8,
    U16,
    U32,
    U64,
    /// A byte count with an optional K/M/G/T suffix.
    Size,
    Str,
    /// A PCI device/function, `slot[.fn]` (QEMU's `addr=`).
    PciDevfn,
    /// One bit of a flags word (QEMU's `DEFINE_PROP_BIT`): reads and
    /// writes like a bool; devices read the assembled word.
    Bit {
        word: &'static str,
        bit: u8,
    },
    /// One of a fixed list of names (a QAPI enum: QEMU's `PCIELinkSpeed`
    /// and the like), named `name` in help.
    Enum {
        name: &'static str,
        values: &'static [&'static str],
    },
}

impl PropKind {
    /// How the kind is named in help and errors.
    pub fn name(self) -> &'static str {
        match self {
            PropKind::Bool | PropKind::Bit { .. } => "bool",
            PropKind::OnOffAuto => "OnOffAuto",
            PropKind::U8 => "uint8",
            PropKind::U16 => "uint16",
            PropKind::U32 => "uint32",
            PropKind::U64 => "uint64",
            PropKind::Size => "size",
            PropKind::Str => "str",
            PropKind::PciDevfn => "int32 (slot[.fn])",
            PropKind::Enum { name, .. } => name,
        }
    }

    fn expected(self) -> String {
        if let PropKind::Enum { values, .. } = self {
            return format!("one of {}", values.join(", "));
        }
        match self {
            PropKind::Bool | PropKind::Bit { .. } => "on, off, true, false, yes or no",
            PropKind::OnOffAuto => "on, off or auto",
            PropKind::U8 => "an integer from 0 to 255",
            PropKind::U16 => "an integer from 0 to 65535",
            PropKind::U32 => "an integer from 0 to 4294967295",
            PropKind::U64 => "an unsigned 64-bit integer",
            PropKind::Size => "a size such as 4096, 64K or 1G",
            PropKind::Str => "a string",
            PropKind::PciDevfn => {
                "a PCI slot 0-31 with an optional function 0-7, such as 3 or 0x1f.2"
            }
            PropKind::Enum { .. } => unreachable!("answered above"),
        }
        .to_string()
    }
}

/// A parsed value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Bool(bool),
    OnOffAuto(OnOffAuto),
    Uint(u64),
    Str(String),
    /// slot << 3 | function.
    Devfn(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOffAuto {
    On,
    Off,
    Auto,
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{}", if *b { "on" } else { "off" }),
            Value::OnOffAuto(OnOffAuto::On) => write!(f, "on"),
            Value::OnOffAuto(OnOffAuto::Off) => write!(f, "off"),
            Value::OnOffAuto(OnOffAuto::Auto) => write!(f, "auto"),
            Value::Uint(v) => write!(f, "{v}"),
            Value::Str(s) => write!(f, "{s}"),
            Value::Devfn(d) => write!(f, "{:02x}.{}", d >> 3, d & 7),
        }
    }
}

/// A value that does not fit its property.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid value '{value}' for {kind} property '{name}': expected {expected}")]
pub struct BadValue {
    pub name: String,
    pub value: String,
    pub kind: &'static str,
    pub expected: String,
}

fn parse_uint(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let (num, shift) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 10),
        'm' | 'M' => (&s[..s.len() - 1], 20),
        'g' | 'G' => (&s[..s.len() - 1], 30),
        't' | 'T' => (&s[..s.len() - 1], 40),
        'b' | 'B' => (&s[..s.len() - 1], 0),
        _ => (s, 0),
    };
    parse_uint(num)?.checked_mul(1 << shift)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "on" | "true" | "yes" => Some(true),
        "off" | "false" | "no" => Some(false),
        _ => None,
    }
}

/// Parses `value` as `kind`; `name` is for the error.
pub fn parse(name: &str, kind: PropKind, value: &str) -> Result<Value, BadValue> {
    let v = match kind {
        PropKind::Bool | PropKind::Bit { .. } => parse_bool(value).map(Value::Bool),
        PropKind::OnOffAuto => match value {
            "auto" => Some(Value::OnOffAuto(OnOffAuto::Auto)),
            v => parse_bool(v)
                .map(|b| Value::OnOffAuto(if b { OnOffAuto::On } else { OnOffAuto::Off })),
        },
        PropKind::U8 => parse_uint(value)
            .filter(|v| *v <= u8::MAX as u64)
            .map(Value::Uint),
        PropKind::U16 => parse_uint(value)
            .filter(|v| *v <= u16::MAX as u64)
            .map(Value::Uint),
        PropKind::U32 => parse_uint(value)
            .filter(|v| *v <= u32::MAX as u64)
            .map(Value::Uint),
        PropKind::U64 => parse_uint(value).map(Value::Uint),
        PropKind::Size => parse_size(value).map(Value::Uint),
        PropKind::Str => Some(Value::Str(value.to_string())),
        PropKind::Enum { values, .. } => values
            .contains(&value)
            .then(|| Value::Str(value.to_string())),
        PropKind::PciDevfn => {
            let (slot, func) = value.split_once('.').unwrap_or((value, "0"));
            match (parse_uint(slot), parse_uint(func)) {
                (Some(s), Some(f)) if s < 32 && f < 8 => Some(Value::Devfn((s << 3 | f) as u8)),
                _ => None,
            }
        }
    };
    v.ok_or_else(|| BadValue {
        name: name.to_string(),
        value: value.to_string(),
        kind: kind.name(),
        expected: kind.expected(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        for s in ["on", "true", "yes"] {
            assert_eq!(parse("p", PropKind::Bool, s), Ok(Value::Bool(true)));
        }
        for s in ["off", "false", "no"] {
            assert_eq!(parse("p", PropKind::Bool, s), Ok(Value::Bool(false)));
        }
        assert_eq!(
            parse("p", PropKind::OnOffAuto, "auto"),
            Ok(Value::OnOffAuto(OnOffAuto::Auto))
        );
        assert_eq!(parse("p", PropKind::U8, "0xff"), Ok(Value::Uint(255)));
        assert!(parse("p", PropKind::U8, "256").is_err());
        assert_eq!(parse("p", PropKind::Size, "64K"), Ok(Value::Uint(65536)));
        assert_eq!(parse("p", PropKind::Size, "1G"), Ok(Value::Uint(1 << 30)));
        assert_eq!(
            parse("p", PropKind::PciDevfn, "0x1f.2"),
            Ok(Value::Devfn(0xfa))
        );
        assert!(parse("p", PropKind::PciDevfn, "32").is_err());
        let speed = PropKind::Enum {
            name: "PCIELinkSpeed",
            values: &["2_5", "16"],
        };
        assert_eq!(parse("p", speed, "2_5"), Ok(Value::Str("2_5".into())));
        let e = parse("p", speed, "3").unwrap_err().to_string();
        assert!(
            e.contains("PCIELinkSpeed") && e.contains("one of 2_5, 16"),
            "{e}"
        );
        let e = parse("num-queues", PropKind::U16, "many")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'many'") && e.contains("num-queues") && e.contains("0 to 65535"),
            "{e}"
        );
    }
}
