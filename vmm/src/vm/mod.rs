//! The VM: the q35-style board on the hypervisor and its lifecycle
//! (power-off, reset, debug exit, fatal errors), run by the main loop
//! here, which serves the board's outcomes, QMP requests and migrations.
//!
//! * `board`: one instance of the board (RAM, buses, devices, firmware
//!   tables, kernel, vCPUs); a reset builds a new one.
//! * `boot`: kernel and initrd loading. `virtio`: the virtio devices.
//! * `vcpu`: vCPU threads and the run gate. `console`: stdio.
//! * `session`: the live VM as QMP sees it, and the source side of a
//!   live migration; `target`: the QMP command table's view of it;
//!   `incoming`: the destination side.

mod board;
mod boot;
mod carried;
mod console;
mod incoming;
mod qtest;
mod session;
pub(crate) mod spapr;
pub(crate) mod spapr_cpus;
mod target;
mod vcpu;
pub(crate) mod virtio;

use crate::config::VmConfig;
use crate::qmp;
use crate::runstate::{MigrationStatus, RunState};
use anyhow::{anyhow, bail, Context, Result};
use board::build;
use devices::VmEvent;
use incoming::{incoming_memory, listen_incoming};
use serde_json::json;
use session::{MigrationInfo, Session};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use vcpu::{kick_handler, RunGate};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// Guest RAM, with a dirty bitmap of the writes devices do.
type GuestMemoryMmap = devices::virtio::Memory;

/// How a VM's run ended.
#[derive(Debug)]
pub(super) enum Outcome {
    Device(VmEvent),
    Fatal(String),
    /// QMP `quit`.
    Quit,
    /// QMP `system_reset`.
    HostReset,
}

/// What the main loop waits for.
pub(super) enum Control {
    /// An outcome of board number N (stale ones, from a board a reset
    /// replaced, are dropped).
    Vm(u64, Outcome),
    Qmp(qmp::Request),
    /// From the migration thread of board N.
    Migration(u64, migration::source::Msg),
    /// An incoming migration connected (or the listener failed).
    Incoming(Result<migration::destination::Incoming, String>),
    /// The incoming stream's loader finished (wakes the main loop at once:
    /// the guest is paused on both sides until it answers).
    Loaded,
    /// A request of the qtest client (`-accel qtest`).
    Qtest(crate::qtest::Call),
}

/// Sends [`Control::Loaded`] when dropped: however the loader ends.
pub(super) struct Wake(Sender<Control>);

impl Drop for Wake {
    fn drop(&mut self) {
        let _ = self.0.send(Control::Loaded);
    }
}

/// `-machine dumpdtb=FILE`: writes the device tree a guest of `cfg` gets
/// (pseries; q35 guests read ACPI tables instead), as QEMU does.
pub fn dump_dtb(path: &std::path::Path, cfg: &VmConfig) -> Result<()> {
    if cfg.machine.arch != machine::Arch::Ppc64 {
        bail!(
            "dumpdtb: {} has no device tree (its guests read ACPI tables)",
            cfg.machine.name
        );
    }
    let dtb = spapr::device_tree(cfg)?;
    std::fs::write(path, dtb).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("vmm: dtb dumped to {}", path.display());
    Ok(())
}

/// Runs the VM until it ends; returns the process exit status.
pub fn run(cfg: &VmConfig) -> Result<i32> {
    // The VM's own copy: a migration's carried configuration changes it
    // (vm/carried.rs), for every later board of this process.
    let mut cfg = cfg.clone();
    let cfg = &mut cfg;
    // Before anything is opened, and before any thread exists.
    if let Some(user) = &cfg.runas {
        sandbox::run_as(user)?;
    }
    register_signal_handler(SIGRTMIN(), kick_handler)
        .map_err(|e| anyhow!("cannot install the vCPU kick signal handler: {e}"))?;
    // From here every thread runs under a seccomp filter: the main loop's,
    // inherited by every thread it starts, each narrowing it to its class.
    sandbox::set_mode(cfg.sandbox);
    sandbox::enter(sandbox::Class::Main)?;
    let gate = Arc::new(RunGate {
        running: Mutex::new(!cfg.paused && cfg.incoming.is_none()),
        open: AtomicBool::new(!cfg.paused && cfg.incoming.is_none()),
        cv: Condvar::new(),
        parked: AtomicUsize::new(0),
        throttle_pct: Default::default(),
        on_run: Mutex::new(None),
        on_run_pending: AtomicBool::new(false),
    });
    // The one place the backend is chosen.
    let hypervisor: Box<dyn crate::hypervisor::Hypervisor> = match &cfg.accel {
        #[cfg(target_arch = "x86_64")]
        crate::config::Accel::Kvm => Box::new(crate::kvm::KvmHypervisor),
        #[cfg(target_arch = "powerpc64")]
        crate::config::Accel::Kvm => Box::new(crate::kvm_ppc::KvmPpcHypervisor),
        #[cfg(not(any(target_arch = "x86_64", target_arch = "powerpc64")))]
        crate::config::Accel::Kvm => bail!(
            "vmm has no KVM backend for this host's architecture: boards run under -accel qtest"
        ),
        crate::config::Accel::Qtest(_) => Box::new(crate::qtest::QtestHypervisor),
    };
    let events = qmp::Events::default();
    let (ctl_tx, ctl_rx) = channel::<Control>();
    let (req_tx, req_rx) = std::sync::mpsc::sync_channel::<qmp::Request>(qmp::MAX_WAITING_REQUESTS);
    // Listening before the monitor answers: a client that sees QMP up can
    // start the source's migrate.
    if let Some(crate::config::Incoming::Listen(uri)) = &cfg.incoming {
        listen_incoming(uri, ctl_tx.clone(), None)?;
    }
    qmp::start(&cfg.qmp, req_tx, events.clone())?;
    if let crate::config::Accel::Qtest(addr) = &cfg.accel {
        let ctl = Mutex::new(ctl_tx.clone());
        crate::qtest::start(addr, move |c| {
            ctl.lock()
                .expect("qtest lock")
                .send(Control::Qtest(c))
                .is_ok()
        })?;
    }
    // The qtest client's requests wait here while the VM does not run.
    let mut qtest_waiting = std::collections::VecDeque::new();
    {
        let ctl_tx = ctl_tx.clone();
        std::thread::Builder::new()
            .name("qmp-forward".into())
            .spawn(move || {
                sandbox::enter_or_exit(sandbox::Class::Qmp);
                for r in req_rx {
                    if ctl_tx.send(Control::Qmp(r)).is_err() {
                        return;
                    }
                }
            })
            .context("cannot start the QMP forwarder")?;
    }
    let name = cfg.name.clone().unwrap_or_else(|| "vm".into());
    let mut status = match (&cfg.incoming, cfg.paused) {
        (Some(_), _) => RunState::InMigrate,
        (None, true) => RunState::Prelaunch,
        (None, false) => RunState::Running,
    };
    let mut migration = MigrationInfo::default();
    let mut params = migration::status::Params::default();
    let mut named_fds = std::collections::HashMap::new();
    if cfg.paused {
        log::info!("starting paused (-S)");
    }
    let mut gen = 0u64;
    // qtest's virtual clock goes on across resets (QEMU's does), as does
    // what the board keeps (the pseries NVRAM).
    let mut virtual_clock = None;
    let mut kept = None;
    let restore_from = cfg.incoming.clone();
    let no_reboot = cfg.no_reboot;
    loop {
        gen += 1;
        let board = build(&*hypervisor, cfg, ctl_tx.clone(), gate.clone(), gen)?;
        if let Some(ns) = virtual_clock {
            board.vm.set_clock(ns)?;
        }
        board.restore_kept(kept.take());
        log::info!(
            "{name}: {} with {} vCPU(s) and {} MiB started",
            cfg.machine.name,
            board.vcpu_objs.len(),
            cfg.memory >> 20
        );
        if gen == 1 && cfg.incoming.is_some() {
            incoming_memory().set(Arc::new(crate::snapshot::guest_ram(&board.mem, cfg)));
        }
        let mut session = Session {
            cfg,
            board: &board,
            gate: &gate,
            status,
            saved_clock: None,
            ended: None,
            queued: vec![],
            migration: &mut migration,
            params: &mut params,
            progress: None,
            links: None,
            stopped_for_migration: false,
            ctl: ctl_tx.clone(),
            gen,
            fds: &mut named_fds,
            passed: None,
            qtest: &mut qtest_waiting,
        };
        if let (1, Some(crate::config::Incoming::File(path))) = (gen, restore_from.as_ref()) {
            session.restore(path)?;
            for (name, data) in session.queued.drain(..) {
                events.emit(name, data);
            }
        }
        let end = loop {
            let handed_over = session.handed_over();
            qtest::serve(
                &board,
                qtest::Endian::of(session.cfg.machine.arch),
                session.status,
                handed_over,
                session.qtest,
            );
            // Auto-converge: kick the vCPUs every 10 ms so they sleep their
            // share (they rarely exit on their own).
            let throttle = session
                .progress
                .as_ref()
                .map_or(0, |p| p.throttle_pct.load(Ordering::Relaxed));
            gate.throttle_pct.store(throttle, Ordering::Relaxed);
            let msg = if throttle > 0 {
                match ctl_rx.recv_timeout(Duration::from_millis(10)) {
                    Ok(m) => m,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        board.kick();
                        continue;
                    }
                    Err(_) => bail!("the control channel closed"),
                }
            } else {
                ctl_rx
                    .recv()
                    .map_err(|_| anyhow!("the control channel closed"))?
            };
            match msg {
                Control::Qtest(call) => session.qtest.push_back(call),
                Control::Migration(g, m) if g == gen => {
                    session.migration_msg(m);
                    for (name, data) in session.queued.drain(..) {
                        events.emit(name, data);
                    }
                    if let Some(e) = session.ended.take() {
                        break e;
                    }
                }
                Control::Migration(..) | Control::Loaded => {}
                Control::Incoming(conn) => {
                    session.receive(conn, &ctl_rx);
                    for (name, data) in session.queued.drain(..) {
                        events.emit(name, data);
                    }
                    if let Some(e) = session.ended.take() {
                        break e;
                    }
                }
                Control::Qmp(req) => {
                    if req.command == "getfd" {
                        session.passed = req.fds.lock().expect("fds lock").pop();
                    }
                    let r = qmp::commands::dispatch(&mut session, &req.command, &req.args);
                    req.reply(r);
                    for (name, data) in session.queued.drain(..) {
                        events.emit(name, data);
                    }
                    if let Some(e) = session.ended.take() {
                        break e;
                    }
                }
                Control::Vm(g, o) if g == gen => break o,
                Control::Vm(g, o) => log::debug!("dropping {o:?} from replaced board {g}"),
            }
        };
        status = session.status;
        // A migration of this board cannot go on (reset, power-off, quit):
        // it fails, and its thread ends on the closed connection.
        // One that sent GO is complete: the guest is the destination's.
        let handed_over = session.handed_over();
        if let Some(p) = session.progress.take() {
            let outcome = if handed_over {
                MigrationStatus::Completed
            } else {
                p.cancel.store(true, Ordering::SeqCst);
                if let Some(l) = session.links.take() {
                    l.shutdown();
                }
                session.migration.error =
                    Some("the VM was reset or stopped during the migration".into());
                MigrationStatus::Failed
            };
            session.migration.status = outcome;
            session.migration.live = Some(p);
            events.emit("MIGRATION", Some(json!({"status": outcome.as_str()})));
        }
        // The next board must not inherit `finish-migrate`: that state
        // waits for a migration that has just ended, and refuses `cont`.
        // A guest stopped only for the migration runs on, as after any
        // failed migration; one already paused stays paused.
        if status == RunState::FinishMigrate {
            status = if handed_over {
                RunState::PostMigrate
            } else if session.stopped_for_migration {
                gate.set_running(true);
                events.emit("RESUME", None);
                RunState::Running
            } else {
                RunState::Paused
            };
        }
        if board.vm.qtest().is_some() {
            virtual_clock = board.vm.clock().ok();
        }
        kept = board.kept();
        board.shutdown();
        match end {
            Outcome::Device(VmEvent::PowerOff) => {
                log::info!("{name}: guest powered off");
                events.emit(
                    "SHUTDOWN",
                    Some(json!({"guest": true, "reason": "guest-shutdown"})),
                );
                events.flush();
                return Ok(0);
            }
            Outcome::Device(VmEvent::Exit(code)) => return Ok(code),
            // QEMU's default panic action: GUEST_PANICKED, then off.
            Outcome::Device(VmEvent::Panicked) => {
                log::error!("{name}: the guest panicked; powering off (QEMU's panic action)");
                events.emit("GUEST_PANICKED", Some(json!({"action": "poweroff"})));
                events.emit(
                    "SHUTDOWN",
                    Some(json!({"guest": true, "reason": "guest-panic"})),
                );
                events.flush();
                return Ok(0);
            }
            Outcome::Quit => {
                events.emit(
                    "SHUTDOWN",
                    Some(json!({"guest": false, "reason": "host-qmp-quit"})),
                );
                events.flush();
                return Ok(0);
            }
            Outcome::Device(VmEvent::Reset) if no_reboot => {
                log::info!("{name}: guest reset, exiting (-no-reboot)");
                events.emit(
                    "SHUTDOWN",
                    Some(json!({"guest": true, "reason": "guest-reset"})),
                );
                events.flush();
                return Ok(0);
            }
            Outcome::Device(VmEvent::Reset) => {
                log::info!("{name}: guest reset");
                events.emit(
                    "RESET",
                    Some(json!({"guest": true, "reason": "guest-reset"})),
                );
            }
            Outcome::HostReset => {
                log::info!("{name}: reset by QMP system_reset");
                events.emit(
                    "RESET",
                    Some(json!({"guest": false, "reason": "host-qmp-system-reset"})),
                );
            }
            Outcome::Fatal(why) => {
                events.flush();
                bail!("{name} stopped: {why}")
            }
        }
    }
}
