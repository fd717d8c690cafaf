//! The destination's engine: accept the source's connections, load the
//! stream into the VM (RAM straight into guest memory, every section
//! through [`LoadTarget`]), confirm, and run only after GO.

use crate::error::{Error, Result};
use crate::multifd::{self, CHANNEL_MAGIC};
use crate::protocol::Line;
use crate::ram::{Ram, RamWriter};
use crate::return_path::LineReader;
use crate::stream::{Reader, Record};
use crate::transport::{Conn, Listener};
use crate::vmstate::{Description, LoadError, State};
use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};
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
    let t0 = Instant::now();
    let mut ram_started = false;
    let mut r = Reader::new(std::io::BufReader::with_capacity(256 << 10, from), machine)?;
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

/// An accepted incoming migration.
pub struct Incoming {
    main: Conn,
    /// The first bytes of the main stream (read to tell it from channels).
    head: [u8; 8],
    /// multifd receivers: each ends with the pages it wrote, or why not.
    channels: Vec<JoinHandle<Result<u64>>>,
}

/// Accepts a migration on `l`: any multifd channels (the source connects
/// them first), then the main stream. Channel receivers start at once and
/// write into the RAM `ram` holds once it is there.
pub fn accept(l: Listener, ram: Arc<OnceLock<Arc<Ram>>>) -> Result<Incoming> {
    let mut channels = vec![];
    loop {
        let mut c = l.accept_one()?;
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(Error::io("the source sent nothing"))?;
        let mut head = [0u8; 8];
        c.read_exact(&mut head)
            .map_err(Error::io("the source sent nothing"))?;
        if &head != CHANNEL_MAGIC {
            l.unlink();
            return Ok(Incoming {
                main: c,
                head,
                channels,
            });
        }
        let ram = ram.clone();
        channels.push(
            std::thread::Builder::new()
                .name(format!("multifd-recv{}", channels.len()))
                .spawn(move || multifd::receive(c, &ram))
                .map_err(Error::io("cannot start a multifd receiver"))?,
        );
    }
}

impl Incoming {
    /// Loads the stream into `target` (RAM into `ram`), answering each
    /// sync point, until EOF and every multifd channel's END.
    pub fn load(&mut self, machine: &str, target: &mut dyn LoadTarget, ram: &Ram) -> Result<()> {
        let io = || Error::io("the migration connection");
        // A source that goes silent is given up on.
        self.main
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io())?;
        let mut sync = self.main.try_clone().map_err(io())?;
        let stream = (&self.head[..]).chain(self.main.try_clone().map_err(io())?);
        load_stream(stream, machine, target, ram, &mut || {
            let _ = sync.write_all(&Line::Sync.encode());
        })?;
        for ch in self.channels.drain(..) {
            let pages = ch
                .join()
                .map_err(|_| Error::Vm("a multifd receiver panicked".into()))??;
            log::debug!("multifd channel done: {pages} pages");
        }
        Ok(())
    }

    /// Tells the source why the stream was refused, then keeps reading
    /// for a moment (so the source sees the reason, not a reset).
    pub fn refuse(&mut self, why: &str) {
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
