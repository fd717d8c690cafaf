//! multifd: RAM on extra connections beside the main stream, each page
//! always on the same channel (so a newer copy never overtakes an older
//! one), written by the destination straight into guest RAM.
//!
//! A channel starts with [`CHANNEL_MAGIC`], be32 index, be32 count and
//! the migration's [`SessionId`], which the main stream announces first
//! ([`SESSION_MAGIC`], the id, be32 count): the destination binds to a
//! main stream only the channels that carry its id, and exactly as many
//! as it announced. Then records: be64 (block offset | flags), followed by
//! the page for DATA. SYNC asks for a [`Line::Sync`] back once everything
//! before it is in; END closes the channel.
//!
//! Releases up to 0.2.0 start a channel with [`CHANNEL_MAGIC_V1`], index
//! and count only, and their main stream announces nothing; a destination
//! binds such channels only to such a stream (see `destination`).
//!
//! Whether the destination takes channels at all is asked first ([`probe`]),
//! on a connection that every destination since 0.2.0 takes harmlessly: a
//! 0.2.0 channel header with index [`PROBE_INDEX`] and count 0, a SYNC
//! record, then END. This build answers [`Line::Multifd`] with the most
//! channels it takes; 0.2.0 takes it for a channel, answers its SYNC and
//! ends it at END without a page (it counts it among the next stream's
//! channels, which is harmless: it delivered everything it had, nothing).
//! So multifd is on by default and an older destination gets one stream.

use crate::error::{Error, Result};
use crate::protocol::Line;
use crate::ram::{set_bits, Ram, RamSlot, RamWriter};
use crate::status::Progress;
use crate::stream::{is_zero_page, Gather, GuestWrite, RamSink, PAGE_SIZE};
use crate::transport::{connect, Conn};
use crate::uri::Uri;
use std::io::{BufReader, Read, Write};
use std::sync::atomic::Ordering;

/// The first bytes of a multifd channel.
pub(crate) const CHANNEL_MAGIC: &[u8; 8] = b"VMMMFD02";
/// The first bytes of a multifd channel from releases up to 0.2.0 (no
/// session id).
pub(crate) const CHANNEL_MAGIC_V1: &[u8; 8] = b"VMMMFD01";
/// The first bytes of a main stream with multifd channels, before its
/// savevm header: the session id and the channel count follow.
pub(crate) const SESSION_MAGIC: &[u8; 8] = b"VMMSESS1";
const CH_DATA: u64 = 1;
const CH_ZERO: u64 = 2;
const CH_END: u64 = u64::MAX;
/// Answered with [`Line::Sync`] on the channel once everything before it is in.
pub(crate) const CH_SYNC: u64 = u64::MAX - 1;
/// The index a probe's 0.2.0 channel header carries (with count 0).
pub(crate) const PROBE_INDEX: u32 = u32::MAX;
/// How long a probe waits for its answer.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// One migration's identity: random, announced by its main stream and
/// carried by each of its channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// A fresh one, from the kernel's random source.
    pub fn new() -> Result<SessionId> {
        let mut id = [0u8; 16];
        // SAFETY: the kernel writes at most `id.len()` bytes into `id`.
        let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
        if n != id.len() as isize {
            return Err(Error::io("cannot draw a migration session id")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(SessionId(id))
    }
}

/// What the main stream sends first when it has `n` channels.
pub(crate) fn session_preamble(id: SessionId, n: u32) -> Vec<u8> {
    let mut head = SESSION_MAGIC.to_vec();
    head.extend_from_slice(&id.0);
    head.extend_from_slice(&n.to_be_bytes());
    head
}

/// The source's `n` multifd channels of session `id`: connected before
/// the main stream, each in TLS when `tls` says so (the credentials and
/// the server's name); `opened` sees each connection as soon as it exists
/// (to shut it from outside).
pub(crate) fn connect_channels(
    uri: &Uri,
    n: u32,
    id: SessionId,
    tls: Option<&(crate::tls::Creds, String)>,
    opened: &dyn Fn(&Conn) -> Result<()>,
) -> Result<Vec<Conn>> {
    (0..n)
        .map(|i| {
            let mut c = open_conn(uri, tls, opened)?;
            let mut head = CHANNEL_MAGIC.to_vec();
            head.extend_from_slice(&i.to_be_bytes());
            head.extend_from_slice(&n.to_be_bytes());
            head.extend_from_slice(&id.0);
            c.write_all(&head)
                .map_err(Error::io("cannot start a multifd channel"))?;
            Ok(c)
        })
        .collect()
}

/// A connection of the source's beside its main stream: `uri` connected,
/// in TLS when `tls` says so; `opened` sees it (and its TLS wrapper) as
/// soon as it exists.
fn open_conn(
    uri: &Uri,
    tls: Option<&(crate::tls::Creds, String)>,
    opened: &dyn Fn(&Conn) -> Result<()>,
) -> Result<Conn> {
    let mut c = connect(uri)?;
    opened(&c)?;
    if let Some((creds, host)) = tls {
        c = creds.connect(c, host)?;
        opened(&c)?;
    }
    Ok(c)
}

/// Asks the destination at `uri` (in TLS when `tls` says so) how many
/// multifd channels it takes: up to its answer (0 from a release that
/// takes none with a session: it answers SYNC), or `None` when it closed
/// the probe unanswered (a build between 0.2.0 and this one, or QEMU,
/// which takes it for a stream and fails). Fails only when the
/// destination cannot be reached or answers neither in time nor sensibly.
pub(crate) fn probe(
    uri: &Uri,
    tls: Option<&(crate::tls::Creds, String)>,
    opened: &dyn Fn(&Conn) -> Result<()>,
) -> Result<Option<u32>> {
    let io = || Error::io("asking the destination whether it takes multifd channels");
    let mut c = open_conn(uri, tls, opened)?;
    let mut head = CHANNEL_MAGIC_V1.to_vec();
    head.extend_from_slice(&PROBE_INDEX.to_be_bytes());
    head.extend_from_slice(&0u32.to_be_bytes());
    head.extend_from_slice(&CH_SYNC.to_be_bytes());
    c.write_all(&head).map_err(io())?;
    let answered = c
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| c.try_clone())
        .and_then(|r| crate::return_path::LineReader::new(r).next_line());
    // Ended as a 0.2.0 channel ends, whatever came back: a 0.2.0
    // destination counts the probe among its next stream's channels and
    // fails that stream if one ends without END.
    let _ = c.write_all(&CH_END.to_be_bytes());
    let n = match answered {
        Ok((l, _)) => match Line::parse(&l) {
            Ok(Line::Multifd(n)) => Some(n),
            Ok(Line::Sync) => Some(0),
            _ => {
                return Err(Error::Protocol(format!(
                    "the destination answered the multifd probe with '{l}'"
                )))
            }
        },
        // A build between 0.2.0 and this one closes the probe unanswered
        // (unread bytes make that a reset): it takes no channels either.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            None
        }
        Err(e) => return Err(io()(e)),
    };
    Ok(n)
}

/// A destination's answer to a probe whose header is read: `max` channels
/// after its SYNC record, then nothing until its END (or its close).
pub(crate) fn answer_probe(mut c: Conn, max: u32) -> std::io::Result<()> {
    let mut h = [0u8; 8];
    c.read_exact(&mut h)?;
    if u64::from_be_bytes(h) != CH_SYNC {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a multifd probe without its SYNC",
        ));
    }
    c.write_all(&Line::Multifd(max).encode())?;
    let _ = c.read_exact(&mut h);
    Ok(())
}

/// The channel a page travels on: a page always takes the same one, so a
/// newer copy never overtakes an older one.
fn channel_of(offset: u64, n: usize) -> usize {
    ((offset >> 21) as usize) % n
}

/// One pass over the channels, in parallel: the pages set in `dirty`
/// (per region of `ram`); with `last`, each channel ends with END.
pub(crate) fn send<C: GuestWrite + Send>(
    ram: &Ram,
    chans: &mut [C],
    dirty: &[Vec<u64>],
    last: bool,
    p: &Progress,
) -> Result<()> {
    let n = chans.len();
    // Each channel walks the dirty bitmap itself and takes its own pages:
    // nothing is listed up front (a list would cost 24 bytes per dirty
    // page: 6 GiB for a 1 TiB guest).
    let mine = |ch: usize| {
        ram.regions()
            .iter()
            .zip(dirty)
            .flat_map(|(r, bits)| {
                set_bits(bits, r.pages())
                    .map(move |i| (r.offset + (i * PAGE_SIZE) as u64, r.page(i)))
            })
            .filter(move |(off, _)| channel_of(*off, n) == ch)
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = chans
            .iter_mut()
            .enumerate()
            .map(|(ch, c)| {
                let pages = mine(ch);
                scope.spawn(move || -> std::io::Result<()> {
                    let mut g = Gather::new();
                    // Counted per batch written: the channels share the
                    // counter.
                    let mut batch = 0;
                    for (off, d) in pages {
                        batch += 1;
                        if is_zero_page(&d) {
                            p.duplicate.fetch_add(1, Ordering::Relaxed);
                            g.head(&(off | CH_ZERO).to_be_bytes());
                        } else {
                            p.normal.fetch_add(1, Ordering::Relaxed);
                            g.head(&(off | CH_DATA).to_be_bytes());
                            g.page(d);
                        }
                        if g.full() {
                            g.write_to(c)?;
                            p.pages_sent(std::mem::take(&mut batch));
                        }
                    }
                    if last {
                        g.head(&CH_END.to_be_bytes());
                    }
                    g.write_to(c)?;
                    p.pages_sent(batch);
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("multifd sender panicked")))
            })
            .collect::<std::io::Result<Vec<()>>>()
    })
    .map_err(Error::io("sending RAM on a multifd channel"))?;
    Ok(())
}

/// The destination's side of channel `index` (its header already read
/// and bound to a main stream; no read times out, as on the main stream):
/// writes its pages into guest RAM, once there is RAM, until its END.
/// Ends with the number of pages written.
pub(crate) fn receive(c: Conn, index: u32, ram: &RamSlot) -> Result<u64> {
    let io = || Error::io("multifd channel");
    log::info!("multifd channel {index} connected");
    let mut answer = c.try_clone().map_err(io())?;
    let mut r = BufReader::with_capacity(256 << 10, c);
    let ram = ram.wait();
    let mut sink = RamWriter::new(&ram);
    let mut n = 0u64;
    loop {
        let mut h = [0u8; 8];
        r.read_exact(&mut h).map_err(io())?;
        let h = u64::from_be_bytes(h);
        if h == CH_END {
            return Ok(n);
        }
        if h == CH_SYNC {
            answer.write_all(&Line::Sync.encode()).map_err(io())?;
            continue;
        }
        let offset = h & !(PAGE_SIZE as u64 - 1);
        if offset >= ram.size {
            return Err(Error::Protocol(format!(
                "multifd channel: page offset {offset:#x} beyond RAM ({:#x})",
                ram.size
            )));
        }
        match h & (PAGE_SIZE as u64 - 1) {
            CH_DATA => {
                // Straight from the socket's buffer into guest RAM.
                // SAFETY: an incoming VM's RAM, written before it runs, and
                // this page travels on this channel only.
                let target = unsafe { ram.page_mut(offset) }.ok_or_else(|| {
                    Error::Protocol(format!("multifd channel: no guest page at {offset:#x}"))
                })?;
                r.read_exact(target).map_err(io())?;
            }
            CH_ZERO => {
                sink.page(ram.block, offset, &ZERO_PAGE);
                if let Some(e) = sink.error.take() {
                    return Err(Error::Protocol(format!("multifd channel: {e}")));
                }
            }
            f => {
                return Err(Error::Protocol(format!(
                    "multifd channel: bad record flags {f:#x} at page {n}"
                )))
            }
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// Probes a destination that `serve` plays on a loopback port; what
    /// the probe found, and what the destination read after its header.
    fn probe_against(serve: fn(TcpStream) -> Vec<u8>) -> (Result<Option<u32>>, Vec<u8>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = Uri::Tcp(l.local_addr().unwrap().to_string());
        let peer = std::thread::spawn(move || serve(l.accept().unwrap().0));
        let got = probe(&uri, None, &|_| Ok(()));
        (got, peer.join().unwrap())
    }

    /// The probe's header: 0.2.0's channel magic, index PROBE_INDEX, count 0.
    fn read_header(s: &mut TcpStream) {
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        assert_eq!(&h[..8], CHANNEL_MAGIC_V1);
        assert_eq!(h[8..], [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    }

    fn rest(mut s: TcpStream) -> Vec<u8> {
        let mut v = vec![];
        let _ = s.read_to_end(&mut v);
        v
    }

    #[test]
    fn this_build_answers_how_many_channels_it_takes() {
        let (got, after) = probe_against(|mut s| {
            read_header(&mut s);
            answer_probe(Conn::Tcp(s.try_clone().unwrap()), 255).unwrap();
            rest(s)
        });
        assert_eq!(got.unwrap(), Some(255));
        // answer_probe read the END itself.
        assert!(after.is_empty(), "{after:02x?}");
    }

    /// What 0.2.0's receiver does with a channel: answers SYNC records and
    /// ends at END, having written no page (so the probe costs it nothing).
    #[test]
    fn a_0_2_0_destination_answers_sync_and_gets_one_stream() {
        let (got, after) = probe_against(|mut s| {
            read_header(&mut s);
            let mut r = [0u8; 8];
            s.read_exact(&mut r).unwrap();
            assert_eq!(u64::from_be_bytes(r), CH_SYNC);
            s.write_all(b"SYNC\n").unwrap();
            rest(s)
        });
        assert_eq!(got.unwrap(), Some(0));
        assert_eq!(after, CH_END.to_be_bytes(), "the probe ends as a channel");
    }

    #[test]
    fn a_build_that_closes_the_probe_gets_one_stream_and_nonsense_is_an_error() {
        let (got, _) = probe_against(|mut s| {
            read_header(&mut s);
            vec![]
        });
        assert_eq!(got.unwrap(), None);
        let (got, got_after) = probe_against(|mut s| {
            read_header(&mut s);
            s.write_all(b"HELLO\n").unwrap();
            rest(s)
        });
        let (e, after) = (got.unwrap_err().to_string(), got_after);
        assert!(e.contains("'HELLO'"), "{e}");
        // Ended as a channel all the same (after its SYNC record).
        assert_eq!(after[..8], CH_SYNC.to_be_bytes());
        assert_eq!(after[8..], CH_END.to_be_bytes());
    }
}
