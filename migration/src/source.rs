//! The source's engine: precopy passes over RAM while the guest runs, the
//! stop-and-copy of the rest with every device's state, then the commit
//! handshake. The VM's side is [`SourceVm`] (RAM and its dirty log) and
//! the [`Msg`]s the engine sends to whoever owns the VM (stop it, hand over
//! the device sections).
//!
//! The phases, in order:
//!
//! 1. **setup**: the dirty log starts; the stream header and RAM block
//!    list go out; the first pass's set is every page ever touched.
//! 2. **iterate**: a pass sends the dirty set, then reads the next one
//!    (the log since the pass began). When what is left fits the downtime
//!    limit at the measured bandwidth, and passes stop shrinking it much,
//!    it has converged; a guest that dirties faster than the link moves is
//!    throttled with auto-converge.
//! 3. **catch-up**: the destination confirms it has placed everything sent
//!    so far (SYNC) while the guest still runs, and what was dirtied
//!    meanwhile is sent: the pause covers only the rest.
//! 4. **stop-and-copy**: the VM stops ([`Msg::Converged`]); the last dirty
//!    pages, every device's section and EOF follow.
//! 5. **commit**: only a destination that answers LOADED gets GO; RUNNING
//!    ends the downtime. Before GO every failure leaves the source's guest
//!    to resume with nothing lost.

use crate::error::{Error, Result};
use crate::htab::HtabSource;
use crate::multifd::{self, SessionId, CH_SYNC};
use crate::protocol::{wall_us, Line};
use crate::ram::{count, merge, set_bits, Ram};
use crate::return_path::{LineReader, ReturnPath};
use crate::status::{MigrationStatus, Params, Progress};
use crate::stream::{Writer, PAGE_SIZE};
use crate::tls::Creds;
use crate::transport::{connect, Conn, Links, LINK_TIMEOUT};
use crate::uri::Uri;
use crate::vmstate::{Description, State};
use serde_json::json;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Below this, the rest goes in the stop-and-copy pass at once.
const QUICK_FINISH_MS: u64 = 2;

/// One device section: id, instance, description, state.
pub type Section = (String, u32, &'static Description, State);

/// What the engine needs of the VM it migrates.
pub trait SourceVm: Send + Sync {
    /// Guest RAM.
    fn ram(&self) -> &Ram;
    /// Starts tracking every write to RAM, the vCPUs' and the devices',
    /// forgetting earlier ones.
    fn start_dirty_log(&self) -> std::result::Result<(), String>;
    fn stop_dirty_log(&self);
    /// Per region of [`SourceVm::ram`], the pages written since the last
    /// call (or the start).
    fn dirty_pages(&self) -> std::result::Result<Vec<Vec<u64>>, String>;
    /// The sPAPR hash page table, on a pseries VM that has one in
    /// userspace: it travels as QEMU's iterative `spapr/htab` section.
    fn htab(&self) -> Option<&dyn HtabSource> {
        None
    }
}

/// Messages from the migration thread to whoever owns the VM.
pub enum Msg {
    /// RAM is close enough: stop the VM and hand over every device's state
    /// (the reply), to go into the stream.
    Converged(Sender<std::result::Result<DeviceState, String>>),
    /// The destination confirmed the stream and GO follows: give up what
    /// only one side may hold (disk image locks) and reply.
    HandOver(Sender<()>),
    /// An event for QMP clients.
    Event(&'static str, serde_json::Value),
    /// The migration ended: Ok = the destination runs the guest.
    Done(std::result::Result<(), String>),
    /// A save to a file ended.
    Saved(std::result::Result<crate::file::Stats, String>),
}

/// Every device's state, taken once the VM stopped.
pub struct DeviceState {
    pub sections: Vec<Section>,
    pub paused_at: Instant,
    /// What the stream's description carries for vmm (the devices'
    /// configuration, which the destination adopts).
    pub carried: Option<serde_json::Value>,
}

/// Where a live migration goes: the connections are opened on the
/// migration's thread (a slow peer or TLS handshake never holds the
/// monitor), the multifd channels first, then the main stream.
pub struct Route {
    pub uri: Uri,
    /// The main stream's connection when the caller has it already
    /// (`fd:`); otherwise `uri` is connected.
    pub conn: Option<Conn>,
    /// TLS credentials, and the name the destination's certificate must
    /// carry.
    pub tls: Option<(Creds, String)>,
    /// How many multifd channels to ask for (0: RAM on the main stream;
    /// fewer, or none, when the destination takes fewer).
    pub channels: u32,
    /// Whether the destination closed the multifd probe unanswered (an
    /// older build, or QEMU, which then fails its incoming migration).
    probe_unanswered: bool,
}

/// A migration's open connections.
struct Open {
    conn: Conn,
    channels: Vec<Conn>,
}

impl Route {
    pub fn new(uri: Uri, conn: Option<Conn>, tls: Option<(Creds, String)>, channels: u32) -> Route {
        Route {
            uri,
            conn,
            tls,
            channels,
            probe_unanswered: false,
        }
    }

    /// Opens the connections; each is in `links` as soon as it exists.
    ///
    /// Channels are opened when the destination says it takes them (the
    /// probe: as many as asked for, or as it takes if fewer). They carry a
    /// fresh session id that the main stream announces first; without
    /// them, the main stream is exactly what releases up to 0.2.0 send and
    /// take.
    fn open(&mut self, links: &Links) -> Result<Open> {
        let opened = |c: &Conn| links.add(c);
        let tls = self.tls.as_ref();
        let id = SessionId::new()?;
        if self.channels > 0 {
            let takes = multifd::probe(&self.uri, tls, &opened);
            // A cancel shuts the probe too: its end is not an answer.
            if links.is_shut() {
                return Err(Error::Cancelled);
            }
            let takes = takes?;
            if takes.is_none_or(|n| n == 0) {
                log::info!(
                    "the destination takes no multifd channels: RAM goes on the main stream"
                );
            }
            self.probe_unanswered = takes.is_none();
            self.channels = self.channels.min(takes.unwrap_or(0));
        }
        let channels = multifd::connect_channels(&self.uri, self.channels, id, tls, &opened)?;
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => connect(&self.uri)?,
        };
        opened(&conn)?;
        if let Some((creds, host)) = tls {
            conn = creds.connect(conn, host)?;
            opened(&conn)?;
        }
        if !channels.is_empty() {
            conn.write_all(&multifd::session_preamble(id, self.channels))
                .map_err(Error::io("the migration connection"))?;
        }
        Ok(Open { conn, channels })
    }
}

/// A live migration to run on its own thread.
pub struct Source {
    pub route: Route,
    /// The connections once open, shut by whoever cancels the migration.
    pub links: Arc<Links>,
    pub vm: Arc<dyn SourceVm>,
    pub machine: &'static str,
    pub params: Params,
    pub progress: Arc<Progress>,
    pub ctl: Box<dyn Fn(Msg) + Send>,
}

impl Source {
    /// Runs the migration to its end; reports through `ctl`.
    pub fn run(mut self) {
        let r = self
            .route
            .open(&self.links)
            .and_then(|open| self.precopy(&open))
            .map_err(|e| self.hint(e));
        self.vm.stop_dirty_log();
        if let Err(e) = &r {
            log::error!("migration failed: {}", e.chain());
        }
        self.progress.throttle_pct.store(0, Ordering::SeqCst);
        (self.ctl)(Msg::Done(r.map_err(|e| e.chain())));
    }

    /// `e`, with what to do about it when the destination closed the
    /// multifd probe unanswered and then the stream: QEMU does that (it
    /// takes the probe for its stream and fails).
    fn hint(&self, e: Error) -> Error {
        let refused = |e: &Error| matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused);
        if self.route.probe_unanswered && (peer_closed(&e) || refused(&e)) {
            Error::Protocol(format!(
                "{}; the destination had closed the multifd probe unanswered: a QEMU destination does that and fails, turn the multifd capability off to migrate to it",
                e.chain()
            ))
        } else {
            e
        }
    }

    fn precopy(&self, open: &Open) -> Result<()> {
        let mut m = self.setup(open)?;
        if let Err(e) = m.iterate().and_then(|()| m.catch_up()) {
            return Err(m.explain(e, Duration::from_secs(1)));
        }
        let watchdog = Watchdog::new(self.paused_bound());
        let r = m
            .stop_and_copy(&watchdog)
            .and_then(|(rp, paused_at)| self.commit(open, &rp, paused_at, watchdog.disarm()));
        if watchdog.fired() {
            return Err(Error::Protocol(format!(
                "the destination did not take the last of the state within {} ms of the guest's pause (alive but stalled?): given up, the guest runs on here",
                self.paused_bound().as_millis()
            )));
        }
        r
    }

    /// How long the guest may stay paused before the destination has
    /// confirmed the stream: ten times the downtime limit, and at least 5 s
    /// (what is left at the pause fits the limit by construction).
    fn paused_bound(&self) -> Duration {
        Duration::from_millis((self.params.downtime_limit_ms * 10).max(5000))
    }

    /// Phase 1: the dirty log, the return path, the stream's start.
    fn setup<'a>(&'a self, open: &'a Open) -> Result<Precopy<'a>> {
        let t0 = Instant::now();
        let p = &*self.progress;
        self.vm.start_dirty_log().map_err(Error::Vm)?;
        // The return path: SYNC answers now, the handshake at the end.
        let rp = ReturnPath::start(&open.conn)?;
        let io = || Error::io("the migration connection");
        let chan_lines = open
            .channels
            .iter()
            .map(|c| c.try_clone().map(LineReader::new))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(io())?;
        let n = open.channels.len().max(1) as u64;
        let meter = |c: &Conn, max_bandwidth| {
            Ok(Meter {
                w: c.try_clone().map_err(io())?,
                progress: p,
                max_bandwidth,
                window: Instant::now(),
                window_bytes: 0,
            })
        };
        // No BufWriter: pages are gathered straight from guest memory
        // (stream::Gather), the other records are written whole.
        let mut w = Writer::new(meter(&open.conn, self.params.max_bandwidth)?, self.machine)?;
        p.channels
            .store(open.channels.len() as u64, Ordering::SeqCst);
        let chans = open
            .channels
            .iter()
            .map(|c| meter(c, self.params.max_bandwidth / n))
            .collect::<Result<Vec<_>>>()?;
        let ram = self.vm.ram();
        let id = w.ram_start(&[(ram.block, ram.size)])?;
        let htab = match self.vm.htab() {
            Some(h) => {
                h.begin();
                Some(w.htab_start(h.order())?)
            }
            None => None,
        };
        p.setup_ms
            .store(t0.elapsed().as_millis() as u64, Ordering::SeqCst);
        (self.ctl)(Msg::Event(
            "MIGRATION",
            json!({"status": MigrationStatus::Active.as_str()}),
        ));
        // Pass 1: every page anyone ever touched (the rest is zero on both
        // sides: the destination's memory is fresh).
        let dirty = ram.touched();
        log::debug!(
            "setup: dirty logging + touched-page scan took {} us",
            t0.elapsed().as_micros()
        );
        Ok(Precopy {
            src: self,
            open,
            w,
            chans,
            chan_lines,
            rp,
            id,
            htab,
            dirty,
        })
    }
}

/// A precopy under way: the stream, the channels, the return path and the
/// pages still to send.
struct Precopy<'a> {
    src: &'a Source,
    open: &'a Open,
    w: Writer<Meter<'a>>,
    chans: Vec<Meter<'a>>,
    /// Each channel's SYNC answers.
    chan_lines: Vec<LineReader>,
    rp: ReturnPath,
    /// The stream's `ram` section.
    id: u32,
    /// The stream's `spapr/htab` section, if the VM has the table.
    htab: Option<u32>,
    /// Per region, the pages to send next.
    dirty: Vec<Vec<u64>>,
}

impl Precopy<'_> {
    fn progress(&self) -> &Progress {
        &self.src.progress
    }

    /// `e`, or the destination's reason when it refused the stream: a
    /// refusing destination closes every connection, and a channel's
    /// broken pipe may come before its ERR line (waited for up to `wait`;
    /// only when `e` is a connection the peer closed).
    fn explain(&self, e: Error, wait: Duration) -> Error {
        if !peer_closed(&e) {
            return e;
        }
        match self.rp.refusal(wait) {
            Some(why) => Error::Refused(why),
            None => e,
        }
    }

    fn dirty_pages(&self) -> Result<Vec<Vec<u64>>> {
        self.src.vm.dirty_pages().map_err(Error::Vm)
    }

    /// Phase 2: passes until what is left fits the downtime limit.
    fn iterate(&mut self) -> Result<()> {
        let params = &self.src.params;
        let mut pass = 1u64;
        let mut bandwidth = 0f64; // bytes per second, measured
        let mut throttle = 0u64;
        let mut behind = 0u32;
        let mut prev_left = u64::MAX;
        loop {
            let p = &*self.src.progress;
            let pages = count(&self.dirty);
            p.remaining
                .store(pages * PAGE_SIZE as u64, Ordering::SeqCst);
            let start = Instant::now();
            let before = p.transferred.load(Ordering::SeqCst);
            self.send_dirty(false)?;
            self.w.flush()?;
            let dt = start.elapsed().as_secs_f64().max(1e-6);
            let sent = p.transferred.load(Ordering::SeqCst) - before;
            if sent > (1 << 20) {
                bandwidth = sent as f64 / dt;
            }
            p.passes.store(pass, Ordering::SeqCst);
            p.pages_per_second
                .store((pages as f64 / dt) as u64, Ordering::SeqCst);
            p.mbps_x100
                .store((bandwidth * 8.0 / 1e6 * 100.0) as u64, Ordering::SeqCst);
            (self.src.ctl)(Msg::Event("MIGRATION_PASS", json!({"pass": pass})));
            self.dirty = self.dirty_pages()?;
            let left = count(&self.dirty);
            let left_bytes = left * PAGE_SIZE as u64;
            p.remaining.store(left_bytes, Ordering::SeqCst);
            p.dirty_pages_rate
                .store((left as f64 / dt) as u64, Ordering::SeqCst);
            let bw = if bandwidth > 0.0 { bandwidth } else { 1e9 };
            let expected_ms = (left_bytes as f64 / bw * 1000.0) as u64;
            p.expected_downtime_ms.store(expected_ms, Ordering::SeqCst);
            log::info!(
                "migration pass {pass}: {pages} pages in {:.0} ms ({:.0} MB/s); {left} dirty, {expected_ms} ms to send",
                dt * 1000.0,
                bandwidth / 1e6
            );
            // Within the limit, one more pass is still worth it while the
            // passes keep shrinking the dirty set a lot: the guest then
            // pauses for less than the limit allows.
            let shrinking = left * 2 < prev_left && pass < 30;
            prev_left = left;
            if expected_ms <= params.downtime_limit_ms
                && (expected_ms <= QUICK_FINISH_MS || !shrinking)
            {
                return Ok(());
            }
            // Not converging: the guest dirties faster than we send.
            let rate = left_bytes as f64 / dt;
            if rate >= bw * 0.9 {
                behind += 1;
                *p.not_converging.lock().expect("progress lock") = Some(format!(
                    "the guest dirties {:.0} MB/s, the link moves {:.0} MB/s: {} ms of RAM left, the downtime limit is {} ms{}",
                    rate / 1e6,
                    bw / 1e6,
                    expected_ms,
                    params.downtime_limit_ms,
                    if params.auto_converge { "; throttling the vCPUs" } else { "; auto-converge is off" }
                ));
                if params.auto_converge && behind >= 2 {
                    throttle = if throttle == 0 {
                        params.throttle_initial
                    } else {
                        (throttle + params.throttle_increment).min(params.max_throttle)
                    };
                    p.throttle_pct.store(throttle, Ordering::SeqCst);
                    log::info!("auto-converge: vCPUs throttled to {throttle}%");
                }
            } else {
                behind = 0;
                *p.not_converging.lock().expect("progress lock") = None;
            }
            pass += 1;
        }
    }

    /// Phase 3: let the destination catch up with what the sockets still
    /// hold while the guest runs, then send what was dirtied meanwhile.
    fn catch_up(&mut self) -> Result<()> {
        let io = || Error::io("waiting for the destination to catch up");
        if self.chans.is_empty() {
            self.w.ram_pages(self.id, false, [])?;
            self.w.flush()?;
            let (l, _) = self.rp.next(
                Duration::from_secs(10),
                "waiting for the destination to catch up",
            )?;
            match l {
                Line::Sync => {}
                Line::Err(why) => return Err(Error::Refused(why)),
                other => {
                    return Err(Error::Protocol(format!(
                        "the destination answered {other} instead of SYNC"
                    )))
                }
            }
        } else {
            // Each channel: a SYNC record, answered when the destination
            // has written everything before it.
            for (c, conn) in self.chans.iter_mut().zip(&self.open.channels) {
                c.write_all(&CH_SYNC.to_be_bytes()).map_err(io())?;
                conn.set_read_timeout(Some(Duration::from_secs(10)))
                    .map_err(io())?;
            }
            for lines in &mut self.chan_lines {
                let l = lines.next("waiting for a multifd channel to catch up")?;
                if l != Line::Sync {
                    return Err(Error::Protocol(format!(
                        "a multifd channel answered '{l}' instead of SYNC"
                    )));
                }
            }
        }
        let more = self.dirty_pages()?;
        merge(&mut self.dirty, &more);
        self.progress()
            .remaining
            .store(count(&self.dirty) * PAGE_SIZE as u64, Ordering::SeqCst);
        self.send_dirty(false)?;
        self.w.flush()?;
        self.dirty = self.dirty_pages()?;
        Ok(())
    }

    /// Phase 4: stop the VM, send the last pages, the devices and EOF.
    /// Returns the return path and when the VM stopped.
    fn stop_and_copy(mut self, watchdog: &Watchdog) -> Result<(ReturnPath, Instant)> {
        let (tx, rx) = std::sync::mpsc::channel();
        (self.src.ctl)(Msg::Converged(tx));
        let devices = rx
            .recv()
            .map_err(|_| Error::Vm("the VM went away".into()))?
            .map_err(|e| Error::Vm(format!("cannot stop the VM: {e}")))?;
        let paused_at = devices.paused_at;
        // From here the guest is paused: a destination that stalls (alive,
        // its window shut) must not keep it paused for ever.
        let conns = std::iter::once(&self.open.conn)
            .chain(&self.open.channels)
            .map(|c| c.try_clone())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(Error::io("the migration connection"))?;
        watchdog.arm(conns)?;
        log::debug!(
            "downtime: devices taken at +{} us (wall {})",
            paused_at.elapsed().as_micros(),
            wall_us()
        );
        let last = self.dirty_pages()?;
        log::debug!(
            "downtime: dirty log read at +{} us",
            paused_at.elapsed().as_micros()
        );
        merge(&mut self.dirty, &last);
        self.progress()
            .remaining
            .store(count(&self.dirty) * PAGE_SIZE as u64, Ordering::SeqCst);
        // The guest is paused: the reason is waited for briefly.
        self.send_dirty(true)
            .map_err(|e| self.explain(e, Duration::from_millis(200)))?;
        log::debug!(
            "downtime: last {} pages sent at +{} us",
            count(&self.dirty),
            paused_at.elapsed().as_micros()
        );
        for (idstr, instance, desc, state) in &devices.sections {
            self.w.section(idstr, *instance, desc, state)?;
        }
        self.w.finish_with(devices.carried.as_ref())?;
        log::debug!(
            "downtime: stream sent at +{} us (wall {} us)",
            paused_at.elapsed().as_micros(),
            wall_us()
        );
        self.src.progress.remaining.store(0, Ordering::SeqCst);
        Ok((self.rp, paused_at))
    }
}

impl Source {
    /// Phase 5: LOADED, GO (committed), RUNNING (the downtime ends).
    fn commit(
        &self,
        open: &Open,
        rp: &ReturnPath,
        paused_at: Instant,
        disarm: impl FnOnce(),
    ) -> Result<()> {
        let answer = loop {
            let (l, _) = rp.next(
                Duration::from_secs(30),
                "the destination did not confirm the stream",
            )?;
            if l != Line::Sync {
                break l;
            }
        };
        match answer {
            Line::Loaded => {}
            Line::Err(why) => return Err(Error::Refused(why)),
            other => {
                return Err(Error::Protocol(format!(
                    "the destination answered {other} instead of LOADED"
                )))
            }
        }
        // Confirmed in time: nothing may cut the connection from here.
        disarm();
        // What only one VM may hold goes first, so the destination can
        // take it at GO.
        let (tx, rx) = std::sync::mpsc::channel();
        (self.ctl)(Msg::HandOver(tx));
        rx.recv()
            .map_err(|_| Error::Vm("the VM went away".into()))?;
        log::debug!(
            "downtime: LOADED at +{} us",
            paused_at.elapsed().as_micros()
        );
        // The downtime ends when RUNNING reaches this host: the kernel's
        // receive timestamp, not when this thread gets to read it (on a
        // busy host the destination's freshly started vCPU can delay that
        // by milliseconds).
        let paused_wall = SystemTime::now() - paused_at.elapsed();
        let mut go = open
            .conn
            .try_clone()
            .map_err(Error::io("cannot send GO to the destination"))?;
        go.write_all(&Line::Go.encode())
            .map_err(Error::io("cannot send GO to the destination"))?;
        self.progress.committed.store(true, Ordering::SeqCst);
        // Committed: from here the destination owns the guest.
        let answer = rp.next(LINK_TIMEOUT, "waiting for RUNNING");
        let mut downtime = paused_at.elapsed();
        match answer {
            Ok((Line::Running, at)) => {
                self.progress
                    .running_confirmed
                    .store(true, Ordering::SeqCst);
                if let Some(d) = at.and_then(|t| t.duration_since(paused_wall).ok()) {
                    downtime = d.min(downtime);
                }
            }
            Ok((l, _)) => log::warn!("the destination answered {l} after GO"),
            Err(e) => log::warn!(
                "no RUNNING from the destination after GO: {}; the guest is the destination's all the same",
                e.chain()
            ),
        }
        log::debug!(
            "downtime: RUNNING arrived at +{} us, read at +{} us",
            downtime.as_micros(),
            paused_at.elapsed().as_micros()
        );
        self.progress
            .downtime_ms
            .store(downtime.as_millis() as u64, Ordering::SeqCst);
        Ok(())
    }
}

impl Precopy<'_> {
    /// One pass: the pages set in `self.dirty`; with `last`, RAM ends.
    fn send_dirty(&mut self, last: bool) -> Result<()> {
        let ram = self.src.vm.ram();
        let p = &*self.src.progress;
        if !self.chans.is_empty() {
            self.rp.refused()?;
            multifd::send(ram, &mut self.chans, &self.dirty, last, p)?;
        } else {
            for (r, bits) in ram.regions().iter().zip(&self.dirty) {
                self.rp.refused()?;
                let pages = set_bits(bits, r.pages()).map(|i| {
                    p.pages_sent(1);
                    (ram.block, r.offset + (i * PAGE_SIZE) as u64, r.page(i))
                });
                let (sent, zeros) = self.w.ram_pages(self.id, false, pages)?;
                p.duplicate.fetch_add(zeros, Ordering::Relaxed);
                p.normal.fetch_add(sent - zeros, Ordering::Relaxed);
            }
        }
        if last {
            self.w.ram_pages(self.id, true, [])?;
        }
        self.send_htab(last)
    }

    /// One pass of the hash page table, after RAM's (QEMU's order).
    fn send_htab(&mut self, last: bool) -> Result<()> {
        let (Some(id), Some(h)) = (self.htab, self.src.vm.htab()) else {
            return Ok(());
        };
        let chunks = h.changes(last).map_err(Error::Vm)?;
        self.w.htab_pass(id, last, h.order().is_some(), &chunks)?;
        Ok(())
    }
}

/// Bounds how long the guest stays paused for a migration that has not
/// committed: past the bound it shuts the migration's connections, which
/// ends whatever the migration waits for (a write into a shut window, the
/// confirmation), and the source resumes the guest.
struct Watchdog {
    bound: Duration,
    /// Dropped (or taken) to disarm: the watchdog thread then ends.
    disarm: std::sync::Mutex<Option<Sender<()>>>,
    fired: Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    fn new(bound: Duration) -> Watchdog {
        Watchdog {
            bound,
            disarm: Default::default(),
            fired: Default::default(),
        }
    }

    /// Starts counting; at the bound, `conns` are shut.
    fn arm(&self, conns: Vec<Conn>) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (bound, fired) = (self.bound, self.fired.clone());
        std::thread::Builder::new()
            .name("migration-watchdog".into())
            .spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(bound) {
                    log::warn!(
                        "migration: the guest has been paused {} ms without a confirmation: giving up",
                        bound.as_millis()
                    );
                    fired.store(true, Ordering::SeqCst);
                    conns.iter().for_each(Conn::shutdown);
                }
            })
            .map_err(Error::io("cannot start the migration watchdog"))?;
        *self.disarm.lock().expect("watchdog lock") = Some(tx);
        Ok(())
    }

    /// What stops it (the confirmation arrived).
    fn disarm(&self) -> impl FnOnce() + '_ {
        move || drop(self.disarm.lock().expect("watchdog lock").take())
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.disarm()();
    }
}

/// Counts bytes on their way out, honours `max-bandwidth`, and gives up
/// when cancelled.
struct Meter<'a> {
    w: Conn,
    progress: &'a Progress,
    max_bandwidth: u64,
    window: Instant,
    window_bytes: u64,
}

impl Write for Meter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.send(|w| w.write(b))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl crate::stream::GuestWrite for Meter<'_> {
    fn write_slices(&mut self, b: &[vm_memory::VolatileSlice]) -> std::io::Result<usize> {
        self.send(|w| w.write_slices(b))
    }
}

impl Meter<'_> {
    /// One write to the connection, unless cancelled; counted.
    fn send(
        &mut self,
        write: impl FnOnce(&mut Conn) -> std::io::Result<usize>,
    ) -> std::io::Result<usize> {
        if self.progress.cancel.load(Ordering::SeqCst) {
            // Not `Interrupted`: write_all would retry that forever.
            return Err(std::io::Error::other("migration cancelled"));
        }
        let n = write(&mut self.w)?;
        self.account(n);
        Ok(n)
    }

    /// Counts `n` bytes sent; sleeps to hold `max_bandwidth`.
    fn account(&mut self, n: usize) {
        self.progress
            .transferred
            .fetch_add(n as u64, Ordering::Relaxed);
        if self.max_bandwidth > 0 {
            self.window_bytes += n as u64;
            let due = Duration::from_secs_f64(self.window_bytes as f64 / self.max_bandwidth as f64);
            let spent = self.window.elapsed();
            if due > spent {
                std::thread::sleep(due - spent);
            }
            if spent > Duration::from_secs(1) {
                self.window = Instant::now();
                self.window_bytes = 0;
            }
        }
    }
}

/// Whether `e` is a connection the peer closed (a broken pipe, a reset,
/// an early end).
fn peer_closed(e: &Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = cur {
        if let Some(io) = x.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        cur = x.source();
    }
    false
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;
    use crate::destination::{load_stream, LoadTarget};
    use crate::ram::RamRegion;
    use crate::vmstate::LoadError;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    const RAM: usize = 8 << 20;
    const MACHINE: &str = "pc-q35-test";

    /// Pages the fake guest's vCPUs rewrite after the first pass (the
    /// vCPUs' log reports them), and pages a device rewrites then (only
    /// the devices' bitmap knows).
    const REWRITTEN: [usize; 2] = [3, 700];
    const DEVICE_WRITTEN: [usize; 2] = [5, 1500];

    /// A VM side without KVM: RAM in two regions (as below and above
    /// 4 GiB), and a dirty log that reports what the fake guest and a
    /// fake device rewrite after the first pass, as a running guest would.
    struct FakeVm {
        ram: Ram,
        logs: AtomicUsize,
        /// Turn off a dirty path to see the test catch it.
        vcpu_log: bool,
        device_log: bool,
    }

    impl FakeVm {
        fn new(buf: &mut Vec<u8>) -> FakeVm {
            let half = RAM / 2;
            let p = buf.as_mut_ptr();
            // SAFETY: both halves of `buf`, which each test keeps alive
            // (and does not move) until the migration ended.
            let ram = unsafe {
                Ram::new(
                    "pc.ram",
                    RAM as u64,
                    vec![
                        RamRegion::new(0, p, half),
                        RamRegion::new(half as u64, p.add(half), half),
                    ],
                    Box::new(()),
                )
            };
            FakeVm {
                ram,
                logs: AtomicUsize::new(0),
                vcpu_log: true,
                device_log: true,
            }
        }
    }

    impl SourceVm for FakeVm {
        fn ram(&self) -> &Ram {
            &self.ram
        }
        fn start_dirty_log(&self) -> std::result::Result<(), String> {
            Ok(())
        }
        fn stop_dirty_log(&self) {}
        fn dirty_pages(&self) -> std::result::Result<Vec<Vec<u64>>, String> {
            let mut bits: Vec<Vec<u64>> = self
                .ram
                .regions()
                .iter()
                .map(|r| vec![0u64; r.pages().div_ceil(64)])
                .collect();
            if self.logs.fetch_add(1, Ordering::SeqCst) == 0 {
                let per = self.ram.regions()[0].pages();
                let mut write = |p: usize, byte: u8, logged: bool| {
                    // SAFETY: the fake guest's write; the engine only reads.
                    let page = unsafe { self.ram.page_mut((p * PAGE_SIZE) as u64) }.unwrap();
                    page[..64].fill(byte);
                    if logged {
                        bits[p / per][(p % per) / 64] |= 1 << (p % 64);
                    }
                };
                for p in REWRITTEN {
                    write(p, 0xee, self.vcpu_log);
                }
                for p in DEVICE_WRITTEN {
                    write(p, 0xdd, self.device_log);
                }
            }
            Ok(bits)
        }
    }

    /// A destination with no devices: its stream must carry none.
    struct NoDevices;

    impl LoadTarget for NoDevices {
        fn description(&self, _: &str, _: u32) -> Option<&'static Description> {
            None
        }
        fn load(&mut self, id: &str, _: u32, _: &State) -> std::result::Result<(), LoadError> {
            Err(LoadError::new(id, "unexpected"))
        }
        fn finish(&mut self, _: Option<&serde_json::Value>) -> std::result::Result<(), LoadError> {
            Ok(())
        }
    }

    /// How the fake destination behaves.
    #[derive(Clone, Copy)]
    enum Dest {
        /// Loads everything, answers SYNC, LOADED, then RUNNING after GO.
        Good,
        /// Refuses right after the header.
        Refuses,
        /// Answers this instead of LOADED.
        Answers(&'static str),
    }

    /// Migrates 8 MiB of patterned RAM over a socket pair to a destination
    /// thread behaving as `dest`; returns the source's end, the RAM the
    /// destination loaded and the source's RAM.
    fn migrate_to(
        dest: Dest,
        tweak: impl FnOnce(&mut FakeVm),
    ) -> (std::result::Result<(), String>, Option<Vec<u8>>, Vec<u8>) {
        let (a, b) = UnixStream::pair().unwrap();
        let mut buf = vec![0u8; RAM];
        for (p, page) in buf.chunks_mut(PAGE_SIZE).enumerate() {
            if p % 5 != 0 {
                page[..32].fill(p as u8 | 1);
            }
        }
        let mut vm = FakeVm::new(&mut buf);
        tweak(&mut vm);
        let vm = Arc::new(vm);
        let dst = std::thread::spawn(move || -> Option<Vec<u8>> {
            let mut answer = b.try_clone().unwrap();
            let drain = |mut c: UnixStream| {
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = std::io::copy(&mut c, &mut std::io::sink());
            };
            if let Dest::Refuses = dest {
                let mut head = [0u8; 16];
                std::io::Read::read_exact(&mut &b, &mut head).unwrap();
                answer
                    .write_all(&Line::Err("machine type received is 'pc-q35-x'".into()).encode())
                    .unwrap();
                drain(b);
                return None;
            }
            let mut mem = vec![0u8; RAM];
            let p = mem.as_mut_ptr();
            // SAFETY: `mem` outlives `ram`, dropped at the end of this block.
            let ram = unsafe {
                Ram::new(
                    "pc.ram",
                    RAM as u64,
                    vec![RamRegion::new(0, p, RAM)],
                    Box::new(()),
                )
            };
            let mut sync = answer.try_clone().unwrap();
            load_stream(
                b.try_clone().unwrap(),
                MACHINE,
                &mut NoDevices,
                &ram,
                &mut || {
                    sync.write_all(&Line::Sync.encode()).unwrap();
                },
            )
            .unwrap();
            drop(ram);
            match dest {
                Dest::Answers(l) => {
                    answer.write_all(format!("{l}\n").as_bytes()).unwrap();
                    drain(b);
                    return Some(mem);
                }
                _ => answer.write_all(&Line::Loaded.encode()).unwrap(),
            }
            let mut go = LineReader::new(Conn::Unix(b));
            assert_eq!(go.next_line().unwrap().0, "GO");
            answer.write_all(&Line::Running.encode()).unwrap();
            Some(mem)
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let source = Source {
            route: Route::new(Uri::Fd("test".into()), Some(Conn::Unix(a)), None, 0),
            links: Default::default(),
            vm: vm.clone(),
            machine: MACHINE,
            params: Params::default(),
            progress: Arc::new(Progress::default()),
            ctl: Box::new(move |m| match m {
                Msg::Converged(reply) => {
                    let _ = reply.send(Ok(DeviceState {
                        sections: vec![],
                        carried: None,
                        paused_at: Instant::now(),
                    }));
                }
                Msg::HandOver(reply) => {
                    let _ = reply.send(());
                }
                Msg::Done(r) => {
                    let _ = tx.lock().unwrap().send(r);
                }
                _ => {}
            }),
        };
        std::thread::spawn(move || source.run());
        let done = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the source ended");
        let loaded = dst.join().expect("the destination thread");
        drop(vm);
        (done, loaded, buf)
    }

    #[test]
    fn a_full_precopy_moves_every_page_and_the_rewritten_ones_again() {
        let (done, loaded, src) = migrate_to(Dest::Good, |_| {});
        done.unwrap();
        let loaded = loaded.unwrap();
        // The pages the guest rewrote after the first pass arrived as
        // rewritten: a later pass carried them.
        for p in REWRITTEN {
            assert_eq!(loaded[p * PAGE_SIZE], 0xee, "page {p} (vCPU write)");
        }
        for p in DEVICE_WRITTEN {
            assert_eq!(loaded[p * PAGE_SIZE], 0xdd, "page {p} (device write)");
        }
        assert!(
            loaded == src,
            "the destination's RAM differs from the source's"
        );
    }

    #[test]
    fn a_dirty_page_nobody_reports_is_caught() {
        // The test above can fail: with either dirty path off, the
        // rewritten pages arrive stale.
        for (vcpu, device) in [(false, true), (true, false)] {
            let (done, loaded, src) = migrate_to(Dest::Good, |vm| {
                vm.vcpu_log = vcpu;
                vm.device_log = device;
            });
            done.unwrap();
            assert!(
                loaded.unwrap() != src,
                "vcpu log {vcpu}, device log {device}"
            );
        }
    }

    #[test]
    fn a_refusing_destination_ends_the_migration_with_its_reason() {
        let (done, _, _) = migrate_to(Dest::Refuses, |_| {});
        let e = done.unwrap_err();
        assert!(e.contains("refused") && e.contains("pc-q35-x"), "{e}");
    }

    #[test]
    fn a_return_path_line_nobody_speaks_ends_the_migration_naming_it() {
        let (done, _, _) = migrate_to(Dest::Answers("HELLO"), |_| {});
        let e = done.unwrap_err();
        assert!(e.contains("'HELLO'"), "{e}");
        // A known line out of place is named too.
        let (done, _, _) = migrate_to(Dest::Answers("RUNNING"), |_| {});
        let e = done.unwrap_err();
        assert!(e.contains("RUNNING instead of LOADED"), "{e}");
    }
}
