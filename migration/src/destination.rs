//! The destination's engine: accept the source's connections, load the
//! stream into the VM (RAM straight into guest memory, every section
//! through [`LoadTarget`]), confirm, and run only after GO.

use crate::error::{Error, Result};
use crate::multifd::{self, SessionId, CHANNEL_MAGIC, CHANNEL_MAGIC_V1, SESSION_MAGIC};
use crate::protocol::Line;
use crate::ram::{Ram, RamSlot, RamWriter};
use crate::return_path::LineReader;
use crate::stream::{Reader, Record, MAGIC};
use crate::transport::{Conn, Listener};
use crate::vmstate::{Description, LoadError, State};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The VM a stream loads into: it names the sections it has and takes
/// each one's state.
pub trait LoadTarget {
    /// The description of section `idstr`, instance `instance`, if this VM
    /// has that section.
    fn description(&self, idstr: &str, instance: u32) -> Option<&'static Description>;
    /// Takes over one section's state.
    fn load(
        &mut self,
        idstr: &str,
        instance: u32,
        state: &State,
    ) -> std::result::Result<(), LoadError>;
    /// A `spapr/htab` section (the sPAPR hash page table). A VM without
    /// such a table refuses it.
    fn htab(&mut self, pass: crate::htab::Pass) -> std::result::Result<(), LoadError> {
        let _ = pass;
        Err(LoadError::new(
            crate::htab::IDSTR,
            "the stream has a hash page table, this machine has none",
        ))
    }
    /// The stream ended, with its trailing description if it had one:
    /// fails if it lacked something this VM needs.
    fn finish(&mut self, vmdesc: Option<&serde_json::Value>) -> std::result::Result<(), LoadError>;
}

/// Loads a stream (a file, or a migration connection: RAM may come in
/// several passes) into `target`, whose RAM is `ram`.
///
/// `on_sync` runs at each empty `ram` PART: a live migration's sync point,
/// which the destination acknowledges.
pub fn load_stream<R: Read>(
    from: R,
    machine: &str,
    target: &mut dyn LoadTarget,
    ram: &Ram,
    on_sync: &mut dyn FnMut(),
) -> Result<()> {
    let r = Reader::new(std::io::BufReader::with_capacity(256 << 10, from), machine)?;
    load_records(r, target, ram, on_sync)
}

/// The records after the header, to EOF (see [`load_stream`]).
fn load_records<R: Read>(
    mut r: Reader<R>,
    target: &mut dyn LoadTarget,
    ram: &Ram,
    on_sync: &mut dyn FnMut(),
) -> Result<()> {
    let t0 = Instant::now();
    let mut ram_started = false;
    let mut sink = RamWriter::new(ram);
    loop {
        let record = r.next_record(&|id, i| target.description(id, i), &mut sink)?;
        match record {
            Record::Ram { pages, last } => {
                log::trace!(
                    "load: ram pages={pages} last={last} at wall {} us",
                    crate::protocol::wall_us()
                );
                if let Some(e) = sink.error.take() {
                    return Err(Error::Vm(e));
                }
                // The first is the START record (the block list), not a
                // sync point.
                if pages == 0 && !last && std::mem::replace(&mut ram_started, true) {
                    on_sync();
                }
            }
            Record::Htab { pass, last } => {
                log::trace!("load: spapr/htab last={last}");
                target.htab(pass)?;
            }
            Record::Eof { vmdesc } => {
                log::trace!("load: EOF at +{} us", t0.elapsed().as_micros());
                return Ok(target.finish(vmdesc.as_ref())?);
            }
            Record::Section {
                idstr,
                instance,
                state,
                ..
            } => {
                log::trace!(
                    "load: section {idstr} {instance} at +{} us",
                    t0.elapsed().as_micros()
                );
                target.load(&idstr, instance, &state)?;
            }
        }
    }
}

/// A source's connections, accepted: the main stream and the multifd
/// channels bound to it.
pub struct Incoming {
    main: Conn,
    /// The first bytes of the main stream's savevm header (read to tell it
    /// from channels).
    head: [u8; 8],
    /// The multifd channels bound to it, in index order: their receivers
    /// start once the stream's header and machine type are accepted.
    channels: Vec<Channel>,
    /// Where the receivers write.
    ram: RamSlot,
    /// The receivers, each with its connection (to end it) and a thread
    /// that ends with the pages it wrote, or why not.
    receivers: Vec<(Conn, JoinHandle<Result<u64>>)>,
}

/// Why a load failed, and whether the VM had taken anything from the
/// stream by then (if not, the destination can wait for another source).
#[derive(Debug)]
pub struct LoadFailed {
    pub error: Error,
    pub vm_touched: bool,
}

/// How long a new connection has to say what it is, and a main stream's
/// channels to join it.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The most channels a migration has (`multifd-channels` is 1..=255).
const MAX_CHANNELS: u32 = 255;
/// The most connections waiting to be bound: past it the oldest go.
const MAX_PENDING: usize = 1024;
const MAX_WAITING_MAINS: usize = 16;

/// A main stream, its header read.
struct Main {
    conn: Conn,
    head: [u8; 8],
    /// Its session and how many channels it announced; `None` from a
    /// release up to 0.2.0, which announces nothing.
    session: Option<(SessionId, u32)>,
    since: Instant,
    peer: String,
}

/// A multifd channel, its header read, not yet bound to a main stream.
struct Channel {
    conn: Conn,
    index: u32,
    count: u32,
    /// `None`: a channel from a release up to 0.2.0.
    session: Option<SessionId>,
    since: Instant,
    peer: String,
}

/// The destination's TLS: its credentials, and the client `tls-authz`
/// admits (if it is set).
pub type Tls = (crate::tls::Creds, Option<crate::tls::Authz>);

/// What a new connection turned out to be.
enum Hello {
    Main(Main),
    Channel(Channel),
    /// A source that asked whether channels are taken, answered.
    Probe(String),
    /// Anything else: a port scanner, a health check, a stranger.
    Other(String),
}

/// Reads a connection's first bytes, within [`HELLO_TIMEOUT`] (after the
/// TLS handshake, when the destination takes TLS only).
fn hello(c: Conn, peer: String, tls: Option<&Tls>) -> Hello {
    let wrapped = match tls {
        Some((creds, authz)) => creds.accept(c, authz.as_ref()),
        None => Ok(c),
    };
    match wrapped {
        Ok(c) => {
            let got = c
                .set_read_timeout(Some(HELLO_TIMEOUT))
                .and_then(|()| hello_plain(c, &peer));
            got.unwrap_or_else(|e| Hello::Other(format!("{peer} sent no stream header: {e}")))
        }
        Err(e) => Hello::Other(format!("{peer}: {}", e.chain())),
    }
}

fn hello_plain(mut c: Conn, peer: &str) -> std::io::Result<Hello> {
    let mut head = [0u8; 8];
    c.read_exact(&mut head)?;
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let since = Instant::now();
    let peer = peer.to_string();
    let hello = match &head {
        m if m == CHANNEL_MAGIC || m == CHANNEL_MAGIC_V1 => {
            let mut h = [0u8; 24];
            let len = if m == CHANNEL_MAGIC { 24 } else { 8 };
            c.read_exact(&mut h[..len])?;
            let session =
                (m == CHANNEL_MAGIC).then(|| SessionId(h[8..24].try_into().expect("16 bytes")));
            let (index, count) = (be32(&h[0..4]), be32(&h[4..8]));
            if session.is_none() && (index, count) == (multifd::PROBE_INDEX, 0) {
                multifd::answer_probe(c, MAX_CHANNELS)?;
                return Ok(Hello::Probe(format!(
                    "{peer} asked whether multifd channels are taken: up to {MAX_CHANNELS}"
                )));
            }
            if !(1..=MAX_CHANNELS).contains(&count) || index >= count {
                return Ok(Hello::Other(format!(
                    "{peer} opened multifd channel {index} of {count}: out of range"
                )));
            }
            Hello::Channel(Channel {
                index,
                count,
                session,
                conn: c,
                since,
                peer,
            })
        }
        m if m == SESSION_MAGIC => {
            let mut h = [0u8; 28];
            c.read_exact(&mut h)?;
            let id = SessionId(h[..16].try_into().expect("16 bytes"));
            let n = be32(&h[16..20]);
            if n > MAX_CHANNELS {
                return Ok(Hello::Other(format!(
                    "{peer} announced {n} multifd channels, more than {MAX_CHANNELS}"
                )));
            }
            let head: [u8; 8] = h[20..28].try_into().expect("8 bytes");
            if head[..4] != MAGIC.to_be_bytes() {
                return Ok(Hello::Other(format!(
                    "{peer} announced a session but sent no stream header (it went on {head:02x?})"
                )));
            }
            Hello::Main(Main {
                conn: c,
                head,
                session: Some((id, n)),
                since,
                peer,
            })
        }
        m if m[..4] == MAGIC.to_be_bytes() => Hello::Main(Main {
            conn: c,
            head,
            session: None,
            since,
            peer,
        }),
        _ => {
            return Ok(Hello::Other(format!(
                "{peer} is not a migration source (it began {head:02x?})"
            )))
        }
    };
    clear_timeout(&hello)?;
    Ok(hello)
}

/// Reads block again once a connection has said what it is.
fn clear_timeout(h: &Hello) -> std::io::Result<()> {
    match h {
        Hello::Main(m) => m.conn.set_read_timeout(None),
        Hello::Channel(c) => c.conn.set_read_timeout(None),
        Hello::Probe(_) | Hello::Other(_) => Ok(()),
    }
}

/// The channels of `main` among `pending`, in index order, once all have
/// arrived (taken out of `pending`); `None` while some are missing.
///
/// A stream with a session takes exactly the channels that carry its id,
/// one per index below the count it announced. A stream from a release up
/// to 0.2.0 takes the 0.2.0 channels, which must form one whole set (each
/// saying the same count, every index once); it waits while they do not.
fn bind(main: &Main, pending: &mut Vec<Channel>) -> Option<Vec<Channel>> {
    let taken = match main.session {
        Some((id, n)) => whole_set(pending, Some(id), n, &|_| true)?,
        // 0.2.0 sent no count on its main stream: its channels say it
        // (the largest whole set, if a stranger's channels are about). A
        // 0.2.0 source opened them first, from its own host; this build
        // without multifd opens none, and a stranger's from elsewhere never
        // join it.
        None => {
            let own = |c: &Channel| {
                c.session.is_none() && c.since <= main.since && host(&c.peer) == host(&main.peer)
            };
            let mut counts: Vec<u32> = pending.iter().filter(|c| own(c)).map(|c| c.count).collect();
            counts.sort_unstable();
            counts.dedup();
            match counts
                .iter()
                .rev()
                .find_map(|&n| whole_set(pending, None, n, &own))
            {
                Some(t) => t,
                None if counts.is_empty() => vec![],
                None => return None,
            }
        }
    };
    let mut chans: Vec<Channel> = taken
        .into_iter()
        .rev()
        .map(|i| pending.swap_remove(i))
        .collect();
    chans.sort_by_key(|c| c.index);
    Some(chans)
}

/// The host part of a peer's address (`unix` peers are all one).
fn host(peer: &str) -> &str {
    peer.rsplit_once(':').map_or(peer, |h| h.0)
}

/// Where in `pending` channels 0..`count` of `session` (and `eligible`) are (one each,
/// ascending positions), if all of them are there.
fn whole_set(
    pending: &[Channel],
    session: Option<SessionId>,
    count: u32,
    eligible: &dyn Fn(&Channel) -> bool,
) -> Option<Vec<usize>> {
    let mut slots: Vec<Option<usize>> = vec![None; count.min(MAX_CHANNELS) as usize];
    for (i, c) in pending.iter().enumerate() {
        if c.session == session && c.count == count && c.index < count && eligible(c) {
            slots[c.index as usize].get_or_insert(i);
        }
    }
    let mut taken = slots.into_iter().collect::<Option<Vec<usize>>>()?;
    taken.sort_unstable();
    Some(taken)
}

/// Which of `pending` (oldest first) are closed now. A channel waits
/// while its session's channels keep arriving (a source opens them one
/// after another, each with its handshake): 10 s after the last from its
/// session and host, they were nobody's. Beyond [`MAX_PENDING`] the
/// oldest go. One pass over the channels, however many a stranger opens.
fn stale(pending: &[Channel]) -> Vec<bool> {
    let mut latest: std::collections::HashMap<(Option<SessionId>, &str), Instant> =
        std::collections::HashMap::new();
    for c in pending {
        let t = latest.entry((c.session, host(&c.peer))).or_insert(c.since);
        *t = (*t).max(c.since);
    }
    pending
        .iter()
        .enumerate()
        .map(|(i, c)| {
            latest[&(c.session, host(&c.peer))].elapsed() > HELLO_TIMEOUT
                || pending.len() - i > MAX_PENDING
        })
        .collect()
}

/// Serves `l` until `done`: every source's main stream arrives in
/// `deliver` with the multifd channels bound to it ([`bind`]), whose
/// receivers write into the RAM `ram` holds once it is there. A connection
/// that does not start like a migration (a port probe, a health check, a
/// stranger saying nothing) is logged and ignored; each says what it is on
/// its own thread, so a silent one holds up nobody. A channel that no main
/// stream takes within [`HELLO_TIMEOUT`] is closed unused, and so is a
/// main stream whose channels do not all come.
pub fn serve(
    l: Listener,
    ram: RamSlot,
    done: Arc<AtomicBool>,
    tls: Option<Tls>,
    mut deliver: impl FnMut(Incoming),
) -> Result<()> {
    let tls = tls.map(Arc::new);
    l.set_nonblocking()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut pending: Vec<Channel> = vec![];
    let mut mains: Vec<Main> = vec![];
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Connections are taken as they come and each says what it is on
        // its own thread; this loop wakes for each answer (no polling
        // interval between a source's connect and its stream's start).
        let acceptor = scope.spawn(|| accept_all(&l, &done, &stop, tls, tx));
        // However this loop ends (a panic in `deliver` included), the
        // acceptor stops too, so the scope's join does not wait forever.
        let stopping = StopOnDrop(&stop);
        while !done.load(Ordering::SeqCst) && !acceptor.is_finished() {
            let first = rx.recv_timeout(WAKE).ok();
            for h in first.into_iter().chain(rx.try_iter()) {
                match h {
                    Hello::Channel(c) => pending.push(c),
                    Hello::Main(m) => {
                        if mains.len() >= MAX_WAITING_MAINS {
                            let old = mains.remove(0);
                            log::warn!(
                                "incoming migration: closing a stream from {}: too many wait for their channels",
                                old.peer
                            );
                        }
                        mains.push(m)
                    }
                    Hello::Probe(what) => log::info!("incoming migration: {what}"),
                    Hello::Other(why) => {
                        log::warn!("incoming migration: ignoring a connection: {why}")
                    }
                }
            }
            let mut i = 0;
            while i < mains.len() {
                if let Some(chans) = bind(&mains[i], &mut pending) {
                    let m = mains.remove(i);
                    deliver(Incoming::new(m, chans, &ram));
                } else if mains[i].since.elapsed() > HELLO_TIMEOUT {
                    let m = mains.remove(i);
                    let why = format!(
                        "not all of the {} multifd channels the stream announced arrived within {} s",
                        m.session.map_or(0, |s| s.1),
                        HELLO_TIMEOUT.as_secs()
                    );
                    log::warn!("incoming migration: refusing {}: {why}", m.peer);
                    let refused = Incoming::new(m, vec![], &ram);
                    std::thread::spawn(move || refused.refuse(&why));
                } else {
                    i += 1;
                }
            }
            let stale = stale(&pending);
            let mut stale = stale.into_iter();
            pending.retain(|c| {
                let keep = !stale.next().unwrap_or(false);
                if !keep {
                    log::warn!(
                        "incoming migration: closing a multifd channel from {} not part of any migration",
                        c.peer
                    );
                }
                keep
            });
        }
        // The acceptor sees the stop within one wake interval; an accept
        // that failed ends the serving with its error.
        drop(stopping);
        acceptor.join().unwrap_or_else(|_| {
            Err(Error::Vm(
                "the incoming connection acceptor panicked".into(),
            ))
        })
    })?;
    for c in pending {
        log::warn!(
            "incoming migration: closing a multifd channel from {} not part of the migration",
            c.peer
        );
        c.conn.shutdown();
    }
    l.unlink();
    Ok(())
}

/// How often the serving loops look at `done` while nothing happens.
const WAKE: Duration = Duration::from_millis(50);

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Accepts every connection to `l` until `done` or `stop`, each read on
/// its own thread ([`hello`]), what it is sent to `tx`.
fn accept_all(
    l: &Listener,
    done: &AtomicBool,
    stop: &AtomicBool,
    tls: Option<Arc<Tls>>,
    tx: std::sync::mpsc::Sender<Hello>,
) -> Result<()> {
    while !done.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
        if !l.wait_readable(WAKE) {
            continue;
        }
        let Some((c, peer)) = l.try_accept()? else {
            // Readable but nothing taken: out of descriptors (the
            // connection waits in the backlog) or it went away. Not a
            // spin while descriptors are short.
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let (tx, tls) = (tx.clone(), tls.clone());
        std::thread::Builder::new()
            .name("migration-hello".into())
            .spawn(move || {
                let _ = tx.send(hello(c, peer, tls.as_deref()));
            })
            .map_err(Error::io("cannot start a connection's reader"))?;
    }
    Ok(())
}

impl Incoming {
    /// A main stream with the channels bound to it.
    fn new(m: Main, channels: Vec<Channel>, ram: &RamSlot) -> Incoming {
        Incoming {
            main: m.conn,
            head: m.head,
            channels,
            ram: ram.clone(),
            receivers: vec![],
        }
    }

    /// Starts the channels' receivers: from here they write guest RAM.
    fn start_receivers(&mut self) -> Result<()> {
        for c in self.channels.drain(..) {
            let conn = c.conn.try_clone().map_err(Error::io("a multifd channel"))?;
            let ram = self.ram.clone();
            let rx = std::thread::Builder::new()
                .name(format!("multifd-recv{}", c.index))
                .spawn(move || multifd::receive(c.conn, c.index, &ram))
                .map_err(Error::io("cannot start a multifd receiver"))?;
            self.receivers.push((conn, rx));
        }
        Ok(())
    }

    /// Loads the stream into `target` (RAM into `ram`), answering each
    /// sync point, until EOF and every multifd channel's END.
    ///
    /// No read times out: the main stream is silent while RAM travels on
    /// the channels, and a paced source sends nothing for a while. A dead
    /// peer is TCP's to notice (keepalive, user timeout: `transport`), a
    /// unix peer's end closes the socket.
    pub fn load(
        &mut self,
        machine: &str,
        target: &mut dyn LoadTarget,
        ram: &Ram,
    ) -> std::result::Result<(), LoadFailed> {
        let untouched = |error| LoadFailed {
            error,
            vm_touched: false,
        };
        let io = || Error::io("the migration connection");
        let mut sync = self.main.try_clone().map_err(io()).map_err(untouched)?;
        let conn = self.main.try_clone().map_err(io()).map_err(untouched)?;
        // The header and the configuration (the machine type) first: a
        // stream refused there has changed nothing here.
        let reader = Reader::new(
            std::io::BufReader::with_capacity(
                256 << 10,
                std::io::Cursor::new(self.head).chain(conn),
            ),
            machine,
        )
        .map_err(|e| untouched(e.into()))?;
        let touched = |error| LoadFailed {
            error,
            vm_touched: true,
        };
        // Accepted: the channels' pages may land now.
        self.start_receivers().map_err(touched)?;
        load_records(reader, target, ram, &mut || {
            let _ = sync.write_all(&Line::Sync.encode());
        })
        .map_err(touched)?;
        for (_, ch) in self.receivers.drain(..) {
            let pages = ch
                .join()
                .map_err(|_| Error::Vm("a multifd receiver panicked".into()))
                .and_then(|r| r)
                .map_err(touched)?;
            log::debug!("multifd channel done: {pages} pages");
        }
        Ok(())
    }

    /// Ends the multifd channels that came with this stream.
    fn end_channels(&mut self) {
        for c in self.channels.drain(..) {
            c.conn.shutdown();
        }
        for (c, _) in self.receivers.drain(..) {
            c.shutdown();
        }
    }

    /// Tells the source why the stream was refused, then keeps reading
    /// for a moment (so the source sees the reason, not a reset), and
    /// closes its connections.
    pub fn refuse(mut self, why: &str) {
        // The reason first: the source may see its channels close before
        // it reads the main connection.
        let _ = self.main.write_all(&Line::Err(why.to_string()).encode());
        self.end_channels();
        let conn = &mut self.main;
        let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut sink = [0u8; 65536];
        while Instant::now() < deadline {
            match conn.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
    }

    /// Says LOADED and waits for GO: after it, the guest is this side's.
    pub fn confirm(&mut self) -> Result<()> {
        let what = "the source did not confirm";
        self.main
            .write_all(&Line::Loaded.encode())
            .map_err(Error::io(what))?;
        log::debug!(
            "incoming: LOADED sent (wall {} us)",
            crate::protocol::wall_us()
        );
        let c = self.main.try_clone().map_err(Error::io(what))?;
        match LineReader::new(c).next(what)? {
            Line::Go => Ok(()),
            l => Err(Error::Protocol(format!(
                "the source sent '{l}' instead of GO"
            ))),
        }
    }

    /// What tells the source the guest runs here (RUNNING): call it just
    /// before the first vCPU runs, which ends the downtime it reports.
    pub fn running_notice(&self) -> Result<impl FnOnce() + Send + 'static> {
        let mut c = self
            .main
            .try_clone()
            .map_err(Error::io("the migration connection"))?;
        Ok(move || {
            let _ = c.write_all(&Line::Running.encode());
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn channel(session: Option<SessionId>, index: u32, count: u32, peer: &str) -> Channel {
        Channel {
            conn: Conn::Unix(UnixStream::pair().unwrap().0),
            index,
            count,
            session,
            since: Instant::now(),
            peer: peer.into(),
        }
    }

    fn main(session: Option<(SessionId, u32)>, peer: &str) -> Main {
        Main {
            conn: Conn::Unix(UnixStream::pair().unwrap().0),
            head: [0; 8],
            session,
            since: Instant::now(),
            peer: peer.into(),
        }
    }

    fn peers(chans: &[Channel]) -> Vec<&str> {
        chans.iter().map(|c| c.peer.as_str()).collect()
    }

    /// A listener on a free loopback port, and its address.
    fn listener() -> (Listener, std::net::SocketAddr) {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = probe.local_addr().unwrap();
        drop(probe);
        (
            Listener::bind(&crate::uri::Uri::Tcp(at.to_string())).unwrap(),
            at,
        )
    }

    /// Serving delivers a main stream that connects and ends soon after
    /// `done`, its acceptor with it. (How soon a stream is delivered is
    /// the migration benchmark's to measure: setup ~24 ms before the
    /// acceptor, ~10 ms with it; docs/performance.md.)
    #[test]
    fn serving_delivers_a_stream_and_ends_on_done() {
        let (l, at) = listener();
        let done = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let server = {
            let done = done.clone();
            std::thread::spawn(move || {
                serve(l, RamSlot::default(), done, None, move |i: Incoming| {
                    let _ = tx.send(i.head);
                })
            })
        };
        let mut c = std::net::TcpStream::connect(at).unwrap();
        c.write_all(&MAGIC.to_be_bytes()).unwrap();
        c.write_all(&[0, 0, 0, 3]).unwrap();
        let head = rx.recv_timeout(Duration::from_secs(5)).expect("delivered");
        assert_eq!(head[..4], MAGIC.to_be_bytes());
        done.store(true, Ordering::SeqCst);
        let t = Instant::now();
        server.join().unwrap().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "ended {:?} after done",
            t.elapsed()
        );
    }

    /// A `deliver` that panics ends serving with that panic, not a
    /// serving thread waiting forever for its acceptor.
    #[test]
    fn a_panic_while_serving_stops_the_acceptor() {
        let (l, at) = listener();
        let done = Arc::new(AtomicBool::new(false));
        let server = std::thread::spawn(move || {
            serve(l, RamSlot::default(), done, None, |_: Incoming| {
                panic!("deliver failed")
            })
        });
        let mut c = std::net::TcpStream::connect(at).unwrap();
        c.write_all(&MAGIC.to_be_bytes()).unwrap();
        c.write_all(&[0, 0, 0, 3]).unwrap();
        let t = Instant::now();
        while !server.is_finished() {
            assert!(t.elapsed() < Duration::from_secs(5), "serving hangs");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(server.join().is_err(), "the panic came through");
    }

    #[test]
    fn a_stream_takes_only_its_own_channels_and_all_of_them() {
        let (ours, theirs) = (SessionId([1; 16]), SessionId([2; 16]));
        let m = main(Some((ours, 2)), "source");
        let mut pending = vec![
            channel(None, 0, 1, "0.2.0-style stranger"),
            channel(Some(theirs), 0, 2, "another session"),
            channel(Some(ours), 1, 2, "ours 1"),
            channel(Some(ours), 1, 2, "ours 1 again"),
        ];
        assert!(bind(&m, &mut pending).is_none(), "channel 0 is missing");
        assert_eq!(pending.len(), 4);
        pending.push(channel(Some(ours), 0, 2, "ours 0"));
        let got = bind(&m, &mut pending).expect("both channels are there");
        assert_eq!(peers(&got), ["ours 0", "ours 1"]);
        let mut left = peers(&pending);
        left.sort_unstable();
        assert_eq!(
            left,
            ["0.2.0-style stranger", "another session", "ours 1 again"]
        );
        // A count other than the announced one is not ours either.
        let mut pending = vec![channel(Some(ours), 0, 1, "says 1 of 1")];
        assert!(bind(&m, &mut pending).is_none());
    }

    #[test]
    fn a_0_2_0_stream_takes_a_whole_set_of_0_2_0_channels_from_its_host() {
        let mut pending = vec![channel(None, 1, 2, "10.0.0.1:5002")];
        pending.extend([
            channel(None, 0, 1, "10.0.0.9:7000"),
            channel(Some(SessionId([3; 16])), 0, 2, "10.0.0.1:5003"),
        ]);
        let m = main(None, "10.0.0.1:5000");
        assert!(bind(&m, &mut pending).is_none(), "channel 0 is missing");
        pending.insert(0, channel(None, 0, 2, "10.0.0.1:5001"));
        let m = main(None, "10.0.0.1:5000");
        let got = bind(&m, &mut pending).expect("the set of two is whole");
        assert_eq!(peers(&got), ["10.0.0.1:5001", "10.0.0.1:5002"]);
        assert_eq!(peers(&pending).len(), 2);
        // A stream without channels (this build, multifd off) takes no
        // stranger's: not one from another host, nor one opened after it.
        let m = main(None, "10.0.0.1:5000");
        pending.push(channel(None, 0, 1, "10.0.0.1:5009"));
        assert_eq!(bind(&m, &mut pending).map(|c| c.len()), Some(0));
        assert_eq!(pending.len(), 3);
    }

    #[test]
    fn a_channel_waits_while_its_sessions_channels_keep_arriving() {
        let ours = Some(SessionId([1; 16]));
        let old = Instant::now() - HELLO_TIMEOUT - Duration::from_secs(1);
        let aged = |mut c: Channel| {
            c.since = old;
            c
        };
        let pending = vec![
            aged(channel(ours, 0, 3, "10.0.0.1:5001")),
            aged(channel(None, 0, 2, "10.0.0.2:6001")),
            aged(channel(ours, 1, 3, "10.0.0.9:5002")),
            channel(ours, 2, 3, "10.0.0.1:5003"),
        ];
        // Channel 0 waits for its session's newer channel from its host;
        // the others have nothing newer from theirs.
        assert_eq!(stale(&pending), [false, true, true, false]);
        // Past the cap, the oldest go first.
        let many: Vec<Channel> = (0..MAX_PENDING as u32 + 2)
            .map(|i| channel(None, i, 1, &format!("10.0.1.{}:1", i % 250)))
            .collect();
        let s = stale(&many);
        assert_eq!(s.iter().filter(|&&x| x).count(), 2);
        assert!(s[0] && s[1] && !s[2]);
    }
}
