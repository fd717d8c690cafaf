//! The pseries vCPUs as the platform sees them: stopped or running, and
//! the LPCR bits the hypervisor keeps for the guest. A pseries guest
//! starts on vCPU 0 alone; it starts the others with RTAS `start-cpu`
//! (`query-cpu-stopped-state` tells it which are stopped, `stop-self`
//! takes one offline again), and it asks with `H_SET_MODE` for
//! little-endian interrupts (LPCR[ILE]) and relocated interrupt vectors
//! (LPCR[AIL]) on every vCPU. The rules are QEMU 7.2's
//! (`hw/ppc/spapr_rtas.c`, `hw/ppc/spapr_hcall.c`).
//!
//! Under `-accel qtest` this is all there is of the vCPUs; on KVM-PPC
//! each vCPU's thread asks [`SpaprCpus::before_entry`] before it enters
//! the guest, waits while its vCPU is stopped, and loads a start-cpu's
//! entry and the LPCR bits into its vCPU itself (the kernel's vCPU
//! registers are reached from its own thread). Each vCPU's state travels
//! as section `spapr-cpu`, instance the vCPU's index.

use devices::rtas::{HW_ERROR, PARAM_ERROR};
use migration::vmstate::{Description, LoadError, Migratable, State, Vmstate};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// LPCR[ILE]: interrupts run little-endian (`PPC_BIT(38)`).
pub const LPCR_ILE: u64 = 1 << 25;
/// LPCR[AIL]: where interrupts are taken with relocation on (2 bits).
pub const LPCR_AIL_SHIFT: u32 = 23;
pub const LPCR_AIL: u64 = 3 << LPCR_AIL_SHIFT;

migration::vmstate! {
    /// One vCPU's platform state: stopped (1) or running (0), the LPCR
    /// bits the platform set in it (ILE, AIL), and a start-cpu its thread
    /// had not loaded yet when the VM paused (1, with its entry).
    pub static VMSTATE = "spapr-cpu", version 1, minimum 1;
    pub struct CpuState {
        halted: u8,
        lpcr: u64,
        start_pending: u8,
        start_nip: u64,
        start_r3: u64,
    }
}

/// Where a vCPU that `start-cpu` started enters the guest: MSR SF|ME,
/// the program counter and r3 the caller gave (r1, r4, r5 zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    pub nip: u64,
    pub r3: u64,
}

/// What a vCPU's thread is to do before it enters the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Stay out: the vCPU is stopped; `now` the first time since it ran
    /// (its thread marks it offline).
    Stopped { now: bool },
    /// Enter, first loading what changed: a start-cpu's entry, and the
    /// LPCR bits (within [`LPCR_ILE`] | [`LPCR_AIL`]) if they changed.
    Run {
        start: Option<Start>,
        lpcr: Option<u64>,
        /// Mark it online (it came running with a migration).
        online: bool,
    },
}

#[derive(Clone, Debug)]
struct Cpu {
    /// Its interrupt server number (`spapr_vcpu_id`): how RTAS names it.
    server: u32,
    halted: bool,
    lpcr: u64,
    /// A start-cpu its thread has not loaded yet.
    start: Option<Start>,
    /// LPCR bits its thread has not loaded yet.
    lpcr_changed: bool,
    /// Stopped by `stop-self` (or came stopped with a migration), not
    /// yet seen by its thread.
    stopped_now: bool,
    /// Came running with a migration, not yet seen by its thread.
    online_now: bool,
}

/// The board's vCPUs (vCPU N is the Nth).
pub struct SpaprCpus {
    cpus: Mutex<Vec<Cpu>>,
    /// Wakes a stopped vCPU's thread when it is started, or when it must
    /// go back to its run gate ([`SpaprCpus::wake`]).
    started: Condvar,
    /// Counts [`SpaprCpus::wake`]s (under `cpus`'s lock).
    wakes: std::sync::atomic::AtomicU64,
}

impl SpaprCpus {
    /// vCPU 0 running, the others stopped, as a pseries machine resets
    /// (QEMU's `spapr_cpu_reset` halts every CPU; the boot CPU is started
    /// at the kernel's entry).
    pub fn new(servers: &[u32]) -> SpaprCpus {
        let cpus = servers
            .iter()
            .enumerate()
            .map(|(i, &server)| Cpu {
                server,
                halted: i != 0,
                lpcr: 0,
                start: None,
                lpcr_changed: false,
                stopped_now: false,
                online_now: false,
            })
            .collect();
        SpaprCpus {
            cpus: Mutex::new(cpus),
            started: Condvar::new(),
            wakes: Default::default(),
        }
    }

    /// Sends every waiting stopped vCPU's thread back to its run gate at
    /// once (a pause, a shutdown: they must not wait out their interval).
    pub fn wake(&self) {
        let _cpus = self.lock();
        self.wakes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.started.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Cpu>> {
        self.cpus.lock().expect("spapr cpus lock")
    }

    /// The index of the vCPU with server number `id`.
    pub fn index_of(&self, id: u32) -> Option<usize> {
        self.lock().iter().position(|c| c.server == id)
    }

    /// `query-cpu-stopped-state` for the vCPU with server number `id`:
    /// 0 if it is stopped, 2 if it runs; `None` if there is no such vCPU.
    pub fn query(&self, id: u32) -> Option<u32> {
        let cpus = self.lock();
        let c = cpus.iter().find(|c| c.server == id)?;
        Some(if c.halted { 0 } else { 2 })
    }

    /// `start-cpu` from vCPU `caller`: vCPU `id` enters at `nip` with
    /// `r3`, with the caller's LPCR[ILE] and [AIL] (QEMU 7.2). RTAS's
    /// parameter error for an unknown vCPU, its hardware error for one
    /// that is not stopped.
    pub fn start(&self, caller: usize, id: u32, nip: u64, r3: u64) -> Result<(), i32> {
        let mut cpus = self.lock();
        let lpcr = cpus.get(caller).map_or(0, |c| c.lpcr);
        let c = cpus
            .iter_mut()
            .find(|c| c.server == id)
            .ok_or(PARAM_ERROR)?;
        if !c.halted {
            return Err(HW_ERROR);
        }
        c.halted = false;
        c.stopped_now = false;
        c.start = Some(Start { nip, r3 });
        c.lpcr_changed |= c.lpcr != lpcr;
        c.lpcr = lpcr;
        drop(cpus);
        self.started.notify_all();
        Ok(())
    }

    /// `stop-self` from vCPU `caller`: it stops until started again.
    pub fn stop_self(&self, caller: usize) {
        if let Some(c) = self.lock().get_mut(caller) {
            c.halted = true;
            c.start = None;
            c.stopped_now = true;
        }
    }

    /// Sets the LPCR bits under `mask` to `bits` in every vCPU (QEMU's
    /// `spapr_set_all_lpcrs`).
    pub fn set_all_lpcrs(&self, bits: u64, mask: u64) {
        for c in self.lock().iter_mut() {
            let lpcr = (c.lpcr & !mask) | (bits & mask);
            c.lpcr_changed |= lpcr != c.lpcr;
            c.lpcr = lpcr;
        }
    }

    /// The LPCR bits the platform set in vCPU `i`.
    #[cfg(test)]
    fn lpcr(&self, i: usize) -> Option<u64> {
        self.lock().get(i).map(|c| c.lpcr)
    }

    /// For vCPU `i`'s thread before it enters the guest: while the vCPU
    /// is stopped waits up to `wait` for a start (the thread must come
    /// back to its run gate in between), then what to load into it.
    pub fn before_entry(&self, i: usize, wait: Duration) -> Entry {
        let mut cpus = self.lock();
        if cpus.get(i).is_some_and(|c| c.halted) {
            let seen = self.wakes.load(std::sync::atomic::Ordering::SeqCst);
            cpus = self
                .started
                .wait_timeout_while(cpus, wait, |cpus| {
                    cpus[i].halted && self.wakes.load(std::sync::atomic::Ordering::SeqCst) == seen
                })
                .expect("spapr cpus lock")
                .0;
        }
        let Some(c) = cpus.get_mut(i) else {
            return Entry::Run {
                start: None,
                lpcr: None,
                online: false,
            };
        };
        if c.halted {
            return Entry::Stopped {
                now: std::mem::take(&mut c.stopped_now),
            };
        }
        let lpcr = std::mem::take(&mut c.lpcr_changed).then_some(c.lpcr);
        Entry::Run {
            start: c.start.take(),
            lpcr,
            online: std::mem::take(&mut c.online_now),
        }
    }

    fn state(&self, i: usize) -> State {
        let cpus = self.lock();
        let c = &cpus[i];
        let start = c.start.unwrap_or(Start { nip: 0, r3: 0 });
        CpuState {
            halted: c.halted.into(),
            lpcr: c.lpcr,
            start_pending: c.start.is_some().into(),
            start_nip: start.nip,
            start_r3: start.r3,
        }
        .to_state()
    }

    fn load(&self, i: usize, st: &State) -> Result<(), LoadError> {
        let s = CpuState::from_state(st, VMSTATE.name)?;
        if s.halted > 1 || s.start_pending > 1 || (s.halted == 1 && s.start_pending == 1) {
            return Err(LoadError::new(
                VMSTATE.name,
                format!(
                    "vCPU {i}: halted {} with start_pending {}: each 0 or 1, and a stopped vCPU has no start waiting",
                    s.halted, s.start_pending
                ),
            ));
        }
        if s.lpcr & !(LPCR_ILE | LPCR_AIL) != 0 {
            return Err(LoadError::new(
                VMSTATE.name,
                format!(
                    "vCPU {i}: LPCR bits {:#x} are not the platform's (ILE, AIL)",
                    s.lpcr
                ),
            ));
        }
        let mut cpus = self.lock();
        let c = &mut cpus[i];
        c.halted = s.halted == 1;
        c.lpcr = s.lpcr;
        // What its thread had not loaded before the pause is loaded here:
        // the bits again (loading them twice changes nothing), a start.
        c.lpcr_changed = true;
        c.start = (s.start_pending == 1).then_some(Start {
            nip: s.start_nip,
            r3: s.start_r3,
        });
        // Its thread tells the kernel whether it is online, as it came.
        c.stopped_now = c.halted;
        c.online_now = !c.halted;
        drop(cpus);
        self.started.notify_all();
        Ok(())
    }
}

/// vCPU `vcpu`'s platform state as its own section.
pub struct CpuSection {
    pub cpus: Arc<SpaprCpus>,
    pub vcpu: usize,
}

impl Migratable for CpuSection {
    fn description(&self) -> &'static Description {
        &VMSTATE
    }

    fn instance(&self) -> u32 {
        self.vcpu as u32
    }

    fn state(&self) -> State {
        self.cpus.state(self.vcpu)
    }

    fn load(&mut self, st: &State) -> Result<(), LoadError> {
        self.cpus.load(self.vcpu, st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: Option<Start>, lpcr: Option<u64>) -> Entry {
        Entry::Run {
            start,
            lpcr,
            online: false,
        }
    }

    #[test]
    fn the_boot_cpu_runs_and_the_others_wait_for_start_cpu() {
        let cpus = SpaprCpus::new(&[0, 8]);
        assert_eq!(cpus.query(0), Some(2));
        assert_eq!(cpus.query(8), Some(0));
        assert_eq!(cpus.query(1), None);
        let wait = Duration::from_millis(1);
        assert_eq!(cpus.before_entry(0, wait), run(None, None));
        assert_eq!(cpus.before_entry(1, wait), Entry::Stopped { now: false });

        assert_eq!(cpus.start(0, 1, 0x100, 7), Err(PARAM_ERROR));
        assert_eq!(cpus.start(0, 0, 0x100, 7), Err(HW_ERROR));
        assert_eq!(cpus.start(0, 8, 0x100, 7), Ok(()));
        assert_eq!(cpus.query(8), Some(2));
        assert_eq!(cpus.start(0, 8, 0x100, 7), Err(HW_ERROR));
        let entered = Start { nip: 0x100, r3: 7 };
        assert_eq!(cpus.before_entry(1, wait), run(Some(entered), None));
        assert_eq!(cpus.before_entry(1, wait), run(None, None));

        cpus.stop_self(1);
        assert_eq!(cpus.query(8), Some(0));
        assert_eq!(cpus.before_entry(1, wait), Entry::Stopped { now: true });
        assert_eq!(cpus.before_entry(1, wait), Entry::Stopped { now: false });
    }

    #[test]
    fn a_waiting_thread_is_woken_by_its_start() {
        let cpus = Arc::new(SpaprCpus::new(&[0, 1]));
        let waiter = {
            let cpus = cpus.clone();
            std::thread::spawn(move || cpus.before_entry(1, Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(20));
        let t = std::time::Instant::now();
        cpus.start(0, 1, 0x40, 0).unwrap();
        let entered = Start { nip: 0x40, r3: 0 };
        assert_eq!(waiter.join().unwrap(), run(Some(entered), None));
        assert!(t.elapsed() < Duration::from_secs(5), "woken, not timed out");

        // A pause sends a stopped one's thread back at once.
        cpus.stop_self(1);
        assert_eq!(
            cpus.before_entry(1, Duration::ZERO),
            Entry::Stopped { now: true }
        );
        let waiter = {
            let cpus = cpus.clone();
            std::thread::spawn(move || cpus.before_entry(1, Duration::from_secs(10)))
        };
        // A wake reaches a thread already waiting; one that begins to wait
        // after it waits for the next, so wake until it is back.
        let t = std::time::Instant::now();
        while !waiter.is_finished() && t.elapsed() < Duration::from_secs(5) {
            cpus.wake();
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(t.elapsed() < Duration::from_secs(5), "woken, not timed out");
        assert_eq!(waiter.join().unwrap(), Entry::Stopped { now: false });
    }

    #[test]
    fn lpcr_bits_reach_every_cpu_and_started_ones_take_the_callers() {
        let cpus = SpaprCpus::new(&[0, 1, 2]);
        let wait = Duration::from_millis(1);
        cpus.set_all_lpcrs(LPCR_ILE, LPCR_ILE);
        cpus.set_all_lpcrs(3 << LPCR_AIL_SHIFT, LPCR_AIL);
        let both = LPCR_ILE | LPCR_AIL;
        assert_eq!(cpus.before_entry(0, wait), run(None, Some(both)));
        assert_eq!(cpus.before_entry(0, wait), run(None, None));
        // A setting that changes nothing is not loaded again.
        cpus.set_all_lpcrs(LPCR_ILE, LPCR_ILE);
        assert_eq!(cpus.before_entry(0, wait), run(None, None));
        cpus.start(0, 2, 0x10, 0).unwrap();
        assert_eq!(
            cpus.before_entry(2, wait),
            run(Some(Start { nip: 0x10, r3: 0 }), Some(both))
        );
        cpus.set_all_lpcrs(0, LPCR_ILE);
        assert_eq!(cpus.lpcr(1), Some(LPCR_AIL));
    }

    #[test]
    fn the_state_travels_and_nonsense_is_refused() {
        let a = Arc::new(SpaprCpus::new(&[0, 1]));
        a.set_all_lpcrs(LPCR_ILE, LPCR_ILE);
        a.start(0, 1, 0x10, 0).unwrap();
        let b = Arc::new(SpaprCpus::new(&[0, 1]));
        for vcpu in 0..2 {
            let from = CpuSection {
                cpus: a.clone(),
                vcpu,
            };
            let mut to = CpuSection {
                cpus: b.clone(),
                vcpu,
            };
            to.load(&from.state()).unwrap();
        }
        assert_eq!(b.query(1), Some(2));
        assert_eq!(b.lpcr(1), Some(LPCR_ILE));
        // The threads mark them online as they came, once, and load what
        // they had not yet: vCPU 1's start (its thread never ran after
        // start-cpu), the LPCR bits again.
        let wait = Duration::from_millis(1);
        let came = |start| Entry::Run {
            start,
            lpcr: Some(LPCR_ILE),
            online: true,
        };
        assert_eq!(b.before_entry(0, wait), came(None));
        assert_eq!(
            b.before_entry(1, wait),
            came(Some(Start { nip: 0x10, r3: 0 }))
        );
        assert_eq!(b.before_entry(1, wait), run(None, None));

        let mut to = CpuSection { cpus: b, vcpu: 1 };
        let state = |halted, lpcr, start_pending| CpuState {
            halted,
            lpcr,
            start_pending,
            start_nip: 0,
            start_r3: 0,
        };
        let e = to.load(&state(2, 0, 0).to_state()).unwrap_err();
        assert!(e.to_string().contains("halted 2"), "{e}");
        let e = to.load(&state(1, 0, 1).to_state()).unwrap_err();
        assert!(e.to_string().contains("start_pending 1"), "{e}");
        let bad = state(0, 1, 0);
        let e = to.load(&bad.to_state()).unwrap_err();
        assert!(e.to_string().contains("0x1"), "{e}");
    }
}
