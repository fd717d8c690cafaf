//! The return path: what the destination says back on the main
//! connection, one [`Line`] at a time, each stamped with the kernel's
//! arrival time (the downtime ends when RUNNING reaches the source).

use crate::error::{Error, Result};
use crate::protocol::Line;
use crate::transport::Conn;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, SystemTime};

/// A line and when its last byte arrived (if stamped).
type Stamped = (String, Option<SystemTime>);

/// Splits what a connection receives into lines, each with the arrival
/// time of the segment that completed it.
pub(crate) struct LineReader {
    conn: Conn,
    buf: Vec<u8>,
    at: Option<SystemTime>,
}

impl LineReader {
    pub(crate) fn new(conn: Conn) -> LineReader {
        LineReader {
            conn,
            buf: Vec::new(),
            at: None,
        }
    }

    /// The next line (without its newline). A read timeout set on the
    /// socket is an error here.
    pub(crate) fn next_line(&mut self) -> std::io::Result<Stamped> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                return Ok((text, self.at));
            }
            if self.buf.len() > 64 << 10 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a handshake line longer than 64 KiB",
                ));
            }
            let mut chunk = [0u8; 512];
            match self.conn.recv_stamped(&mut chunk) {
                Ok((0, _)) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the connection closed",
                    ))
                }
                Ok((n, at)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.at = at;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next line as a handshake [`Line`]; `what` says what was awaited.
    pub(crate) fn next(&mut self, what: &str) -> Result<Line> {
        let (text, _) = self.next_line().map_err(Error::io(what))?;
        Line::parse(&text).map_err(|e| Error::Protocol(e.to_string()))
    }
}

/// The source's return path (QEMU's `source_return_path_thread`): one
/// thread reads every line the destination sends, stamped with its
/// arrival, and hands them over in order. The sender checks for a refusal
/// without blocking; nothing else reads the socket.
pub(crate) struct ReturnPath {
    rx: Receiver<std::io::Result<Stamped>>,
    /// Lines taken while looking for a refusal, not yet asked for.
    held: RefCell<VecDeque<Stamped>>,
    /// Why the reader stopped, once it has (the peer closed, an error).
    ended: RefCell<Option<String>>,
    /// The socket, to end the reader when the migration is over.
    conn: Conn,
}

impl ReturnPath {
    pub(crate) fn start(conn: &Conn) -> Result<ReturnPath> {
        let clone = || conn.try_clone().map_err(Error::io("the return path"));
        let mut lines = LineReader::new(clone()?);
        // The downtime ends when RUNNING reaches this host: the kernel's
        // receive timestamp, not when a thread gets to read it.
        if !conn.stamp_arrivals() {
            log::debug!("the kernel does not stamp arrivals: downtime is measured when read");
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("migration-rp".into())
            .spawn(move || loop {
                let r = lines.next_line();
                let end = r.is_err();
                if tx.send(r).is_err() || end {
                    return;
                }
            })
            .map_err(Error::io("cannot start the return-path reader"))?;
        Ok(ReturnPath {
            rx,
            held: Default::default(),
            ended: Default::default(),
            conn: clone()?,
        })
    }

    /// The next line within `timeout`; `what` says what was awaited.
    pub(crate) fn next(&self, timeout: Duration, what: &str) -> Result<(Line, Option<SystemTime>)> {
        let held = self.held.borrow_mut().pop_front();
        let (text, at) = match held {
            Some(l) => l,
            None => match self.rx.recv_timeout(timeout) {
                Ok(r) => r.map_err(Error::io(what))?,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Error::Protocol(format!(
                        "{what}: no answer within {} s",
                        timeout.as_secs()
                    )))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let why = self.ended.borrow().clone();
                    return Err(Error::Protocol(format!(
                        "{what}: {}",
                        why.as_deref().unwrap_or("the return path ended")
                    )));
                }
            },
        };
        let line = Line::parse(&text).map_err(|e| Error::Protocol(e.to_string()))?;
        Ok((line, at))
    }

    /// Fails with the destination's reason if it has refused the stream
    /// (a line already arrived); never waits.
    pub(crate) fn refused(&self) -> Result<()> {
        while let Ok(r) = self.rx.try_recv() {
            match r {
                Ok(l) => self.held.borrow_mut().push_back(l),
                // Kept for whoever waits next; a reason sent before it
                // still counts.
                Err(e) => *self.ended.borrow_mut() = Some(e.to_string()),
            }
        }
        let held = self.held.borrow();
        match held.iter().find_map(|(l, _)| match Line::parse(l) {
            Ok(Line::Err(why)) => Some(why),
            _ => None,
        }) {
            Some(why) => Err(Error::Refused(why)),
            None => Ok(()),
        }
    }

    /// The destination's reason, if it refuses the stream within `wait`
    /// (or did already): what a failed send on another connection is
    /// explained by (a refusing destination closes its channels too, and
    /// their broken pipe may be seen before its ERR arrives).
    pub(crate) fn refusal(&self, wait: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Err(Error::Refused(why)) = self.refused() {
                return Some(why);
            }
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok(Ok(l)) => self.held.borrow_mut().push_back(l),
                Ok(Err(e)) => {
                    *self.ended.borrow_mut() = Some(e.to_string());
                    return None;
                }
                Err(_) => return None,
            }
        }
    }
}

impl Drop for ReturnPath {
    fn drop(&mut self) {
        // Wakes the reader (its receive returns 0) so its thread ends.
        self.conn.shutdown_read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;

    /// A connected pair: the test's end and the VMM's.
    fn pair() -> (TcpStream, Conn) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (peer, Conn::Tcp(l.accept().unwrap().0))
    }

    #[test]
    // qemu-user (how the ppc64le build is tested, scripts/ppc64le.sh)
    // refuses SO_TIMESTAMPNS: the kernel stamps cannot be had there.
    #[cfg_attr(
        not(target_arch = "x86_64"),
        ignore = "qemu-user does not pass SO_TIMESTAMPNS through"
    )]
    fn running_carries_its_kernel_arrival_time() {
        let (mut peer, conn) = pair();
        assert!(conn.stamp_arrivals());
        let mut lines = LineReader::new(conn);
        let before = SystemTime::now();
        // In two pieces, the line's end arriving last.
        peer.write_all(b"RUNN").unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let sent = SystemTime::now();
        peer.write_all(b"ING\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let (line, at) = lines.next_line().unwrap();
        let read = SystemTime::now();
        assert_eq!(line, "RUNNING");
        let at = at.expect("the kernel stamped the arrival");
        // Stamped on arrival of the last piece: after it was sent, well
        // before this thread read it 50 ms later.
        assert!(at >= sent && at > before, "{at:?} vs sent {sent:?}");
        assert!(read.duration_since(at).unwrap() >= Duration::from_millis(40));
        // Two lines in one segment are two lines.
        peer.write_all(b"SYNC\nLOADED\n").unwrap();
        assert_eq!(lines.next_line().unwrap().0, "SYNC");
        assert_eq!(lines.next_line().unwrap().0, "LOADED");
        drop(peer);
        assert!(lines.next_line().is_err(), "EOF is an error");
    }

    #[test]
    fn the_return_path_has_one_reader_and_names_what_it_got() {
        let (mut peer, conn) = pair();
        let rp = ReturnPath::start(&conn).unwrap();
        // Nothing yet: no refusal, and no waiting for one.
        let t0 = Instant::now();
        rp.refused().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(1));
        // A SYNC seen while looking for a refusal is still delivered.
        peer.write_all(b"SYNC\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        rp.refused().unwrap();
        assert_eq!(
            rp.next(Duration::from_secs(5), "sync").unwrap().0,
            Line::Sync
        );
        // A refusal is found without blocking, with its reason.
        peer.write_all(b"ERR machine type received is 'pc-q35-7.2'\n")
            .unwrap();
        let t0 = Instant::now();
        let e = loop {
            // Each look returns at once; the reader thread may not have
            // read the line yet.
            let t = Instant::now();
            let r = rp.refused();
            assert!(t.elapsed() < Duration::from_secs(1));
            match r {
                Err(e) => break e.to_string(),
                Ok(()) => assert!(t0.elapsed() < Duration::from_secs(5), "no refusal seen"),
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(e.contains("refused") && e.contains("pc-q35-7.2"), "{e}");
        assert!(matches!(
            rp.next(Duration::from_secs(5), "x").unwrap().0,
            Line::Err(_)
        ));
        // A line nobody speaks is an error naming it; silence times out.
        peer.write_all(b"HELLO\n").unwrap();
        let e = rp.next(Duration::from_secs(5), "loaded").unwrap_err();
        assert!(e.to_string().contains("'HELLO'"), "{e}");
        let e = rp
            .next(Duration::from_millis(100), "waiting for RUNNING")
            .unwrap_err();
        assert!(e.to_string().contains("waiting for RUNNING"), "{e}");
        // A destination that goes away is no refusal by itself; whoever
        // waits next learns why the path ended.
        drop(peer);
        std::thread::sleep(Duration::from_millis(50));
        rp.refused().unwrap();
        let e = rp
            .next(Duration::from_secs(5), "waiting for LOADED")
            .unwrap_err();
        assert!(e.chain().contains("closed"), "{}", e.chain());
        // Dropped, it ends its reader (which would otherwise wait forever),
        // soon: give a slow host (qemu-user) its time.
        drop(rp);
        let readers = || {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|c| c.trim() == "migration-rp")
                .count()
        };
        let t0 = Instant::now();
        while readers() > 0 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            readers(),
            0,
            "the return-path reader outlived its migration"
        );
    }
}
