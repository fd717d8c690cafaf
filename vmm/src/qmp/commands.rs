//! The QMP commands: one small handler each, in one table. Handlers act on
//! a [`Target`], which the VMM's main loop implements over the live VM.

use super::QmpError;
use migration::uri::Uri;
use serde_json::{json, Map, Value};

/// The VM as the monitor sees it.
pub trait Target {
    /// `running`, `paused`, `prelaunch`, `shutdown`...
    fn status(&self) -> crate::runstate::RunState;
    fn stop(&mut self) -> Result<(), QmpError>;
    /// `cont`; `force` runs a guest even after it was handed over to a
    /// migration's destination.
    fn cont(&mut self, force: bool) -> Result<(), QmpError>;
    fn powerdown(&mut self) -> Result<(), QmpError>;
    fn reset(&mut self) -> Result<(), QmpError>;
    fn quit(&mut self);
    fn name(&self) -> Option<String>;
    /// (cpu index, host thread id) per vCPU.
    fn cpus(&self) -> Vec<(u32, i64)>;
    /// The CPUID this host's hypervisor can give a guest.
    fn supported_cpuid(&self) -> Vec<crate::hypervisor::CpuidEntry>;
    fn machine(&self) -> &'static machine::MachineType;
    fn devices(&self) -> &[crate::config::DeviceConfig];
    fn pci(&self) -> Vec<PciInfo>;
    /// `migrate` to a URI: `file:PATH` (stop and save) or, live,
    /// `tcp:HOST:PORT`, `unix:PATH`, `fd:NAME` (from `getfd`) or `fd:N`.
    fn migrate(&mut self, uri: Uri) -> Result<(), QmpError>;
    fn query_migrate(&self) -> Value;
    /// `migrate-incoming` (after `-incoming defer`): `tcp:`, `unix:` or
    /// `file:`.
    fn migrate_incoming(&mut self, uri: Uri) -> Result<(), QmpError>;
    fn migrate_cancel(&mut self) -> Result<(), QmpError>;
    fn migrate_set_parameters(&mut self, args: &Map<String, Value>) -> Result<(), QmpError>;
    fn migrate_parameters(&self) -> Value;
    /// (capability, state) pairs.
    fn migrate_set_capabilities(&mut self, caps: &[(String, bool)]) -> Result<(), QmpError>;
    fn migrate_capabilities(&self) -> Value;
    /// `getfd`: keep the descriptor the client just passed under `name`.
    fn getfd(&mut self, name: &str) -> Result<(), QmpError>;
    fn closefd(&mut self, name: &str) -> Result<(), QmpError>;
}

/// One PCI function, for `query-pci`.
pub struct PciInfo {
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
    pub vendor: u16,
    pub device: u16,
    /// Class code (class << 16 | subclass << 8 | prog-if).
    pub class: u32,
    pub qdev_id: Option<String>,
}

type Handler = fn(&mut dyn Target, &Map<String, Value>) -> Result<Value, QmpError>;

/// A command: its name, its arguments (name, JSON type), its handler.
pub struct Command(
    pub &'static str,
    pub &'static [(&'static str, &'static str)],
    pub Handler,
);

/// Every command.
pub const COMMANDS: &[Command] = &[
    Command("qmp_capabilities", &[("enable", "array")], |_, _| {
        Ok(json!({}))
    }),
    Command("query-version", &[], query_version),
    Command("query-commands", &[], query_commands),
    Command("query-status", &[], |t, _| {
        let s = t.status();
        Ok(
            json!({"status": s.as_str(), "running": s == crate::runstate::RunState::Running, "singlestep": false}),
        )
    }),
    Command("query-name", &[], |t, _| {
        Ok(t.name().map_or(json!({}), |n| json!({"name": n})))
    }),
    Command("query-machines", &[], query_machines),
    Command("query-cpus-fast", &[], query_cpus_fast),
    Command("query-cpu-definitions", &[], query_cpu_definitions),
    Command(
        "query-cpu-model-expansion",
        &[("type", "string"), ("model", "object")],
        query_cpu_model_expansion,
    ),
    Command("stop", &[], |t, _| t.stop().map(|_| json!({}))),
    Command("cont", &[("force", "?bool")], |t, a| {
        let force = a.get("force").and_then(Value::as_bool).unwrap_or(false);
        t.cont(force).map(|_| json!({}))
    }),
    Command("system_powerdown", &[], |t, _| {
        t.powerdown().map(|_| json!({}))
    }),
    Command("system_reset", &[], |t, _| t.reset().map(|_| json!({}))),
    Command("quit", &[], |t, _| {
        t.quit();
        Ok(json!({}))
    }),
    Command("qom-list", &[("path", "string")], qom_list),
    Command(
        "qom-get",
        &[("path", "string"), ("property", "string")],
        qom_get,
    ),
    Command("query-pci", &[], query_pci),
    Command("migrate", &[("uri", "string")], |t, a| {
        t.migrate(uri(a)?).map(|_| json!({}))
    }),
    Command("query-migrate", &[], |t, _| Ok(t.query_migrate())),
    Command("migrate-incoming", &[("uri", "string")], |t, a| {
        t.migrate_incoming(uri(a)?).map(|_| json!({}))
    }),
    Command("migrate_cancel", &[], |t, _| {
        t.migrate_cancel().map(|_| json!({}))
    }),
    Command(
        "migrate-set-parameters",
        &[
            ("downtime-limit", "?int"),
            ("max-bandwidth", "?int"),
            ("multifd-channels", "?int"),
            ("cpu-throttle-initial", "?int"),
            ("cpu-throttle-increment", "?int"),
            ("max-cpu-throttle", "?int"),
            ("tls-creds", "?string"),
            ("tls-hostname", "?string"),
            ("tls-authz", "?string"),
        ],
        |t, a| t.migrate_set_parameters(a).map(|_| json!({})),
    ),
    Command("query-migrate-parameters", &[], |t, _| {
        Ok(t.migrate_parameters())
    }),
    Command(
        "migrate-set-capabilities",
        &[("capabilities", "array")],
        migrate_set_capabilities,
    ),
    Command("query-migrate-capabilities", &[], |t, _| {
        Ok(t.migrate_capabilities())
    }),
    Command("getfd", &[("fdname", "string")], |t, a| {
        t.getfd(a["fdname"].as_str().unwrap_or_default())
            .map(|_| json!({}))
    }),
    Command("closefd", &[("fdname", "string")], |t, a| {
        t.closefd(a["fdname"].as_str().unwrap_or_default())
            .map(|_| json!({}))
    }),
];

fn migrate_set_capabilities(t: &mut dyn Target, a: &Map<String, Value>) -> Result<Value, QmpError> {
    let list = a
        .get("capabilities")
        .and_then(Value::as_array)
        .ok_or_else(|| QmpError::generic("Parameter 'capabilities' is missing"))?;
    let mut caps = vec![];
    for c in list {
        let (Some(name), Some(state)) = (c["capability"].as_str(), c["state"].as_bool()) else {
            return Err(QmpError::generic(
                "each capability needs 'capability' (a string) and 'state' (a bool)",
            ));
        };
        caps.push((name.to_string(), state));
    }
    t.migrate_set_capabilities(&caps).map(|_| json!({}))
}

/// Checks the arguments against the command's declaration, then runs it.
pub fn dispatch(
    t: &mut dyn Target,
    command: &str,
    args: &Map<String, Value>,
) -> Result<Value, QmpError> {
    let Some(Command(_, params, handler)) = COMMANDS.iter().find(|c| c.0 == command) else {
        return Err(QmpError::not_found(format!(
            "The command {command} has not been found"
        )));
    };
    for (k, v) in args {
        let Some((_, ty)) = params.iter().find(|p| p.0 == k) else {
            return Err(QmpError::generic(format!("Parameter '{k}' is unexpected")));
        };
        let ok = match ty.trim_start_matches('?') {
            "string" => v.is_string(),
            "array" => v.is_array(),
            "bool" => v.is_boolean(),
            "int" => v.is_i64() || v.is_u64(),
            _ => true,
        };
        if !ok {
            return Err(QmpError::generic(format!(
                "Invalid parameter type for '{k}', expected: {ty}"
            )));
        }
    }
    // Every declared parameter is mandatory except those whose type starts
    // with '?' (and qmp_capabilities' enable).
    if let Some((p, _)) = params
        .iter()
        .find(|p| p.0 != "enable" && !p.1.starts_with('?') && !args.contains_key(p.0))
    {
        return Err(QmpError::generic(format!("Parameter '{p}' is missing")));
    }
    handler(t, args)
}

fn query_version(_: &mut dyn Target, _: &Map<String, Value>) -> Result<Value, QmpError> {
    let (major, minor, micro) = super::version();
    Ok(
        json!({"qemu": {"major": major, "minor": minor, "micro": micro}, "package": format!("vmm {}", env!("CARGO_PKG_VERSION"))}),
    )
}

fn query_commands(_: &mut dyn Target, _: &Map<String, Value>) -> Result<Value, QmpError> {
    Ok(Value::Array(
        COMMANDS.iter().map(|c| json!({"name": c.0})).collect(),
    ))
}

/// The machine types of the running VM's board (QEMU's binaries are one
/// per target: qemu-system-x86_64 lists only x86's).
fn query_machines(t: &mut dyn Target, _: &Map<String, Value>) -> Result<Value, QmpError> {
    let arch = t.machine().arch;
    let newest = machine::newest_of(arch);
    let mut v: Vec<Value> = machine::all()
        .filter(|m| m.arch == arch)
        .map(|m| {
            let board = arch.board();
            let mut o = json!({"name": m.name, "cpu-max": crate::config::MAX_VCPUS, "hotpluggable-cpus": false,
                "numa-mem-supported": false, "deprecated": false, "acpi": board.acpi, "default-ram-id": board.ram_block});
            // The newest of the board is its binary's default in QEMU.
            if std::ptr::eq(m, newest) {
                let alias = machine::ALIASES.iter().find(|a| a.1 == arch).map_or("", |a| a.0);
                o["alias"] = alias.into();
                o["is-default"] = true.into();
            }
            o
        })
        .collect();
    v.reverse();
    Ok(Value::Array(v))
}

/// Every CPU model, with what this host lacks of each (QEMU's
/// `unavailable-features`: `-cpu NAME` fails here unless `check=on`).
fn query_cpu_definitions(t: &mut dyn Target, _: &Map<String, Value>) -> Result<Value, QmpError> {
    use arch::x86_64::cpu;
    let host = t.supported_cpuid();
    let mut v = vec![
        json!({"name": "host", "typename": "host-x86_64-cpu", "static": false,
        "migration-safe": false, "deprecated": false, "unavailable-features": []}),
    ];
    for m in cpu::models() {
        let lacking: Vec<&str> = cpu::lacking(m, &host).iter().map(|f| f.name).collect();
        v.push(
            json!({"name": m.name, "typename": format!("{}-x86_64-cpu", m.name), "static": false,
            "migration-safe": true, "deprecated": false, "unavailable-features": lacking}),
        );
    }
    Ok(Value::Array(v))
}

/// A model (`model`: `name` and `props`, as `-cpu NAME,PROP=VALUE`)
/// expanded to every feature it has or not, as QEMU's `full` expansion
/// (`static` is answered the same way: vmm's models have no static base).
fn query_cpu_model_expansion(
    t: &mut dyn Target,
    a: &Map<String, Value>,
) -> Result<Value, QmpError> {
    use arch::x86_64::cpu;
    let ty = a["type"].as_str().unwrap_or_default();
    if !["full", "static"].contains(&ty) {
        return Err(QmpError::generic(format!(
            "invalid expansion type '{ty}': expected full or static"
        )));
    }
    let model = &a["model"];
    let name = model["name"].as_str().unwrap_or_default();
    let mut spec = name.to_string();
    if let Some(props) = model.get("props").and_then(Value::as_object) {
        for (k, v) in props {
            let on = match v {
                Value::Bool(b) => *b,
                Value::String(s) if s == "on" => true,
                Value::String(s) if s == "off" => false,
                other => {
                    return Err(QmpError::generic(format!(
                        "property '{k}' of model '{name}': {other} is not a boolean"
                    )))
                }
            };
            spec += &format!(",{k}={}", if on { "on" } else { "off" });
        }
    }
    let mut spec: cpu::CpuSpec = spec
        .parse()
        .map_err(|e: cpu::Error| QmpError::generic(e.to_string()))?;
    // The machine type's compat entries set the model's defaults.
    let compat = machine::compat_props(t.machine());
    spec.apply_compat(compat.iter().map(|e| (e.type_name, e.property, e.value)));
    let host = t.supported_cpuid();
    let mut props = Map::new();
    for (f, on) in cpu::expand(&spec, &host) {
        props.insert(f.name.to_string(), Value::Bool(on));
    }
    if let cpu::Base::Model(m) = spec.base {
        props.insert("vendor".into(), m.vendor.into());
        let id = spec.compat_identity;
        props.insert("family".into(), id[0].unwrap_or(m.family).into());
        props.insert("model".into(), id[1].unwrap_or(m.model).into());
        props.insert("stepping".into(), id[2].unwrap_or(m.stepping).into());
        props.insert("xlevel".into(), id[3].unwrap_or(m.xlevel).into());
        props.insert("model-id".into(), m.model_id.into());
    }
    Ok(json!({"model": {"name": name, "props": props}}))
}

fn query_cpus_fast(t: &mut dyn Target, _: &Map<String, Value>) -> Result<Value, QmpError> {
    Ok(Value::Array(
        t.cpus()
            .into_iter()
            .map(|(i, tid)| {
                json!({"cpu-index": i, "qom-path": format!("/machine/unattached/device[{i}]"), "thread-id": tid,
                    "props": {"core-id": i, "thread-id": 0, "socket-id": 0}, "target": "x86_64"})
            })
            .collect(),
    ))
}

fn path_parts(path: &str) -> Vec<&str> {
    path.split('/').filter(|p| !p.is_empty()).collect()
}

fn qom_list(t: &mut dyn Target, a: &Map<String, Value>) -> Result<Value, QmpError> {
    let path = a["path"].as_str().unwrap_or_default();
    let v = match path_parts(path).as_slice() {
        [] => json!([{"name": "machine", "type": format!("child<{}-machine>", t.machine().name)}]),
        ["machine"] => {
            json!([{"name": "type", "type": "string"}, {"name": "peripheral", "type": "child<container>"}])
        }
        ["machine", "peripheral"] => Value::Array(
            t.devices()
                .iter()
                .filter_map(|d| {
                    d.id.as_ref().map(
                        |id| json!({"name": id, "type": format!("child<{}>", d.props.type_name)}),
                    )
                })
                .collect(),
        ),
        ["machine", "peripheral", id] => {
            let d = device(t, id, path)?;
            let mut v = vec![json!({"name": "type", "type": "string"})];
            v.extend(
                d.props
                    .values
                    .iter()
                    .map(|r| json!({"name": r.name, "type": r.kind.name()})),
            );
            Value::Array(v)
        }
        _ => {
            return Err(QmpError {
                class: "DeviceNotFound",
                desc: format!("Device '{path}' not found"),
            })
        }
    };
    Ok(v)
}

fn device<'a>(
    t: &'a dyn Target,
    id: &str,
    path: &str,
) -> Result<&'a crate::config::DeviceConfig, QmpError> {
    t.devices()
        .iter()
        .find(|d| d.id.as_deref() == Some(id))
        .ok_or_else(|| QmpError {
            class: "DeviceNotFound",
            desc: format!("Device '{path}' not found"),
        })
}

/// The `uri` argument, parsed (the table checked it is a string).
fn uri(a: &Map<String, Value>) -> Result<Uri, QmpError> {
    a["uri"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e: migration::uri::BadUri| QmpError::generic(e.to_string()))
}

fn qom_get(t: &mut dyn Target, a: &Map<String, Value>) -> Result<Value, QmpError> {
    let path = a["path"].as_str().unwrap_or_default();
    let prop = a["property"].as_str().unwrap_or_default();
    match path_parts(path).as_slice() {
        ["machine"] if prop == "type" => Ok(json!(format!("{}-machine", t.machine().name))),
        ["machine", "peripheral", id] => {
            let d = device(t, id, path)?;
            if prop == "type" {
                return Ok(json!(d.props.type_name));
            }
            // vmm's own: where each property's value came from (default,
            // compat:ARRAY, global, device, auto, migration).
            if prop == "x-provenance" {
                let m: Map<String, Value> = d
                    .props
                    .values
                    .iter()
                    .map(|r| (r.name.to_string(), json!(r.source.to_string())))
                    .collect();
                return Ok(Value::Object(m));
            }
            let r = d.props.get(prop).ok_or_else(|| {
                QmpError::generic(format!("Property '{}.{prop}' not found", d.props.type_name))
            })?;
            Ok(crate::config::json_value(&r.value))
        }
        _ => Err(QmpError {
            class: "DeviceNotFound",
            desc: format!("Device '{path}' not found"),
        }),
    }
}

fn query_pci(t: &mut dyn Target, _: &Map<String, Value>) -> Result<Value, QmpError> {
    let devices: Vec<Value> = t
        .pci()
        .into_iter()
        .map(|p| {
            json!({"bus": p.bus, "slot": p.slot, "function": p.function, "class_info": {"class": p.class >> 8},
                "id": {"vendor": p.vendor, "device": p.device}, "qdev_id": p.qdev_id.unwrap_or_default(), "regions": []})
        })
        .collect();
    Ok(json!([{"bus": 0, "devices": devices}]))
}
