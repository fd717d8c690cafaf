//! The connections a migration travels on (`tcp:`, `unix:`, `fd:`), with
//! dead-link detection and the kernel's arrival stamps for the return path.

use crate::error::{Error, Result};
use crate::uri::Uri;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// A silent peer is given up on after this (no FIN, no RST: a cut cable).
pub const LINK_TIMEOUT: Duration = Duration::from_secs(4);

/// Socket buffer size for migration connections (the kernel doubles it).
/// Small: what the source counts as sent is close to what the destination
/// has loaded, so the last pass (the downtime) is not stuck behind
/// megabytes queued in the sockets.
const SOCKET_BUFFER: libc::c_int = 256 << 10;

/// A migration connection.
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    pub fn try_clone(&self) -> std::io::Result<Conn> {
        Ok(match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
        })
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(t),
            Conn::Unix(s) => s.set_read_timeout(t),
        }
    }

    /// Ends reading on the socket (a reader blocked in it sees the end).
    pub(crate) fn shutdown_read(&self) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Read),
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Read),
        };
    }

    pub fn shutdown(&self) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }

    fn raw_fd(&self) -> RawFd {
        match self {
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::Unix(s) => s.as_raw_fd(),
        }
    }

    /// Asks the kernel to timestamp what arrives from now on
    /// (SO_TIMESTAMPNS); false if it will not.
    pub(crate) fn stamp_arrivals(&self) -> bool {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt with an int option on a socket we own.
        unsafe {
            libc::setsockopt(
                self.raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                &on as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        }
    }

    /// One receive straight from the socket into `buf`, with the time it
    /// arrived if the kernel stamped it (see [`Conn::stamp_arrivals`]).
    pub(crate) fn recv_stamped(
        &self,
        buf: &mut [u8],
    ) -> std::io::Result<(usize, Option<SystemTime>)> {
        // Room for a few cmsgs (u64-aligned).
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; zero is a valid empty value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: every pointer in msg refers to a live local buffer of
        // the length given.
        let n = unsafe { libc::recvmsg(self.raw_fd(), &mut msg, 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut at = None;
        // SAFETY: the CMSG_* walk stays inside msg's control buffer, which
        // the kernel filled and sized in msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                    if ts.tv_sec > 0 {
                        at = Some(
                            std::time::UNIX_EPOCH
                                + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
                        );
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Ok((n as usize, at))
    }
}

impl From<std::os::fd::OwnedFd> for Conn {
    /// A socket passed with `getfd` (or inherited): a TCP one gets the
    /// same dead-link detection as one vmm connected itself.
    fn from(fd: std::os::fd::OwnedFd) -> Conn {
        let mut domain: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt with an int out-parameter of the given size on
        // a descriptor we own.
        let got = unsafe {
            libc::getsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::SOL_SOCKET,
                libc::SO_DOMAIN,
                &mut domain as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        if got == 0 && (domain == libc::AF_INET || domain == libc::AF_INET6) {
            let s = TcpStream::from(fd);
            tune_tcp(&s);
            Conn::Tcp(s)
        } else {
            Conn::Unix(UnixStream::from(fd))
        }
    }
}

impl Read for Conn {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(b),
            Conn::Unix(s) => s.read(b),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(b),
            Conn::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl crate::stream::GuestWrite for Conn {
    /// One `writev` straight from the slices (guest memory included): the
    /// kernel reads them, nothing here does.
    fn write_slices(&mut self, bufs: &[vm_memory::VolatileSlice]) -> std::io::Result<usize> {
        let guards: Vec<_> = bufs.iter().take(1024).map(|b| b.ptr_guard()).collect();
        let iov: Vec<libc::iovec> = guards
            .iter()
            .zip(bufs)
            .map(|(g, b)| libc::iovec {
                iov_base: g.as_ptr().cast_mut().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: every iovec is a live VolatileSlice (valid for reads of
        // its length while its guard, held here, lives); the kernel only
        // reads them.
        let n = unsafe { libc::writev(self.raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// A migration's connections, for whoever ends the migration from outside
/// (cancel, a reset of the VM): [`Links::shutdown`] shuts every one opened
/// so far, and any opened later at once.
#[derive(Default)]
pub struct Links {
    conns: std::sync::Mutex<Vec<Conn>>,
    shut: std::sync::atomic::AtomicBool,
}

impl Links {
    /// Adds (a clone of) `c`.
    pub fn add(&self, c: &Conn) -> Result<()> {
        let c = c
            .try_clone()
            .map_err(Error::io("the migration connection"))?;
        let mut conns = self.conns.lock().expect("links lock");
        if self.shut.load(std::sync::atomic::Ordering::SeqCst) {
            c.shutdown();
            return Err(Error::Protocol("migration cancelled".into()));
        }
        conns.push(c);
        Ok(())
    }

    /// Whether [`Links::shutdown`] ran (the migration was cancelled).
    pub fn is_shut(&self) -> bool {
        self.shut.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn shutdown(&self) {
        let mut conns = self.conns.lock().expect("links lock");
        self.shut.store(true, std::sync::atomic::Ordering::SeqCst);
        conns.drain(..).for_each(|c| c.shutdown());
    }
}

/// Dead-link detection for a TCP connection: unacknowledged data and idle
/// links are given up on within [`LINK_TIMEOUT`].
fn tune_tcp(s: &TcpStream) {
    let fd = s.as_raw_fd();
    let _ = s.set_nodelay(true);
    let set = |level: libc::c_int, opt: libc::c_int, v: libc::c_int| {
        // SAFETY: setsockopt with an int option on a socket we own.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                opt,
                &v as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
    };
    set(
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        LINK_TIMEOUT.as_millis() as i32,
    );
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3);
    set(libc::SOL_SOCKET, libc::SO_SNDBUF, SOCKET_BUFFER);
    set(libc::SOL_SOCKET, libc::SO_RCVBUF, SOCKET_BUFFER);
}

/// The descriptors this process inherited at start, which `fd:N` may take
/// (each once); [`note_inherited_fds`] fills it.
static INHERITED: std::sync::Mutex<Vec<RawFd>> = std::sync::Mutex::new(Vec::new());

/// Notes the descriptors (above stderr) this process inherited: call it
/// first thing, before anything is opened. `fd:N` takes only those (or one
/// passed with `getfd`), never a descriptor vmm opened itself.
pub fn note_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let listed: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    // The listing's own descriptor is closed by now: keep the open ones.
    // SAFETY: F_GETFD only asks whether the descriptor is open.
    let open = listed
        .into_iter()
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
    INHERITED.lock().expect("inherited lock").extend(open);
}

/// Whether `fd` is an inherited descriptor not taken yet; takes it.
fn take_inherited(fd: RawFd) -> bool {
    let mut v = INHERITED.lock().expect("inherited lock");
    match v.iter().position(|&f| f == fd) {
        Some(i) => {
            v.remove(i);
            true
        }
        None => false,
    }
}

/// The source's side: connects (within [`LINK_TIMEOUT`]).
pub fn connect(uri: &Uri) -> Result<Conn> {
    match uri {
        Uri::Tcp(a) => {
            let addr = a
                .to_socket_addrs()
                .map_err(Error::io(format!("cannot resolve {a}")))?
                .next()
                .ok_or_else(|| Error::Protocol(format!("{a} resolves to no address")))?;
            let s = TcpStream::connect_timeout(&addr, LINK_TIMEOUT)
                .map_err(Error::io(format!("cannot connect to tcp:{a}")))?;
            tune_tcp(&s);
            Ok(Conn::Tcp(s))
        }
        Uri::Unix(p) => Ok(Conn::Unix(
            UnixStream::connect(p)
                .map_err(Error::io(format!("cannot connect to unix:{}", p.display())))?,
        )),
        Uri::Fd(name) => {
            let fd: i32 = name.parse().map_err(|_| {
                Error::Protocol(format!(
                    "fd:{name}: no descriptor of that name was passed with getfd"
                ))
            })?;
            // SAFETY: fstat on any integer is harmless; the fd is checked
            // to be a socket before it is owned.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: `st` is a valid out-pointer.
            if unsafe { libc::fstat(fd, &mut st) } != 0
                || st.st_mode & libc::S_IFMT != libc::S_IFSOCK
            {
                return Err(Error::Protocol(format!(
                    "fd:{fd} is not an open socket of this process"
                )));
            }
            if !take_inherited(fd) {
                return Err(Error::Protocol(format!(
                    "fd:{fd} is not a descriptor vmm inherited at start: one of its own (a monitor connection, a disk) is never taken; pass one with getfd"
                )));
            }
            // SAFETY: a socket fd handed to us for this migration; we own it
            // from now on.
            Ok(Conn::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
        }
        Uri::File(_) => Err(Error::Protocol("file: is not a connection".into())),
    }
}

/// Binds a unix socket at `path` that only this user can connect to:
/// mode 0600, set on the socket before it has a name, so there is no
/// moment when anyone else could connect. A stale socket at `path` (a
/// previous run's) is replaced; anything else there is refused, never
/// removed.
pub fn bind_unix_private(path: &std::path::Path) -> std::io::Result<UnixListener> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket (left as it is)",
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // SAFETY: socket() has no memory preconditions; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor socket() just returned, owned from here.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain data, zero is a valid empty address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the path is longer than {} bytes", addr.sun_path.len() - 1),
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let raw = fd.as_raw_fd();
    // SAFETY: fchmod, bind and listen on the socket we own, with an
    // address of the size given. Linux makes the socket's file with the
    // mode its inode has at bind (less the umask): 0600 here.
    unsafe {
        if libc::fchmod(raw, 0o600) != 0
            || libc::bind(
                raw,
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            ) != 0
            || libc::listen(raw, 128) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(UnixListener::from(fd))
}

/// The destination's listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub fn bind(uri: &Uri) -> Result<Listener> {
        match uri {
            Uri::Tcp(a) => {
                let l =
                    TcpListener::bind(a).map_err(Error::io(format!("cannot listen on tcp:{a}")))?;
                if l.local_addr().is_ok_and(|s| !s.ip().is_loopback()) {
                    log::warn!(
                        "the incoming migration on tcp:{a} is reachable from the network, without authentication: whoever connects first with a valid stream becomes this VM"
                    );
                }
                Ok(Listener::Tcp(l))
            }
            Uri::Unix(p) => Ok(Listener::Unix(
                bind_unix_private(p)
                    .map_err(Error::io(format!("cannot listen on unix:{}", p.display())))?,
                p.clone(),
            )),
            Uri::Fd(_) | Uri::File(_) => Err(Error::Protocol(format!("cannot listen on {uri:?}"))),
        }
    }

    /// Waits up to `timeout` for a connection to wait in the backlog;
    /// whether one does (also true when poll fails: the accept says why).
    pub(crate) fn wait_readable(&self, timeout: Duration) -> bool {
        use std::os::fd::AsRawFd;
        let fd = match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l, _) => l.as_raw_fd(),
        };
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one pollfd, alive across the call.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        n != 0
            && !(n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted)
    }

    /// Makes [`Listener::try_accept`] return at once when nobody waits.
    pub(crate) fn set_nonblocking(&self) -> Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l, _) => l.set_nonblocking(true),
        }
        .map_err(Error::io("cannot set up the listening socket"))
    }

    /// A connection and who it is from, if one is waiting (on a
    /// non-blocking listener).
    pub(crate) fn try_accept(&self) -> Result<Option<(Conn, String)>> {
        let got = match self {
            Listener::Tcp(l) => l.accept().map(|(s, peer)| {
                tune_tcp(&s);
                (Conn::Tcp(s), peer.to_string())
            }),
            Listener::Unix(l, p) => l
                .accept()
                .map(|(s, _)| (Conn::Unix(s), format!("unix:{}", p.display()))),
        };
        match got {
            Ok((c, peer)) => {
                // Accepted sockets do not inherit non-blocking mode on
                // Linux; say so rather than rely on it.
                let blocking = match &c {
                    Conn::Tcp(s) => s.set_nonblocking(false),
                    Conn::Unix(s) => s.set_nonblocking(false),
                };
                blocking.map_err(Error::io("accept failed"))?;
                log::info!("incoming migration connection from {peer}");
                Ok(Some((c, peer)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(None),
            // Out of descriptors: the connection waits in the backlog
            // until some are closed.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                log::warn!("incoming migration: cannot accept a connection yet: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                Ok(None)
            }
            Err(e) => Err(Error::io("accept failed")(e)),
        }
    }

    /// Removes a unix socket's path (the source has connected).
    pub(crate) fn unlink(&self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TCP_USER_TIMEOUT on a socket, in ms.
    fn user_timeout(c: &Conn) -> libc::c_int {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt with an int out-parameter on a live socket.
        let got = unsafe {
            libc::getsockopt(
                c.raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                &mut v as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        assert_eq!(got, 0, "{}", std::io::Error::last_os_error());
        v
    }

    #[test]
    fn a_passed_tcp_socket_gets_dead_link_detection() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let c = Conn::from(std::os::fd::OwnedFd::from(s));
        assert!(matches!(c, Conn::Tcp(_)));
        assert_eq!(user_timeout(&c), LINK_TIMEOUT.as_millis() as libc::c_int);
        // A unix socket stays one.
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(matches!(
            Conn::from(std::os::fd::OwnedFd::from(a)),
            Conn::Unix(_)
        ));
    }
}
