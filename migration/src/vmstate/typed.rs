//! Typed state: the Rust types a field can have, and [`vmstate!`] (the
//! declaration that generates a state struct, its description and both
//! conversions from one field list).
//!
//! [`vmstate!`]: crate::vmstate!

use super::{Description, Kind, LoadError, State, Val};

/// Where a value does not fit its Rust type: the path below it (empty for
/// the value itself, else `.field` and `[index]` steps).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BadValue(pub String);

/// A Rust type a state struct's field can have: how a [`State`] holds it.
pub trait FieldValue: Sized {
    /// The value as the state holds it.
    fn to_val(&self) -> Val;
    /// Fails when the value has another shape, or is out of this type's
    /// range (strictly: a `Val::Bool` is no integer).
    fn from_val(v: &Val) -> Result<Self, BadValue>;
    /// The value of a field the stream does not carry (as
    /// [`default_value`](super::default_value): zeros, no subsections).
    fn zero() -> Self;
}

/// A field type with its wire layout.
pub trait FieldKind: FieldValue {
    /// How the field is encoded.
    const KIND: Kind;
}

/// A type whose arrays `[T; N]` travel as `N` elements ([`Kind::Array`]).
/// `u8` is none: `[u8; N]` is a buffer, `[U8; N]` an array of `uint8`.
pub trait Element: FieldKind {}

/// A `u8` as an array element (`[U8; N]` is `N` `uint8` fields, where
/// `[u8; N]` is one `buffer`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct U8(pub u8);

/// A struct declared with [`vmstate!`](crate::vmstate!): its conversions
/// to and from the value tree of its description.
pub trait Vmstate: FieldValue {
    /// The value tree: every field in the declared order, the subsections
    /// that are `Some`.
    fn to_state(&self) -> State;
    /// Reads every field (and present subsection); fails naming the part
    /// that is missing or out of range.
    fn read_state(st: &State) -> Result<Self, BadValue>;
    /// [`Vmstate::read_state`], failing as `device`.
    fn from_state(st: &State, device: &str) -> Result<Self, LoadError> {
        Self::read_state(st).map_err(|e| LoadError::field(device, &e.0))
    }
}

/// A declared struct with a description of its own (a `static`).
pub trait Described: Vmstate + FieldKind {
    /// The `static` the declaration names.
    const DESCRIPTION: &'static Description;
}

macro_rules! integers {
    ($($t:ty: $kind:ident, $val:ident, $wide:ty);* $(;)?) => {$(
        impl FieldValue for $t {
            fn to_val(&self) -> Val {
                Val::$val(<$wide>::from(*self))
            }
            fn from_val(v: &Val) -> Result<Self, BadValue> {
                match v {
                    Val::$val(x) => <$t>::try_from(*x).map_err(|_| BadValue::default()),
                    _ => Err(BadValue::default()),
                }
            }
            fn zero() -> Self {
                0
            }
        }
        impl FieldKind for $t {
            const KIND: Kind = Kind::$kind;
        }
    )*};
}

integers! {
    u8: U8, Uint, u64;
    u16: U16, Uint, u64;
    u32: U32, Uint, u64;
    i32: I32, Int, i64;
}

impl FieldValue for u64 {
    fn to_val(&self) -> Val {
        Val::Uint(*self)
    }
    fn from_val(v: &Val) -> Result<Self, BadValue> {
        match v {
            Val::Uint(x) => Ok(*x),
            _ => Err(BadValue::default()),
        }
    }
    fn zero() -> Self {
        0
    }
}

impl FieldKind for u64 {
    const KIND: Kind = Kind::U64;
}

impl FieldValue for i64 {
    fn to_val(&self) -> Val {
        Val::Int(*self)
    }
    fn from_val(v: &Val) -> Result<Self, BadValue> {
        match v {
            Val::Int(x) => Ok(*x),
            _ => Err(BadValue::default()),
        }
    }
    fn zero() -> Self {
        0
    }
}

impl FieldKind for i64 {
    const KIND: Kind = Kind::I64;
}

impl FieldValue for bool {
    fn to_val(&self) -> Val {
        Val::Bool(*self)
    }
    fn from_val(v: &Val) -> Result<Self, BadValue> {
        match v {
            Val::Bool(b) => Ok(*b),
            _ => Err(BadValue::default()),
        }
    }
    fn zero() -> Self {
        false
    }
}

impl FieldKind for bool {
    const KIND: Kind = Kind::Bool;
}

impl FieldValue for U8 {
    fn to_val(&self) -> Val {
        self.0.to_val()
    }
    fn from_val(v: &Val) -> Result<Self, BadValue> {
        u8::from_val(v).map(U8)
    }
    fn zero() -> Self {
        U8(0)
    }
}

impl FieldKind for U8 {
    const KIND: Kind = Kind::U8;
}

impl Element for U8 {}
impl Element for u16 {}
impl Element for u32 {}
impl Element for u64 {}
impl Element for i32 {}
impl Element for i64 {}
impl Element for bool {}

/// A byte buffer of exactly `N` bytes.
impl<const N: usize> FieldValue for [u8; N] {
    fn to_val(&self) -> Val {
        Val::Bytes(self.to_vec())
    }
    fn from_val(v: &Val) -> Result<Self, BadValue> {
        match v {
            Val::Bytes(b) => <[u8; N]>::try_from(b.as_slice()).map_err(|_| BadValue::default()),
            _ => Err(BadValue::default()),
        }
    }
    fn zero() -> Self {
        [0; N]
    }
}

impl<const N: usize> FieldKind for [u8; N] {
    const KIND: Kind = Kind::Buffer(N);
}

/// Exactly `N` elements.
impl<T: Element, const N: usize> FieldValue for [T; N] {
    fn to_val(&self) -> Val {
        Val::Array(self.iter().map(T::to_val).collect())
    }
    fn from_val(v: &Val) -> Result<Self, BadValue> {
        let Val::Array(xs) = v else {
            return Err(BadValue::default());
        };
        let items = xs
            .iter()
            .enumerate()
            .map(|(i, x)| T::from_val(x).map_err(|e| BadValue(format!("[{i}]{}", e.0))))
            .collect::<Result<Vec<T>, BadValue>>()?;
        <[T; N]>::try_from(items).map_err(|_| BadValue::default())
    }
    fn zero() -> Self {
        std::array::from_fn(|_| T::zero())
    }
}

impl<T: Element, const N: usize> FieldKind for [T; N] {
    const KIND: Kind = Kind::Array(&T::KIND, N);
}

/// As many elements as another field says (`#[count(FIELD)]` in
/// [`vmstate!`](crate::vmstate!)): QEMU's `VMSTATE_*_VARRAY_*`.
impl<T: Element> FieldValue for Vec<T> {
    fn to_val(&self) -> Val {
        Val::Array(self.iter().map(T::to_val).collect())
    }
    fn from_val(v: &Val) -> Result<Self, BadValue> {
        let Val::Array(xs) = v else {
            return Err(BadValue::default());
        };
        xs.iter()
            .enumerate()
            .map(|(i, x)| T::from_val(x).map_err(|e| BadValue(format!("[{i}]{}", e.0))))
            .collect()
    }
    fn zero() -> Self {
        Vec::new()
    }
}

impl<T: Element> FieldKind for Vec<T> {
    /// Its count field is named by the declaration ([`Kind::counted`]).
    const KIND: Kind = Kind::VarArray(&T::KIND, "");
}

/// As many bytes as another field says (`#[count(FIELD)]` in
/// [`vmstate!`](crate::vmstate!)): QEMU's `VMSTATE_VBUFFER_ALLOC_UINT32`,
/// a buffer whose size travels before it (an NVRAM's contents).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VBuffer(pub Vec<u8>);

impl FieldValue for VBuffer {
    fn to_val(&self) -> Val {
        Val::Bytes(self.0.clone())
    }
    fn from_val(v: &Val) -> Result<Self, BadValue> {
        match v {
            Val::Bytes(b) => Ok(VBuffer(b.clone())),
            _ => Err(BadValue::default()),
        }
    }
    fn zero() -> Self {
        VBuffer(Vec::new())
    }
}

impl FieldKind for VBuffer {
    /// Its size field is named by the declaration ([`Kind::counted`]).
    const KIND: Kind = Kind::VBuffer("");
}

/// A nested state whose description someone else holds (a part of a
/// generic declaration, such as a virtio device's own state).
impl FieldValue for State {
    fn to_val(&self) -> Val {
        Val::Struct(self.clone())
    }
    fn from_val(v: &Val) -> Result<Self, BadValue> {
        match v {
            Val::Struct(s) => Ok(s.clone()),
            _ => Err(BadValue::default()),
        }
    }
    fn zero() -> Self {
        State::default()
    }
}

/// For [`vmstate!`](crate::vmstate!): field `name` of `st`. A field newer
/// than version 0 that the state lacks keeps its zero value, as the
/// stream reader gives it for an older stream.
#[doc(hidden)]
pub fn field<T: FieldValue>(st: &State, name: &str, since: u32) -> Result<T, BadValue> {
    match st.get(name) {
        Some(v) => T::from_val(v).map_err(|e| BadValue(format!("{name}{}", e.0))),
        None if since > 0 => Ok(T::zero()),
        None => Err(BadValue(name.to_string())),
    }
}

/// For [`vmstate!`](crate::vmstate!): subsection `S` of `st`, if present.
#[doc(hidden)]
pub fn subsection<S: Described>(st: &State) -> Result<Option<S>, BadValue> {
    let name = S::DESCRIPTION.name;
    st.subsection(name)
        .map(|s| S::read_state(s).map_err(|e| BadValue(format!("{name}.{}", e.0))))
        .transpose()
}

/// For [`vmstate!`](crate::vmstate!): a declared struct as a nested value.
#[doc(hidden)]
pub fn struct_from_val<S: Vmstate>(v: &Val) -> Result<S, BadValue> {
    match v {
        Val::Struct(st) => S::read_state(st).map_err(|e| BadValue(format!(".{}", e.0))),
        _ => Err(BadValue::default()),
    }
}

/// A subsection's `needed`: the struct had it (`Some`) when its state was
/// taken, so whoever built the struct decided.
pub fn present<S: Described>(st: &State) -> bool {
    st.subsection(S::DESCRIPTION.name).is_some()
}

/// Declares a migratable state once: from one field list it generates the
/// plain state struct (typed `pub` fields), its [`Description`] as a
/// `static` (what the stream writer and reader and `-dump-vmstate` use)
/// and both conversions ([`Vmstate::to_state`], [`Vmstate::from_state`]).
///
/// ```
/// use migration::vmstate::{State, Vmstate};
///
/// migration::vmstate! {
///     /// A device's state: a register, a FIFO, IRQ levels, a later addition.
///     pub static VMSTATE = "demo", version 2, minimum 1;
///     pub struct DemoState {
///         status: u16,
///         /// The bytes in the FIFO (a buffer: `[u8; N]`).
///         fifo: [u8; 16],
///         /// An array of four `int32` (`[U8; N]` for `uint8` elements).
///         levels: [i32; 4],
///         /// Added in version 2: an older stream leaves it 0.
///         #[since(2)]
///         timer: u64,
///     }
///     subsections {
///         /// Sent only when present (`Some`).
///         extra: Option<ExtraState>,
///     }
/// }
///
/// migration::vmstate! {
///     /// The subsection: a description of its own, named after its parent's.
///     pub static EXTRA = "demo/extra", version 1, minimum 1;
///     pub struct ExtraState {
///         flag: bool,
///     }
/// }
///
/// let mut s = DemoState { status: 3, timer: 7, ..Default::default() };
/// let st: State = s.to_state();
/// assert_eq!(DemoState::from_state(&st, "demo").unwrap(), s);
/// assert_eq!(VMSTATE.fields[3].since, 2);
/// assert!(st.subsections.is_empty());
/// s.extra = Some(ExtraState { flag: true });
/// let st = s.to_state();
/// assert_eq!(st.subsections[0].0, "demo/extra");
/// assert_eq!(DemoState::from_state(&st, "demo").unwrap(), s);
/// let e = DemoState::from_state(&State::default(), "demo").unwrap_err();
/// assert_eq!(e.to_string(), "demo: field 'status' missing or out of range");
/// ```
///
/// * The `static` line: the description's name, `version_id` and
///   `minimum_version_id`. The struct follows; `#[derive(Debug, Clone,
///   PartialEq, Eq)]` and `Default` (all zero, no subsections) come with it.
/// * A field: `name: Type`, its wire name the Rust name. Types: `bool`,
///   `u8`, `u16`, `u32`, `u64`, `i32`, `i64`, `[u8; N]` (a buffer),
///   `[T; N]` (an array: integers, [`U8`], declared structs), a declared
///   struct (nested inline), `Vec<T>` with `#[count(FIELD)]` (as many
///   elements as the earlier integer field FIELD says: QEMU's VARRAY; the
///   writer refuses a state whose count and length differ), [`VBuffer`]
///   with `#[count(FIELD)]` (as many bytes as the earlier `u32` FIELD
///   says: QEMU's VBUFFER), or [`State`]
///   in a generic struct. `#[wire("NAME")]` (after `#[count]`): the
///   field's name in the stream where QEMU's is no Rust name
///   (`value.first_irq`).
///   `#[since(N)]` after its doc comment: the description version it
///   appeared in (a stream older than that does not carry it; it keeps its
///   zero value, as does a state that lacks it).
/// * `subsections { name: Option<Declared>, ... }`: each a declared struct
///   with its own description; written when `Some`, read back as `Some`
///   when the stream has it. Whoever builds the struct decides `needed`.
/// * Without the `static` line and with type parameters
///   (`pub struct Parts<D> { ... }`), no description is generated: the
///   struct's `FIELDS` and `SUBSECTIONS` make one per instantiation.
#[macro_export]
macro_rules! vmstate {
    (@since) => { 0 };
    (@since $since:literal) => { $since };
    (@count) => { "" };
    (@count $count:ident) => { ::core::stringify!($count) };
    (@name $field:ident) => { ::core::stringify!($field) };
    (@name $field:ident $wire:literal) => { $wire };

    (@struct [$($smeta:tt)*] $svis:vis $name:ident [$($g:ident),*]
        {
            $(
                $(#[doc = $fdoc:literal])*
                $(#[since($since:literal)])?
                $(#[count($count:ident)])?
                $(#[wire($wire:literal)])?
                $field:ident : $fty:ty
            ),* $(,)?
        }
        { $( $(#[doc = $sdoc:literal])* $sub:ident : Option<$sty:ty> ),* $(,)? }
    ) => {
        $($smeta)*
        #[derive(Debug, Clone, PartialEq, Eq)]
        $svis struct $name<$($g),*> {
            $( $(#[doc = $fdoc])* pub $field: $fty, )*
            $( $(#[doc = $sdoc])* pub $sub: ::core::option::Option<$sty>, )*
        }

        #[allow(clippy::derivable_impls)]
        impl<$($g: $crate::vmstate::FieldValue),*> ::core::default::Default for $name<$($g),*> {
            fn default() -> Self {
                Self {
                    $( $field: $crate::vmstate::FieldValue::zero(), )*
                    $( $sub: ::core::option::Option::None, )*
                }
            }
        }

        impl<$($g: $crate::vmstate::FieldKind),*> $name<$($g),*> {
            /// The description's fields, in order.
            pub const FIELDS: &'static [$crate::vmstate::Field] = &[$(
                $crate::vmstate::Field {
                    name: $crate::vmstate!(@name $field $($wire)?),
                    kind: <$fty as $crate::vmstate::FieldKind>::KIND
                        .counted($crate::vmstate!(@count $($count)?)),
                    since: $crate::vmstate!(@since $($since)?),
                }
            ),*];
            /// The description's subsections, each sent when present.
            pub const SUBSECTIONS: &'static [$crate::vmstate::Subsection] = &[$(
                $crate::vmstate::Subsection {
                    desc: <$sty as $crate::vmstate::Described>::DESCRIPTION,
                    needed: $crate::vmstate::present::<$sty>,
                }
            ),*];
        }

        impl<$($g: $crate::vmstate::FieldValue),*> $crate::vmstate::Vmstate for $name<$($g),*> {
            fn to_state(&self) -> $crate::vmstate::State {
                #[allow(unused_mut)]
                let mut subsections = ::std::vec::Vec::new();
                $(
                    if let ::core::option::Option::Some(s) = &self.$sub {
                        subsections.push((
                            <$sty as $crate::vmstate::Described>::DESCRIPTION.name,
                            $crate::vmstate::Vmstate::to_state(s),
                        ));
                    }
                )*
                $crate::vmstate::State {
                    fields: ::std::vec![$(
                        (
                            $crate::vmstate!(@name $field $($wire)?),
                            $crate::vmstate::FieldValue::to_val(&self.$field),
                        )
                    ),*],
                    subsections,
                }
            }

            fn read_state(
                st: &$crate::vmstate::State,
            ) -> ::core::result::Result<Self, $crate::vmstate::BadValue> {
                ::core::result::Result::Ok(Self {
                    $(
                        $field: $crate::vmstate::field(
                            st,
                            $crate::vmstate!(@name $field $($wire)?),
                            $crate::vmstate!(@since $($since)?),
                        )?,
                    )*
                    $( $sub: $crate::vmstate::subsection(st)?, )*
                })
            }
        }

        impl<$($g: $crate::vmstate::FieldValue),*> $crate::vmstate::FieldValue for $name<$($g),*> {
            fn to_val(&self) -> $crate::vmstate::Val {
                $crate::vmstate::Val::Struct($crate::vmstate::Vmstate::to_state(self))
            }
            fn from_val(
                v: &$crate::vmstate::Val,
            ) -> ::core::result::Result<Self, $crate::vmstate::BadValue> {
                $crate::vmstate::struct_from_val(v)
            }
            fn zero() -> Self {
                ::core::default::Default::default()
            }
        }
    };

    (
        $(#[$dmeta:meta])*
        $dvis:vis static $desc:ident = $section:literal,
            version $version:literal, minimum $minimum:literal;
        $(#[$smeta:meta])*
        $svis:vis struct $name:ident { $($fields:tt)* }
        $(subsections { $($subs:tt)* })?
    ) => {
        $crate::vmstate!(@struct [$(#[$smeta])*] $svis $name [] { $($fields)* } { $($($subs)*)? });

        $(#[$dmeta])*
        $dvis static $desc: $crate::vmstate::Description = $crate::vmstate::Description {
            name: $section,
            version_id: $version,
            minimum_version_id: $minimum,
            fields: $name::FIELDS,
            subsections: $name::SUBSECTIONS,
        };

        impl $crate::vmstate::FieldKind for $name {
            const KIND: $crate::vmstate::Kind = $crate::vmstate::Kind::Struct(&$desc);
        }
        impl $crate::vmstate::Element for $name {}
        impl $crate::vmstate::Described for $name {
            const DESCRIPTION: &'static $crate::vmstate::Description = &$desc;
        }
    };

    (
        $(#[$smeta:meta])*
        $svis:vis struct $name:ident < $($g:ident),+ > { $($fields:tt)* }
        $(subsections { $($subs:tt)* })?
    ) => {
        $crate::vmstate!(@struct [$(#[$smeta])*] $svis $name [$($g),+] { $($fields)* } { $($($subs)*)? });
    };
}

#[cfg(test)]
mod tests;
