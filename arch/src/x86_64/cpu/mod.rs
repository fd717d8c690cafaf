//! CPU models: what `-cpu` gives a guest, as the CPUID table its vCPUs
//! get, built from what this host's KVM supports; and the comparison a
//! migration's destination makes between the CPU a guest was given and
//! the one it can give.
//!
//! The feature names and the named models are QEMU 10.0's
//! (`target/i386/cpu.c`: `feature_word_info`, `builtin_x86_defs` with the
//! versions that have an alias), kept as data in `features.tsv` and
//! `models.tsv`.

use super::kvm_cpuid_entry2;
use std::fmt;
use std::sync::OnceLock;

const FEATURES: &str = include_str!("features.tsv");
const MODELS: &str = include_str!("models.tsv");

/// A CPUID output register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Reg {
    fn parse(s: &str) -> Reg {
        match s {
            "eax" => Reg::Eax,
            "ebx" => Reg::Ebx,
            "ecx" => Reg::Ecx,
            "edx" => Reg::Edx,
            other => panic!("features.tsv: register {other}"),
        }
    }

    pub fn of(self, e: &kvm_cpuid_entry2) -> u32 {
        match self {
            Reg::Eax => e.eax,
            Reg::Ebx => e.ebx,
            Reg::Ecx => e.ecx,
            Reg::Edx => e.edx,
        }
    }

    fn of_mut(self, e: &mut kvm_cpuid_entry2) -> &mut u32 {
        match self {
            Reg::Eax => &mut e.eax,
            Reg::Ebx => &mut e.ebx,
            Reg::Ecx => &mut e.ecx,
            Reg::Edx => &mut e.edx,
        }
    }
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reg::Eax => "eax",
            Reg::Ebx => "ebx",
            Reg::Ecx => "ecx",
            Reg::Edx => "edx",
        })
    }
}

/// Where a feature word lives: CPUID leaf, sub-leaf and register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Word {
    pub leaf: u32,
    pub index: u32,
    pub reg: Reg,
}

impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "leaf {:#x}", self.leaf)?;
        if self.index != 0 {
            write!(f, ".{}", self.index)?;
        }
        write!(f, " {}", self.reg)
    }
}

/// One named CPUID feature bit (QEMU's name).
#[derive(Debug, PartialEq, Eq)]
pub struct Feature {
    pub name: &'static str,
    pub word: Word,
    pub bit: u8,
    /// Cannot migrate (QEMU's unmigratable flags): `host` drops it unless
    /// `migratable=off`.
    pub unmigratable: bool,
}

impl Feature {
    pub fn mask(&self) -> u32 {
        1 << self.bit
    }
}

/// Every named feature, in features.tsv's order.
pub fn features() -> &'static [Feature] {
    static F: OnceLock<Vec<Feature>> = OnceLock::new();
    F.get_or_init(|| {
        rows(FEATURES)
            .map(|f| Feature {
                name: f[5],
                word: Word {
                    leaf: hex(f[1]).unwrap(),
                    index: f[2].parse().unwrap(),
                    reg: Reg::parse(f[3]),
                },
                bit: f[4].parse().unwrap(),
                unmigratable: f[6] == "1",
            })
            .collect()
    })
}

/// QEMU accepts `_` and `-` alike, and `sse4.1` as `sse4-1` or `sse4_1`.
fn same_name(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.replace(['_', '.'], "-");
    norm(a) == norm(b)
}

/// The feature called `name`.
pub fn feature(name: &str) -> Option<&'static Feature> {
    features().iter().find(|f| same_name(f.name, name))
}

/// The feature words the named features live in.
pub fn words() -> Vec<Word> {
    let mut w: Vec<Word> = features().iter().map(|f| f.word).collect();
    w.sort();
    w.dedup();
    w
}

/// A named CPU model.
#[derive(Debug)]
pub struct Model {
    pub name: &'static str,
    /// QEMU's version of the model this line is.
    pub version: u32,
    pub vendor: &'static str,
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    pub level: u32,
    pub xlevel: u32,
    pub model_id: &'static str,
    pub features: Vec<&'static Feature>,
}

/// Every named model, in models.tsv's (and `-cpu help`'s) order.
pub fn models() -> &'static [Model] {
    static M: OnceLock<Vec<Model>> = OnceLock::new();
    M.get_or_init(|| {
        rows(MODELS)
            .map(|f| Model {
                name: f[0],
                version: f[1].parse().unwrap(),
                vendor: f[2],
                family: f[3].parse().unwrap(),
                model: f[4].parse().unwrap(),
                stepping: f[5].parse().unwrap(),
                level: hex(f[6]).unwrap(),
                xlevel: hex(f[7]).unwrap(),
                model_id: f[8],
                features: f[9]
                    .split_whitespace()
                    .map(|n| feature(n).unwrap_or_else(|| panic!("models.tsv: feature {n}")))
                    .collect(),
            })
            .collect()
    })
}

pub fn model(name: &str) -> Option<&'static Model> {
    models().iter().find(|m| m.name.eq_ignore_ascii_case(name))
}

fn rows(text: &'static str) -> impl Iterator<Item = Vec<&'static str>> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split('\t').collect())
}

/// What the CPU is based on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Base {
    /// This host's CPU, as KVM supports it.
    Host,
    Model(&'static Model),
}

impl PartialEq for Model {
    fn eq(&self, other: &Model) -> bool {
        self.name == other.name
    }
}

/// `-cpu NAME[,+FEAT][,-FEAT][,FEAT=on|off][,enforce=on|off][,check=on|off][,migratable=on|off]`.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuSpec {
    pub base: Base,
    /// Features turned on (true) or off, in order.
    pub changes: Vec<(&'static Feature, bool)>,
    /// A feature the host lacks fails the start (off: it is left out,
    /// with a warning; QEMU's `check`).
    pub enforce: bool,
    /// `host` only: leave out what cannot migrate.
    pub migratable: bool,
    /// What the machine type's compat arrays set on the model's CPU type
    /// (QEMU's `pc_compat_X_Y` entries for `MODEL-x86_64-cpu`): features
    /// applied before `changes`, and the identity (family, model,
    /// stepping) where they change it. Not part of the `-cpu` text.
    pub compat: Vec<(&'static Feature, bool)>,
    pub compat_identity: [Option<u32>; 4],
}

impl Default for CpuSpec {
    fn default() -> Self {
        CpuSpec {
            base: Base::Host,
            changes: vec![],
            enforce: true,
            migratable: true,
            compat: vec![],
            compat_identity: [None; 4],
        }
    }
}

/// What is wrong with a `-cpu` or the CPU it asks for.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("unknown CPU model '{0}': -cpu help lists them")]
    UnknownModel(String),
    #[error("unknown CPU feature '{feature}' in -cpu {cpu}")]
    UnknownFeature { cpu: String, feature: String },
    #[error("invalid -cpu option '{option}': expected +FEATURE, -FEATURE, FEATURE=on|off, enforce, check or migratable=on|off")]
    Option { option: String },
    #[error("this host cannot give -cpu {cpu}: it lacks {missing} (with check=on they are left out instead)")]
    Unavailable { cpu: String, missing: String },
}

fn on_off(v: &str) -> Option<bool> {
    match v {
        "on" | "true" | "yes" => Some(true),
        "off" | "false" | "no" => Some(false),
        _ => None,
    }
}

impl std::str::FromStr for CpuSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<CpuSpec, Error> {
        let mut parts = s.split(',');
        let name = parts.next().unwrap_or_default();
        let base = match name {
            "host" | "max" => Base::Host,
            n => Base::Model(model(n).ok_or_else(|| Error::UnknownModel(n.to_string()))?),
        };
        let mut spec = CpuSpec {
            base,
            ..CpuSpec::default()
        };
        let feat = |n: &str| {
            feature(n).ok_or_else(|| Error::UnknownFeature {
                cpu: s.to_string(),
                feature: n.to_string(),
            })
        };
        for opt in parts.filter(|p| !p.is_empty()) {
            let bad = || Error::Option {
                option: opt.to_string(),
            };
            if let Some(n) = opt.strip_prefix('+') {
                spec.changes.push((feat(n)?, true));
            } else if let Some(n) = opt.strip_prefix('-') {
                spec.changes.push((feat(n)?, false));
            } else {
                let (k, v) = opt.split_once('=').unwrap_or((opt, "on"));
                let v = on_off(v).ok_or_else(bad)?;
                match k {
                    "enforce" => spec.enforce = v,
                    // check only warns: off never makes a start stricter.
                    "check" => {
                        if v {
                            spec.enforce = false;
                        }
                    }
                    "migratable" => spec.migratable = v,
                    _ => spec.changes.push((feat(k)?, v)),
                }
            }
        }
        Ok(spec)
    }
}

impl CpuSpec {
    /// Applies the machine type's compat entries (`(type, property,
    /// value)`) that name this model's CPU type, as QEMU's compat
    /// properties set its defaults. Returns the entries it took.
    pub fn apply_compat<'e>(
        &mut self,
        entries: impl IntoIterator<Item = (&'e str, &'e str, &'e str)>,
    ) -> Vec<(&'e str, &'e str, &'e str)> {
        // Entries for every CPU type, and for this model's.
        let ty = match self.base {
            Base::Model(m) => format!("{}-x86_64-cpu", m.name),
            Base::Host => "host-x86_64-cpu".to_string(),
        };
        let mut taken = vec![];
        for (t, prop, value) in entries
            .into_iter()
            .filter(|(t, _, _)| *t == ty || *t == "x86_64-cpu")
        {
            let slot = match prop {
                "family" => Some(0),
                "model" => Some(1),
                "stepping" => Some(2),
                "xlevel" => Some(3),
                _ => None,
            };
            match (slot, feature(prop), on_off(value)) {
                // `host` is this host's CPU: no identity to change.
                (Some(_), _, _) if self.base == Base::Host => {}
                (Some(i), _, _) => {
                    let n = if value.starts_with("0x") {
                        hex(value)
                    } else {
                        value.parse().ok()
                    };
                    if let Some(v) = n {
                        self.compat_identity[i] = Some(v);
                        taken.push((t, prop, value));
                    }
                }
                (None, Some(f), Some(on)) => {
                    self.compat.retain(|(c, _)| *c != f);
                    self.compat.push((f, on));
                    taken.push((t, prop, value));
                }
                _ => {}
            }
        }
        taken
    }
}

impl fmt::Display for CpuSpec {
    /// The spec as `-cpu` takes it (the base's name, then the changes).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.base {
            Base::Host => f.write_str("host")?,
            Base::Model(m) => f.write_str(m.name)?,
        }
        for (feat, on) in &self.changes {
            write!(f, ",{}{}", if *on { '+' } else { '-' }, feat.name)?;
        }
        if self.base == Base::Host && !self.migratable {
            f.write_str(",migratable=off")?;
        }
        Ok(())
    }
}

/// `features` grouped by word: `hle, rtm (leaf 0x7 ebx)`.
pub fn describe(features: &[&Feature]) -> String {
    let mut by_word: Vec<(Word, Vec<&str>)> = vec![];
    for f in features {
        match by_word.iter_mut().find(|(w, _)| *w == f.word) {
            Some((_, names)) => names.push(f.name),
            None => by_word.push((f.word, vec![f.name])),
        }
    }
    by_word
        .iter()
        .map(|(w, names)| format!("{} ({w})", names.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether `e` answers CPUID `leaf`, sub-leaf `index`.
fn answers(e: &kvm_cpuid_entry2, leaf: u32, index: u32) -> bool {
    e.function == leaf && (e.index == index || !indexed(leaf))
}

fn entry(t: &[kvm_cpuid_entry2], leaf: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    t.iter().find(|e| answers(e, leaf, index))
}

fn entry_mut(t: &mut [kvm_cpuid_entry2], leaf: u32, index: u32) -> Option<&mut kvm_cpuid_entry2> {
    t.iter_mut().find(|e| answers(e, leaf, index))
}

/// A hex number, with or without `0x`.
fn hex(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// What `host` lacks of model `m`.
pub fn lacking(m: &Model, host: &[kvm_cpuid_entry2]) -> Vec<&'static Feature> {
    m.features
        .iter()
        .copied()
        .filter(|f| !has(host, f))
        .collect()
}

/// Leaves whose sub-leaf (ECX) selects the output.
fn indexed(leaf: u32) -> bool {
    matches!(
        leaf,
        4 | 7
            | 0xb
            | 0xd
            | 0xf
            | 0x10
            | 0x12
            | 0x14
            | 0x17
            | 0x18
            | 0x1d
            | 0x1e
            | 0x1f
            | 0x24
            | 0x8000001d
            | 0x80000020
            | 0x80000026
    )
}

/// Whether table `t` has feature `f`.
pub fn has(t: &[kvm_cpuid_entry2], f: &Feature) -> bool {
    entry(t, f.word.leaf, f.word.index).is_some_and(|e| f.word.reg.of(e) & f.mask() != 0)
}

/// Takes feature `f` out of table `t`.
pub fn clear(t: &mut [kvm_cpuid_entry2], f: &Feature) {
    set(t, f, false);
}

fn set(t: &mut [kvm_cpuid_entry2], f: &Feature, on: bool) {
    if let Some(e) = entry_mut(t, f.word.leaf, f.word.index) {
        let r = f.word.reg.of_mut(e);
        if on {
            *r |= f.mask();
        } else {
            *r &= !f.mask();
        }
    }
}

/// The features table `t` has.
pub fn features_of(t: &[kvm_cpuid_entry2]) -> Vec<&'static Feature> {
    features().iter().filter(|f| has(t, f)).collect()
}

/// What `spec` asks for, feature by feature (a model's definition with
/// its changes, `host`'s from what KVM supports), whether or not the
/// host can give it: QEMU's model expansion.
pub fn expand(spec: &CpuSpec, host: &[kvm_cpuid_entry2]) -> Vec<(&'static Feature, bool)> {
    let wanted = wanted(spec, host);
    features()
        .iter()
        .map(|f| (f, wanted.contains(&f)))
        .collect()
}

/// The features `spec` asks for.
fn wanted(spec: &CpuSpec, host: &[kvm_cpuid_entry2]) -> Vec<&'static Feature> {
    let mut wanted: Vec<&'static Feature> = match spec.base {
        Base::Host => features_of(host)
            .into_iter()
            .filter(|f| !(spec.migratable && f.unmigratable))
            .collect(),
        Base::Model(m) => m.features.clone(),
    };
    // QEMU's defaults for a model on KVM (kvm_default_props): x2apic on,
    // acpi, monitor and svm off; compat entries and -cpu override them.
    let kvm_defaults: Vec<(&'static Feature, bool)> = match spec.base {
        Base::Model(_) => [
            ("x2apic", true),
            ("acpi", false),
            ("monitor", false),
            ("svm", false),
        ]
        .iter()
        .filter_map(|(n, on)| Some((feature(n)?, *on)))
        .collect(),
        Base::Host => vec![],
    };
    for (f, on) in kvm_defaults.iter().chain(&spec.compat).chain(&spec.changes) {
        wanted.retain(|w| w != f);
        if *on {
            wanted.push(f);
        }
    }
    wanted
}

/// The guest's CPUID table for `spec` on a host whose KVM supports
/// `host`, before each vCPU's topology (`super::cpuid::patch`); and the
/// features left out because the host lacks them (`check=on`).
pub fn build(
    spec: &CpuSpec,
    host: &[kvm_cpuid_entry2],
) -> Result<(Vec<kvm_cpuid_entry2>, Vec<&'static Feature>), Error> {
    let mut t = host.to_vec();
    let wanted = wanted(spec, host);
    let missing: Vec<&'static Feature> = wanted.iter().copied().filter(|f| !has(host, f)).collect();
    if spec.enforce && !missing.is_empty() {
        return Err(Error::Unavailable {
            cpu: spec.to_string(),
            missing: describe(&missing),
        });
    }
    // Every feature word holds what is wanted and the host has, nothing else
    // (bits QEMU has no name for are left as KVM gives them on `host`).
    for w in words() {
        let Some(e) = entry_mut(&mut t, w.leaf, w.index) else {
            continue;
        };
        let named: u32 = features()
            .iter()
            .filter(|f| f.word == w)
            .fold(0, |m, f| m | f.mask());
        let want = wanted
            .iter()
            .filter(|f| f.word == w && !missing.contains(f))
            .fold(0, |m, f| m | f.mask());
        let r = w.reg.of_mut(e);
        *r = match spec.base {
            Base::Host => (*r & !named) | want,
            Base::Model(_) => want,
        };
    }
    if let Base::Model(m) = spec.base {
        identify(&mut t, m, spec.compat_identity);
        // Leaf 7's highest sub-leaf: 1 only when the model has a 7.1
        // feature (QEMU's cpuid_level_func7).
        let func7 = u32::from(wanted.iter().any(|f| f.word.leaf == 7 && f.word.index == 1));
        if let Some(e) = entry_mut(&mut t, 7, 0) {
            e.eax = func7;
        }
        t.retain(|e| e.function != 7 || e.index <= func7);
    }
    xsave_components(&mut t, host);
    Ok((t, missing))
}

/// A model's identity: vendor, levels, family/model/stepping, brand
/// string; leaves past its levels are gone (KVM's own, 0x40000000...,
/// stay).
fn identify(t: &mut Vec<kvm_cpuid_entry2>, m: &Model, identity: [Option<u32>; 4]) {
    let family = identity[0].unwrap_or(m.family);
    let model = identity[1].unwrap_or(m.model);
    let stepping = identity[2].unwrap_or(m.stepping);
    let xlevel = identity[3].unwrap_or(m.xlevel);
    t.retain(|e| {
        let f = e.function;
        (f <= m.level)
            || (0x4000_0000..0x8000_0000).contains(&f)
            || (0x8000_0000..=xlevel).contains(&f)
    });
    let v = m.vendor.as_bytes();
    let word = |i: usize| u32::from_le_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
    let (b, d, c) = (word(0), word(4), word(8));
    for (leaf, level) in [(0, m.level), (0x8000_0000, xlevel)] {
        if let Some(e) = entry_mut(t, leaf, 0) {
            (e.eax, e.ebx, e.ecx, e.edx) = (level, b, c, d);
        }
    }
    if let Some(e) = entry_mut(t, 1, 0) {
        let mut eax = if family > 0xf {
            0xf00 | ((family - 0xf) << 20)
        } else {
            family << 8
        };
        eax |= ((model & 0xf) << 4) | ((model >> 4) << 16) | (stepping & 0xf);
        e.eax = eax;
    }
    // Leaf 0x80000001 repeats the signature (QEMU's cpuid_version).
    if let Some(sig) = entry(t, 1, 0).map(|e| e.eax) {
        if let Some(e) = entry_mut(t, 0x8000_0001, 0) {
            e.eax = sig;
        }
    }
    let mut brand = [0u8; 48];
    let id = m.model_id.as_bytes();
    brand[..id.len().min(47)].copy_from_slice(&id[..id.len().min(47)]);
    for (i, leaf) in (0x8000_0002..=0x8000_0004u32).enumerate() {
        if let Some(e) = entry_mut(t, leaf, 0) {
            let r = |k: usize| {
                let o = i * 16 + k * 4;
                u32::from_le_bytes([brand[o], brand[o + 1], brand[o + 2], brand[o + 3]])
            };
            (e.eax, e.ebx, e.ecx, e.edx) = (r(0), r(1), r(2), r(3));
        }
    }
}

/// XSAVE state components (XCR0 bits) and the feature each needs.
const XSAVE_NEEDS: [(u32, &str); 8] = [
    (2, "avx"),
    (3, "mpx"),
    (4, "mpx"),
    (5, "avx512f"),
    (6, "avx512f"),
    (7, "avx512f"),
    (9, "pku"),
    (17, "amx-tile"),
];

/// Leaf 0xd offers only the XSAVE components whose feature the table has
/// (a guest without avx512f cannot enable its state, so the destination
/// need not hold it), with the sizes that follow. A component whose
/// feature the host's KVM does not report at all stays as KVM gives it
/// (PVM reports no AVX yet runs it natively).
fn xsave_components(t: &mut Vec<kvm_cpuid_entry2>, host: &[kvm_cpuid_entry2]) {
    let mut off = 0u64;
    for (bit, need) in XSAVE_NEEDS {
        let left_out = feature(need).is_some_and(|f| has(host, f) && !has(t, f));
        if left_out {
            off |= 1 << bit;
            if bit == 17 {
                off |= 1 << 18; // XTILEDATA with XTILECFG
            }
        }
    }
    let Some(e) = entry_mut(t, 0xd, 0) else {
        return;
    };
    e.eax &= !(off as u32);
    e.edx &= !((off >> 32) as u32);
    t.retain(|e| !(e.function == 0xd && e.index >= 2 && e.index < 64 && off & (1 << e.index) != 0));
    let size = xsave_size(t);
    if let Some(e) = entry_mut(t, 0xd, 0) {
        e.ecx = size;
    }
}

/// The largest XSAVE area the components table `t` offers need.
fn xsave_size(t: &[kvm_cpuid_entry2]) -> u32 {
    let supported = entry(t, 0xd, 0).map_or(0, |e| e.eax as u64 | (e.edx as u64) << 32);
    t.iter()
        .filter(|e| {
            e.function == 0xd && (2..64).contains(&e.index) && supported & (1 << e.index) != 0
        })
        .map(|e| e.ebx + e.eax)
        .max()
        .unwrap_or(0)
        .max(512 + 64)
}

/// How the CPU a guest was given and the one a destination would give it
/// differ.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Differences {
    /// Vendor and signature (leaf 1 EAX), the guest's then this side's.
    pub identity: Option<((String, u32), (String, u32))>,
    /// Features the guest has that this host cannot give at all.
    pub host_lacks: Vec<&'static Feature>,
    /// Features the guest has that this host could give but this side's
    /// `-cpu` does not.
    pub not_given: Vec<&'static Feature>,
    /// Features this side's `-cpu` gives that the guest does not have.
    pub extra: Vec<&'static Feature>,
    /// XSAVE area sizes, the guest's then this host's, where the guest's is
    /// larger.
    pub xsave: Option<(u32, u32)>,
}

impl Differences {
    pub fn is_empty(&self) -> bool {
        *self == Differences::default()
    }

    /// Whether this host can run the guest's CPU at all.
    pub fn host_can_give(&self) -> bool {
        self.host_lacks.is_empty() && self.xsave.is_none()
    }

    /// One sentence each.
    pub fn sentences(&self) -> Vec<String> {
        let mut out = vec![];
        if let Some(((gv, gs), (hv, hs))) = &self.identity {
            out.push(format!(
                "the guest has a {gv} CPU with signature {gs:#x}, this destination gives a {hv} one with {hs:#x}"
            ));
        }
        if !self.host_lacks.is_empty() {
            out.push(format!("this host lacks {}", describe(&self.host_lacks)));
        }
        if !self.not_given.is_empty() {
            out.push(format!(
                "this destination's -cpu does not give the guest {}",
                describe(&self.not_given)
            ));
        }
        if !self.extra.is_empty() {
            out.push(format!(
                "this destination's -cpu gives {}, which the guest does not have",
                describe(&self.extra)
            ));
        }
        if let Some((g, h)) = self.xsave {
            out.push(format!(
                "the guest's XSAVE area is {g} bytes, this host's KVM holds {h}"
            ));
        }
        out
    }
}

/// How the CPU a guest was given (`guest`) and the one a destination
/// would give it (`here`, on a host whose KVM supports `host`) differ.
pub fn differences(
    guest: &[kvm_cpuid_entry2],
    here: &[kvm_cpuid_entry2],
    host: &[kvm_cpuid_entry2],
) -> Differences {
    let id = |t: &[kvm_cpuid_entry2]| {
        let v = entry(t, 0, 0).map_or([0; 3], |e| [e.ebx, e.edx, e.ecx]);
        let vendor: Vec<u8> = v.iter().flat_map(|w| w.to_le_bytes()).collect();
        let sig = entry(t, 1, 0).map_or(0, |e| e.eax);
        (String::from_utf8_lossy(&vendor).into_owned(), sig)
    };
    let (g, h) = (id(guest), id(here));
    let which = |p: &dyn Fn(&Feature) -> bool| features().iter().filter(|f| p(f)).collect();
    Differences {
        identity: (g != h).then_some((g, h)),
        host_lacks: which(&|f| has(guest, f) && !has(host, f)),
        not_given: which(&|f| has(guest, f) && has(host, f) && !has(here, f)),
        extra: which(&|f| !has(guest, f) && has(here, f)),
        xsave: (xsave_size(guest) > xsave_size(host))
            .then(|| (xsave_size(guest), xsave_size(host))),
    }
}

/// `-cpu help`.
pub fn help(host: Option<&[kvm_cpuid_entry2]>) -> String {
    let mut s = String::from("Available CPUs:\n  host      this host's CPU as KVM supports it (migratable=on: without invtsc)\n");
    for m in models() {
        let lacking: Vec<&str> =
            host.map_or(vec![], |h| lacking(m, h).iter().map(|f| f.name).collect());
        let note = if lacking.is_empty() {
            String::new()
        } else {
            format!(" [this host lacks: {}]", lacking.join(" "))
        };
        s += &format!("  {:<26}{}{}\n", m.name, m.model_id, note);
    }
    s += "\nOptions: +FEATURE -FEATURE FEATURE=on|off enforce=on|off (default on) check=on migratable=on|off\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Vec<kvm_cpuid_entry2> {
        // A host with every named feature but hle/rtm, leaves
        // 0..0xd and 0x80000000..0x80000008, 0xd with AVX-512 components.
        let mut t = vec![];
        for leaf in (0..=0xdu32).chain(0x8000_0000..=0x8000_0008) {
            t.push(kvm_cpuid_entry2 {
                function: leaf,
                ..Default::default()
            });
        }
        t.push(kvm_cpuid_entry2 {
            function: 0xd,
            index: 1,
            ..Default::default()
        });
        for (i, size, offset) in [
            (2u32, 256u32, 576u32),
            (5, 64, 1088),
            (6, 512, 1152),
            (7, 1024, 1664),
        ] {
            t.push(kvm_cpuid_entry2 {
                function: 0xd,
                index: i,
                eax: size,
                ebx: offset,
                ..Default::default()
            });
        }
        for f in features() {
            if !["hle", "rtm"].contains(&f.name) {
                set(&mut t, f, true);
            }
        }
        let e = entry_mut(&mut t, 0xd, 0).unwrap();
        e.eax = 0xe7;
        t
    }

    #[test]
    fn the_data_parses() {
        assert!(features().len() > 150);
        assert!(models().len() >= 30);
        let h = model("Haswell").unwrap();
        assert_eq!((h.family, h.model, h.stepping), (6, 60, 4));
        assert!(h.features.iter().any(|f| f.name == "hle"));
        assert!(!model("Haswell-noTSX")
            .unwrap()
            .features
            .iter()
            .any(|f| f.name == "hle"));
        assert_eq!(feature("sse4_1").unwrap().name, "sse4.1");
        assert_eq!(feature("lahf_lm").unwrap().name, "lahf-lm");
        let avx512f = feature("avx512f").unwrap();
        assert_eq!(
            (avx512f.word, avx512f.bit),
            (
                Word {
                    leaf: 7,
                    index: 0,
                    reg: Reg::Ebx
                },
                16
            )
        );
    }

    #[test]
    fn the_command_line_parses_as_qemus() {
        let s: CpuSpec = "Haswell-noTSX,+avx512f,-avx2,pcid=off,check"
            .parse()
            .unwrap();
        assert_eq!(s.base, Base::Model(model("Haswell-noTSX").unwrap()));
        assert!(!s.enforce);
        assert_eq!(s.changes.len(), 3);
        assert_eq!(s.to_string(), "Haswell-noTSX,+avx512f,-avx2,-pcid");
        assert_eq!("host".parse::<CpuSpec>().unwrap(), CpuSpec::default());
        assert_eq!(
            "Haswel".parse::<CpuSpec>(),
            Err(Error::UnknownModel("Haswel".into()))
        );
        let e = "host,+avx9".parse::<CpuSpec>().unwrap_err().to_string();
        assert!(e.contains("'avx9'"), "{e}");
        assert!(matches!(
            "host,enforce=maybe".parse::<CpuSpec>(),
            Err(Error::Option { .. })
        ));
    }

    #[test]
    fn a_model_the_host_cannot_give_is_refused_naming_the_features() {
        let e = build(&"Haswell".parse().unwrap(), &host())
            .unwrap_err()
            .to_string();
        assert!(e.contains("hle, rtm (leaf 0x7 ebx)"), "{e}");
        // check=on: left out, named.
        let (t, dropped) = build(&"Haswell,check=on".parse().unwrap(), &host()).unwrap();
        assert_eq!(
            dropped.iter().map(|f| f.name).collect::<Vec<_>>(),
            ["hle", "rtm"]
        );
        assert!(!has(&t, feature("hle").unwrap()));
    }

    #[test]
    fn a_model_gives_exactly_its_features_and_identity() {
        let m = model("Haswell-noTSX").unwrap();
        let (t, _) = build(&"Haswell-noTSX".parse().unwrap(), &host()).unwrap();
        let mut got: Vec<&str> = features_of(&t).iter().map(|f| f.name).collect();
        let mut want: Vec<&str> = m.features.iter().map(|f| f.name).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        let e0 = entry(&t, 0, 0).unwrap();
        assert_eq!(e0.eax, 0xd);
        assert_eq!(&e0.ebx.to_le_bytes(), b"Genu");
        // Family 6, model 60 (0x3c), stepping 1.
        assert_eq!(entry(&t, 1, 0).unwrap().eax, 0x0003_06c1);
        assert!(t
            .iter()
            .all(|e| e.function <= 0xd || e.function >= 0x4000_0000));
        // No AVX-512 state without avx512f.
        let xsave = entry(&t, 0xd, 0).unwrap();
        assert_eq!(xsave.eax & 0xe0, 0);
        assert_eq!(xsave.ecx, 576 + 256);
    }

    /// The machine type's compat entries for the model's CPU type set its
    /// defaults (QEMU's pc_compat_3_1 kept MPX on Skylake-Server, 2.8
    /// Haswell's stepping 1); `-cpu` changes still win.
    #[test]
    fn compat_entries_set_the_models_defaults() {
        let entries = [
            ("Skylake-Server-x86_64-cpu", "mpx", "on"),
            ("Skylake-Server-x86_64-cpu", "pku", "off"),
            ("Haswell-x86_64-cpu", "stepping", "1"),
            ("x86_64-cpu", "l3-cache", "off"),
            ("x86_64-cpu", "topoext", "off"),
        ];
        let mut s: CpuSpec = "Skylake-Server,check=on,pku=on".parse().unwrap();
        assert_eq!(s.apply_compat(entries).len(), 3);
        let (t, _) = build(&s, &host()).unwrap();
        assert!(has(&t, feature("mpx").unwrap()));
        assert!(has(&t, feature("pku").unwrap()), "-cpu pku=on wins");
        assert_eq!(s.to_string(), "Skylake-Server,+pku");
        let mut h: CpuSpec = "Haswell,check=on".parse().unwrap();
        assert_eq!(h.apply_compat(entries).len(), 2);
        let (t, _) = build(&h, &host()).unwrap();
        assert_eq!(entry(&t, 1, 0).unwrap().eax & 0xf, 1);
        // Every CPU type's entries reach host too, but not an identity.
        let mut host_spec = CpuSpec::default();
        assert_eq!(host_spec.apply_compat(entries).len(), 1);
        let (t, _) = build(&host_spec, &host()).unwrap();
        assert!(!has(&t, feature("topoext").unwrap()));
    }

    #[test]
    fn host_drops_what_cannot_migrate_and_takes_changes() {
        let invtsc = feature("invtsc").unwrap();
        let (t, _) = build(&"host".parse().unwrap(), &host()).unwrap();
        assert!(!has(&t, invtsc));
        let (t, _) = build(&"host,migratable=off,-avx2".parse().unwrap(), &host()).unwrap();
        assert!(has(&t, invtsc));
        assert!(!has(&t, feature("avx2").unwrap()));
        assert!(build(&"host,+hle".parse().unwrap(), &host()).is_err());
    }

    #[test]
    fn differences_name_what_a_destination_lacks() {
        let h = host();
        let (guest, _) = build(&"host".parse().unwrap(), &h).unwrap();
        assert!(differences(&guest, &guest, &h).is_empty());
        let mut weak = h.clone();
        set(&mut weak, feature("avx2").unwrap(), false);
        set(&mut weak, feature("sha-ni").unwrap(), false);
        let (here, _) = build(&"host".parse().unwrap(), &weak).unwrap();
        let d = differences(&guest, &here, &weak);
        assert!(!d.host_can_give());
        assert_eq!(
            d.sentences(),
            ["this host lacks avx2, sha-ni (leaf 0x7 ebx)"]
        );
        let (model, _) = build(&"EPYC-Rome,check=on".parse().unwrap(), &h).unwrap();
        let d = differences(&guest, &model, &h);
        assert!(d.host_can_give());
        let s = d.sentences();
        assert!(
            s.iter().any(|s| s.contains("does not give the guest")),
            "{s:?}"
        );
        assert!(s[0].contains("signature"), "{s:?}");
    }
}
