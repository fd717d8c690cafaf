//! What a QMP client sends, in pieces of any size: the monitor frames JSON
//! values out of it, negotiates, and dispatches each command (its
//! arguments checked against the command's declaration) to a VM that
//! accepts everything. Every reply must be one line of JSON with either
//! `return` or `error`, and what waits unframed stays bounded.
//! Input: [piece size - 1][the client's bytes...].

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use vmm::qmp::commands::{self, PciInfo, Target};
use vmm::qmp::session::MAX_MESSAGE;
use vmm::qmp::{reply_line, QmpError, Session, Step};
use vmm::runstate::RunState;

/// A VM that does whatever it is asked.
struct Obliging;

impl Target for Obliging {
    fn status(&self) -> RunState {
        RunState::Running
    }
    fn stop(&mut self) -> Result<(), QmpError> {
        Ok(())
    }
    fn cont(&mut self, _: bool) -> Result<(), QmpError> {
        Ok(())
    }
    fn powerdown(&mut self) -> Result<(), QmpError> {
        Ok(())
    }
    fn reset(&mut self) -> Result<(), QmpError> {
        Ok(())
    }
    fn quit(&mut self) {}
    fn name(&self) -> Option<String> {
        Some("fuzz".into())
    }
    fn cpus(&self) -> Vec<(u32, i64)> {
        vec![(0, 1), (1, 2)]
    }
    fn supported_cpuid(&self) -> Vec<vmm::hypervisor::CpuidEntry> {
        vec![]
    }
    fn machine(&self) -> &'static machine::MachineType {
        machine::find("pc-q35-8.0").expect("a machine type")
    }
    fn devices(&self) -> &[vmm::config::DeviceConfig] {
        &[]
    }
    fn pci(&self) -> Vec<PciInfo> {
        vec![PciInfo {
            bus: 0,
            slot: 3,
            function: 0,
            vendor: 0x1af4,
            device: 0x1041,
            class: 0x020000,
            qdev_id: Some("n0".into()),
        }]
    }
    fn migrate(&mut self, _: migration::uri::Uri) -> Result<(), QmpError> {
        Ok(())
    }
    fn query_migrate(&self) -> Value {
        json!({"status": "none"})
    }
    fn migrate_incoming(&mut self, _: migration::uri::Uri) -> Result<(), QmpError> {
        Ok(())
    }
    fn migrate_cancel(&mut self) -> Result<(), QmpError> {
        Ok(())
    }
    fn migrate_set_parameters(&mut self, _: &Map<String, Value>) -> Result<(), QmpError> {
        Ok(())
    }
    fn migrate_parameters(&self) -> Value {
        json!({})
    }
    fn migrate_set_capabilities(&mut self, _: &[(String, bool)]) -> Result<(), QmpError> {
        Ok(())
    }
    fn migrate_capabilities(&self) -> Value {
        json!([])
    }
    fn getfd(&mut self, _: &str) -> Result<(), QmpError> {
        Ok(())
    }
    fn closefd(&mut self, _: &str) -> Result<(), QmpError> {
        Ok(())
    }
}

/// One reply: a line of JSON, an object with `return` or `error`.
fn check(line: &str) {
    assert!(!line.contains('\n'), "a reply spans lines: {line}");
    let v: Value = serde_json::from_str(line).expect("a reply is JSON");
    assert!(
        v.get("return").is_some() != v.get("error").is_some(),
        "neither return nor error: {line}"
    );
}

fuzz_target!(|data: &[u8]| {
    let [piece, bytes @ ..] = data else { return };
    let mut session = Session::default();
    let mut vm = Obliging;
    for chunk in bytes.chunks(usize::from(*piece) + 1) {
        if let Some(e) = session.feed(chunk) {
            check(&e);
        }
        while let Some(step) = session.next_step() {
            match step {
                Step::Reply(line) | Step::Negotiated(line) => check(&line),
                Step::Command { command, args, id } => check(&reply_line(
                    commands::dispatch(&mut vm, &command, &args),
                    id,
                )),
            }
        }
        assert!(
            session.pending() <= MAX_MESSAGE,
            "{} bytes wait unframed",
            session.pending()
        );
    }
});
