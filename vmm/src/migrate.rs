//! Live migration: connections (`tcp:`, `unix:`, `fd:`), the precopy
//! engine on the source, and the handshake that decides which side runs
//! the guest.
//!
//! The stream is the savevm stream of [`crate::snapshot`], with RAM sent in
//! passes: the first pass every page anyone touched, each later pass the
//! pages dirtied since the one before — KVM's dirty log of every slot OR
//! the bitmap of the writes devices did. When what is left fits the
//! downtime limit at the bandwidth measured on the last pass, the main loop
//! stops the vCPUs and devices, the rest of RAM and every device's state
//! follow, then EOF.
//!
//! After EOF the two sides talk on the same connection, line by line:
//!
//! ```text
//! destination -> source   LOADED            (or ERR <reason>, any time)
//! source -> destination   GO
//! destination -> source   RUNNING           (its vCPUs run)
//! ```
//!
//! The destination runs the guest only after GO, and the source commits
//! (stays paused, `postmigrate`) only when it sends GO: before that, any
//! failure — a dead or silent link, a destination that rejects the stream
//! or dies — resumes the source with nothing lost. A GO that is lost
//! leaves the guest paused on both sides (never running on both), as QEMU.

use crate::hypervisor::Vm;
use crate::runstate::MigrationStatus;
use anyhow::{anyhow, bail, Context, Result};
use arch::x86_64::layout;
use devices::virtio::Memory as GuestMemoryMmap;
use migration::protocol::{wall_us, Line};
use migration::stream::{Gather, Writer, PAGE_SIZE};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// A silent peer is given up on after this (no FIN, no RST: a cut cable).
pub const LINK_TIMEOUT: Duration = Duration::from_secs(4);

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
    fn shutdown_read(&self) {
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

    fn raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Conn::Tcp(s) => s.as_raw_fd(),
            Conn::Unix(s) => s.as_raw_fd(),
        }
    }

    /// Asks the kernel to timestamp what arrives from now on
    /// (SO_TIMESTAMPNS); false if it will not.
    fn stamp_arrivals(&self) -> bool {
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
    fn recv_stamped(
        &self,
        buf: &mut [u8],
    ) -> std::io::Result<(usize, Option<std::time::SystemTime>)> {
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

/// A line of the return path and when its last byte arrived (if stamped).
type Stamped = (String, Option<std::time::SystemTime>);

/// Splits what a connection receives into lines, each with the arrival
/// time of the segment that completed it.
struct LineReader {
    conn: Conn,
    buf: Vec<u8>,
    at: Option<std::time::SystemTime>,
}

impl LineReader {
    fn new(conn: Conn) -> LineReader {
        LineReader {
            conn,
            buf: Vec::new(),
            at: None,
        }
    }

    /// The next line (without its newline). A read timeout set on the
    /// socket is an error here.
    fn next_line(&mut self) -> std::io::Result<Stamped> {
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
}

/// The source's return path (QEMU's `source_return_path_thread`): one
/// thread reads every line the destination sends, stamped with its
/// arrival, and hands them over in order. The sender checks for a refusal
/// without blocking; nothing else reads the socket.
struct ReturnPath {
    rx: Receiver<std::io::Result<Stamped>>,
    /// Lines taken while looking for a refusal, not yet asked for.
    held: std::cell::RefCell<std::collections::VecDeque<Stamped>>,
    /// Why the reader stopped, once it has (the peer closed, an error).
    ended: std::cell::RefCell<Option<String>>,
    /// The socket, to end the reader when the migration is over.
    conn: Conn,
}

impl ReturnPath {
    fn start(conn: &Conn) -> Result<ReturnPath> {
        let mut lines = LineReader::new(conn.try_clone()?);
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
            .context("cannot start the return-path reader")?;
        Ok(ReturnPath {
            rx,
            held: Default::default(),
            ended: Default::default(),
            conn: conn.try_clone()?,
        })
    }

    /// The next line within `timeout`; `what` says what was awaited.
    fn next(&self, timeout: Duration, what: &str) -> Result<(Line, Option<std::time::SystemTime>)> {
        let held = self.held.borrow_mut().pop_front();
        let (text, at) = match held {
            Some(l) => l,
            None => match self.rx.recv_timeout(timeout) {
                Ok(r) => r.with_context(|| what.to_string())?,
                Err(RecvTimeoutError::Timeout) => {
                    bail!("{what}: no answer within {} s", timeout.as_secs())
                }
                Err(RecvTimeoutError::Disconnected) => match self.ended.borrow().as_deref() {
                    Some(why) => bail!("{what}: {why}"),
                    None => bail!("{what}: the return path ended"),
                },
            },
        };
        Ok((Line::parse(&text)?, at))
    }

    /// Fails with the destination's reason if it has refused the stream
    /// (a line already arrived); never waits.
    fn refused(&self) -> Result<()> {
        while let Ok(r) = self.rx.try_recv() {
            match r {
                Ok(l) => self.held.borrow_mut().push_back(l),
                // Kept for whoever waits next; a reason sent before it
                // still counts.
                Err(e) => *self.ended.borrow_mut() = Some(e.to_string()),
            }
        }
        let held = self.held.borrow();
        if let Some(why) = held.iter().find_map(|(l, _)| match Line::parse(l) {
            Ok(Line::Err(why)) => Some(why),
            _ => None,
        }) {
            bail!("the destination refused the stream: {why}");
        }
        Ok(())
    }
}

impl Drop for ReturnPath {
    fn drop(&mut self) {
        // Wakes the reader (its receive returns 0) so its thread ends.
        self.conn.shutdown_read();
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
    fn write_vectored(&mut self, b: &[std::io::IoSlice]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write_vectored(b),
            Conn::Unix(s) => s.write_vectored(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
    // Small buffers: what the source counts as sent is close to what the
    // destination has loaded, so the last pass (the downtime) is not
    // stuck behind megabytes queued in the sockets.
    set(libc::SOL_SOCKET, libc::SO_SNDBUF, SOCKET_BUFFER);
    set(libc::SOL_SOCKET, libc::SO_RCVBUF, SOCKET_BUFFER);
}

/// Below this, the rest goes in the stop-and-copy pass at once.
const QUICK_FINISH_MS: u64 = 2;

/// Socket buffer size for migration connections (the kernel doubles it).
const SOCKET_BUFFER: libc::c_int = 256 << 10;

pub use migration::uri::Uri;

/// A socket passed with `getfd`, as a connection.
pub fn conn_from_fd(fd: std::os::fd::OwnedFd) -> Conn {
    Conn::Unix(UnixStream::from(fd))
}

/// The source's side: connects (within [`LINK_TIMEOUT`]).
pub fn connect(uri: &Uri) -> Result<Conn> {
    match uri {
        Uri::Tcp(a) => {
            let addr = a
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve {a}"))?
                .next()
                .ok_or_else(|| anyhow!("{a} resolves to no address"))?;
            let s = TcpStream::connect_timeout(&addr, LINK_TIMEOUT)
                .with_context(|| format!("cannot connect to tcp:{a}"))?;
            tune_tcp(&s);
            Ok(Conn::Tcp(s))
        }
        Uri::Unix(p) => {
            Ok(Conn::Unix(UnixStream::connect(p).with_context(|| {
                format!("cannot connect to unix:{}", p.display())
            })?))
        }
        Uri::Fd(name) => {
            let fd: i32 = name.parse().map_err(|_| {
                anyhow!("fd:{name}: no descriptor of that name was passed with getfd")
            })?;
            // SAFETY: fstat on any integer is harmless; the fd is checked
            // to be a socket before it is owned.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: `st` is a valid out-pointer.
            if unsafe { libc::fstat(fd, &mut st) } != 0
                || st.st_mode & libc::S_IFMT != libc::S_IFSOCK
            {
                bail!("fd:{fd} is not an open socket of this process");
            }
            // SAFETY: a socket fd handed to us for this migration; we own it
            // from now on.
            Ok(Conn::Unix(unsafe { UnixStream::from_raw_fd(fd) }))
        }
        Uri::File(_) => bail!("file: is not a connection"),
    }
}

/// The destination's listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, std::path::PathBuf),
}

impl Listener {
    pub fn bind(uri: &Uri) -> Result<Listener> {
        match uri {
            Uri::Tcp(a) => Ok(Listener::Tcp(
                TcpListener::bind(a).with_context(|| format!("cannot listen on tcp:{a}"))?,
            )),
            Uri::Unix(p) => {
                let _ = std::fs::remove_file(p);
                Ok(Listener::Unix(
                    UnixListener::bind(p)
                        .with_context(|| format!("cannot listen on unix:{}", p.display()))?,
                    p.clone(),
                ))
            }
            Uri::Fd(_) | Uri::File(_) => bail!("cannot listen on {uri:?}"),
        }
    }

    fn accept_one(&self) -> Result<Conn> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().context("accept failed")?;
                log::info!("incoming migration connection from {peer}");
                tune_tcp(&s);
                Ok(Conn::Tcp(s))
            }
            Listener::Unix(l, _) => Ok(Conn::Unix(l.accept().context("accept failed")?.0)),
        }
    }

    /// Accepts the migration: any multifd channels (the source connects
    /// them first), then the main stream. Channel receivers start at once
    /// and write into `mem` when it is there.
    pub fn accept(self, mem: Arc<std::sync::OnceLock<(GuestMemoryMmap, u64)>>) -> Result<Incoming> {
        let mut channels = vec![];
        loop {
            let mut c = self.accept_one()?;
            c.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut head = [0u8; 8];
            c.read_exact(&mut head).context("the source sent nothing")?;
            if &head != CHANNEL_MAGIC {
                if let Listener::Unix(_, p) = &self {
                    let _ = std::fs::remove_file(p);
                }
                return Ok(Incoming {
                    main: c,
                    head,
                    channels,
                });
            }
            let mut id = [0u8; 8];
            c.read_exact(&mut id)?;
            let index = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
            log::info!("multifd channel {index} connected");
            let mem = mem.clone();
            channels.push(
                std::thread::Builder::new()
                    .name(format!("multifd-recv{index}"))
                    .spawn(move || receive_channel(c, &mem))
                    .context("cannot start a multifd receiver")?,
            );
        }
    }
}

/// An accepted incoming migration.
pub struct Incoming {
    pub main: Conn,
    /// The first bytes of the main stream (read to tell it from channels).
    pub head: [u8; 8],
    /// multifd receivers: each ends with the pages it wrote, or why not.
    pub channels: Vec<std::thread::JoinHandle<Result<u64, String>>>,
}

/// The start of a multifd channel: magic, then be32 index, be32 count.
const CHANNEL_MAGIC: &[u8; 8] = b"VMMMFD01";
/// A channel record: be64 (block offset | flags), then the page for DATA.
const CH_DATA: u64 = 1;
const CH_ZERO: u64 = 2;
const CH_END: u64 = u64::MAX;
/// Answered with [`Line::Sync`] on the channel once everything before it is in.
const CH_SYNC: u64 = u64::MAX - 1;

/// Writes one channel's pages into guest memory until its END.
fn receive_channel(
    c: Conn,
    mem: &std::sync::OnceLock<(GuestMemoryMmap, u64)>,
) -> Result<u64, String> {
    let mut answer = c.try_clone().map_err(|e| format!("multifd channel: {e}"))?;
    let mut r = BufReader::with_capacity(256 << 10, c);
    let (mem, ram) = loop {
        if let Some(m) = mem.get() {
            break m;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut sink = crate::snapshot::GuestRam::new(mem, *ram);
    let mut n = 0u64;
    loop {
        let mut h = [0u8; 8];
        r.read_exact(&mut h)
            .map_err(|e| format!("multifd channel: {e}"))?;
        let h = u64::from_be_bytes(h);
        if h == CH_END {
            return Ok(n);
        }
        if h == CH_SYNC {
            answer
                .write_all(&Line::Sync.encode())
                .map_err(|e| format!("multifd channel: {e}"))?;
            continue;
        }
        let offset = h & !(PAGE_SIZE as u64 - 1);
        if offset >= *ram {
            return Err(format!(
                "multifd channel: page offset {offset:#x} beyond RAM ({ram:#x})"
            ));
        }
        match h & (PAGE_SIZE as u64 - 1) {
            CH_DATA => {
                // Straight from the socket's buffer into guest RAM.
                let target = sink
                    .page_mut(offset)
                    .ok_or_else(|| format!("multifd channel: no guest page at {offset:#x}"))?;
                r.read_exact(target)
                    .map_err(|e| format!("multifd channel: {e}"))?;
            }
            CH_ZERO => {
                migration::stream::RamSink::page(
                    &mut sink,
                    crate::snapshot::RAM_BLOCK,
                    offset,
                    &ZERO_PAGE,
                );
                if let Some(e) = sink.error.take() {
                    return Err(e);
                }
            }
            f => {
                return Err(format!(
                    "multifd channel: bad record flags {f:#x} at page {n}"
                ))
            }
        }
        n += 1;
    }
}

static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// The source's multifd channels: connected before the main stream.
pub fn connect_channels(uri: &Uri, n: u64) -> Result<Vec<Conn>> {
    (0..n)
        .map(|i| {
            let mut c = connect(uri)?;
            let mut head = CHANNEL_MAGIC.to_vec();
            head.extend_from_slice(&(i as u32).to_be_bytes());
            head.extend_from_slice(&(n as u32).to_be_bytes());
            c.write_all(&head)
                .context("cannot start a multifd channel")?;
            Ok(c)
        })
        .collect()
}

/// The channel a page travels on: a page always takes the same one, so a
/// newer copy never overtakes an older one.
fn channel_of(offset: u64, n: usize) -> usize {
    ((offset >> 21) as usize) % n
}

/// Tunables, as QEMU's `migrate-set-parameters` / `-capabilities`.
#[derive(Debug, Clone)]
pub struct Params {
    pub downtime_limit_ms: u64,
    /// Bytes per second; 0 = no limit.
    pub max_bandwidth: u64,
    pub multifd_channels: u64,
    pub auto_converge: bool,
    pub multifd: bool,
    /// Auto-converge: the first throttle and each step, percent.
    pub throttle_initial: u64,
    pub throttle_increment: u64,
    pub max_throttle: u64,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            downtime_limit_ms: 300,
            max_bandwidth: 0,
            multifd_channels: 2,
            auto_converge: false,
            multifd: false,
            throttle_initial: 20,
            throttle_increment: 10,
            max_throttle: 99,
        }
    }
}

impl Params {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "downtime-limit": self.downtime_limit_ms,
            "max-bandwidth": self.max_bandwidth,
            "multifd-channels": self.multifd_channels,
            "cpu-throttle-initial": self.throttle_initial,
            "cpu-throttle-increment": self.throttle_increment,
            "max-cpu-throttle": self.max_throttle,
        })
    }

    /// Applies `migrate-set-parameters` arguments; an unknown or invalid
    /// one changes nothing.
    pub fn set(&mut self, args: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
        let mut next = self.clone();
        for (k, v) in args {
            let n = v
                .as_u64()
                .ok_or_else(|| format!("Parameter '{k}' expects a non-negative integer"))?;
            match k.as_str() {
                "downtime-limit" if (1..=2_000_000).contains(&n) => next.downtime_limit_ms = n,
                "downtime-limit" => return Err(format!("Parameter 'downtime-limit' expects an integer in the range of 1 to 2000000 milliseconds, not {n}")),
                "max-bandwidth" => next.max_bandwidth = n,
                "multifd-channels" if (1..=255).contains(&n) => next.multifd_channels = n,
                "multifd-channels" => return Err(format!("Parameter 'multifd-channels' expects a value between 1 and 255, not {n}")),
                "cpu-throttle-initial" if (1..=99).contains(&n) => next.throttle_initial = n,
                "cpu-throttle-increment" if (1..=99).contains(&n) => next.throttle_increment = n,
                "max-cpu-throttle" if (1..=99).contains(&n) => next.max_throttle = n,
                "cpu-throttle-initial" | "cpu-throttle-increment" | "max-cpu-throttle" => {
                    return Err(format!("Parameter '{k}' expects an integer in the range of 1 to 99, not {n}"))
                }
                _ => return Err(format!("Parameter '{k}' is unexpected")),
            }
        }
        *self = next;
        Ok(())
    }
}

/// What `query-migrate` reports while a migration runs, updated by the
/// migration thread.
#[derive(Default)]
pub struct Progress {
    pub transferred: AtomicU64,
    pub remaining: AtomicU64,
    pub duplicate: AtomicU64,
    pub normal: AtomicU64,
    pub passes: AtomicU64,
    pub pages_per_second: AtomicU64,
    pub dirty_pages_rate: AtomicU64,
    pub mbps_x100: AtomicU64,
    pub setup_ms: AtomicU64,
    pub downtime_ms: AtomicU64,
    pub expected_downtime_ms: AtomicU64,
    pub throttle_pct: AtomicU64,
    /// multifd connections carrying RAM (0: the main stream does).
    pub channels: AtomicU64,
    /// Why the migration has not converged yet, when it has not.
    pub not_converging: Mutex<Option<String>>,
    pub cancel: AtomicBool,
}

impl Progress {
    /// `pages` dirty pages handed to the connection: `remaining` counts
    /// down through a pass, so progress shows while the pass runs.
    fn pages_sent(&self, pages: u64) {
        let _ = self
            .remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r.saturating_sub(pages * PAGE_SIZE as u64))
            });
    }
}

/// Messages from the migration thread to the main loop.
pub enum Msg {
    /// RAM is close enough: stop the VM and hand over every device's state
    /// (the reply), written by `write` into the stream.
    Converged(Sender<Result<DeviceState, String>>),
    /// An event for QMP clients.
    Event(&'static str, serde_json::Value),
    /// The migration ended: Ok = the destination runs the guest.
    Done(Result<(), String>),
    /// A save to a file ended.
    Saved(Result<crate::snapshot::Stats, String>),
}

/// Every device's state, taken by the main loop once the VM stopped.
pub struct DeviceState {
    pub sections: Vec<crate::snapshot::Section>,
    pub paused_at: Instant,
}

/// Everything the source thread needs.
pub struct Source {
    pub conn: Conn,
    /// multifd channels for RAM (empty: RAM on the main stream).
    pub channels: Vec<Conn>,
    pub mem: GuestMemoryMmap,
    pub vm: Arc<dyn Vm>,
    pub ram: u64,
    pub machine: &'static str,
    pub params: Params,
    pub progress: Arc<Progress>,
    pub ctl: Box<dyn Fn(Msg) + Send>,
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
    fn write_vectored(&mut self, b: &[std::io::IoSlice]) -> std::io::Result<usize> {
        self.send(|w| w.write_vectored(b))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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

/// Block offset of the page at `i` in region `r` (regions in order: low
/// RAM, then RAM above 4 GiB).
fn block_offset(ram: u64, region_start: u64, i: usize) -> u64 {
    let base = if region_start >= layout::HIGH_RAM_START {
        layout::low_ram_size(ram)
    } else {
        0
    };
    base + (i * PAGE_SIZE) as u64
}

/// The dirty pages of every region: KVM's log OR the devices' bitmap.
fn dirty_pages(vm: &dyn Vm, mem: &GuestMemoryMmap) -> Result<Vec<Vec<u64>>> {
    let mut out = vec![];
    for (slot, r) in mem.iter().enumerate() {
        let mut kvm = vm.dirty_log(slot as u32)?;
        let dev = region_bitmap(r).get_and_reset();
        for (i, w) in dev.iter().enumerate() {
            if let Some(k) = kvm.get_mut(i) {
                *k |= w;
            }
        }
        out.push(kvm);
    }
    Ok(out)
}

/// The bitmap of the writes devices did to region `r`.
fn region_bitmap(
    r: &vm_memory::GuestRegionMmap<vm_memory::bitmap::AtomicBitmap>,
) -> &vm_memory::bitmap::AtomicBitmap {
    let m: &vm_memory::MmapRegion<vm_memory::bitmap::AtomicBitmap> = r;
    m.bitmap()
}

/// The indices of the set bits below `n`, skipping empty words (a pass
/// over a large guest costs what is dirty, not its size).
fn set_bits(bits: &[u64], n: usize) -> impl Iterator<Item = usize> + '_ {
    bits.iter().enumerate().flat_map(move |(wi, &w)| {
        let mut w = w;
        std::iter::from_fn(move || {
            if w == 0 {
                return None;
            }
            let b = w.trailing_zeros() as usize;
            w &= w - 1;
            Some(wi * 64 + b)
        })
        .filter(move |&i| i < n)
    })
}

fn count(bits: &[Vec<u64>]) -> u64 {
    bits.iter().flatten().map(|w| w.count_ones() as u64).sum()
}

impl Source {
    /// Runs the migration to its end; reports through `ctl`.
    pub fn run(self) {
        let vm = self.vm.clone();
        let progress = self.progress.clone();
        let ctl_done = |r| (self.ctl)(Msg::Done(r));
        let r = self.precopy();
        let _ = vm.set_dirty_logging(false);
        if let Err(e) = &r {
            log::error!("migration failed: {e:#}");
        }
        progress.throttle_pct.store(0, Ordering::SeqCst);
        ctl_done(r.map_err(|e| format!("{e:#}")));
    }

    fn precopy(&self) -> Result<()> {
        let t0 = Instant::now();
        let p = &*self.progress;
        // Every write from now on is seen: KVM's log for the vCPUs, the
        // bitmap for devices (cleared of what happened before).
        self.vm.set_dirty_logging(true)?;
        for r in self.mem.iter() {
            region_bitmap(r).reset();
        }
        // The return path: SYNC answers now, the handshake at the end.
        let rp = ReturnPath::start(&self.conn)?;
        let mut chan_lines = self
            .channels
            .iter()
            .map(|c| c.try_clone().map(LineReader::new))
            .collect::<std::io::Result<Vec<_>>>()?;
        let meter = Meter {
            w: self.conn.try_clone()?,
            progress: p,
            max_bandwidth: self.params.max_bandwidth,
            window: Instant::now(),
            window_bytes: 0,
        };
        // No BufWriter: pages are gathered straight from guest memory
        // (stream::Gather), the other records are written whole.
        let mut w = Writer::new(meter, self.machine)?;
        let n = self.channels.len().max(1) as u64;
        p.channels
            .store(self.channels.len() as u64, Ordering::SeqCst);
        let mut chans = self
            .channels
            .iter()
            .map(|c| {
                Ok(Meter {
                    w: c.try_clone()?,
                    progress: p,
                    max_bandwidth: self.params.max_bandwidth / n,
                    window: Instant::now(),
                    window_bytes: 0,
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let id = w.ram_start(&[(crate::snapshot::RAM_BLOCK, self.ram)])?;
        p.setup_ms
            .store(t0.elapsed().as_millis() as u64, Ordering::SeqCst);
        (self.ctl)(Msg::Event(
            "MIGRATION",
            json!({"status": MigrationStatus::Active.as_str()}),
        ));

        // Pass 1: every page anyone ever touched (the rest is zero on both
        // sides: the destination's memory is fresh).
        let mut dirty: Vec<Vec<u64>> = vec![];
        for r in self.mem.iter() {
            let bytes = self.region_bytes(r)?;
            let pages = bytes.len() / PAGE_SIZE;
            let touched = crate::snapshot::touched_pages(bytes.as_ptr() as usize, bytes.len());
            let mut bits = vec![0u64; pages.div_ceil(64)];
            for i in 0..pages {
                if touched.as_ref().is_none_or(|t| t[i]) {
                    bits[i / 64] |= 1 << (i % 64);
                }
            }
            dirty.push(bits);
        }
        log::debug!(
            "setup: dirty logging + touched-page scan took {} us",
            t0.elapsed().as_micros()
        );
        let mut pass = 1u64;
        let mut bandwidth = 0f64; // bytes per second, measured
        let mut throttle = 0u64;
        let mut behind = 0u32;
        let mut prev_left = u64::MAX;
        loop {
            let pages = count(&dirty);
            p.remaining
                .store(pages * PAGE_SIZE as u64, Ordering::SeqCst);
            let start = Instant::now();
            let before = p.transferred.load(Ordering::SeqCst);
            self.send_pages(&mut w, &mut chans, id, &dirty, false, &rp)?;
            w.flush()?;
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
            (self.ctl)(Msg::Event("MIGRATION_PASS", json!({"pass": pass})));
            dirty = dirty_pages(&*self.vm, &self.mem)?;
            let left = count(&dirty);
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
            if expected_ms <= self.params.downtime_limit_ms
                && (expected_ms <= QUICK_FINISH_MS || !shrinking)
            {
                {
                    // Let the destination catch up with what the sockets
                    // still hold while the guest runs, then send what was
                    // dirtied meanwhile: the pause covers only the rest.
                    if chans.is_empty() {
                        w.ram_pages(id, false, [])?;
                        w.flush()?;
                        let (l, _) = rp.next(
                            Duration::from_secs(10),
                            "waiting for the destination to catch up",
                        )?;
                        match l {
                            Line::Sync => {}
                            Line::Err(why) => bail!("the destination refused the stream: {why}"),
                            other => bail!("the destination answered {other} instead of SYNC"),
                        }
                    } else {
                        // Each channel: a SYNC record, answered when the
                        // destination has written everything before it.
                        for (c, conn) in chans.iter_mut().zip(&self.channels) {
                            c.write_all(&CH_SYNC.to_be_bytes())?;
                            c.flush()?;
                            conn.set_read_timeout(Some(Duration::from_secs(10)))?;
                        }
                        for lines in &mut chan_lines {
                            let (l, _) = lines
                                .next_line()
                                .context("waiting for a multifd channel to catch up")?;
                            if Line::parse(&l) != Ok(Line::Sync) {
                                bail!("a multifd channel answered '{l}' instead of SYNC");
                            }
                        }
                    }
                    let more = dirty_pages(&*self.vm, &self.mem)?;
                    for (d, m) in dirty.iter_mut().zip(&more) {
                        for (a, b) in d.iter_mut().zip(m) {
                            *a |= b;
                        }
                    }
                    p.remaining
                        .store(count(&dirty) * PAGE_SIZE as u64, Ordering::SeqCst);
                    self.send_pages(&mut w, &mut chans, id, &dirty, false, &rp)?;
                    w.flush()?;
                    dirty = dirty_pages(&*self.vm, &self.mem)?;
                }
                break;
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
                    self.params.downtime_limit_ms,
                    if self.params.auto_converge { "; throttling the vCPUs" } else { "; auto-converge is off" }
                ));
                if self.params.auto_converge && behind >= 2 {
                    throttle = if throttle == 0 {
                        self.params.throttle_initial
                    } else {
                        (throttle + self.params.throttle_increment).min(self.params.max_throttle)
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

        // Stop the VM; the main loop hands back every device's state.
        let (tx, rx) = std::sync::mpsc::channel();
        (self.ctl)(Msg::Converged(tx));
        let devices = rx
            .recv()
            .map_err(|_| anyhow!("the VM went away"))?
            .map_err(|e| anyhow!("cannot stop the VM: {e}"))?;
        log::debug!(
            "downtime: devices taken at +{} us (wall {})",
            devices.paused_at.elapsed().as_micros(),
            wall_us()
        );
        let last = dirty_pages(&*self.vm, &self.mem)?;
        log::debug!(
            "downtime: dirty log read at +{} us",
            devices.paused_at.elapsed().as_micros()
        );
        for (d, l) in dirty.iter_mut().zip(&last) {
            for (a, b) in d.iter_mut().zip(l) {
                *a |= b;
            }
        }
        p.remaining
            .store(count(&dirty) * PAGE_SIZE as u64, Ordering::SeqCst);
        self.send_pages(&mut w, &mut chans, id, &dirty, true, &rp)?;
        log::debug!(
            "downtime: last {} pages sent at +{} us",
            count(&dirty),
            devices.paused_at.elapsed().as_micros()
        );
        for (idstr, instance, desc, state) in &devices.sections {
            w.section(idstr, *instance, desc, state)?;
        }
        let mut out = w.finish()?;
        out.flush()?;
        drop(out);
        log::debug!(
            "downtime: stream sent at +{} us (wall {} us)",
            devices.paused_at.elapsed().as_micros(),
            wall_us()
        );
        p.remaining.store(0, Ordering::SeqCst);

        // The handshake: only a loaded destination gets GO.
        let answer = loop {
            let (l, _) = rp.next(
                Duration::from_secs(30),
                "the destination did not confirm the stream",
            )?;
            match l {
                Line::Sync => continue,
                other => break other,
            }
        };
        match answer {
            Line::Loaded => {}
            Line::Err(why) => bail!("the destination refused the stream: {why}"),
            other => bail!("the destination answered {other} instead of LOADED"),
        }
        log::debug!(
            "downtime: LOADED at +{} us",
            devices.paused_at.elapsed().as_micros()
        );
        // The downtime ends when RUNNING reaches this host: the kernel's
        // receive timestamp, not when this thread gets to read it (on a
        // busy host the destination's freshly started vCPU can delay that
        // by milliseconds).
        let paused_wall = std::time::SystemTime::now() - devices.paused_at.elapsed();
        let mut go = self.conn.try_clone()?;
        go.write_all(&Line::Go.encode())
            .context("cannot send GO to the destination")?;
        // Committed: from here the destination owns the guest.
        let answer = rp.next(LINK_TIMEOUT, "waiting for RUNNING");
        let mut downtime = devices.paused_at.elapsed();
        match answer {
            Ok((Line::Running, at)) => {
                if let Some(d) = at.and_then(|t| t.duration_since(paused_wall).ok()) {
                    downtime = d.min(downtime);
                }
            }
            Ok((l, _)) => log::warn!("the destination answered {l} after GO"),
            Err(e) => log::warn!("no RUNNING from the destination after GO: {e:#}"),
        }
        log::debug!(
            "downtime: RUNNING arrived at +{} us, read at +{} us",
            downtime.as_micros(),
            devices.paused_at.elapsed().as_micros()
        );
        p.downtime_ms
            .store(downtime.as_millis() as u64, Ordering::SeqCst);
        Ok(())
    }

    /// One pass: the pages set in `dirty`.
    fn send_pages<W: Write, C: Write + Send>(
        &self,
        w: &mut Writer<W>,
        chans: &mut [C],
        id: u32,
        dirty: &[Vec<u64>],
        last: bool,
        peer: &ReturnPath,
    ) -> Result<()> {
        if !chans.is_empty() {
            self.send_channels(chans, dirty, last, peer)?;
            if last {
                w.ram_pages(id, true, [])?;
            }
            return Ok(());
        }
        let p = &*self.progress;
        for (ri, r) in self.mem.iter().enumerate() {
            peer.refused()?;
            let bytes = self.region_bytes(r)?;
            let bits = &dirty[ri];
            let start = r.start_addr().0;
            let pages = set_bits(bits, bytes.len() / PAGE_SIZE).map(|i| {
                p.pages_sent(1);
                (
                    crate::snapshot::RAM_BLOCK,
                    block_offset(self.ram, start, i),
                    &bytes[i * PAGE_SIZE..(i + 1) * PAGE_SIZE],
                )
            });
            let (sent, zeros) = w.ram_pages(id, false, pages)?;
            p.duplicate.fetch_add(zeros, Ordering::Relaxed);
            p.normal.fetch_add(sent - zeros, Ordering::Relaxed);
        }
        if last {
            w.ram_pages(id, true, [])?;
        }
        Ok(())
    }
}

impl Source {
    /// Region `r` of guest RAM as bytes.
    fn region_bytes(&self, r: &impl GuestMemoryRegion) -> Result<&[u8]> {
        let host = self
            .mem
            .get_host_address(r.start_addr())
            .map_err(|e| anyhow!("guest memory: {e}"))?;
        // SAFETY: the region is mapped for the VM's lifetime; the guest may
        // write it concurrently (torn pages are dirty again and resent in
        // the next pass, or the VM is stopped).
        Ok(unsafe { std::slice::from_raw_parts(host as *const u8, r.len() as usize) })
    }

    /// One pass over the multifd channels, in parallel; with `last`, each
    /// channel ends with END.
    fn send_channels<C: Write + Send>(
        &self,
        chans: &mut [C],
        dirty: &[Vec<u64>],
        last: bool,
        peer: &ReturnPath,
    ) -> Result<()> {
        peer.refused()?;
        let n = chans.len();
        let p = &*self.progress;
        // (block offset, page) for every dirty page, per channel.
        let mut work: Vec<Vec<(u64, &[u8])>> = vec![vec![]; n];
        for (ri, r) in self.mem.iter().enumerate() {
            let bytes = self.region_bytes(r)?;
            for i in set_bits(&dirty[ri], bytes.len() / PAGE_SIZE) {
                let off = block_offset(self.ram, r.start_addr().0, i);
                work[channel_of(off, n)].push((off, &bytes[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]));
            }
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = chans
                .iter_mut()
                .zip(work)
                .map(|(c, pages)| {
                    scope.spawn(move || -> std::io::Result<()> {
                        let mut g = Gather::new();
                        // Counted per batch written: the channels share
                        // the counter.
                        let mut batch = 0;
                        for (off, d) in pages {
                            batch += 1;
                            if crate::snapshot::is_zero(d) {
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
        .context("sending RAM on a multifd channel")?;
        Ok(())
    }
}

/// One handshake line, without its newline.
pub fn read_line<R: BufRead>(r: &mut R) -> Result<String> {
    let mut s = String::new();
    let n = r.read_line(&mut s)?;
    if n == 0 {
        bail!("the connection closed");
    }
    Ok(s.trim_end().to_string())
}

/// The destination tells the source why it refused the stream, then keeps
/// reading (so the source sees the reason, not a reset) for a moment.
pub fn refuse(conn: &mut Conn, why: &str) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    /// The engine against a VM side without KVM: guest RAM, and a dirty
    /// log that reports the pages it rewrites after the first pass, as a
    /// running guest would.
    struct FakeVm {
        mem: GuestMemoryMmap,
        logs: std::sync::atomic::AtomicUsize,
    }

    /// Pages the fake guest's vCPUs rewrite after the first pass (KVM's
    /// log reports them), and pages a device rewrites then (only the
    /// devices' dirty bitmap knows).
    const REWRITTEN: [usize; 2] = [3, 700];
    const DEVICE_WRITTEN: [usize; 2] = [5, 1500];

    impl devices::virtio::VmOps for FakeVm {
        fn signal_msi(&self, _: u64, _: u32) -> std::io::Result<()> {
            Ok(())
        }
        fn set_irq_line(&self, _: u32, _: bool) -> std::io::Result<()> {
            Ok(())
        }
        fn add_doorbell(&self, _: &EventFd, _: devices::virtio::Doorbell) -> std::io::Result<()> {
            Ok(())
        }
        fn remove_doorbell(
            &self,
            _: &EventFd,
            _: devices::virtio::Doorbell,
        ) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Vm for FakeVm {
        unsafe fn add_memory(
            &self,
            _: u32,
            _: u64,
            _: u64,
            _: *mut u8,
        ) -> Result<(), crate::hypervisor::Error> {
            Ok(())
        }
        fn set_dirty_logging(&self, _: bool) -> Result<(), crate::hypervisor::Error> {
            Ok(())
        }
        fn dirty_log(&self, _: u32) -> Result<Vec<u64>, crate::hypervisor::Error> {
            let pages = self
                .mem
                .iter()
                .next()
                .map_or(0, |r| r.len() as usize / PAGE_SIZE);
            let mut bits = vec![0u64; pages.div_ceil(64)];
            if self.logs.fetch_add(1, Ordering::SeqCst) == 0 {
                // As a vCPU writes: straight into the mapping, unseen by
                // the devices' bitmap, so only this log tells.
                let host = self
                    .mem
                    .get_host_address(vm_memory::GuestAddress(0))
                    .unwrap();
                for p in REWRITTEN {
                    // SAFETY: the page lies inside the 8 MiB region `host`
                    // maps, which `self.mem` keeps alive.
                    unsafe { std::ptr::write_bytes(host.add(p * PAGE_SIZE), 0xee, 64) };
                    bits[p / 64] |= 1 << (p % 64);
                }
                // As a device writes: through guest memory, whose bitmap
                // records it; this log does not.
                for p in DEVICE_WRITTEN {
                    let addr = vm_memory::GuestAddress((p * PAGE_SIZE) as u64);
                    vm_memory::Bytes::write_slice(&self.mem, &[0xdd; 64], addr).unwrap();
                }
            }
            Ok(bits)
        }
        fn add_irqfd(&self, _: &EventFd, _: u32) -> Result<(), crate::hypervisor::Error> {
            Ok(())
        }
        fn create_vcpu(
            &self,
            _: u8,
        ) -> Result<Box<dyn crate::hypervisor::Vcpu>, crate::hypervisor::Error> {
            Err(crate::hypervisor::Error {
                what: "the fake VM has no vCPUs",
                source: std::io::Error::other("fake"),
            })
        }
        fn clock(&self) -> Result<u64, crate::hypervisor::Error> {
            Ok(0)
        }
        fn set_clock(&self, _: u64) -> Result<(), crate::hypervisor::Error> {
            Ok(())
        }
        fn state_description(&self) -> &'static migration::vmstate::Description {
            &crate::snapshot::KVMCLOCK
        }
        fn save(&self) -> Result<crate::hypervisor::Blobs, crate::hypervisor::Error> {
            Ok(vec![])
        }
        fn restore(&self, _: &crate::hypervisor::Blobs) -> Result<(), crate::hypervisor::Error> {
            Ok(())
        }
    }

    /// A destination's RAM as one buffer.
    struct VecRam(Vec<u8>);

    impl migration::stream::RamSink for VecRam {
        fn block_len(&self, name: &str) -> Option<u64> {
            (name == crate::snapshot::RAM_BLOCK).then_some(self.0.len() as u64)
        }
        fn page(&mut self, _: &str, offset: u64, data: &[u8]) {
            let o = offset as usize;
            self.0[o..o + PAGE_SIZE].copy_from_slice(data);
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

    const RAM: u64 = 8 << 20;
    const MACHINE: &str = "pc-q35-test";

    /// Migrates 8 MiB of patterned RAM over a socket pair to a destination
    /// thread behaving as `dest`; returns the source's end and the RAM the
    /// destination loaded.
    fn migrate_to(dest: Dest) -> (Result<(), String>, Option<Vec<u8>>, Vec<u8>) {
        use vm_memory::Bytes;
        let (a, b) = UnixStream::pair().unwrap();
        let mem =
            GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), RAM as usize)]).unwrap();
        for p in 0..(RAM as usize / PAGE_SIZE) {
            if p % 5 != 0 {
                let addr = vm_memory::GuestAddress((p * PAGE_SIZE) as u64);
                mem.write_slice(&[p as u8 | 1; 32], addr).unwrap();
            }
        }
        let dst = std::thread::spawn(move || -> Option<Vec<u8>> {
            let mut answer = b.try_clone().unwrap();
            let drain = |mut c: UnixStream| {
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = std::io::copy(&mut c, &mut std::io::sink());
            };
            let mut r =
                migration::stream::Reader::new(BufReader::new(b.try_clone().unwrap()), MACHINE)
                    .unwrap();
            if let Dest::Refuses = dest {
                answer
                    .write_all(&Line::Err("machine type received is 'pc-q35-x'".into()).encode())
                    .unwrap();
                drain(b);
                return None;
            }
            let mut ram = VecRam(vec![0; RAM as usize]);
            let mut started = false;
            loop {
                match r.next_record(&|_, _| None, &mut ram).unwrap() {
                    migration::stream::Record::Ram { pages, last } => {
                        if pages == 0 && !last && std::mem::replace(&mut started, true) {
                            answer.write_all(&Line::Sync.encode()).unwrap();
                        }
                    }
                    migration::stream::Record::Eof { .. } => break,
                    migration::stream::Record::Section { idstr, .. } => panic!("section {idstr}"),
                }
            }
            match dest {
                Dest::Answers(l) => {
                    answer.write_all(format!("{l}\n").as_bytes()).unwrap();
                    drain(b);
                    return Some(ram.0);
                }
                _ => answer.write_all(&Line::Loaded.encode()).unwrap(),
            }
            let mut go = LineReader::new(Conn::Unix(b));
            assert_eq!(go.next_line().unwrap().0, "GO");
            answer.write_all(&Line::Running.encode()).unwrap();
            Some(ram.0)
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let source = Source {
            conn: Conn::Unix(a),
            channels: vec![],
            mem: mem.clone(),
            vm: Arc::new(FakeVm {
                mem: mem.clone(),
                logs: Default::default(),
            }),
            ram: RAM,
            machine: MACHINE,
            params: Params::default(),
            progress: Arc::new(Progress::default()),
            ctl: Box::new(move |m| match m {
                Msg::Converged(reply) => {
                    let _ = reply.send(Ok(DeviceState {
                        sections: vec![],
                        paused_at: Instant::now(),
                    }));
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
        let mut src = vec![0u8; RAM as usize];
        mem.read_slice(&mut src, vm_memory::GuestAddress(0))
            .unwrap();
        (done, loaded, src)
    }

    #[test]
    fn a_full_precopy_moves_every_page_and_the_rewritten_ones_again() {
        let (done, loaded, src) = migrate_to(Dest::Good);
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
    fn a_refusing_destination_ends_the_migration_with_its_reason() {
        let (done, _, _) = migrate_to(Dest::Refuses);
        let e = done.unwrap_err();
        assert!(e.contains("refused") && e.contains("pc-q35-x"), "{e}");
    }

    #[test]
    fn a_return_path_line_nobody_speaks_ends_the_migration_naming_it() {
        let (done, _, _) = migrate_to(Dest::Answers("HELLO"));
        let e = done.unwrap_err();
        assert!(e.contains("'HELLO'"), "{e}");
        // A known line out of place is named too.
        let (done, _, _) = migrate_to(Dest::Answers("RUNNING"));
        let e = done.unwrap_err();
        assert!(e.contains("RUNNING instead of LOADED"), "{e}");
    }

    /// A connected pair: the test's end and the VMM's.
    fn pair() -> (TcpStream, Conn) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (peer, Conn::Tcp(l.accept().unwrap().0))
    }

    #[test]
    fn running_carries_its_kernel_arrival_time() {
        let (mut peer, conn) = pair();
        assert!(conn.stamp_arrivals());
        let mut lines = LineReader::new(conn);
        let before = std::time::SystemTime::now();
        // In two pieces, the line's end arriving last.
        peer.write_all(b"RUNN").unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let sent = std::time::SystemTime::now();
        peer.write_all(b"ING\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let (line, at) = lines.next_line().unwrap();
        let read = std::time::SystemTime::now();
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
        assert!(t0.elapsed() < Duration::from_millis(50));
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
        std::thread::sleep(Duration::from_millis(50));
        let e = rp.refused().unwrap_err().to_string();
        assert!(e.contains("refused") && e.contains("pc-q35-7.2"), "{e}");
        assert!(matches!(
            rp.next(Duration::from_secs(5), "x").unwrap().0,
            Line::Err(_)
        ));
        // A line nobody speaks is an error naming it; silence times out.
        peer.write_all(b"HELLO\n").unwrap();
        let e = rp.next(Duration::from_secs(5), "loaded").unwrap_err();
        assert!(e.to_string().contains("'HELLO'"), "{e:#}");
        let e = rp
            .next(Duration::from_millis(100), "waiting for RUNNING")
            .unwrap_err();
        assert!(e.to_string().contains("waiting for RUNNING"), "{e:#}");
        // A destination that goes away is no refusal by itself; whoever
        // waits next learns why the path ended.
        drop(peer);
        std::thread::sleep(Duration::from_millis(50));
        rp.refused().unwrap();
        let e = rp
            .next(Duration::from_secs(5), "waiting for LOADED")
            .unwrap_err();
        assert!(format!("{e:#}").contains("closed"), "{e:#}");
        // Dropped, it ends its reader (which would otherwise wait forever).
        drop(rp);
        std::thread::sleep(Duration::from_millis(100));
        let threads = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|c| c.trim() == "migration-rp")
            .count();
        assert_eq!(threads, 0, "the return-path reader outlived its migration");
    }

    #[test]
    fn set_bits_lists_dirty_pages_only() {
        let bits = [0b1011u64, 0, 1 << 63 | 1];
        let got: Vec<usize> = set_bits(&bits, 200).collect();
        assert_eq!(got, vec![0, 1, 3, 128, 191]);
        assert_eq!(set_bits(&bits, 129).collect::<Vec<_>>(), vec![0, 1, 3, 128]);
        assert_eq!(count(&[bits.to_vec()]), 5);
    }

    #[test]
    fn parameters_are_checked_and_a_bad_one_changes_nothing() {
        let mut p = Params::default();
        let args = |v: serde_json::Value| v.as_object().unwrap().clone();
        p.set(&args(json!({"downtime-limit": 50, "multifd-channels": 4})))
            .unwrap();
        assert_eq!((p.downtime_limit_ms, p.multifd_channels), (50, 4));
        let e = p
            .set(&args(json!({"max-bandwidth": 1, "downtime-limit": 0})))
            .unwrap_err();
        assert!(e.contains("downtime-limit"), "{e}");
        assert_eq!(
            (p.downtime_limit_ms, p.max_bandwidth),
            (50, 0),
            "nothing changed"
        );
        assert!(p
            .set(&args(json!({"bogus": 1})))
            .unwrap_err()
            .contains("bogus"));
    }
}
