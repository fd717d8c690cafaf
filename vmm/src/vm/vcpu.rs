//! vCPU threads: the run gate that holds them while the VM is paused,
//! and the loop around KVM_RUN.

use super::{Control, Outcome};
use crate::hypervisor::{Exit, ExitHandler, Vcpu};
use devices::bus::Bus;
use devices::VmEvent;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The port and MMIO buses: what vCPU exits are served by.
pub(super) struct Buses {
    pub(super) io: Bus,
    pub(super) mmio: Bus,
}

impl ExitHandler for Buses {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if !self.io.read(port as u64, data) {
            log::trace!("read from unassigned port {port:#x}");
        }
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        if !self.io.write(port as u64, data) {
            log::trace!("write to unassigned port {port:#x}");
        }
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if !self.mmio.read(addr, data) {
            log::debug!("read from unassigned MMIO {addr:#x}");
        }
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if !self.mmio.write(addr, data) {
            log::debug!("write to unassigned MMIO {addr:#x}");
        }
    }
}

/// Holds the vCPUs before KVM_RUN while the VM is paused (`-S`, QMP
/// `stop`) and counts how many are held, so `stop` knows when every vCPU
/// has really stopped.
pub(super) struct RunGate {
    pub(super) running: Mutex<bool>,
    /// `running`, readable without the lock: every vCPU exit checks it.
    pub(super) open: AtomicBool,
    pub(super) cv: Condvar,
    pub(super) parked: AtomicUsize,
    /// Auto-converge: the share of each 10 ms slice the vCPUs sleep.
    pub(super) throttle_pct: std::sync::atomic::AtomicU64,
    /// Run by the first vCPU to enter the guest after the gate opens (an
    /// incoming migration's RUNNING: the downtime ends when a vCPU really
    /// runs again; a pseries vCPU nobody has started does not count).
    pub(super) on_run: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Whether `on_run` holds something: every entry checks it.
    pub(super) on_run_pending: AtomicBool,
}

impl RunGate {
    pub(super) fn wait_running(&self, stop: &AtomicBool) {
        if self.open.load(Ordering::Acquire) {
            return;
        }
        let mut r = self.running.lock().expect("gate lock");
        if *r {
            return;
        }
        self.parked.fetch_add(1, Ordering::SeqCst);
        while !*r && !stop.load(Ordering::SeqCst) {
            r = self
                .cv
                .wait_timeout(r, Duration::from_millis(100))
                .expect("gate lock")
                .0;
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }

    /// Sets what the first vCPU to enter the guest runs.
    pub(super) fn set_on_run(&self, f: Box<dyn FnOnce() + Send>) {
        *self.on_run.lock().expect("gate lock") = Some(f);
        self.on_run_pending.store(true, Ordering::SeqCst);
    }

    /// A vCPU is about to enter the guest: on every entry, so a plain
    /// load first (a swap would write the shared line each time).
    fn entering(&self) {
        if self.on_run_pending.load(Ordering::Acquire)
            && self.on_run_pending.swap(false, Ordering::SeqCst)
        {
            let first = self.on_run.lock().expect("gate lock").take();
            if let Some(f) = first {
                f();
            }
        }
    }

    pub(super) fn set_running(&self, running: bool) {
        let mut r = self.running.lock().expect("gate lock");
        *r = running;
        self.open.store(running, Ordering::Release);
        drop(r);
        self.cv.notify_all();
    }
}

/// The host thread id of each vCPU (0 until it has started).
pub(super) type Tids = Arc<Vec<AtomicI64>>;

/// Starts a thread for each of `vcpus` (vCPU N is the Nth) running it
/// with `exits` serving its exits; returns once each is up and its host
/// thread id known (QMP shows them), with those ids.
pub(super) fn spawn_vcpus(
    vcpus: &[Arc<Mutex<Box<dyn Vcpu>>>],
    exits: Arc<dyn ExitHandler + Send>,
    gen: u64,
    stop: &Arc<AtomicBool>,
    events: &Sender<Control>,
    gate: &Arc<RunGate>,
) -> std::io::Result<(Vec<JoinHandle<()>>, Tids)> {
    let tids: Tids = Arc::new(vcpus.iter().map(|_| AtomicI64::new(0)).collect());
    let mut handles = vec![];
    for (id, vcpu) in vcpus.iter().enumerate() {
        let (vcpu, exits, stop, events, gate, tids) = (
            vcpu.clone(),
            exits.clone(),
            stop.clone(),
            events.clone(),
            gate.clone(),
            tids.clone(),
        );
        handles.push(
            std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    sandbox::enter_or_exit(sandbox::Class::Vcpu);
                    // SAFETY: gettid has no preconditions.
                    tids[id].store(unsafe { libc::gettid() } as i64, Ordering::SeqCst);
                    vcpu_loop(id as u8, gen, vcpu, &*exits, &stop, &events, &gate)
                })?,
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tids.iter().any(|t| t.load(Ordering::SeqCst) == 0) && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok((handles, tids))
}

pub(super) fn vcpu_loop(
    id: u8,
    gen: u64,
    vcpu: Arc<Mutex<Box<dyn Vcpu>>>,
    exits: &dyn ExitHandler,
    stop: &AtomicBool,
    events: &Sender<Control>,
    gate: &RunGate,
) {
    crate::fault::panic_point("vcpu");
    while !stop.load(Ordering::SeqCst) {
        // Paused (-S, QMP stop): wait here, outside KVM_RUN.
        gate.wait_running(stop);
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match exits.before_entry(id, &vcpu) {
            Ok(true) => gate.entering(),
            Ok(false) => continue,
            Err(why) => {
                stop.store(true, Ordering::SeqCst);
                let _ = events.send(Control::Vm(
                    gen,
                    Outcome::Fatal(format!("vCPU {id}: {why}")),
                ));
                return;
            }
        }
        let exit = vcpu.lock().expect("vcpu lock").run(exits);
        // Auto-converge: the main loop kicks every 10 ms; sleep our share.
        let pct = gate.throttle_pct.load(Ordering::Relaxed);
        if pct > 0 {
            std::thread::sleep(Duration::from_micros(10_000 * pct / (100 - pct.min(99))));
        }
        let describe = || vcpu.lock().expect("vcpu lock").describe();
        let outcome = match exit {
            Exit::Handled | Exit::Interrupted => continue,
            Exit::Reset => Outcome::Device(VmEvent::Reset),
            Exit::PowerOff => Outcome::Device(VmEvent::PowerOff),
            Exit::Shutdown => Outcome::Fatal(format!(
                "vCPU {id}: triple fault (shutdown); {}",
                describe()
            )),
            Exit::Fatal(why) => Outcome::Fatal(format!("vCPU {id}: {why}; {}", describe())),
        };
        stop.store(true, Ordering::SeqCst);
        let _ = events.send(Control::Vm(gen, outcome));
        return;
    }
}

pub(super) extern "C" fn kick_handler(
    _: libc::c_int,
    _: *mut libc::siginfo_t,
    _: *mut libc::c_void,
) {
}
