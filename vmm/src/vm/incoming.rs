//! The destination side of a live migration: listen, load the stream
//! while the monitor answers, confirm, wait for GO, run.

use super::session::Session;
use super::{Control, GuestMemoryMmap, Outcome, Wake};
use crate::qmp::QmpError;
use crate::runstate::{MigrationStatus, RunState};
use anyhow::{anyhow, Context, Result};
use serde_json::json;
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The guest memory (and RAM size) multifd receivers write into, set once
/// the destination's board exists.
pub(super) fn incoming_memory() -> Arc<OnceLock<(GuestMemoryMmap, u64)>> {
    static MEM: OnceLock<Arc<OnceLock<(GuestMemoryMmap, u64)>>> = OnceLock::new();
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

/// Listens for one incoming migration; the connection (or the failure)
/// arrives in the main loop as [`Control::Incoming`].
pub(super) fn listen_incoming(uri: &crate::migrate::Uri, ctl: Sender<Control>) -> Result<()> {
    let l = crate::migrate::Listener::bind(uri)?;
    log::info!("waiting for an incoming migration on {uri:?}");
    std::thread::Builder::new()
        .name("incoming".into())
        .spawn(move || {
            let _ = ctl.send(Control::Incoming(
                l.accept(incoming_memory()).map_err(|e| format!("{e:#}")),
            ));
        })
        .context("cannot start the incoming-migration thread")?;
    Ok(())
}

impl Session<'_> {
    /// An incoming migration: load the stream, confirm, wait for GO, run.
    /// Any failure ends the process (nothing of the guest ran).
    pub(super) fn receive(
        &mut self,
        incoming: Result<crate::migrate::Incoming, String>,
        ctl: &std::sync::mpsc::Receiver<Control>,
    ) {
        use crate::migrate::{read_line, refuse};
        use migration::protocol::Line;
        use std::io::{Read as _, Write as _};
        let incoming = match incoming {
            Ok(i) => i,
            Err(e) => {
                self.ended = Some(Outcome::Fatal(format!("incoming migration: {e}")));
                return;
            }
        };
        let head = incoming.head;
        let channels = incoming.channels;
        let mut conn = incoming.main;
        let t0 = std::time::Instant::now();
        // A source that goes silent is given up on.
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let mut sync = match conn.try_clone() {
            Ok(c) => c,
            Err(e) => {
                self.ended = Some(Outcome::Fatal(format!("incoming migration: {e}")));
                return;
            }
        };
        // The load runs on its own thread; meanwhile the monitor answers
        // what a management stack polls (QEMU's stays responsive too).
        let parts = self.parts(0);
        let machine = self.cfg.machine.name;
        let conn2 = conn.try_clone();
        let wake = self.ctl.clone();
        let loaded = std::thread::scope(|scope| {
            let h = scope.spawn(|| {
                let _wake = Wake(wake);
                let c = conn2?;
                let clock =
                    crate::snapshot::load_from(&parts, (&head[..]).chain(c), machine, &mut || {
                        let _ = sync.write_all(&Line::Sync.encode());
                    })?;
                // Every multifd channel delivered all its pages (END).
                for ch in channels {
                    let pages = ch
                        .join()
                        .map_err(|_| anyhow!("a multifd receiver panicked"))?
                        .map_err(|e| anyhow!(e))?;
                    log::debug!("multifd channel done: {pages} pages");
                }
                Ok::<u64, anyhow::Error>(clock)
            });
            // Until the loader says it is done (then join waits only for
            // its thread to exit).
            while !h.is_finished() {
                match ctl.recv_timeout(Duration::from_millis(100)) {
                    Ok(Control::Qmp(req)) => req.reply(busy_reply(&req.command)),
                    Ok(Control::Loaded) => break,
                    Ok(_) => log::debug!("incoming migration: a board message waits"),
                    Err(_) => {}
                }
            }
            h.join()
                .unwrap_or_else(|_| Err(anyhow!("the incoming migration thread panicked")))
        });
        log::debug!(
            "incoming: loaded (wall {} us)",
            migration::protocol::wall_us()
        );
        let clock = match loaded {
            Ok(c) => c,
            Err(e) => {
                let why = format!("{e:#}");
                refuse(&mut conn, &why);
                self.ended = Some(Outcome::Fatal(format!("incoming migration failed: {why}")));
                return;
            }
        };
        // Tests kill this side while the source sits paused waiting.
        crate::fault::delay("VMM_TEST_DELAY_LOADED_MS");
        let go = conn.try_clone().map_err(anyhow::Error::from).and_then(|c| {
            let mut w = c.try_clone()?;
            w.write_all(&Line::Loaded.encode())?;
            log::debug!(
                "incoming: LOADED sent (wall {} us)",
                migration::protocol::wall_us()
            );
            read_line(&mut std::io::BufReader::new(c))
        });
        log::debug!(
            "incoming: GO read (wall {} us)",
            migration::protocol::wall_us()
        );
        match go {
            Ok(l) if Line::parse(&l) == Ok(Line::Go) => {}
            Ok(l) => {
                self.ended = Some(Outcome::Fatal(format!(
                    "incoming migration: the source sent '{l}' instead of GO; the guest was not started"
                )));
                return;
            }
            Err(e) => {
                self.ended = Some(Outcome::Fatal(format!(
                    "incoming migration: the source did not confirm ({e:#}); the guest was not started here"
                )));
                return;
            }
        }
        if let Err(e) = self.board.vm.set_clock(clock) {
            self.ended = Some(Outcome::Fatal(format!("incoming migration: {e}")));
            return;
        }
        if self.cfg.paused {
            self.board.pci.lock().expect("pci lock").pause();
            self.set_status(RunState::Paused);
            let _ = conn.write_all(&Line::Running.encode());
        } else {
            // The first vCPU out of the gate tells the source, just before
            // its KVM_RUN: that ends the downtime the source reports.
            match conn.try_clone() {
                Ok(mut c) => {
                    *self.gate.on_run.lock().expect("gate lock") = Some(Box::new(move || {
                        let _ = c.write_all(&Line::Running.encode());
                        log::debug!(
                            "incoming: vCPU running (wall {} us)",
                            migration::protocol::wall_us()
                        );
                    }))
                }
                Err(_) => {
                    let _ = conn.write_all(&Line::Running.encode());
                }
            }
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
        // Self-announce, as QEMU: now and twice more, 50 and 150 ms later.
        let pci = self.board.pci.clone();
        let _ = std::thread::Builder::new()
            .name("announce".into())
            .spawn(move || {
                for wait in [0, 50, 100] {
                    std::thread::sleep(Duration::from_millis(wait));
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
