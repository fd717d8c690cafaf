//! The VM's configuration, validated from the command line before anything
//! is created: a bad option never leaves a half-built VM.

use crate::cli::{parse_size, Args};
use anyhow::{anyhow, bail, Context, Result};
use devices::model::{self, property::Value, Props};
use std::path::PathBuf;

pub const MIN_MEMORY: u64 = 16 << 20;
pub const MAX_VCPUS: u32 = 255;

/// Where a `-qmp` listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpAddr {
    Unix(std::path::PathBuf),
    Tcp(String),
}

/// Parses `unix:PATH,server=on,wait=off` or `tcp:HOST:PORT,server=on,wait=off`.
pub fn parse_qmp_addr(s: &str) -> Result<QmpAddr, String> {
    let mut parts = s.split(',');
    let addr = parts.next().unwrap_or("");
    for opt in parts {
        match opt {
            "server" | "server=on" | "nowait" | "wait=off" => {}
            "server=off" => {
                return Err(format!(
                    "invalid -qmp '{s}': vmm's monitor is always the server (server=on)"
                ))
            }
            "wait=on" => {
                return Err(format!(
                    "invalid -qmp '{s}': wait=on is not supported; use wait=off"
                ))
            }
            o => return Err(format!("invalid -qmp '{s}': unknown option '{o}'")),
        }
    }
    if let Some(p) = addr.strip_prefix("unix:").filter(|p| !p.is_empty()) {
        Ok(QmpAddr::Unix(p.into()))
    } else if let Some(hp) = addr
        .strip_prefix("tcp:")
        .filter(|hp| hp.rsplit_once(':').is_some())
    {
        Ok(QmpAddr::Tcp(hp.to_string()))
    } else {
        Err(format!(
            "invalid -qmp '{s}': expected unix:PATH or tcp:HOST:PORT"
        ))
    }
}

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

/// `-sandbox on|off[,OPTION=deny...]`, QEMU's spelling: on by default.
/// QEMU's options (obsolete, elevateprivileges, spawn, resourcecontrol)
/// name what its filter denies; vmm's lists deny all of them, so `=deny`
/// is accepted and `=allow` refused.
fn parse_sandbox(s: Option<&str>) -> Result<sandbox::Mode> {
    let Some(s) = s else {
        return Ok(sandbox::Mode::On);
    };
    let mut parts = s.split(',');
    let mode = match parts.next() {
        Some("on") => sandbox::Mode::On,
        Some("off") => sandbox::Mode::Off,
        _ => bail!("invalid -sandbox '{s}': expected on or off"),
    };
    for opt in parts {
        match opt.split_once('=') {
            Some(("obsolete" | "elevateprivileges" | "spawn" | "resourcecontrol", "deny")) => {}
            Some(("obsolete" | "elevateprivileges" | "spawn" | "resourcecontrol", _)) => {
                bail!("invalid -sandbox '{s}': '{opt}': vmm's filters always deny that")
            }
            _ => bail!("invalid -sandbox '{s}': unknown option '{opt}'"),
        }
    }
    Ok(mode)
}

/// An `-object`: TLS credentials or the client a destination admits.
enum Object {
    TlsCreds(migration::tls::Creds),
    Authz(migration::tls::Authz),
}

/// QEMU's option list: `,` separates, `,,` is a comma in a value.
fn split_options(o: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = o.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                parts.last_mut().expect("one part").push(',');
            }
            ',' => parts.push(String::new()),
            c => parts.last_mut().expect("one part").push(c),
        }
    }
    parts
}

/// `-object tls-creds-x509,id=ID,dir=DIR,endpoint=server|client
/// [,verify-peer=on|off]` or `tls-creds-psk,id=ID,dir=DIR,
/// endpoint=server|client[,username=NAME]` (their files are read now, so a
/// bad directory is an error before the VM starts), or `-object
/// authz-simple,id=ID,identity=DN` (commas in the DN doubled), QEMU's
/// spellings.
fn parse_object(o: &str) -> Result<Object> {
    use migration::tls::{Authz, Creds, Endpoint};
    let parts = split_options(o);
    let (kind, parts) = parts.split_first().expect("one part");
    if kind == "authz-simple" {
        let (mut id, mut identity) = (None, None);
        for kv in parts {
            match kv.split_once('=') {
                Some(("id", v)) => id = Some(v.to_string()),
                Some(("identity", v)) => identity = Some(v.to_string()),
                _ => bail!("invalid -object '{o}': unknown or bad '{kv}' (id, identity; a comma in the identity is written ',,')"),
            }
        }
        return Ok(Object::Authz(Authz {
            id: id.ok_or_else(|| anyhow!("invalid -object '{o}': id= is missing"))?,
            identity: identity
                .ok_or_else(|| anyhow!("invalid -object '{o}': identity= is missing"))?,
        }));
    }
    let psk = match kind.as_str() {
        "tls-creds-x509" => false,
        "tls-creds-psk" => true,
        _ => bail!("invalid -object '{o}': vmm knows tls-creds-x509, tls-creds-psk and authz-simple objects only"),
    };
    let (mut id, mut dir, mut endpoint, mut verify_peer) = (None, None, Endpoint::Client, true);
    let mut username = None;
    for kv in parts {
        match kv.split_once('=') {
            Some(("id", v)) => id = Some(v.to_string()),
            Some(("dir", v)) => dir = Some(PathBuf::from(v)),
            Some(("endpoint", "server")) => endpoint = Endpoint::Server,
            Some(("endpoint", "client")) => endpoint = Endpoint::Client,
            Some(("verify-peer", "on" | "yes" | "true")) if !psk => verify_peer = true,
            Some(("verify-peer", "off" | "no" | "false")) if !psk => verify_peer = false,
            Some(("username", v)) if psk => username = Some(v.to_string()),
            _ if psk => bail!("invalid -object '{o}': unknown or bad '{kv}' (id, dir, endpoint=server|client, username)"),
            _ => bail!("invalid -object '{o}': unknown or bad '{kv}' (id, dir, endpoint=server|client, verify-peer=on|off)"),
        }
    }
    let kind = if psk {
        // QEMU's default name for a client.
        migration::tls::Kind::Psk {
            username: username.unwrap_or_else(|| "qemu".into()),
        }
    } else {
        migration::tls::Kind::X509 { verify_peer }
    };
    let creds = Creds {
        id: id.ok_or_else(|| anyhow!("invalid -object '{o}': id= is missing"))?,
        dir: dir.ok_or_else(|| anyhow!("invalid -object '{o}': dir= is missing"))?,
        endpoint,
        kind,
    };
    creds
        .check()
        .with_context(|| format!("-object {}", creds.id))?;
    Ok(Object::TlsCreds(creds))
}

/// Where an incoming VM's state comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    File(PathBuf),
    /// Listen on tcp:HOST:PORT or unix:PATH for one migration stream.
    Listen(migration::uri::Uri),
    /// Wait for QMP `migrate-incoming`.
    Defer,
}

/// A `-device`, resolved.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub id: Option<String>,
    pub props: Props,
    /// For PCI functions: slot << 3 | function on bus `bus`.
    pub devfn: Option<u8>,
    /// The PCI bus number: 0 for the root bus, the secondary bus of the
    /// root port the device sits behind otherwise.
    pub bus: u8,
    /// The `bus=` as given (the root bus's name when none was).
    pub bus_name: String,
}

impl DeviceConfig {
    fn name(&self) -> String {
        match &self.id {
            Some(id) => format!("{} '{id}'", self.props.type_name),
            None => self.props.type_name.to_string(),
        }
    }
}

/// What runs the guest (`-accel`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// No vCPUs: the client at this address drives the board.
    Qtest(crate::qtest::QtestAddr),
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub machine: &'static machine::MachineType,
    pub memory: u64,
    pub vcpus: u8,
    /// `-smp`: the vCPUs' arrangement (`vcpus` of them present).
    pub smp: arch::x86_64::topology::Topology,
    /// `-cpu`.
    pub cpu: arch::x86_64::cpu::CpuSpec,
    /// The CPU a migration's source gave the guest, which this VM keeps
    /// for every later board (`vm/carried.rs`).
    pub cpu_carried: Option<CarriedCpu>,
    /// `-kernel` (none only with the qtest accelerator).
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// `-accel`.
    pub accel: Accel,
    pub cmdline: String,
    pub serial: SerialBackend,
    pub name: Option<String>,
    pub paused: bool,
    pub no_reboot: bool,
    /// `-sandbox on|off`.
    pub sandbox: sandbox::Mode,
    /// `-runas USER`.
    pub runas: Option<String>,
    /// `-global migration.x-strict-config=on`: an incoming migration whose
    /// devices are configured otherwise than here is refused, instead of
    /// this VM adopting the source's configuration (QEMU's behaviour).
    pub strict_config: bool,
    pub debug_exit: Option<DebugExitConfig>,
    /// The board's host bridge (`q35-pcihost`): its properties, resolved
    /// like a device's, shape the firmware tables.
    pub host_bridge: Props,
    pub devices: Vec<DeviceConfig>,
    pub qmp: Vec<QmpAddr>,
    /// `-incoming file:PATH` or `-incoming defer`.
    pub incoming: Option<Incoming>,
    /// `-object tls-creds-x509`, checked at start.
    pub tls: Vec<migration::tls::Creds>,
    /// `-object authz-simple`.
    pub authz: Vec<migration::tls::Authz>,
    pub backends: crate::backends::Backends,
}

/// The firmware tables' configuration for `topology` and `ram`, with what
/// the board's host bridge (`q35-pcihost`) properties say of the PCI host.
pub fn acpi_config(
    host_bridge: &Props,
    topology: arch::x86_64::topology::Topology,
    ram: u64,
) -> arch::x86_64::acpi::AcpiConfig {
    arch::x86_64::acpi::AcpiConfig {
        topology,
        ram,
        pci_hole64: host_bridge.bool("x-pci-hole64-fix") != Some(false),
        pci_root_uid: host_bridge.uint("x-pci-root-uid").unwrap_or(0) as u8,
    }
}

/// The CPU a migration's source gave its guest, kept by a destination.
#[derive(Clone, Debug)]
pub struct CarriedCpu {
    /// The CPUID table, before each vCPU's topology.
    pub cpuid: std::sync::Arc<Vec<crate::hypervisor::CpuidEntry>>,
    pub topology: arch::x86_64::topology::Topology,
    /// The TSC rate (kHz) the vCPUs were scaled to, when not this host's.
    pub tsc_khz: Option<u32>,
}

impl VmConfig {
    /// The vCPUs' arrangement the guest has: its source's, or `-smp`'s.
    pub fn topology(&self) -> arch::x86_64::topology::Topology {
        self.cpu_carried.as_ref().map_or(self.smp, |c| c.topology)
    }
}

/// What to do: run, or print something and exit.
pub enum Action {
    Run(Box<VmConfig>),
    Print(String),
    /// `-dump-vmstate FILE`.
    DumpVmstate(PathBuf, &'static machine::MachineType),
    /// `-dump-abi FILE`.
    DumpAbi(PathBuf, &'static machine::MachineType),
    /// `-machine dumpdtb=FILE`: the device tree of the VM configured.
    DumpDtb(PathBuf, Box<VmConfig>),
}

fn machine_help() -> String {
    let mut s = String::from("Supported machines are:\n");
    for arch in [machine::Arch::X86_64, machine::Arch::Ppc64] {
        let newest = machine::newest_of(arch);
        let aliases: Vec<&str> = machine::ALIASES
            .iter()
            .filter(|a| a.1 == arch)
            .map(|a| a.0)
            .collect();
        for m in machine::all()
            .filter(|m| m.arch == arch)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            let mut notes = vec![];
            if std::ptr::eq(m, machine::newest()) {
                notes.push("default".to_string());
            }
            if std::ptr::eq(m, newest) {
                notes.push(format!("alias of {}", aliases.join(", ")));
            }
            if arch == machine::Arch::Ppc64 && cfg!(target_arch = "x86_64") {
                notes.push("-accel qtest on this host".to_string());
            }
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join(", "))
            };
            s.push_str(&format!("{:<14} {}{notes}\n", m.name, m.description));
        }
    }
    s
}

/// Parses every `-device`: type, `id=`, `bus=`, properties; resolves the
/// properties against the machine's compat arrays and the `-global`s;
/// assigns PCI addresses. Returns `Err` on the first problem.
fn parse_devices(
    a: &Args,
    machine: &machine::MachineType,
    compat: &[model::CompatEntry],
    globals: &[model::Global],
) -> Result<Result<Vec<DeviceConfig>, String>> {
    let board = machine.arch.board();
    let root = board.root_bus;
    let mut out: Vec<DeviceConfig> = vec![];
    for d in &a.device {
        let mut parts = d.split(',');
        let ty = parts.next().unwrap_or("");
        let (mut id, mut bus, mut props) = (None, None, vec![]);
        for kv in parts {
            if kv == "help" {
                return Ok(Err(model::help(ty)?));
            }
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| model::Error::PropertySyntax(kv.to_string()))?;
            match k {
                "id" => id = Some(v.to_string()),
                "bus" => bus = Some(v.to_string()),
                _ => props.push((k.to_string(), v.to_string())),
            }
        }
        if model::types::BOARD_TYPES.iter().any(|t| t.name == ty) {
            bail!("-device {ty}: the board has its own {ty}; set its properties with -global {ty}.PROPERTY=VALUE");
        }
        if board.refuses.contains(&ty) {
            bail!(
                "-device {ty}: {} has no {}",
                machine.name,
                if ty == "isa-debug-exit" {
                    "ISA bus"
                } else {
                    "PCI Express bus (its host bridge is PCI)"
                }
            );
        }
        let props = model::resolve(ty, compat, globals, &props)?;
        if let Some(id) = &id {
            if out.iter().any(|o| o.id.as_deref() == Some(id.as_str())) {
                bail!("duplicate device id '{id}'");
            }
        }
        let is_pci = model::types::is_a(ty, "pci-device");
        // Root ports get secondary bus numbers 1, 2, ... in order, as
        // firmware would number them.
        let ports: Vec<&DeviceConfig> = out
            .iter()
            .filter(|d| d.props.type_name == "pcie-root-port")
            .collect();
        let bus_nr = match &bus {
            None => 0,
            Some(b) if is_pci && b == root => 0,
            Some(b) if is_pci => match ports
                .iter()
                .position(|p| p.id.as_deref() == Some(b.as_str()))
            {
                Some(i) => i as u8 + 1,
                None => {
                    let names: Vec<String> = std::iter::once(root.to_string())
                        .chain(ports.iter().filter_map(|p| p.id.clone()))
                        .collect();
                    bail!("bus '{b}' for {ty} not found; PCI buses so far: {} (a root port must come before the devices on it)", names.join(", "));
                }
            },
            Some(b) => bail!("bus '{b}' for {ty} not found: {ty} does not sit on a PCI bus"),
        };
        let devfn = match props.get("addr").map(|r| &r.value) {
            Some(Value::Devfn(d)) => Some(*d),
            _ => None,
        };
        if bus_nr != 0 && ty == "pcie-root-port" {
            bail!("pcie-root-port goes on {root}, not behind another port");
        }
        if bus_nr != 0 && devfn.is_some_and(|d| d >> 3 != 0) {
            bail!(
                "{ty} on {}: a PCIe port has one slot, 0 (addr=0 or addr=0.FN)",
                bus.as_deref().unwrap_or("")
            );
        }
        out.push(DeviceConfig {
            id,
            props,
            devfn: if is_pci {
                devfn.or((bus_nr != 0).then_some(0))
            } else {
                None
            },
            bus: bus_nr,
            bus_name: bus.unwrap_or_else(|| root.to_string()),
        });
    }
    // PCI addresses: q35's host bridge holds 00.0 (pseries' is not a
    // function on its bus); explicit ones first, then the first free slot
    // for the others.
    let mut taken: Vec<(u16, String)> = if board.host_bridge_is_function {
        vec![(0, "the host bridge".to_string())]
    } else {
        vec![]
    };
    for d in out.iter().filter(|d| d.devfn.is_some()) {
        let devfn = (d.bus as u16) << 8 | d.devfn.unwrap_or_default() as u16;
        if let Some((_, by)) = taken.iter().find(|t| t.0 == devfn) {
            bail!(
                "PCI address {:02x}.{} for {} is already taken by {by}",
                devfn >> 3,
                devfn & 7,
                d.name()
            );
        }
        taken.push((devfn, d.name()));
    }
    for d in out.iter_mut() {
        if d.devfn.is_none() && model::types::is_a(d.props.type_name, "pci-device") {
            let slot = (u8::from(board.host_bridge_is_function)..32)
                .find(|s| !taken.iter().any(|t| t.0 >> 3 == *s as u16))
                .ok_or_else(|| anyhow!("no free PCI slot left on {root} for {}", d.name()))?;
            d.devfn = Some(slot << 3);
            taken.push(((slot as u16) << 3, d.name()));
        }
    }
    // Root ports: chassis/slot pairs are unique, as in QEMU.
    let ports: Vec<&DeviceConfig> = out
        .iter()
        .filter(|d| d.props.type_name == "pcie-root-port")
        .collect();
    for (i, p) in ports.iter().enumerate() {
        let key = (p.props.uint("chassis"), p.props.uint("slot"));
        if let Some(q) = ports[..i]
            .iter()
            .find(|q| (q.props.uint("chassis"), q.props.uint("slot")) == key)
        {
            bail!(
                "{}: chassis {} slot {} is already used by {}; give each root port its own chassis= or slot=",
                p.name(),
                key.0.unwrap_or(0),
                key.1.unwrap_or(0),
                q.name()
            );
        }
    }
    Ok(Ok(out))
}

/// Resolves every `auto` setting to the value the guest sees, as QEMU's
/// realize does: `--print-config`, `qom-get` and the board read the same.
fn resolve_auto(devices: &mut [DeviceConfig], machine: &machine::MachineType, vcpus: u8) {
    let root = machine.arch.board().root_bus;
    let mut nic = 0;
    for d in devices.iter_mut() {
        if let (Some(devfn), None) = (d.devfn, d.props.get("addr")) {
            let why = if d.bus == 0 {
                format!("first free slot on {root}")
            } else {
                format!("the one slot of {}", d.bus_name)
            };
            d.props.resolve_auto("addr", Value::Devfn(devfn), why);
        }
        if model::types::is_a(d.props.type_name, "virtio-pci") {
            let board = devices::virtio::Board {
                vcpus,
                on_pcie_port: d.bus != 0,
                nic,
            };
            devices::virtio::resolve_auto(&mut d.props, &board);
            if d.props.type_name == "virtio-net-pci" {
                nic += 1;
            }
        }
    }
}

pub fn json_value(v: &Value) -> serde_json::Value {
    match v {
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Uint(u) => serde_json::Value::from(*u),
        // QEMU's `addr` is an int32 (slot << 3 | function) to QOM.
        Value::Devfn(d) => serde_json::Value::from(*d),
        other => serde_json::Value::String(other.to_string()),
    }
}

/// Resolved properties with their provenance, as `--print-config` shows
/// them.
fn props_json(props: &Props) -> serde_json::Map<String, serde_json::Value> {
    props
        .values
        .iter()
        .map(|r| {
            let mut v = serde_json::json!({"value": json_value(&r.value), "type": r.kind.name(), "source": r.source.to_string()});
            if let Some((setting, source)) = &r.setting {
                v["setting"] = serde_json::json!({"value": json_value(setting), "source": source.to_string()});
            }
            (r.name.to_string(), v)
        })
        .collect()
}

/// `--print-config`: the resolved machine and devices, with provenance.
pub fn print_config(c: &VmConfig) -> String {
    let devices: Vec<serde_json::Value> = c
        .devices
        .iter()
        .map(|d| {
            let props = props_json(&d.props);
            let mut o =
                serde_json::json!({"id": d.id, "type": d.props.type_name, "properties": props});
            if let Some(devfn) = d.devfn {
                o["bus"] = d.bus_name.clone().into();
                o["addr"] = format!("{:02x}.{}", devfn >> 3, devfn & 7).into();
            }
            o
        })
        .collect();
    let arrays: Vec<&str> = {
        let mut v: Vec<&str> = machine::compat_props(c.machine)
            .iter()
            .map(|e| e.array)
            .collect();
        v.dedup();
        v
    };
    let cfg = serde_json::json!({
        "machine": {"type": c.machine.name, "memory": c.memory, "cpus": c.vcpus, "smp": c.smp.to_string(), "cpu": c.cpu.to_string(), "compat_arrays_applied": arrays,
                    "host_bridge": {"type": c.host_bridge.type_name, "properties": props_json(&c.host_bridge)}},
        "devices": devices,
    });
    serde_json::to_string_pretty(&cfg).unwrap_or_default() + "\n"
}

/// `-accel kvm|qtest` with `-qtest ADDR`: each needs the other.
fn parse_accel(accel: Option<&str>, qtest: Option<&str>) -> Result<Accel> {
    match (accel.unwrap_or("kvm"), qtest) {
        ("kvm", None) => Ok(Accel::Kvm),
        ("kvm", Some(q)) => {
            bail!("-qtest {q} needs -accel qtest (the client is the VM's only CPU)")
        }
        ("qtest", Some(q)) => Ok(Accel::Qtest(q.parse()?)),
        ("qtest", None) => {
            bail!("-accel qtest needs -qtest unix:PATH or -qtest stdio: where its client is")
        }
        (other, _) => bail!("-accel {other}: unknown accelerator; vmm has kvm and qtest"),
    }
}

pub fn from_args(a: Args) -> Result<Action> {
    if a.machine.as_deref() == Some("help") {
        return Ok(Action::Print(machine_help()));
    }
    if a.device.iter().any(|d| d == "help") {
        return Ok(Action::Print(model::list()));
    }
    if a.cpu.as_deref() == Some("help") {
        // What this host lacks of each model, when /dev/kvm says.
        #[cfg(target_arch = "x86_64")]
        let host = crate::kvm::supported_cpuid().ok();
        #[cfg(not(target_arch = "x86_64"))]
        let host: Option<Vec<crate::hypervisor::CpuidEntry>> = None;
        return Ok(Action::Print(arch::x86_64::cpu::help(host.as_deref())));
    }
    let mut cpu: arch::x86_64::cpu::CpuSpec = a.cpu.as_deref().unwrap_or("host").parse()?;
    let spec = machine::parse(a.machine.as_deref().unwrap_or(""))?;
    if let Some(p) = a.dump_vmstate {
        return Ok(Action::DumpVmstate(p, spec.machine));
    }
    if let Some(p) = a.dump_abi {
        return Ok(Action::DumpAbi(p, spec.machine));
    }
    let compat = machine::compat_props(spec.machine);
    cpu.apply_compat(compat.iter().map(|e| (e.type_name, e.property, e.value)));
    // QEMU's `-global migration.PROP=VALUE` sets a migration property,
    // not a device's.
    let mut strict_config = false;
    for g in a.global.iter().filter_map(|g| g.strip_prefix("migration.")) {
        match g.split_once('=') {
            Some(("x-strict-config", "on" | "true")) => strict_config = true,
            Some(("x-strict-config", "off" | "false")) => strict_config = false,
            Some(("x-strict-config", v)) => {
                bail!("-global migration.x-strict-config={v}: expected on or off")
            }
            _ => bail!(
                "-global migration.{g}: unknown migration property; vmm has x-strict-config=on|off"
            ),
        }
    }
    let globals = a
        .global
        .iter()
        .filter(|g| !g.starts_with("migration."))
        .map(|g| model::parse_global(g))
        .collect::<Result<Vec<_>, _>>()?;
    let host_bridge = model::resolve(
        spec.machine.arch.board().host_bridge,
        &compat,
        &globals,
        &[],
    )?;
    let devices = match parse_devices(&a, spec.machine, &compat, &globals)? {
        Ok(d) => d,
        Err(help) => return Ok(Action::Print(help)),
    };
    let props: Vec<&Props> = devices.iter().map(|d| &d.props).collect();
    let backends = crate::backends::parse(&a, &props)?;
    let (mut tls, mut authz) = (vec![], vec![]);
    for o in &a.object {
        match parse_object(o)? {
            Object::TlsCreds(c) => tls.push(c),
            Object::Authz(z) => authz.push(z),
        }
    }
    let memory = parse_size(&a.memory)?;
    if memory < MIN_MEMORY {
        bail!(
            "memory size {} is too small: vmm needs at least {} MiB",
            a.memory,
            MIN_MEMORY >> 20
        );
    }
    let smp =
        arch::x86_64::topology::Topology::parse(&a.smp, spec.machine.prefer_sockets(), MAX_VCPUS)?;
    let vcpus = smp.cpus;
    let mut devices = devices;
    resolve_auto(&mut devices, spec.machine, vcpus as u8);
    let serial = match a.serial.as_str() {
        "stdio" => SerialBackend::Stdio,
        "none" | "null" => SerialBackend::None,
        s => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => SerialBackend::File(PathBuf::from(p)),
            _ => bail!("invalid -serial '{s}': expected stdio, file:PATH or none"),
        },
    };
    let mut debug_exit = None;
    for d in devices
        .iter()
        .filter(|d| d.props.type_name == "isa-debug-exit")
    {
        let (iobase, iosize) = (
            d.props.uint("iobase").unwrap_or(0x501),
            d.props.uint("iosize").unwrap_or(2),
        );
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
    let machine_accel = spec
        .properties
        .iter()
        .find(|(k, _)| k == "accel")
        .map(|(_, v)| v.as_str());
    let accel_name = match (a.accel.as_deref(), machine_accel) {
        (Some(x), Some(y)) if x != y => {
            bail!("-accel {x} and -machine accel={y} disagree: give one")
        }
        (x, y) => x.or(y),
    };
    let accel = parse_accel(accel_name, a.qtest.as_deref())?;
    // QEMU's dumpdtb needs no accelerator, kernel or host of the board's.
    let dumpdtb = spec
        .properties
        .iter()
        .find(|(k, _)| k == "dumpdtb")
        .map(|(_, v)| PathBuf::from(v));
    if spec.machine.arch == machine::Arch::Ppc64 && dumpdtb.is_none() {
        if accel == Accel::Kvm {
            bail!(
                "{}: a ppc64 board needs KVM-PPC on a POWER host; on this host it runs only under -accel qtest (no vCPUs)",
                spec.machine.name
            );
        }
        if let Some(c) = &a.cpu {
            bail!(
                "-cpu {c}: {} takes no -cpu (its boards have no vCPUs here)",
                spec.machine.name
            );
        }
    }
    if accel != Accel::Kvm && a.kernel.is_none() && a.initrd.is_some() {
        bail!("-initrd needs -kernel");
    }
    if matches!(accel, Accel::Qtest(crate::qtest::QtestAddr::Stdio))
        && matches!(serial, SerialBackend::Stdio)
    {
        bail!("-qtest stdio and the serial console cannot both have stdio: add -serial none or -serial file:PATH");
    }
    let kernel = match (a.kernel, a.print_config || dumpdtb.is_some(), &accel) {
        (Some(k), _, _) => Some(k),
        (None, true, _) | (None, _, Accel::Qtest(_)) => None,
        (None, false, Accel::Kvm) => bail!("no kernel given: use -kernel FILE"),
    };
    let cfg = VmConfig {
        machine: spec.machine,
        memory,
        vcpus: vcpus as u8,
        smp,
        cpu,
        cpu_carried: None,
        kernel,
        initrd: a.initrd,
        accel,
        cmdline: a.append,
        serial,
        name: a.name,
        paused: a.paused,
        no_reboot: a.no_reboot,
        sandbox: parse_sandbox(a.sandbox.as_deref())?,
        runas: a.runas.clone(),
        strict_config,
        debug_exit,
        host_bridge,
        devices,
        qmp: a
            .qmp
            .iter()
            .map(|q| parse_qmp_addr(q))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!(e))?,
        incoming: match a.incoming.as_deref() {
            None => None,
            Some("defer") => Some(Incoming::Defer),
            Some(u) => match u.parse::<migration::uri::Uri>() {
                Ok(migration::uri::Uri::File(p)) => Some(Incoming::File(p)),
                Ok(l @ (migration::uri::Uri::Tcp(_) | migration::uri::Uri::Unix(_))) => Some(Incoming::Listen(l)),
                _ => bail!("invalid -incoming '{u}': expected tcp:HOST:PORT, unix:PATH, file:PATH or defer"),
            },
        },
        backends,
        tls,
        authz,
    };
    if a.print_config {
        return Ok(Action::Print(print_config(&cfg)));
    }
    if let Some(path) = dumpdtb {
        return Ok(Action::DumpDtb(path, Box::new(cfg)));
    }
    if let Some(k) = &cfg.kernel {
        let meta =
            std::fs::metadata(k).with_context(|| format!("cannot open kernel {}", k.display()))?;
        if !meta.is_file() {
            bail!("kernel {} is not a file", k.display());
        }
    }
    if let Some(i) = &cfg.initrd {
        std::fs::metadata(i).with_context(|| format!("cannot open initrd {}", i.display()))?;
    }
    Ok(Action::Run(Box::new(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_qmp_addr("unix:/tmp/q.sock,server=on,wait=off"),
            Ok(QmpAddr::Unix("/tmp/q.sock".into()))
        );
        assert_eq!(
            parse_qmp_addr("tcp:127.0.0.1:4444,server,nowait"),
            Ok(QmpAddr::Tcp("127.0.0.1:4444".into()))
        );
        assert!(parse_qmp_addr("unix:/x,wait=on").is_err());
        assert!(parse_qmp_addr("stdio").is_err());
    }

    #[test]
    fn an_authz_identity_keeps_its_doubled_commas() {
        let Ok(Object::Authz(a)) =
            parse_object("authz-simple,id=auth0,identity=C=GB,,O=Example,, Org,,CN=vmm client")
        else {
            panic!("not an authz-simple object");
        };
        assert_eq!(a.id, "auth0");
        assert_eq!(a.identity, "C=GB,O=Example, Org,CN=vmm client");
        let e = parse_object("authz-simple,id=a,identity=C=GB,O=x")
            .err()
            .unwrap();
        assert!(e.to_string().contains("',,'"), "{e}");
        assert!(parse_object("authz-simple,identity=C=GB").is_err());
        assert!(parse_object("authz-list,id=a").is_err());
    }

    #[test]
    fn sandbox_takes_qemus_spelling() {
        assert_eq!(parse_sandbox(None).unwrap(), sandbox::Mode::On);
        assert_eq!(parse_sandbox(Some("off")).unwrap(), sandbox::Mode::Off);
        assert_eq!(
            parse_sandbox(Some("on,obsolete=deny,spawn=deny")).unwrap(),
            sandbox::Mode::On
        );
        let e = parse_sandbox(Some("on,spawn=allow"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("always deny"), "{e}");
        assert!(parse_sandbox(Some("yes")).is_err());
    }
}
