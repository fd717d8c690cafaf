//! The QMP monitor (QEMU Machine Protocol), so that existing clients
//! (`qemu.qmp`, `qmp-shell`, libvirt) manage vmm unchanged.
//!
//! Each `-qmp` socket has an accept thread; each client a reader thread
//! that frames JSON values out of the byte stream, negotiates capabilities
//! and forwards commands to the VMM's main loop, which owns the VM and
//! answers through a channel. The monitor never touches vCPUs directly, so
//! a slow or vanished client cannot stall the guest. Events go to every
//! negotiated client.

pub mod commands;
pub mod session;

use session::error_reply;
pub use session::{reply_line, Session, Step};

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub use crate::config::QmpAddr;

/// The most output a client may leave unread; past it the client is
/// disconnected (a client that never reads would otherwise grow vmm
/// without bound).
const MAX_UNREAD: usize = 8 << 20;
/// The most descriptors a client may pass that no command took yet.
const MAX_PASSED_FDS: usize = 64;
/// The most clients a monitor socket serves at once.
const MAX_CLIENTS: usize = 32;
/// The most commands waiting for the main loop, from all clients: a
/// client that sends faster waits (its reader blocks).
pub const MAX_WAITING_REQUESTS: usize = 256;

/// A client's ordered output queue (replies and events), with a count of
/// lines and bytes not yet written (the VMM flushes before it exits; a
/// client that leaves too much unread is disconnected).
#[derive(Clone)]
pub struct ClientOut {
    tx: Sender<String>,
    pending: Arc<AtomicUsize>,
    unread: Arc<AtomicUsize>,
    /// Ends the client's connection (both ways).
    hangup: Arc<dyn Fn() + Send + Sync>,
    dropped: Arc<std::sync::atomic::AtomicBool>,
}

impl ClientOut {
    fn send(&self, line: String) -> bool {
        let len = line.len() + 2;
        if self.unread.fetch_add(len, Ordering::SeqCst) + len > MAX_UNREAD {
            self.unread.fetch_sub(len, Ordering::SeqCst);
            if !self.dropped.swap(true, Ordering::SeqCst) {
                log::warn!(
                    "QMP: a client does not read its replies ({} MiB waiting): disconnected",
                    MAX_UNREAD >> 20
                );
                (self.hangup)();
            }
            return false;
        }
        self.pending.fetch_add(1, Ordering::SeqCst);
        let ok = self.tx.send(line).is_ok();
        if !ok {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.unread.fetch_sub(len, Ordering::SeqCst);
        }
        ok
    }
}

/// A command for the main loop; the main loop writes the reply itself, so
/// a reply always precedes the events its command causes.
pub struct Request {
    pub command: String,
    pub args: serde_json::Map<String, Value>,
    pub id: Option<Value>,
    pub out: ClientOut,
    /// File descriptors the client passed (SCM_RIGHTS on a unix socket),
    /// for `getfd`.
    pub fds: Fds,
}

/// The descriptors a client passed and no command took yet.
pub type Fds = Arc<std::sync::Mutex<Vec<std::os::fd::OwnedFd>>>;

/// A unix-socket reader that also collects passed descriptors.
struct ScmReader {
    s: std::os::unix::net::UnixStream,
    fds: Fds,
}

impl Read for ScmReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        const MAX_FDS: usize = 8;
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // Room for MAX_FDS descriptors (CMSG_SPACE of the payload).
        let mut cbuf = [0u64; 8];
        // SAFETY: a zeroed msghdr is valid; the pointers set below outlive
        // the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE((MAX_FDS * 4) as u32) } as usize;
        // SAFETY: recvmsg on our socket with the buffers above; passed fds
        // get O_CLOEXEC.
        let n = unsafe { libc::recvmsg(self.s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: walking the control messages recvmsg filled in, within
        // msg_controllen, as the CMSG_* helpers are meant to be used.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c) as *const i32;
                    let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                    for i in 0..count {
                        let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                        let mut fds = self.fds.lock().expect("fds lock");
                        if fds.len() < MAX_PASSED_FDS {
                            fds.push(fd);
                        } else {
                            // Closed here (dropped): no command took the
                            // ones before it.
                            log::warn!(
                                "QMP: a client passed more than {MAX_PASSED_FDS} descriptors no command took: closing the rest"
                            );
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Ok(n as usize)
    }
}

impl Request {
    pub fn reply(&self, result: Result<Value, QmpError>) {
        self.out.send(reply_line(result, self.id.clone()));
    }
}

/// A QMP error reply.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpError {
    pub class: &'static str,
    pub desc: String,
}

impl QmpError {
    pub fn generic(desc: impl Into<String>) -> Self {
        QmpError {
            class: "GenericError",
            desc: desc.into(),
        }
    }
    pub fn not_found(desc: impl Into<String>) -> Self {
        QmpError {
            class: "CommandNotFound",
            desc: desc.into(),
        }
    }
}

/// Sends events to every negotiated client.
#[derive(Clone, Default)]
pub struct Events {
    clients: Arc<Mutex<Vec<ClientOut>>>,
}

impl Events {
    /// Emits `{"event": name, "data": data, "timestamp": ...}`.
    pub fn emit(&self, name: &str, data: Option<Value>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut ev = json!({"event": name, "timestamp": {"seconds": now.as_secs(), "microseconds": now.subsec_micros()}});
        if let Some(d) = data {
            ev["data"] = d;
        }
        let line = ev.to_string();
        log::debug!("QMP event {line}");
        self.clients
            .lock()
            .expect("events lock")
            .retain(|c| c.send(line.clone()));
    }

    fn subscribe(&self, out: ClientOut) {
        self.clients.lock().expect("events lock").push(out);
    }

    /// A client that left gets no more events; with its last sender gone,
    /// its writer thread ends.
    fn unsubscribe(&self, out: &ClientOut) {
        self.clients
            .lock()
            .expect("events lock")
            .retain(|c| !Arc::ptr_eq(&c.pending, &out.pending));
    }

    /// Waits (at most a second) until every queued line reached its client.
    pub fn flush(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let busy = || {
            self.clients
                .lock()
                .expect("events lock")
                .iter()
                .any(|c| c.pending.load(Ordering::SeqCst) > 0)
        };
        while busy() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

pub fn greeting() -> Value {
    let (major, minor, micro) = version();
    json!({"QMP": {"version": {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": format!("vmm {}", env!("CARGO_PKG_VERSION"))}, "capabilities": []}})
}

pub fn version() -> (u64, u64, u64) {
    let v: Vec<u64> = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    (
        v[0],
        v.get(1).copied().unwrap_or(0),
        v.get(2).copied().unwrap_or(0),
    )
}

/// A connected client's two halves, and where its passed fds go.
/// A connected client: its reading and writing halves, the descriptors it
/// passed, and what ends its connection.
type Halves = (
    Box<dyn Read + Send>,
    Box<dyn Write + Send>,
    Fds,
    Arc<dyn Fn() + Send + Sync>,
);

/// Binds every address (before the VM starts, so a bad path fails early)
/// and starts serving.
/// The unix sockets the monitor made, removed at exit ([`remove_sockets`]).
static SOCKETS: Mutex<Vec<std::path::PathBuf>> = Mutex::new(Vec::new());

/// Removes the monitor's unix sockets (at exit): only what it made, and
/// only while it is still a socket.
pub fn remove_sockets() {
    use std::os::unix::fs::FileTypeExt;
    for p in SOCKETS.lock().expect("sockets lock").drain(..) {
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(&p);
        }
    }
}

pub fn start(
    addrs: &[QmpAddr],
    requests: SyncSender<Request>,
    events: Events,
) -> anyhow::Result<()> {
    use anyhow::Context;
    for a in addrs {
        // Each listener becomes an iterator of connected clients.
        let clients: Box<dyn Iterator<Item = Halves> + Send> = match a {
            QmpAddr::Unix(p) => {
                let l = migration::transport::bind_unix_private(p)
                    .with_context(|| format!("cannot listen for QMP on {}", p.display()))?;
                SOCKETS.lock().expect("sockets lock").push(p.clone());
                let accepted =
                    std::iter::repeat_with(move || l.accept()).filter_map(|r| r.ok().map(|c| c.0));
                Box::new(accepted.filter_map(|s| {
                    let fds = Fds::default();
                    let r = ScmReader {
                        s: s.try_clone().ok()?,
                        fds: fds.clone(),
                    };
                    let h = s.try_clone().ok()?;
                    let hangup = Arc::new(move || {
                        let _ = h.shutdown(std::net::Shutdown::Both);
                    });
                    Some((Box::new(r) as _, Box::new(s) as _, fds, hangup as _))
                }))
            }
            QmpAddr::Tcp(hp) => {
                let l = TcpListener::bind(hp)
                    .with_context(|| format!("cannot listen for QMP on tcp:{hp}"))?;
                if l.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
                    log::warn!(
                        "QMP on tcp:{hp} is reachable from the network, without authentication: whoever connects controls this VM (use a unix socket, or a loopback address)"
                    );
                }
                let accepted =
                    std::iter::repeat_with(move || l.accept()).filter_map(|r| r.ok().map(|c| c.0));
                Box::new(accepted.filter_map(|s| {
                    let h = s.try_clone().ok()?;
                    let hangup = Arc::new(move || {
                        let _ = h.shutdown(std::net::Shutdown::Both);
                    });
                    Some((
                        Box::new(s.try_clone().ok()?) as _,
                        Box::new(s) as _,
                        Fds::default(),
                        hangup as _,
                    ))
                }))
            }
        };
        let (requests, events) = (requests.clone(), events.clone());
        std::thread::Builder::new()
            .name("qmp-accept".into())
            .spawn(move || {
                sandbox::enter_or_exit(sandbox::Class::Qmp);
                let serving = Arc::new(AtomicUsize::new(0));
                for (r, mut w, fds, hangup) in clients {
                    if serving.load(Ordering::SeqCst) >= MAX_CLIENTS {
                        log::warn!("QMP: {MAX_CLIENTS} clients already: one more turned away");
                        let e = QmpError::generic(format!(
                            "this monitor serves {MAX_CLIENTS} clients at once"
                        ));
                        let _ = w.write_all(format!("{}\r\n", error_reply(&e, None)).as_bytes());
                        hangup();
                        continue;
                    }
                    serving.fetch_add(1, Ordering::SeqCst);
                    let done = serving.clone();
                    spawn_client(
                        r,
                        w,
                        fds,
                        hangup,
                        requests.clone(),
                        events.clone(),
                        move || {
                            done.fetch_sub(1, Ordering::SeqCst);
                        },
                    );
                }
            })?;
    }
    Ok(())
}

fn spawn_client(
    r: Box<dyn Read + Send>,
    w: Box<dyn Write + Send>,
    fds: Fds,
    hangup: Arc<dyn Fn() + Send + Sync>,
    requests: SyncSender<Request>,
    events: Events,
    on_leave: impl FnOnce() + Send + 'static,
) {
    // One writer thread per client: lines never interleave, and a stuck
    // client only blocks its own writer.
    let (tx, rx) = channel::<String>();
    let out = ClientOut {
        tx,
        pending: Arc::new(AtomicUsize::new(0)),
        unread: Arc::new(AtomicUsize::new(0)),
        hangup,
        dropped: Default::default(),
    };
    let (pending, unread) = (out.pending.clone(), out.unread.clone());
    let mut w = w;
    let _ = std::thread::Builder::new()
        .name("qmp-write".into())
        .spawn(move || {
            let mut broken = false;
            for line in rx {
                let len = line.len() + 2;
                if !broken {
                    // The line and its end in one write: a client that
                    // reads with a timeout never meets half a line.
                    let mut whole = line.into_bytes();
                    whole.extend_from_slice(b"\r\n");
                    broken = w.write_all(&whole).and_then(|_| w.flush()).is_err();
                }
                unread.fetch_sub(len, Ordering::SeqCst);
                pending.fetch_sub(1, Ordering::SeqCst);
            }
        });
    let _ = std::thread::Builder::new()
        .name("qmp-client".into())
        .spawn(move || {
            serve(r, out.clone(), fds, requests, events.clone());
            // The client left: its writer ends once the main loop has
            // answered what it still had (those replies hold a sender).
            events.unsubscribe(&out);
            on_leave();
        });
}

fn serve(
    mut r: Box<dyn Read + Send>,
    out: ClientOut,
    fds: Fds,
    requests: SyncSender<Request>,
    events: Events,
) {
    if !out.send(greeting().to_string()) {
        return;
    }
    let mut session = Session::default();
    let mut chunk = [0u8; 4096];
    loop {
        let step = match session.next_step() {
            Some(step) => step,
            None => match r.read(&mut chunk) {
                Ok(0) | Err(_) => return, // the client left; nothing to undo
                Ok(n) => {
                    if let Some(e) = session.feed(&chunk[..n]) {
                        out.send(e);
                    }
                    continue;
                }
            },
        };
        match step {
            Step::Reply(line) => {
                out.send(line);
            }
            Step::Negotiated(line) => {
                events.subscribe(out.clone());
                out.send(line);
            }
            // The main loop answers on `out`.
            Step::Command { command, args, id } => {
                let req = Request {
                    command,
                    args,
                    id,
                    out: out.clone(),
                    fds: fds.clone(),
                };
                if requests.send(req).is_err() {
                    return;
                }
            }
        }
    }
}
