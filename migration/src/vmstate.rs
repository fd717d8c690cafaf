//! State descriptions as data, and the value tree they describe.

use serde_json::{json, Value as Json};

mod typed;
pub use typed::{
    field, present, struct_from_val, subsection, BadValue, Described, Element, FieldKind,
    FieldValue, VBuffer, Vmstate, U8,
};

/// How a field is encoded (big-endian integers, as QEMU).
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I32,
    I64,
    /// A fixed-size byte buffer.
    Buffer(usize),
    /// `len` elements of an integer kind, back to back.
    Array(&'static Kind, usize),
    /// A nested description, inline (its fields, then its subsections).
    Struct(&'static Description),
    /// As many elements as an earlier `int32`/`uint32` field of the same
    /// description says (QEMU's `VMSTATE_*_VARRAY_*`), back to back: the
    /// element kind and that field's name.
    VarArray(&'static Kind, &'static str),
    /// As many bytes as an earlier `uint32` field of the same description
    /// says (QEMU's `VMSTATE_VBUFFER_ALLOC_UINT32`): that field's name.
    VBuffer(&'static str),
}

impl Kind {
    /// QEMU's vmdesc type name.
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Bool => "bool",
            Kind::U8 => "uint8",
            Kind::U16 => "uint16",
            Kind::U32 => "uint32",
            Kind::U64 => "uint64",
            Kind::I32 => "int32",
            Kind::I64 => "int64",
            Kind::Buffer(_) | Kind::VBuffer(_) => "buffer",
            Kind::Array(k, _) | Kind::VarArray(k, _) => k.type_name(),
            Kind::Struct(_) => "struct",
        }
    }

    /// A `VarArray` counted by field `count` (for [`vmstate!`]'s
    /// `#[count(FIELD)]`; `""` without it). A `Vec` field must have its
    /// count and no other field may: either mistake stops the description
    /// from building (it is a constant).
    ///
    /// [`vmstate!`]: crate::vmstate!
    pub const fn counted(self, count: &'static str) -> Kind {
        match (self, count.is_empty()) {
            (Kind::VarArray(..), true) => {
                panic!("a Vec field (a counted array) needs #[count(FIELD)]")
            }
            (Kind::VBuffer(_), true) => panic!("a VBuffer field needs #[count(FIELD)]"),
            (Kind::VarArray(k, _), false) => Kind::VarArray(k, count),
            (Kind::VBuffer(_), false) => Kind::VBuffer(count),
            (_, false) => panic!("#[count] is for a Vec or VBuffer field"),
            (k, true) => k,
        }
    }

    /// Bytes on the wire (for integers and buffers; structs vary).
    pub fn wire_size(self) -> usize {
        match self {
            Kind::Bool | Kind::U8 => 1,
            Kind::U16 => 2,
            Kind::U32 | Kind::I32 => 4,
            Kind::U64 | Kind::I64 => 8,
            Kind::Buffer(n) => n,
            Kind::Array(k, n) => k.wire_size() * n,
            // One element's (a struct's, like any struct's, varies).
            Kind::VarArray(k, _) => k.wire_size(),
            // Varies, as QEMU's dump says.
            Kind::Struct(_) | Kind::VBuffer(_) => 0,
        }
    }
}

/// One field of a description.
#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    /// The description version the field appeared in (0 = always there).
    /// Streams older than this do not carry it; it keeps its default.
    pub since: u32,
}

/// A subsection: sent only when `needed` holds for the parent's state.
#[derive(Debug)]
pub struct Subsection {
    pub desc: &'static Description,
    pub needed: fn(&State) -> bool,
}

/// A state description (QEMU's VMStateDescription).
#[derive(Debug)]
pub struct Description {
    pub name: &'static str,
    pub version_id: u32,
    pub minimum_version_id: u32,
    pub fields: &'static [Field],
    pub subsections: &'static [Subsection],
}

/// A value of a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Bool(bool),
    Uint(u64),
    Int(i64),
    Bytes(Vec<u8>),
    Array(Vec<Val>),
    Struct(State),
}

/// A device's state in the shape of its description: field values in
/// order, and the subsections that are present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub fields: Vec<(&'static str, Val)>,
    pub subsections: Vec<(&'static str, State)>,
}

impl State {
    pub fn get(&self, name: &str) -> Option<&Val> {
        self.fields.iter().find(|f| f.0 == name).map(|f| &f.1)
    }
    pub fn uint(&self, name: &str) -> Option<u64> {
        match self.get(name)? {
            Val::Uint(v) => Some(*v),
            Val::Bool(b) => Some(*b as u64),
            _ => None,
        }
    }
    pub fn subsection(&self, name: &str) -> Option<&State> {
        self.subsections.iter().find(|s| s.0 == name).map(|s| &s.1)
    }
    pub fn set(&mut self, name: &'static str, v: Val) -> &mut Self {
        match self.fields.iter_mut().find(|f| f.0 == name) {
            Some(f) => f.1 = v,
            None => self.fields.push((name, v)),
        }
        self
    }
}

/// The value a field has when the stream does not carry it.
pub fn default_value(kind: Kind) -> Val {
    match kind {
        Kind::Bool => Val::Bool(false),
        Kind::U8 | Kind::U16 | Kind::U32 | Kind::U64 => Val::Uint(0),
        Kind::I32 | Kind::I64 => Val::Int(0),
        Kind::Buffer(n) => Val::Bytes(vec![0; n]),
        Kind::Array(k, n) => Val::Array(vec![default_value(*k); n]),
        Kind::VarArray(..) => Val::Array(vec![]),
        Kind::VBuffer(_) => Val::Bytes(vec![]),
        Kind::Struct(d) => Val::Struct(State {
            fields: d
                .fields
                .iter()
                .map(|f| (f.name, default_value(f.kind)))
                .collect(),
            subsections: vec![],
        }),
    }
}

impl Description {
    /// The description as JSON (for `-dump-vmstate` and its checker).
    pub fn to_json(&self) -> Json {
        json!({
            "name": self.name,
            "version_id": self.version_id,
            "minimum_version_id": self.minimum_version_id,
            "fields": self.fields.iter().map(|f| {
                let mut o = json!({"field": f.name, "type": f.kind.type_name(), "version_id": f.since});
                match f.kind {
                    Kind::Struct(d) => o["struct"] = d.to_json(),
                    Kind::VarArray(k, count) => {
                        o["count_field"] = count.into();
                        match k {
                            Kind::Struct(d) => o["struct"] = d.to_json(),
                            k => o["size"] = k.wire_size().into(),
                        }
                    }
                    Kind::VBuffer(size) => {
                        o["size_field"] = size.into();
                        o["size"] = 0.into();
                    }
                    Kind::Array(k, n) => {
                        o["array_len"] = n.into();
                        o["size"] = f.kind.wire_size().into();
                        if let Kind::Struct(d) = k {
                            o["struct"] = d.to_json();
                        }
                    }
                    k => o["size"] = k.wire_size().into(),
                }
                o
            }).collect::<Vec<_>>(),
            "subsections": self.subsections.iter().map(|s| s.desc.to_json()).collect::<Vec<_>>(),
        })
    }

    /// QEMU's vmdesc entry for a section written with `state` (the
    /// layout `analyze-migration.py` reads).
    pub fn vmdesc(&self, state: &State) -> Json {
        let fields: Vec<Json> = self
            .fields
            .iter()
            .map(|f| {
                let mut o =
                    json!({"name": f.name, "type": f.kind.type_name(), "size": f.kind.wire_size()});
                match (f.kind, state.get(f.name)) {
                    (Kind::Struct(d), Some(Val::Struct(s))) => o["struct"] = d.vmdesc(s),
                    // As QEMU: the size this section was written with.
                    (Kind::VBuffer(_), Some(Val::Bytes(b))) => o["size"] = b.len().into(),
                    // As QEMU: the count this section was written with.
                    (Kind::VarArray(k, _), Some(Val::Array(a))) => {
                        o["array_len"] = a.len().into();
                        o["size"] = k.wire_size().into();
                        // The element's layout, even with no element (a
                        // reader rebuilds the field's kind from it).
                        if let Kind::Struct(d) = k {
                            let st = match (a.first(), default_value(*k)) {
                                (Some(Val::Struct(first)), _) => first.clone(),
                                (_, Val::Struct(empty)) => empty,
                                _ => State::default(),
                            };
                            o["struct"] = d.vmdesc(&st);
                        }
                    }
                    (Kind::Array(k, n), v) => {
                        o["array_len"] = n.into();
                        o["size"] = k.wire_size().into();
                        // An array of structs: the first element's layout
                        // (every element has the same one).
                        if let (Kind::Struct(d), Some(Val::Array(a))) = (k, v) {
                            if let Some(Val::Struct(first)) = a.first() {
                                o["struct"] = d.vmdesc(first);
                            }
                        }
                    }
                    _ => {}
                }
                o
            })
            .collect();
        let subs: Vec<Json> = self
            .subsections
            .iter()
            .filter_map(|s| state.subsection(s.desc.name).map(|st| s.desc.vmdesc(st)))
            .collect();
        let mut o = json!({"vmsd_name": self.name, "version": self.version_id, "fields": fields});
        if !subs.is_empty() {
            o["subsections"] = subs.into();
        }
        o
    }
}

/// What every migratable component implements: its state as the value
/// tree of its description, and back.
pub trait Migratable {
    /// What [`Migratable::state`] fills and [`Migratable::load`] reads.
    fn description(&self) -> &'static Description;
    /// The section's name in the stream (QEMU's idstr): the description's
    /// name, unless the device is known by its place on a bus.
    fn section(&self) -> String {
        self.description().name.to_string()
    }
    /// The section's instance: 0, unless there are several of it (one
    /// per vCPU, ...).
    fn instance(&self) -> u32 {
        0
    }
    fn state(&self) -> State;
    /// Takes over a saved state; nothing changes if it is refused.
    fn load(&mut self, st: &State) -> Result<(), LoadError>;
}

/// Why a component refused a saved state: which component, what is wrong
/// (naming the field or register and the values), and what would reconcile
/// it, when something would.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{device}: {what}{}", hint.as_deref().map(|h| format!("; {h}")).unwrap_or_default())]
pub struct LoadError {
    pub device: String,
    pub what: String,
    pub hint: Option<String>,
}

impl LoadError {
    pub fn new(device: impl Into<String>, what: impl Into<String>) -> LoadError {
        LoadError {
            device: device.into(),
            what: what.into(),
            hint: None,
        }
    }

    /// A field the state lacks, or holds out of its range.
    pub fn field(device: impl Into<String>, name: &str) -> LoadError {
        LoadError::new(device, format!("field '{name}' missing or out of range"))
    }

    pub fn hint(mut self, hint: impl Into<String>) -> LoadError {
        self.hint = Some(hint.into());
        self
    }
}
