//! The destination side of a live migration: listen, load the stream
//! while the monitor answers, confirm, wait for GO, run.

use super::session::Session;
use super::{Control, Outcome, Wake};
use crate::qmp::QmpError;
use crate::runstate::{MigrationStatus, RunState};
use anyhow::{Context, Result};
use migration::destination::{Incoming, LoadFailed};
use migration::ram::RamSlot;
use migration::uri::Uri;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The guest RAM multifd receivers write into, set once the destination's
/// board exists.
pub(super) fn incoming_memory() -> RamSlot {
    static MEM: OnceLock<RamSlot> = OnceLock::new();
    MEM.get_or_init(Default::default).clone()
}

/// What the monitor says while an incoming migration loads.
pub(super) fn busy_reply(command: &str) -> Result<serde_json::Value, QmpError> {
    match command {
        "qmp_capabilities" => Ok(json!({})),
        "query-status" => Ok(json!({"status": RunState::InMigrate.as_str(), "running": false, "singlestep": false})),
        "query-migrate" => Ok(json!({"status": MigrationStatus::Active.as_str()})),
        _ => Err(QmpError::generic(format!(
            "{command}: an incoming migration is loading; until it ends the monitor answers query-status and query-migrate"
        ))),
    }
}

/// Set once an incoming migration has loaded (or failed for good): the
/// listener then closes.
fn incoming_done() -> Arc<AtomicBool> {
    static DONE: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    DONE.get_or_init(Default::default).clone()
}

/// Listens for incoming migrations: each source's connection arrives in
/// the main loop as [`Control::Incoming`] (a broken listener as the
/// error), until one has loaded.
pub(super) fn listen_incoming(
    uri: &Uri,
    ctl: Sender<Control>,
    tls: Option<migration::destination::Tls>,
) -> Result<()> {
    let l = migration::transport::Listener::bind(uri)?;
    log::info!("waiting for an incoming migration on {uri:?}");
    std::thread::Builder::new()
        .name("incoming".into())
        .spawn(move || {
            sandbox::enter_or_exit(sandbox::Class::Migration);
            let deliver = |i| {
                let _ = ctl.send(Control::Incoming(Ok(i)));
            };
            if let Err(e) =
                migration::destination::serve(l, incoming_memory(), incoming_done(), tls, deliver)
            {
                let _ = ctl.send(Control::Incoming(Err(e.chain())));
            }
        })
        .context("cannot start the incoming-migration thread")?;
    Ok(())
}

impl Session<'_> {
    /// An incoming migration: load the stream, confirm, wait for GO, run.
    /// A stream refused before this VM took anything from it (its header,
    /// its machine type) is answered and the destination waits on for the
    /// real source; any later failure ends the process (nothing of the
    /// guest ran).
    pub(super) fn receive(
        &mut self,
        incoming: Result<Incoming, String>,
        ctl: &std::sync::mpsc::Receiver<Control>,
    ) {
        if self.status != RunState::InMigrate {
            // A second source after the first one loaded.
            if let Ok(i) = incoming {
                spawn_refusal(
                    i,
                    "this destination has already received its migration".into(),
                );
            }
            return;
        }
        let mut incoming = match incoming {
            Ok(i) => i,
            Err(e) => {
                incoming_done().store(true, Ordering::SeqCst);
                self.ended = Some(Outcome::Fatal(format!("incoming migration: {e}")));
                return;
            }
        };
        let t0 = std::time::Instant::now();
        // The devices take their state but do nothing with it before GO:
        // no request the source may still serve runs here, nor any before
        // the last pages (on other connections) have landed.
        self.board.pci.lock().expect("pci lock").pause();
        // The load runs on its own thread; meanwhile the monitor answers
        // what a management stack polls (QEMU's stays responsive too).
        let parts = self.parts(0);
        let machine = self.cfg.machine.name;
        let ram = crate::snapshot::guest_ram(&self.board.mem, self.cfg);
        let wake = self.ctl.clone();
        let (cfg, board) = (&*self.cfg, self.board);
        let mut adoption = super::carried::Adoption::new(cfg, board);
        // The qtest client's requests wait for the guest to run here.
        let mut held = vec![];
        let loaded = std::thread::scope(|scope| {
            let h = scope.spawn(|| {
                let _wake = Wake(wake);
                let mut target =
                    crate::snapshot::Target::new(&parts, &mut adoption).map_err(|e| {
                        LoadFailed {
                            error: e.into(),
                            vm_touched: false,
                        }
                    })?;
                incoming.load(machine, &mut target, &ram)?;
                Ok(target.clock.unwrap_or_default())
            });
            // Until the loader says it is done (then join waits only for
            // its thread to exit).
            while !h.is_finished() {
                match ctl.recv_timeout(Duration::from_millis(100)) {
                    Ok(Control::Qmp(req)) => req.reply(busy_reply(&req.command)),
                    Ok(Control::Loaded) => break,
                    Ok(Control::Qtest(call)) => held.push(call),
                    Ok(Control::Incoming(Ok(other))) => spawn_refusal(
                        other,
                        "this destination is already receiving a migration".into(),
                    ),
                    Ok(_) => log::debug!("incoming migration: a board message waits"),
                    Err(_) => {}
                }
            }
            h.join().unwrap_or_else(|_| {
                Err(LoadFailed {
                    error: migration::Error::Vm("the incoming migration thread panicked".into()),
                    vm_touched: true,
                })
            })
        });
        self.qtest.extend(held);
        log::debug!(
            "incoming: loaded (wall {} us)",
            migration::protocol::wall_us()
        );
        let adopted = std::mem::take(&mut adoption.adopted);
        super::carried::record(self.cfg, adopted);
        let clock = match loaded {
            Ok(c) => c,
            Err(LoadFailed {
                error,
                vm_touched: false,
            }) => {
                let why = error.chain();
                log::warn!("incoming migration refused, still waiting for a source: {why}");
                spawn_refusal(incoming, why);
                return;
            }
            Err(LoadFailed { error, .. }) => {
                incoming_done().store(true, Ordering::SeqCst);
                let why = error.chain();
                incoming.refuse(&why);
                self.ended = Some(Outcome::Fatal(format!("incoming migration failed: {why}")));
                return;
            }
        };
        incoming_done().store(true, Ordering::SeqCst);
        // The receivers are done with the RAM: it goes with its board.
        incoming_memory().clear();
        // Tests kill this side while the source sits paused waiting.
        crate::fault::delay("VMM_TEST_DELAY_LOADED_MS");
        let go = incoming.confirm();
        log::debug!(
            "incoming: GO read (wall {} us)",
            migration::protocol::wall_us()
        );
        if let Err(e) = go {
            self.ended = Some(Outcome::Fatal(format!(
                "incoming migration: {}; the guest was not started here",
                e.chain()
            )));
            return;
        }
        // The disk images are this side's now (the source let them go
        // before GO).
        if let Err(e) = self.board.pci.lock().expect("pci lock").claim() {
            self.ended = Some(Outcome::Fatal(format!(
                "incoming migration: the guest cannot run here: {e}"
            )));
            return;
        }
        // Tests hold the guest here, after GO, to see the source keep its
        // hands off it.
        crate::fault::delay("VMM_TEST_DELAY_RUNNING_MS");
        if let Err(e) = self.board.vm.set_clock(clock) {
            self.ended = Some(Outcome::Fatal(format!("incoming migration: {e}")));
            return;
        }
        let running = match incoming.running_notice() {
            Ok(r) => r,
            Err(e) => {
                self.ended = Some(Outcome::Fatal(format!("incoming migration: {}", e.chain())));
                return;
            }
        };
        if self.cfg.paused {
            // The devices stay paused until `cont`.
            self.set_status(RunState::Paused);
            running();
        } else {
            // Committed: the devices serve what is pending (and what the
            // source had not seen yet).
            self.board.pci.lock().expect("pci lock").resume();
            // The first vCPU to enter the guest tells the source, just
            // before its KVM_RUN: that ends the downtime the source reports.
            self.gate.set_on_run(Box::new(move || {
                running();
                log::debug!(
                    "incoming: vCPU running (wall {} us)",
                    migration::protocol::wall_us()
                );
            }));
            self.gate.set_running(true);
            self.set_status(RunState::Running);
        }
        log::debug!(
            "incoming: RUNNING sent after {} us",
            t0.elapsed().as_micros()
        );
        log::info!(
            "incoming migration loaded and running in {} ms",
            t0.elapsed().as_millis()
        );
        // Self-announce, as QEMU: now and twice more, 50 and 150 ms later;
        // not past its board (a reset meanwhile must free the devices and
        // their disk locks at once).
        let pci = Arc::downgrade(&self.board.pci);
        let _ = std::thread::Builder::new()
            .name("announce".into())
            .spawn(move || {
                for wait in [0, 50, 100] {
                    std::thread::sleep(Duration::from_millis(wait));
                    let Some(pci) = pci.upgrade() else { return };
                    pci.lock().expect("pci lock").announce();
                }
            });
        self.migration.status = MigrationStatus::Completed;
        self.migration.total_ms = t0.elapsed().as_millis() as u64;
        self.queued.push((
            "MIGRATION",
            Some(json!({"status": MigrationStatus::Completed.as_str()})),
        ));
        if self.status == RunState::Running {
            self.queued.push(("RESUME", None));
        }
    }
}

/// Answers a refused source with its reason off the main loop (the answer
/// lingers a moment so the source reads it rather than a reset).
fn spawn_refusal(incoming: Incoming, why: String) {
    let _ = std::thread::Builder::new()
        .name("migration-refuse".into())
        .spawn(move || incoming.refuse(&why));
}
