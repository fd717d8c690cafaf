//! The destination's engine: accept the source's connections, load the
//! stream into the VM (RAM straight into guest memory, every section
//! through [`LoadTarget`]), confirm, and run only after GO.

use crate::error::{Error, Result};
use crate::multifd::{self, CHANNEL_MAGIC};
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
    /// The stream ended: fails if it lacked something this VM needs.
    fn finish(&mut self) -> std::result::Result<(), LoadError>;
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
            Record::Eof { .. } => break,
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
    log::trace!("load: EOF at +{} us", t0.elapsed().as_micros());
    Ok(target.finish()?)
}

/// A source's connections, accepted: the main stream and the multifd
/// channels it opened first.
pub struct Incoming {
    main: Conn,
    /// The first bytes of the main stream (read to tell it from channels).
    head: [u8; 8],
    /// multifd receivers, each with its connection (to end it) and a
    /// thread that ends with the pages it wrote, or why not.
    channels: Vec<(Conn, JoinHandle<Result<u64>>)>,
}

/// Why a load failed, and whether the VM had taken anything from the
/// stream by then (if not, the destination can wait for another source).
#[derive(Debug)]
pub struct LoadFailed {
    pub error: Error,
    pub vm_touched: bool,
}

/// How long a new connection has to say what it is.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What a new connection turned out to be.
enum Hello {
    /// The savevm stream's header: a source's main stream.
    Main(Conn, [u8; 8]),
    /// A multifd channel.
    Channel(Conn),
    /// Anything else: a port scanner, a health check, a stranger.
    Other(String),
}

/// Reads a connection's first bytes, within [`HELLO_TIMEOUT`] (after the
/// TLS handshake, when the destination takes TLS only).
fn hello(c: Conn, peer: String, tls: Option<&crate::tls::Creds>) -> Hello {
    let wrapped = match tls {
        Some(t) => t.accept(c),
        None => Ok(c),
    };
    match wrapped {
        Ok(c) => hello_plain(c, peer),
        Err(e) => Hello::Other(format!("{peer}: {}", e.chain())),
    }
}

fn hello_plain(mut c: Conn, peer: String) -> Hello {
    let mut head = [0u8; 8];
    let got = c
        .set_read_timeout(Some(HELLO_TIMEOUT))
        .and_then(|()| c.read_exact(&mut head))
        .and_then(|()| c.set_read_timeout(None));
    if let Err(e) = got {
        return Hello::Other(format!("{peer} sent no stream header: {e}"));
    }
    if &head == CHANNEL_MAGIC {
        Hello::Channel(c)
    } else if head[..4] == MAGIC.to_be_bytes() {
        Hello::Main(c, head)
    } else {
        Hello::Other(format!(
            "{peer} is not a migration source (it began {head:02x?})"
        ))
    }
}

/// Serves `l` until `done`: every source's main stream arrives in
/// `deliver` with the multifd channels it opened before it, whose
/// receivers write into the RAM `ram` holds once it is there. A connection
/// that does not start like a migration (a port probe, a health check, a
/// stranger saying nothing) is logged and ignored; each says what it is on
/// its own thread, so a silent one holds up nobody.
pub fn serve(
    l: Listener,
    ram: RamSlot,
    done: Arc<AtomicBool>,
    tls: Option<crate::tls::Creds>,
    mut deliver: impl FnMut(Incoming),
) -> Result<()> {
    let tls = tls.map(Arc::new);
    l.set_nonblocking()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut channels = vec![];
    while !done.load(Ordering::SeqCst) {
        let mut idle = true;
        if let Some((c, peer)) = l.try_accept()? {
            idle = false;
            let (tx, tls) = (tx.clone(), tls.clone());
            std::thread::Builder::new()
                .name("migration-hello".into())
                .spawn(move || {
                    let _ = tx.send(hello(c, peer, tls.as_deref()));
                })
                .map_err(Error::io("cannot start a connection's reader"))?;
        }
        while let Ok(h) = rx.try_recv() {
            idle = false;
            match h {
                Hello::Channel(c) => {
                    let ram = ram.clone();
                    let conn = c.try_clone().map_err(Error::io("a multifd channel"))?;
                    let rx = std::thread::Builder::new()
                        .name(format!("multifd-recv{}", channels.len()))
                        .spawn(move || multifd::receive(c, &ram))
                        .map_err(Error::io("cannot start a multifd receiver"))?;
                    channels.push((conn, rx));
                }
                Hello::Main(main, head) => deliver(Incoming {
                    main,
                    head,
                    channels: std::mem::take(&mut channels),
                }),
                Hello::Other(why) => {
                    log::warn!("incoming migration: ignoring a connection: {why}")
                }
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    l.unlink();
    Ok(())
}

impl Incoming {
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
            std::io::BufReader::with_capacity(256 << 10, (&self.head[..]).chain(conn)),
            machine,
        )
        .map_err(|e| untouched(e.into()))?;
        let touched = |error| LoadFailed {
            error,
            vm_touched: true,
        };
        load_records(reader, target, ram, &mut || {
            let _ = sync.write_all(&Line::Sync.encode());
        })
        .map_err(touched)?;
        for (_, ch) in self.channels.drain(..) {
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
        for (c, _) in self.channels.drain(..) {
            c.shutdown();
        }
    }

    /// Tells the source why the stream was refused, then keeps reading
    /// for a moment (so the source sees the reason, not a reset), and
    /// closes its connections.
    pub fn refuse(mut self, why: &str) {
        self.end_channels();
        let conn = &mut self.main;
        let _ = conn.write_all(&Line::Err(why.to_string()).encode());
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
