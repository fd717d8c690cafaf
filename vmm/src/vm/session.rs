//! The live VM as QMP commands see it: its run state, the last migration,
//! and the source side of a live migration.

use super::board::Board;
use super::vcpu::RunGate;
use super::{Control, Outcome};
use crate::config::VmConfig;
use crate::qmp::{commands::Target as _, QmpError};
use crate::runstate::{MigrationStatus, RunState};
use anyhow::{Context, Result};
use migration::source::{DeviceState, Msg, Route, Source};
use migration::status::{Params, Progress};
use migration::transport::{connect, Conn, Links};
use migration::uri::Uri;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

/// The live VM as QMP commands see it.
pub(super) struct Session<'a> {
    pub(super) cfg: &'a mut VmConfig,
    pub(super) board: &'a Board,
    pub(super) gate: &'a RunGate,
    pub(super) status: RunState,
    /// kvm-clock at `stop`, restored at `cont` so guest time does not jump.
    pub(super) saved_clock: Option<u64>,
    /// Set by commands that end this board (quit, system_reset).
    pub(super) ended: Option<Outcome>,
    /// Events a command caused, sent after its reply (as QEMU orders them).
    pub(super) queued: Vec<(&'static str, Option<serde_json::Value>)>,
    /// The last (or current) migration, for query-migrate.
    pub(super) migration: &'a mut MigrationInfo,
    pub(super) params: &'a mut Params,
    /// The running migration's counters.
    pub(super) progress: Option<Arc<Progress>>,
    /// Its connections (shut by migrate_cancel, or a reset).
    pub(super) links: Option<Arc<Links>>,
    /// The migration stopped a running VM to finish (resumed on failure).
    pub(super) stopped_for_migration: bool,
    pub(super) ctl: Sender<Control>,
    pub(super) gen: u64,
    /// Descriptors kept by `getfd`, by name.
    pub(super) fds: &'a mut std::collections::HashMap<String, std::os::fd::OwnedFd>,
    /// The descriptor the client of the current `getfd` passed.
    pub(super) passed: Option<std::os::fd::OwnedFd>,
    /// The qtest client's requests, waiting for the VM to run.
    pub(super) qtest: &'a mut std::collections::VecDeque<crate::qtest::Call>,
}

/// What query-migrate reports.
#[derive(Default, Clone)]
pub(super) struct MigrationInfo {
    pub(super) status: MigrationStatus,
    pub(super) total_ms: u64,
    pub(super) stats: migration::file::Stats,
    pub(super) error: Option<String>,
    /// A live migration (not a file): its start, and the final counters.
    pub(super) started: Option<std::time::Instant>,
    pub(super) live: Option<Arc<Progress>>,
}

impl Session<'_> {
    /// The TLS credentials migrations use (`tls-creds`), for `endpoint`'s
    /// side; `None` without TLS.
    pub(super) fn tls(
        &self,
        endpoint: migration::tls::Endpoint,
    ) -> Result<Option<migration::tls::Creds>, QmpError> {
        let id = &self.params.tls_creds;
        if id.is_empty() {
            return Ok(None);
        }
        let c = self
            .cfg
            .tls
            .iter()
            .find(|c| &c.id == id)
            .ok_or_else(|| QmpError::generic(format!("No TLS credentials with id '{id}'")))?;
        if c.endpoint != endpoint {
            return Err(QmpError::generic(format!(
                "TLS credentials '{id}' are for the {:?} side, not the {endpoint:?} side",
                c.endpoint
            )));
        }
        Ok(Some(c.clone()))
    }

    /// The destination's TLS: the credentials `tls-creds` names and the
    /// client `tls-authz` admits; `None` without TLS.
    pub(super) fn tls_server(&self) -> Result<Option<migration::destination::Tls>, QmpError> {
        let Some(creds) = self.tls(migration::tls::Endpoint::Server)? else {
            if !self.params.tls_authz.is_empty() {
                return Err(QmpError::generic("tls-authz needs tls-creds"));
            }
            return Ok(None);
        };
        let id = &self.params.tls_authz;
        let authz = if id.is_empty() {
            None
        } else {
            let a = self.cfg.authz.iter().find(|a| &a.id == id).ok_or_else(|| {
                QmpError::generic(format!("No authz-simple object with id '{id}'"))
            })?;
            if !creds.identifies_clients() {
                return Err(QmpError::generic(format!(
                    "tls-authz '{id}' needs the client's certificate, and TLS credentials '{}' do not ask for it (verify-peer=off)",
                    creds.id
                )));
            }
            Some(a.clone())
        };
        Ok(Some((creds, authz)))
    }

    /// Whether the guest now belongs to a live migration's destination:
    /// GO was sent (the migration may still be waiting for RUNNING).
    pub(super) fn handed_over(&self) -> bool {
        let live = self.progress.as_ref().or(self.migration.live.as_ref());
        live.is_some_and(|p| p.committed.load(Ordering::SeqCst))
    }

    /// Moves the VM to run state `to`, which QEMU's transition table must
    /// allow from where it is: anything else is a bug in vmm, logged.
    pub(super) fn set_status(&mut self, to: RunState) {
        if !self.status.can_become(to) {
            log::error!("invalid run state change {} -> {to}", self.status);
            debug_assert!(false, "invalid run state change {} -> {to}", self.status);
        }
        self.status = to;
    }

    /// Loads a saved VM into this (fresh, held) board, then runs it unless
    /// -S. Nothing of the guest runs before everything is loaded.
    pub(super) fn restore(&mut self, path: &std::path::Path) -> Result<()> {
        // The devices take their state, and run only with the vCPUs.
        self.board.pci.lock().expect("pci lock").pause();
        let parts = self.parts(0);
        let (cfg, board) = (&*self.cfg, self.board);
        let mut adoption = super::carried::Adoption::new(cfg, board);
        let mut target = crate::snapshot::Target::new(&parts, &mut adoption)?;
        let ram = crate::snapshot::guest_ram(&self.board.mem, self.cfg);
        migration::file::load(path, self.cfg.machine.name, &mut target, &ram)
            .with_context(|| format!("cannot restore the VM from {}", path.display()))?;
        let clock = target.clock.unwrap_or_default();
        drop(target);
        let adopted = std::mem::take(&mut adoption.adopted);
        super::carried::record(self.cfg, adopted);
        self.board.vm.set_clock(clock)?;
        self.board
            .pci
            .lock()
            .expect("pci lock")
            .claim()
            .map_err(|e| anyhow::anyhow!("cannot run the restored VM: {e}"))?;
        log::info!("restored from {}", path.display());
        self.queued.push((
            "MIGRATION",
            Some(json!({"status": MigrationStatus::Completed.as_str()})),
        ));
        if self.cfg.paused {
            self.set_status(RunState::Paused);
        } else {
            self.board.pci.lock().expect("pci lock").resume();
            self.gate.set_running(true);
            self.set_status(RunState::Running);
            self.queued.push(("RESUME", None));
        }
        Ok(())
    }

    /// Starts a live migration to `uri` (tcp:, unix:, fd:); it runs on its
    /// own thread while the guest runs.
    pub(super) fn migrate_live(&mut self, uri: &Uri) -> Result<(), QmpError> {
        if !matches!(self.status, RunState::Running | RunState::Paused) {
            return Err(QmpError::generic(format!(
                "cannot migrate a VM in state {}",
                self.status
            )));
        }
        let t0 = std::time::Instant::now();
        // The hash page table's reader (KVM-PPC: its HTAB fd), before
        // anything changes: refused here, the migration never started.
        let htab = self
            .board
            .htab_source()
            .map_err(|e| QmpError::generic(format!("{e}: {}", e.source)))?;
        // What can be refused at once is, here; the connections are opened
        // on the migration's thread (a slow peer or TLS handshake never
        // holds the monitor), and a failure there fails the migration.
        let tls = match self.tls(migration::tls::Endpoint::Client)? {
            None => None,
            Some(creds) => {
                let host = match (self.params.tls_hostname.as_str(), uri) {
                    ("", Uri::Tcp(a)) => a
                        .rsplit_once(':')
                        .map_or(a.as_str(), |h| h.0)
                        .trim_matches(['[', ']'])
                        .to_string(),
                    ("", _) => {
                        return Err(QmpError::generic(
                            "TLS needs tls-hostname for a migration that is not tcp:",
                        ))
                    }
                    (h, _) => h.to_string(),
                };
                Some((creds, host))
            }
        };
        // fd: is a descriptor already open (passed with getfd, which QEMU
        // consumes too, or inherited): taken now, or refused now.
        let conn = match uri {
            Uri::Fd(name) => Some(match self.fds.remove(name) {
                Some(fd) => Conn::from(fd),
                None => connect(uri).map_err(|e| QmpError::generic(e.chain()))?,
            }),
            _ => None,
        };
        let channels = if self.params.multifd && conn.is_none() {
            self.params.multifd_channels as u32
        } else {
            0
        };
        let route = Route::new(uri.clone(), conn, tls, channels);
        let progress = Arc::new(Progress::default());
        *self.migration = MigrationInfo {
            status: MigrationStatus::Setup,
            started: Some(t0),
            ..Default::default()
        };
        self.queued.push((
            "MIGRATION",
            Some(json!({"status": MigrationStatus::Setup.as_str()})),
        ));
        let ctl = Mutex::new(self.ctl.clone());
        let gen = self.gen;
        let links = Arc::new(Links::default());
        let src = Source {
            route,
            links: links.clone(),
            vm: Arc::new(crate::snapshot::Dirty {
                vm: self.board.vm.clone(),
                mem: self.board.mem.clone(),
                ram: crate::snapshot::guest_ram(&self.board.mem, self.cfg),
                htab,
            }),
            machine: self.cfg.machine.name,
            params: self.params.clone(),
            progress: progress.clone(),
            ctl: Box::new(move |m| {
                let _ = ctl
                    .lock()
                    .expect("ctl lock")
                    .send(Control::Migration(gen, m));
            }),
        };
        std::thread::Builder::new()
            .name("migration".into())
            .spawn(move || {
                sandbox::enter_or_exit(sandbox::Class::Migration);
                src.run()
            })
            .map_err(|e| QmpError::generic(format!("cannot start the migration thread: {e}")))?;
        self.progress = Some(progress);
        self.links = Some(links);
        Ok(())
    }

    /// Saves the VM to `path` (QMP `migrate file:`): the VM stops here, the
    /// save runs on its own thread while the monitor goes on answering,
    /// and its end arrives as [`Msg::Saved`].
    pub(super) fn save_to_file(&mut self, path: std::path::PathBuf) -> Result<(), QmpError> {
        let was_running = self.status == RunState::Running;
        let t0 = std::time::Instant::now();
        *self.migration = MigrationInfo {
            status: MigrationStatus::Active,
            started: Some(t0),
            ..Default::default()
        };
        self.queued.push((
            "MIGRATION",
            Some(json!({"status": MigrationStatus::Setup.as_str()})),
        ));
        self.stop()?;
        self.stopped_for_migration = was_running;
        self.set_status(RunState::FinishMigrate);
        self.queued.push((
            "MIGRATION",
            Some(json!({"status": MigrationStatus::Active.as_str()})),
        ));
        let progress = Arc::new(Progress::default());
        // The VM is stopped: the devices' state is taken here, and the
        // thread writes it after RAM.
        let sections = match crate::snapshot::device_sections(
            &self.parts(self.saved_clock.unwrap_or_default()),
        ) {
            Ok(s) => s,
            Err(e) => {
                self.migration_msg(Msg::Saved(Err(e.to_string())));
                return Ok(());
            }
        };
        let ram = crate::snapshot::guest_ram(&self.board.mem, self.cfg);
        let htab = match self.board.htab_source() {
            Ok(h) => h,
            Err(e) => {
                self.migration_msg(Msg::Saved(Err(format!("{e}: {}", e.source))));
                return Ok(());
            }
        };
        let machine = self.cfg.machine.name;
        let carried = self.carried();
        let (ctl, gen, p) = (self.ctl.clone(), self.gen, progress.clone());
        let saver = std::thread::Builder::new()
            .name("save".into())
            .spawn(move || {
                sandbox::enter_or_exit(sandbox::Class::Migration);
                let htab = htab.as_deref();
                let r = migration::file::save(
                    &path,
                    machine,
                    &ram,
                    htab,
                    &sections,
                    Some(&carried),
                    &p,
                )
                .map_err(|e| e.chain());
                if let Err(why) = &r {
                    log::error!("saving to {} failed: {why}", path.display());
                }
                let _ = ctl.send(Control::Migration(gen, Msg::Saved(r)));
            });
        if let Err(e) = saver {
            self.migration_msg(Msg::Saved(Err(format!(
                "cannot start the save thread: {e}"
            ))));
            return Ok(());
        }
        self.progress = Some(progress);
        Ok(())
    }

    /// A message from the migration thread.
    pub(super) fn migration_msg(&mut self, m: Msg) {
        match m {
            Msg::Event(name, data) => {
                if name == "MIGRATION" && data["status"] == MigrationStatus::Active.as_str() {
                    self.migration.status = MigrationStatus::Active;
                }
                self.queued.push((name, Some(data)));
            }
            Msg::HandOver(reply) => {
                // The destination claims the disk images at GO.
                self.board.pci.lock().expect("pci lock").release();
                let _ = reply.send(());
            }
            Msg::Converged(reply) => {
                let paused_at = std::time::Instant::now();
                let was_running = self.status == RunState::Running;
                let r = self.stop().map_err(|e| e.desc).and_then(|_| {
                    log::debug!(
                        "downtime: vCPUs stopped at +{} us",
                        paused_at.elapsed().as_micros()
                    );
                    self.stopped_for_migration = was_running;
                    self.set_status(RunState::FinishMigrate);
                    let clock = self.saved_clock.unwrap_or_default();
                    crate::snapshot::device_sections(&self.parts(clock)).map_err(|e| e.to_string())
                });
                let carried = self.carried();
                let _ = reply.send(r.map(|sections| DeviceState {
                    sections,
                    paused_at,
                    carried: Some(carried),
                }));
            }
            Msg::Saved(r) => {
                let p = self.progress.take();
                let total_ms = self
                    .migration
                    .started
                    .map_or(0, |t| t.elapsed().as_millis() as u64);
                match r {
                    Ok(stats) => {
                        *self.migration = MigrationInfo {
                            status: MigrationStatus::Completed,
                            total_ms,
                            stats,
                            ..Default::default()
                        };
                        self.set_status(RunState::PostMigrate);
                        self.stopped_for_migration = false;
                    }
                    Err(why) => {
                        let cancelled = p.is_some_and(|p| p.cancel.load(Ordering::SeqCst));
                        *self.migration = MigrationInfo {
                            status: if cancelled {
                                MigrationStatus::Cancelled
                            } else {
                                MigrationStatus::Failed
                            },
                            total_ms,
                            error: (!cancelled).then_some(why),
                            ..Default::default()
                        };
                        self.set_status(RunState::Paused);
                    }
                }
                self.queued.push((
                    "MIGRATION",
                    Some(json!({"status": self.migration.status.as_str()})),
                ));
                // A failed save loses nothing: a running guest runs on.
                if std::mem::take(&mut self.stopped_for_migration) {
                    if let Err(e) = self.cont(false) {
                        log::error!("cannot resume after the failed save: {}", e.desc);
                    }
                }
            }
            Msg::Done(r) => {
                let p = self.progress.take();
                self.links = None;
                let total_ms = self
                    .migration
                    .started
                    .map_or(0, |t| t.elapsed().as_millis() as u64);
                self.migration.total_ms = total_ms;
                self.migration.live = p.clone();
                match r {
                    Ok(()) => {
                        self.migration.status = MigrationStatus::Completed;
                        self.set_status(RunState::PostMigrate);
                        self.stopped_for_migration = false;
                        self.queued.push((
                            "MIGRATION",
                            Some(json!({"status": MigrationStatus::Completed.as_str()})),
                        ));
                    }
                    Err(why) => {
                        let cancelled = p.as_ref().is_some_and(|p| p.cancel.load(Ordering::SeqCst));
                        self.migration.status = if cancelled {
                            MigrationStatus::Cancelled
                        } else {
                            MigrationStatus::Failed
                        };
                        self.migration.error = (!cancelled).then_some(why);
                        if self.status == RunState::FinishMigrate {
                            self.set_status(RunState::Paused);
                        }
                        // The source keeps the guest: nothing was lost.
                        if std::mem::take(&mut self.stopped_for_migration) {
                            if let Err(e) = self.cont(false) {
                                log::error!("cannot resume after the failed migration: {}", e.desc);
                            }
                        }
                        self.queued.push((
                            "MIGRATION",
                            Some(json!({"status": self.migration.status.as_str()})),
                        ));
                    }
                }
            }
        }
    }

    /// What this VM's stream carries of its guest's configuration
    /// (`snapshot::carried`).
    fn carried(&self) -> serde_json::Value {
        crate::snapshot::carried(
            self.cfg,
            &self.board.cpuid,
            self.board.tsc_khz,
            self.board.vm.x86_64().map_or(&[], |v| v.msrs()),
        )
    }

    pub(super) fn parts(&self, clock: u64) -> crate::snapshot::Parts<'_> {
        crate::snapshot::Parts {
            vm: &*self.board.vm,
            vcpus: &self.board.vcpu_objs,
            board: self.board.platform.migratable(),
            spapr: self.cfg.machine.arch == machine::Arch::Ppc64,
            hpt: self.board.platform.hpt().map(|h| &**h),
            pci: &self.board.pci,
            clock,
        }
    }
}
