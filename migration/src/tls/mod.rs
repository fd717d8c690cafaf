//! TLS for migration connections, with QEMU's credentials, so an operator
//! moving from QEMU reuses the same directory: a `tls-creds-x509` one
//! holds `ca-cert.pem`, and `server-cert.pem` with `server-key.pem` (and,
//! for a client that presents one, `client-cert.pem` with
//! `client-key.pem`), used with rustls ([`x509`]); a `tls-creds-psk` one
//! holds `keys.psk`, used with OpenSSL ([`psk`]: rustls has no external
//! pre-shared keys).
//!
//! A connection is wrapped after its TCP handshake: the TLS handshake runs
//! at once (a wrong certificate fails the migration on both sides, naming
//! it), then two threads relay between the TLS session on the socket and
//! a local socket pair whose other end the engine uses like any
//! connection (cloned for the return path, shut down to cancel). Only the
//! outbound relay writes to the socket; the session lock is never held
//! across socket I/O, so a peer that is slow to read cannot stall reading.

pub mod dn;
mod psk;
mod x509;

use crate::error::{Error, Result};
use crate::transport::Conn;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which side a set of credentials is for (QEMU's `endpoint`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Server,
    Client,
}

/// What kind of credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `tls-creds-x509`: a server asks for and checks the client's
    /// certificate when `verify_peer` (QEMU's default); a client always
    /// checks the server's.
    X509 { verify_peer: bool },
    /// `tls-creds-psk`: the client's `username` (QEMU's default `qemu`).
    Psk { username: String },
}

/// QEMU's `tls-creds-x509` or `tls-creds-psk` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creds {
    pub id: String,
    pub dir: PathBuf,
    pub endpoint: Endpoint,
    pub kind: Kind,
}

/// QEMU's `authz-simple` object: the one client a destination admits, by
/// its certificate's subject (spelled as GnuTLS spells it; see [`dn`]) or
/// its PSK username. Selected with the `tls-authz` migration parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authz {
    pub id: String,
    pub identity: String,
}

impl Authz {
    /// Admits the client that presented `peer` (its subject or username),
    /// or says why not.
    fn admit(&self, peer: Option<String>) -> Result<()> {
        match peer {
            Some(p) if p == self.identity => Ok(()),
            Some(p) => Err(Error::Protocol(format!(
                "TLS: the client is '{p}', and tls-authz '{}' admits only '{}'",
                self.id, self.identity
            ))),
            None => Err(Error::Protocol(format!(
                "TLS: the client presented no identity, and tls-authz '{}' admits only '{}'",
                self.id, self.identity
            ))),
        }
    }
}

impl Creds {
    /// Whether a server with these credentials learns who the client is
    /// (what `tls-authz` needs).
    pub fn identifies_clients(&self) -> bool {
        match self.kind {
            Kind::X509 { verify_peer } => verify_peer,
            Kind::Psk { .. } => true,
        }
    }

    /// Checks the files now (at start), so that a bad directory is an
    /// error before any migration.
    pub fn check(&self) -> Result<()> {
        match (&self.kind, self.endpoint) {
            (Kind::X509 { .. }, Endpoint::Server) => self.x509_server().map(|_| ()),
            (Kind::X509 { .. }, Endpoint::Client) => self.x509_client().map(|_| ()),
            (Kind::Psk { username }, _) => {
                self.psk_context(username, Default::default()).map(|_| ())
            }
        }
    }

    /// Wraps the source's connection to `host` (for x509, the name its
    /// certificate must carry: `tls-hostname`, or the URI's host).
    pub fn connect(&self, conn: Conn, host: &str) -> Result<Conn> {
        match &self.kind {
            Kind::X509 { .. } => {
                let name =
                    rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
                        Error::Protocol(format!("TLS: '{host}' is not a host name: {e}"))
                    })?;
                let session = rustls::ClientConnection::new(self.x509_client()?, name)
                    .map_err(|e| Error::Protocol(format!("TLS: {e}")))?;
                wrap(conn, rustls::Connection::Client(session), None)
            }
            Kind::Psk { username } => wrap(conn, self.psk_session(username)?, None),
        }
    }

    /// Wraps a connection the destination accepted; with `authz`, only
    /// the client it names gets through.
    pub fn accept(&self, conn: Conn, authz: Option<&Authz>) -> Result<Conn> {
        if authz.is_some() && !self.identifies_clients() {
            return Err(Error::Protocol(format!(
                "TLS: tls-authz needs the client's certificate, and credentials '{}' do not ask for it (verify-peer=off)",
                self.id
            )));
        }
        match &self.kind {
            Kind::X509 { .. } => {
                let session = rustls::ServerConnection::new(self.x509_server()?)
                    .map_err(|e| Error::Protocol(format!("TLS: {e}")))?;
                wrap(conn, rustls::Connection::Server(session), authz)
            }
            Kind::Psk { username } => wrap(conn, self.psk_session(username)?, authz),
        }
    }
}

/// A TLS session as the relays drive it: ciphertext in and out, plaintext
/// in and out; it never touches the socket itself.
trait Session: Send + 'static {
    fn handshaking(&self) -> bool;
    /// The peer's identity once the handshake is done: its certificate's
    /// subject, or its PSK username.
    fn peer(&self) -> Option<String>;
    /// One handshake step on ciphertext `tls` from the peer (none, to
    /// start); what to send back goes to `out`.
    fn handshake_step(&mut self, tls: &[u8], out: &mut Vec<u8>) -> std::result::Result<(), String>;
    /// Ciphertext from the peer; what it decrypts goes to `plain`.
    fn receive(&mut self, tls: &[u8], plain: &mut Vec<u8>) -> std::result::Result<(), String>;
    /// Encrypts `plain` (empty: close the session); ciphertext to send
    /// goes to `tls`.
    fn send(&mut self, plain: &[u8], tls: &mut Vec<u8>) -> std::result::Result<(), String>;
}

/// Runs the handshake on `conn` (within 10 s a read), admits the peer
/// `authz` names (if set), then relays; returns the plaintext end.
fn wrap<S: Session>(conn: Conn, mut session: S, authz: Option<&Authz>) -> Result<Conn> {
    let Conn::Tcp(mut tcp) = conn else {
        return Err(Error::Protocol(
            "TLS runs over tcp: connections only".into(),
        ));
    };
    let hs = |e: std::io::Error| Error::io("the TLS handshake")(e);
    let failed = |e: String| Error::Protocol(format!("TLS: {e}"));
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(hs)?;
    let mut out = vec![];
    let mut buf = vec![0u8; 16 << 10];
    session.handshake_step(&[], &mut out).map_err(failed)?;
    loop {
        tcp.write_all(&out).map_err(hs)?;
        out.clear();
        if !session.handshaking() {
            break;
        }
        let n = tcp.read(&mut buf).map_err(hs)?;
        if n == 0 {
            return Err(Error::Protocol(
                "TLS: the peer closed the connection during the handshake".into(),
            ));
        }
        session
            .handshake_step(&buf[..n], &mut out)
            .map_err(failed)?;
    }
    tcp.set_read_timeout(None).map_err(hs)?;
    if let Some(a) = authz {
        a.admit(session.peer())?;
    }
    let (plain, relay) = UnixStream::pair().map_err(Error::io("the TLS relay"))?;
    // Whatever came with the handshake's last flight.
    let mut early = vec![];
    session.receive(&[], &mut early).map_err(failed)?;
    let session = Arc::new(Mutex::new(session));
    let io = || Error::io("the TLS relay");
    let (tcp_in, mut relay_out) = (
        tcp.try_clone().map_err(io())?,
        relay.try_clone().map_err(io())?,
    );
    relay_out.write_all(&early).map_err(io())?;
    let s = session.clone();
    std::thread::Builder::new()
        .name("tls-in".into())
        .spawn(move || inbound(tcp_in, relay_out, &*s))
        .map_err(io())?;
    std::thread::Builder::new()
        .name("tls-out".into())
        .spawn(move || outbound(relay, tcp, &*session))
        .map_err(io())?;
    Ok(Conn::Unix(plain))
}

/// Socket -> session -> plaintext.
fn inbound<S: Session>(mut tcp: TcpStream, mut plain: UnixStream, session: &Mutex<S>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut out = Vec::with_capacity(64 << 10);
    loop {
        let n = match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        out.clear();
        let r = session
            .lock()
            .expect("tls lock")
            .receive(&buf[..n], &mut out);
        if plain.write_all(&out).is_err() {
            break;
        }
        if let Err(e) = r {
            log::warn!("migration TLS: {e}");
            break;
        }
    }
    let _ = plain.shutdown(std::net::Shutdown::Write);
    let _ = tcp.shutdown(std::net::Shutdown::Read);
}

/// Plaintext -> session -> socket.
fn outbound<S: Session>(mut plain: UnixStream, mut tcp: TcpStream, session: &Mutex<S>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut tls = Vec::with_capacity(80 << 10);
    loop {
        let n = match plain.read(&mut buf) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        tls.clear();
        let r = session.lock().expect("tls lock").send(&buf[..n], &mut tls);
        if r.is_err() || tcp.write_all(&tls).is_err() || n == 0 {
            break;
        }
    }
    // The engine is done with the connection (or shut it): so is the
    // socket, which also wakes the inbound relay.
    let _ = tcp.shutdown(std::net::Shutdown::Both);
    let _ = plain.shutdown(std::net::Shutdown::Read);
}
