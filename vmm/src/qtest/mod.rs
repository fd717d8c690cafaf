//! `-accel qtest`: QEMU's device-test accelerator. The board and its
//! devices run without vCPUs; a test client drives them over QEMU's qtest
//! line protocol on the `-qtest` socket (port and memory accesses, bulk
//! reads and writes, the virtual clock), while QMP and migration work as
//! for any VM. It is how a board is exercised on a host that cannot run
//! its guests: a q35 board without KVM, a pseries board on x86.
//!
//! * `protocol`: the request lines and replies.
//! * `backend`: the hypervisor backend (RAM, dirty log, doorbells,
//!   virtual clock; no vCPUs).
//!
//! The client's requests are served by the VM's main loop, in order, and
//! only while the VM runs: the client is the guest's CPU, so it stops when
//! the vCPUs would (paused, waiting for or finishing a migration), and
//! nothing it does escapes a migration.

mod backend;
pub mod protocol;

pub use backend::{QtestHypervisor, QtestVm, QTEST};

use anyhow::{anyhow, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::time::{Duration, Instant};

/// Where the qtest client is (`-qtest`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QtestAddr {
    /// `unix:PATH`: vmm connects to the client's socket (what QEMU's
    /// chardev does without `server=on`, and what libqtest listens for).
    Connect(PathBuf),
    /// `unix:PATH,server=on[,wait=off]`: vmm listens; one client at a time.
    Listen(PathBuf),
    /// `stdio`: requests on stdin, replies on stdout (the console must
    /// be elsewhere).
    Stdio,
}

impl std::str::FromStr for QtestAddr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<QtestAddr> {
        if s == "stdio" {
            return Ok(QtestAddr::Stdio);
        }
        let Some(rest) = s.strip_prefix("unix:") else {
            return Err(anyhow!(
                "invalid -qtest '{s}': expected unix:PATH[,server=on[,wait=off]] or stdio"
            ));
        };
        let mut parts = rest.split(',');
        let path = PathBuf::from(parts.next().unwrap_or_default());
        if path.as_os_str().is_empty() {
            return Err(anyhow!("invalid -qtest '{s}': the socket path is empty"));
        }
        let mut server = false;
        for p in parts {
            match p {
                "server" | "server=on" => server = true,
                "server=off" => server = false,
                "nowait" | "wait=off" => {}
                _ => {
                    return Err(anyhow!(
                        "invalid -qtest '{s}': unknown option '{p}' (vmm takes server=on|off and wait=off)"
                    ))
                }
            }
        }
        Ok(if server {
            QtestAddr::Listen(path)
        } else {
            QtestAddr::Connect(path)
        })
    }
}

/// A request for the main loop and where its reply goes.
pub struct Call {
    pub request: protocol::Request,
    reply: SyncSender<String>,
}

/// Replies handed to the client's thread and not written yet.
static UNWRITTEN: AtomicUsize = AtomicUsize::new(0);

impl Call {
    /// Hands the reply to the client's thread, which writes it.
    pub fn answer(self, reply: String) {
        UNWRITTEN.fetch_add(1, Ordering::SeqCst);
        if self.reply.send(reply).is_err() {
            // The client left: nothing will be written.
            UNWRITTEN.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Waits (up to `timeout`) until every answered request's reply is on
/// the socket: the last request may have ended the VM (a power-off), and
/// its `OK` must still reach the client before the process exits.
pub fn flush(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while UNWRITTEN.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

type Halves = (Box<dyn BufRead + Send>, Box<dyn Write + Send>);

/// Opens the client's channel and serves it on its own thread: each
/// request line is parsed here (a bad one answered here) and passed to
/// `serve`, which answers through the call's channel.
pub fn start(addr: &QtestAddr, serve: impl Fn(Call) -> bool + Send + 'static) -> Result<()> {
    let clients: Box<dyn Iterator<Item = Halves> + Send> = match addr {
        QtestAddr::Connect(p) => {
            let s = UnixStream::connect(p).with_context(|| {
                format!("cannot connect to the qtest client at {}", p.display())
            })?;
            Box::new(std::iter::once(halves(s)?))
        }
        QtestAddr::Listen(p) => {
            let l = migration::transport::bind_unix_private(p)
                .with_context(|| format!("cannot listen for qtest on {}", p.display()))?;
            Box::new(
                std::iter::repeat_with(move || {
                    l.accept().map_err(|e| {
                        // Out of descriptors, say: not a busy loop.
                        log::warn!("qtest: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    })
                })
                .filter_map(|r| r.ok())
                .filter_map(|(s, _)| halves(s).ok()),
            )
        }
        QtestAddr::Stdio => Box::new(std::iter::once((
            Box::new(BufReader::new(std::io::stdin())) as Box<dyn BufRead + Send>,
            Box::new(std::io::stdout()) as Box<dyn Write + Send>,
        ))),
    };
    std::thread::Builder::new()
        .name("qtest".into())
        .spawn(move || {
            sandbox::enter_or_exit(sandbox::Class::Qmp);
            for (r, w) in clients {
                log::info!("qtest: a client connected");
                if !serve_client(r, w, &serve) {
                    return;
                }
                log::info!("qtest: the client left");
            }
        })
        .context("cannot start the qtest thread")?;
    Ok(())
}

fn halves(s: UnixStream) -> Result<Halves> {
    let r = s.try_clone().context("cannot clone the qtest socket")?;
    Ok((Box::new(BufReader::new(r)), Box::new(s)))
}

/// Serves one client until it leaves; false when the VM is gone.
fn serve_client(
    mut r: Box<dyn BufRead + Send>,
    mut w: Box<dyn Write + Send>,
    serve: &impl Fn(Call) -> bool,
) -> bool {
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
        let text = line.trim_end_matches(['\n', '\r']);
        let reply = match protocol::parse(text) {
            Err(e) => {
                log::debug!("qtest: '{text}': {e}");
                e.reply()
            }
            Ok(request) => {
                let (tx, rx) = sync_channel(1);
                if !serve(Call { request, reply: tx }) {
                    return false;
                }
                match rx.recv() {
                    Ok(r) => {
                        let written = write_reply(&mut w, &r);
                        UNWRITTEN.fetch_sub(1, Ordering::SeqCst);
                        if !written {
                            return true;
                        }
                        continue;
                    }
                    // The VM ended with the request unanswered.
                    Err(_) => return false,
                }
            }
        };
        if !write_reply(&mut w, &reply) {
            return true;
        }
    }
}

/// One reply line; false if the client is gone.
fn write_reply(w: &mut Box<dyn Write + Send>, reply: &str) -> bool {
    w.write_all(reply.as_bytes())
        .and_then(|_| w.write_all(b"\n"))
        .and_then(|_| w.flush())
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            "unix:/tmp/q".parse::<QtestAddr>().unwrap(),
            QtestAddr::Connect("/tmp/q".into())
        );
        assert_eq!(
            "unix:/tmp/q,server=on,wait=off"
                .parse::<QtestAddr>()
                .unwrap(),
            QtestAddr::Listen("/tmp/q".into())
        );
        assert_eq!("stdio".parse::<QtestAddr>().unwrap(), QtestAddr::Stdio);
        assert!("tcp:1:2".parse::<QtestAddr>().is_err());
        assert!("unix:".parse::<QtestAddr>().is_err());
        assert!("unix:/q,bogus".parse::<QtestAddr>().is_err());
    }
}
