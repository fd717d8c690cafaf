//! The VM's configuration, validated from the command line before anything
//! is created: a bad option never leaves a half-built VM.

use crate::cli::{parse_size, Args};
use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;

pub const MIN_MEMORY: u64 = 16 << 20;
pub const MAX_VCPUS: u32 = 255;

#[derive(Debug, Clone)]
pub enum SerialBackend {
    Stdio,
    File(PathBuf),
    None,
}

#[derive(Debug, Clone, Copy)]
pub struct DebugExitConfig {
    pub iobase: u16,
    pub iosize: u16,
}

/// Device types `-device` knows today, with their properties (the typed
/// property model comes with the device-model issue).
const DEVICE_TYPES: &[(&str, &[(&str, &str)])] = &[(
    "isa-debug-exit",
    &[
        ("iobase", "I/O port (default 0x501)"),
        ("iosize", "port width in bytes (default 2)"),
    ],
)];

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub machine: &'static machine::MachineType,
    pub memory: u64,
    pub vcpus: u8,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub serial: SerialBackend,
    pub name: Option<String>,
    pub paused: bool,
    pub no_reboot: bool,
    pub debug_exit: Option<DebugExitConfig>,
}

fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn device_help() -> String {
    let mut s = String::from("Devices:\n");
    for (name, props) in DEVICE_TYPES {
        s.push_str(&format!("  {name}\n"));
        for (p, help) in props.iter() {
            s.push_str(&format!("    {p}=<uint>  {help}\n"));
        }
    }
    s
}

/// What to do instead of running: `-M help`, `-device help`.
pub enum Action {
    Run(Box<VmConfig>),
    Print(String),
}

fn known_types() -> String {
    DEVICE_TYPES
        .iter()
        .map(|d| d.0)
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_property(ty: &str, prop: &str, value: &str) -> Result<u64> {
    let Some((_, props)) = DEVICE_TYPES.iter().find(|d| d.0 == ty) else {
        bail!(
            "unknown device type '{ty}'; known device types: {}",
            known_types()
        );
    };
    if !props.iter().any(|p| p.0 == prop) {
        let valid = props.iter().map(|p| p.0).collect::<Vec<_>>().join(", ");
        bail!("device '{ty}' has no property '{prop}'; its properties: {valid}");
    }
    parse_num(value)
        .ok_or_else(|| anyhow!("property '{ty}.{prop}' needs an unsigned integer, not '{value}'"))
}

pub fn from_args(a: Args) -> Result<Action> {
    if a.machine.as_deref() == Some("help") {
        let mut s = String::from("Supported machines are:\n");
        for m in machine::PC_Q35.iter().rev() {
            let default = if std::ptr::eq(m, machine::newest()) {
                " (default, alias of q35, pc-q35)"
            } else {
                ""
            };
            s.push_str(&format!("{:<14} {}{}\n", m.name, m.description, default));
        }
        return Ok(Action::Print(s));
    }
    if a.device.iter().any(|d| d == "help") {
        return Ok(Action::Print(device_help()));
    }
    let spec = machine::parse(a.machine.as_deref().unwrap_or(""))?;
    let memory = parse_size(&a.memory)?;
    if memory < MIN_MEMORY {
        bail!(
            "memory size {} is too small: vmm needs at least {} MiB",
            a.memory,
            MIN_MEMORY >> 20
        );
    }
    let vcpus: u32 = a
        .smp
        .split(',')
        .next()
        .unwrap_or("")
        .parse()
        .map_err(|_| anyhow!("invalid -smp '{}': expected a number of vCPUs", a.smp))?;
    if !(1..=MAX_VCPUS).contains(&vcpus) {
        bail!("invalid -smp {vcpus}: the number of vCPUs must be between 1 and {MAX_VCPUS}");
    }
    let kernel = a
        .kernel
        .ok_or_else(|| anyhow!("no kernel given: use -kernel FILE"))?;
    let serial = match a.serial.as_str() {
        "stdio" => SerialBackend::Stdio,
        "none" | "null" => SerialBackend::None,
        s => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => SerialBackend::File(PathBuf::from(p)),
            _ => bail!("invalid -serial '{s}': expected stdio, file:PATH or none"),
        },
    };
    // -global defaults first, then each -device's own properties.
    let mut globals: Vec<(String, String, u64)> = vec![];
    for g in &a.global {
        let (tp, value) = g
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid -global '{g}': expected TYPE.PROP=VALUE"))?;
        let (ty, prop) = tp
            .rsplit_once('.')
            .ok_or_else(|| anyhow!("invalid -global '{g}': expected TYPE.PROP=VALUE"))?;
        let v = check_property(ty, prop, value)?;
        globals.push((ty.to_string(), prop.to_string(), v));
    }
    let mut debug_exit = None;
    for d in &a.device {
        let mut parts = d.split(',');
        let ty = parts.next().unwrap_or("");
        let mut props: Vec<(String, u64)> = globals
            .iter()
            .filter(|g| g.0 == ty)
            .map(|g| (g.1.clone(), g.2))
            .collect();
        for p in parts {
            let (k, v) = p.split_once('=').ok_or_else(|| {
                anyhow!("invalid property '{p}' in -device {d}: expected PROP=VALUE")
            })?;
            props.push((k.to_string(), check_property(ty, k, v)?));
        }
        if props.is_empty() {
            check_property(ty, "iobase", "0")?; // validates the type
        }
        let get = |k: &str, def: u64| props.iter().rev().find(|p| p.0 == k).map_or(def, |p| p.1);
        let (iobase, iosize) = (get("iobase", 0x501), get("iosize", 2));
        if iobase > 0xffff || !(1..=4).contains(&iosize) {
            bail!("isa-debug-exit: iobase {iobase:#x} or iosize {iosize} out of range (port < 0x10000, size 1..4)");
        }
        if debug_exit.is_some() {
            bail!("isa-debug-exit given twice");
        }
        debug_exit = Some(DebugExitConfig {
            iobase: iobase as u16,
            iosize: iosize as u16,
        });
    }
    let kernel_meta = std::fs::metadata(&kernel)
        .with_context(|| format!("cannot open kernel {}", kernel.display()))?;
    if !kernel_meta.is_file() {
        bail!("kernel {} is not a file", kernel.display());
    }
    if let Some(i) = &a.initrd {
        std::fs::metadata(i).with_context(|| format!("cannot open initrd {}", i.display()))?;
    }
    Ok(Action::Run(Box::new(VmConfig {
        machine: spec.machine,
        memory,
        vcpus: vcpus as u8,
        kernel,
        initrd: a.initrd,
        cmdline: a.append,
        serial,
        name: a.name,
        paused: a.paused,
        no_reboot: a.no_reboot,
        debug_exit,
    })))
}
