//! The QMP command table's view of the VM.

use super::board::{Board, Platform};
use super::incoming::listen_incoming;
use super::session::Session;
use super::Outcome;
use crate::qmp::{self, QmpError};
use crate::runstate::{MigrationStatus, RunState};
use anyhow::Result;
use migration::uri::Uri;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl qmp::commands::Target for Session<'_> {
    fn status(&self) -> RunState {
        self.status
    }

    fn stop(&mut self) -> Result<(), QmpError> {
        if self.status != RunState::Running {
            return Ok(());
        }
        self.gate.set_running(false);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let live = |b: &Board| b.vcpus.iter().filter(|h| !h.is_finished()).count();
        while self.gate.parked.load(Ordering::SeqCst) < live(self.board) {
            if std::time::Instant::now() > deadline {
                self.gate.set_running(true);
                return Err(QmpError::generic("the vCPUs did not stop within 5 s"));
            }
            self.board.kick();
            std::thread::sleep(Duration::from_micros(50));
        }
        // Devices stop touching guest memory too (in-flight work ends).
        self.board.pci.lock().expect("pci lock").pause();
        // As QEMU: freeze kvm-clock with the vCPUs.
        self.saved_clock = self.board.vm.clock().ok();
        self.set_status(RunState::Paused);
        self.queued.push(("STOP", None));
        Ok(())
    }

    fn cont(&mut self, force: bool) -> Result<(), QmpError> {
        if self.handed_over() && !force {
            return Err(QmpError::generic(
                "the guest was handed over to the migration's destination and runs there: running it here too would run it twice (cont with force=true to do so all the same)",
            ));
        }
        match self.status {
            RunState::Running => return Ok(()),
            // The guest must not run while its last state is on the way,
            // nor before an incoming one has arrived.
            RunState::FinishMigrate => {
                return Err(QmpError::generic(
                    "a migration is finishing: the VM resumes here only if it fails",
                ))
            }
            RunState::InMigrate => {
                return Err(QmpError::generic(
                    "the VM waits for an incoming migration: it starts when that completes",
                ))
            }
            _ => {}
        }
        // The disks first (after a failed migration, or a forced cont of
        // a handed-over guest, they may be elsewhere).
        self.board
            .pci
            .lock()
            .expect("pci lock")
            .claim()
            .map_err(|e| QmpError::generic(format!("cannot run the guest here: {e}")))?;
        if let Some(c) = self.saved_clock.take() {
            self.board
                .vm
                .set_clock(c)
                .map_err(|e| QmpError::generic(format!("cannot restore kvm-clock: {e}")))?;
        }
        self.board.pci.lock().expect("pci lock").resume();
        self.gate.set_running(true);
        self.set_status(RunState::Running);
        self.queued.push(("RESUME", None));
        Ok(())
    }

    fn powerdown(&mut self) -> Result<(), QmpError> {
        match &self.board.platform {
            Platform::Q35 { pm, .. } => pm.lock().expect("pm lock").power_button(),
            Platform::Spapr { .. } => {
                return Err(QmpError::generic(format!(
                    "{} has no power button yet (QEMU's raises an EPOW event)",
                    self.cfg.machine.name
                )))
            }
        }
        self.queued.push(("POWERDOWN", None));
        Ok(())
    }

    fn reset(&mut self) -> Result<(), QmpError> {
        if self.handed_over() {
            return Err(QmpError::generic(
                "the guest was handed over to the migration's destination and runs there: a reset here would boot it a second time",
            ));
        }
        self.ended = Some(Outcome::HostReset);
        Ok(())
    }

    fn quit(&mut self) {
        self.ended = Some(Outcome::Quit);
    }

    fn name(&self) -> Option<String> {
        self.cfg.name.clone()
    }

    fn supported_cpuid(&self) -> Vec<crate::hypervisor::CpuidEntry> {
        self.board
            .vm
            .x86_64()
            .map(|v| v.supported_cpuid().to_vec())
            .unwrap_or_default()
    }

    fn cpus(&self) -> Vec<(u32, i64)> {
        self.board
            .tids
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u32, t.load(Ordering::SeqCst)))
            .collect()
    }

    fn machine(&self) -> &'static machine::MachineType {
        self.cfg.machine
    }

    fn devices(&self) -> &[crate::config::DeviceConfig] {
        &self.cfg.devices
    }

    fn migrate(&mut self, uri: Uri) -> Result<(), QmpError> {
        if self.progress.is_some() {
            return Err(QmpError::generic("There's a migration process in progress"));
        }
        match uri {
            Uri::File(path) => self.save_to_file(path),
            live => self.migrate_live(&live),
        }
    }

    fn migrate_incoming(&mut self, uri: Uri) -> Result<(), QmpError> {
        if self.cfg.incoming != Some(crate::config::Incoming::Defer)
            || self.status != RunState::InMigrate
            || self.migration.status != MigrationStatus::None
        {
            return Err(QmpError::generic(
                "migrate-incoming is only possible once, after -incoming defer",
            ));
        }
        let path = match uri {
            Uri::File(p) => p,
            l @ (Uri::Tcp(_) | Uri::Unix(_)) => {
                let tls = self.tls_server()?;
                listen_incoming(&l, self.ctl.clone(), tls)
                    .map_err(|e| QmpError::generic(format!("{e:#}")))?;
                // Once: a second migrate-incoming is refused.
                self.migration.status = MigrationStatus::Active;
                return Ok(());
            }
            Uri::Fd(_) => {
                return Err(QmpError::generic(
                    "migrate-incoming takes tcp:, unix: or file:",
                ))
            }
        };
        // A stream that does not load leaves a half-written board: the
        // process ends (as QEMU's destination does), nothing of it runs.
        if let Err(e) = self.restore(&path) {
            self.ended = Some(Outcome::Fatal(format!("{e:#}")));
            return Err(QmpError::generic(format!("{e:#}")));
        }
        Ok(())
    }

    fn query_migrate(&self) -> serde_json::Value {
        let m = &self.migration;
        if m.status == MigrationStatus::None {
            return json!({});
        }
        let live = self.progress.as_ref().or(m.live.as_ref());
        let total_ms = match (&self.progress, m.started) {
            (Some(_), Some(t)) => t.elapsed().as_millis() as u64,
            _ => m.total_ms,
        };
        let mut v = json!({"status": m.status.as_str(), "total-time": total_ms});
        if let Some(p) = live {
            let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::SeqCst);
            let normal = get(&p.normal);
            v["setup-time"] = get(&p.setup_ms).into();
            v["expected-downtime"] = get(&p.expected_downtime_ms).into();
            v["multifd-channels-used"] = get(&p.channels).into();
            if m.status == MigrationStatus::Completed {
                v["downtime"] = get(&p.downtime_ms).into();
                // vmm's own: whether the destination said its vCPUs run.
                v["x-running-confirmed"] = p.running_confirmed.load(Ordering::SeqCst).into();
            }
            v["ram"] = json!({
                "transferred": get(&p.transferred),
                "total": self.cfg.memory,
                "remaining": get(&p.remaining),
                "duplicate": get(&p.duplicate),
                "normal": normal,
                "normal-bytes": normal * 4096,
                "page-size": 4096,
                "pages-per-second": get(&p.pages_per_second),
                "dirty-pages-rate": get(&p.dirty_pages_rate),
                "dirty-sync-count": get(&p.passes),
                "mbps": get(&p.mbps_x100) as f64 / 100.0,
            });
            let t = get(&p.throttle_pct);
            if t > 0 {
                v["cpu-throttle-percentage"] = t.into();
            }
            if let Some(why) = p.not_converging.lock().expect("progress lock").as_ref() {
                if m.status == MigrationStatus::Active {
                    v["not-converging"] = why.clone().into();
                }
            }
        } else if m.status == MigrationStatus::Completed && m.stats.pages > 0 {
            v["ram"] = json!({
                "transferred": m.stats.bytes,
                "total": self.cfg.memory,
                "remaining": 0,
                "normal": m.stats.pages - m.stats.zero_pages,
                "normal-bytes": (m.stats.pages - m.stats.zero_pages) * 4096,
                "duplicate": m.stats.zero_pages,
                "page-size": 4096,
            });
        }
        if let Some(e) = &m.error {
            v["error-desc"] = e.clone().into();
        }
        v
    }

    fn migrate_cancel(&mut self) -> Result<(), QmpError> {
        if let Some(p) = &self.progress {
            p.cancel.store(true, Ordering::SeqCst);
            if let Some(l) = &self.links {
                l.shutdown();
            }
        }
        Ok(())
    }

    fn migrate_set_parameters(
        &mut self,
        args: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), QmpError> {
        self.params.set(args).map_err(QmpError::generic)
    }

    fn migrate_parameters(&self) -> serde_json::Value {
        self.params.to_json()
    }

    fn migrate_set_capabilities(&mut self, caps: &[(String, bool)]) -> Result<(), QmpError> {
        if self.progress.is_some() {
            return Err(QmpError::generic("There's a migration process in progress"));
        }
        let mut next = self.params.clone();
        for (name, on) in caps {
            match name.as_str() {
                "auto-converge" => next.auto_converge = *on,
                "multifd" => next.multifd = *on,
                "events" | "return-path" => {}
                _ => {
                    return Err(QmpError::generic(format!(
                        "Capability '{name}' is not supported by vmm"
                    )))
                }
            }
        }
        *self.params = next;
        Ok(())
    }

    fn getfd(&mut self, name: &str) -> Result<(), QmpError> {
        let fd = self.passed.take().ok_or_else(|| {
            QmpError::generic("getfd: no file descriptor was passed with the command (SCM_RIGHTS)")
        })?;
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(QmpError::generic(format!(
                "getfd: invalid name '{name}': it must not be empty or start with a digit"
            )));
        }
        self.fds.insert(name.to_string(), fd);
        Ok(())
    }

    fn closefd(&mut self, name: &str) -> Result<(), QmpError> {
        self.fds
            .remove(name)
            .map(drop)
            .ok_or_else(|| QmpError::generic(format!("File descriptor named '{name}' not found")))
    }

    fn migrate_capabilities(&self) -> serde_json::Value {
        json!([
            {"capability": "auto-converge", "state": self.params.auto_converge},
            {"capability": "multifd", "state": self.params.multifd},
            {"capability": "events", "state": true},
            {"capability": "return-path", "state": true},
        ])
    }

    fn pci(&self) -> Vec<qmp::commands::PciInfo> {
        let root = self.board.pci.lock().expect("pci lock");
        root.functions()
            .map(|(bdf, f)| {
                let c = f.config();
                let devfn = (bdf.0 & 0xff) as u8;
                let id = self
                    .cfg
                    .devices
                    .iter()
                    .find(|d| d.devfn == Some(devfn) && d.bus == (bdf.0 >> 8) as u8)
                    .and_then(|d| d.id.clone());
                let (bus, slot, func) = ((bdf.0 >> 8) as u8, devfn >> 3, devfn & 7);
                qmp::commands::PciInfo {
                    bus,
                    slot,
                    function: func,
                    vendor: c.read(0, 2) as u16,
                    device: c.read(2, 2) as u16,
                    class: c.read(8, 4) >> 8,
                    qdev_id: id,
                }
            })
            .collect()
    }
}
