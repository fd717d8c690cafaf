//! TLS for migration connections, with QEMU's credentials: a
//! `tls-creds-x509` directory holds `ca-cert.pem`, and `server-cert.pem`
//! with `server-key.pem` (and, for a client that presents one,
//! `client-cert.pem` with `client-key.pem`), so an operator moving from
//! QEMU reuses the same directory.
//!
//! A connection is wrapped after its TCP handshake: the TLS handshake runs
//! at once (a wrong certificate fails the migration on both sides, naming
//! it), then two threads relay between the TLS session on the socket and
//! a local socket pair whose other end the engine uses like any
//! connection (cloned for the return path, shut down to cancel). Only the
//! outbound relay writes to the socket; the session lock is never held
//! across socket I/O, so a peer that is slow to read cannot stall reading.

pub mod dn;

use crate::error::{Error, Result};
use crate::transport::Conn;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which side a set of credentials is for (QEMU's `endpoint`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Server,
    Client,
}

/// QEMU's `tls-creds-x509` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creds {
    pub id: String,
    pub dir: PathBuf,
    pub endpoint: Endpoint,
    /// A server asks for and checks the client's certificate (QEMU's
    /// default); a client always checks the server's.
    pub verify_peer: bool,
}

/// QEMU's `authz-simple` object: the one client a destination admits,
/// by its certificate's subject (RFC 4514, as GnuTLS spells it; see
/// [`dn`]). Selected with the `tls-authz` migration parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authz {
    pub id: String,
    pub identity: String,
}

impl Authz {
    /// Admits the client whose certificate chain is `chain`, or says why
    /// not.
    fn admit(&self, chain: Option<&[CertificateDer<'_>]>) -> Result<()> {
        let refused = |why: String| Err(Error::Protocol(format!("TLS: {why}")));
        let Some(cert) = chain.and_then(|c| c.first()) else {
            return refused(format!(
                "the client presented no certificate, and tls-authz '{}' admits only '{}'",
                self.id, self.identity
            ));
        };
        match dn::subject(cert) {
            Some(s) if s == self.identity => Ok(()),
            Some(s) => refused(format!(
                "the client's certificate is '{s}', and tls-authz '{}' admits only '{}'",
                self.id, self.identity
            )),
            None => refused("the client's certificate has a subject this cannot read".into()),
        }
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |e: String| Error::Protocol(format!("TLS credentials: {}: {e}", path.display()));
    let v = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if v.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    Ok(v)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| Error::Protocol(format!("TLS credentials: {}: {e}", path.display())))
}

fn roots(dir: &Path) -> Result<Arc<rustls::RootCertStore>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&dir.join("ca-cert.pem"))? {
        roots
            .add(c)
            .map_err(|e| Error::Protocol(format!("TLS credentials: ca-cert.pem: {e}")))?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Creds {
    /// Checks the files now (at start), so that a bad directory is an
    /// error before any migration.
    pub fn check(&self) -> Result<()> {
        match self.endpoint {
            Endpoint::Server => self.server().map(|_| ()),
            Endpoint::Client => self.client().map(|_| ()),
        }
    }

    fn server(&self) -> Result<Arc<rustls::ServerConfig>> {
        let d = &self.dir;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Protocol(format!("TLS: {e}")))?;
        let builder = if self.verify_peer {
            let v =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots(d)?, provider())
                    .build()
                    .map_err(|e| Error::Protocol(format!("TLS credentials: {e}")))?;
            builder.with_client_cert_verifier(v)
        } else {
            builder.with_no_client_auth()
        };
        let mut c = builder
            .with_single_cert(
                certs(&d.join("server-cert.pem"))?,
                key(&d.join("server-key.pem"))?,
            )
            .map_err(|e| Error::Protocol(format!("TLS credentials: server-cert.pem: {e}")))?;
        // No session tickets: after the handshake the destination's side
        // of the session never has anything of its own to send.
        c.send_tls13_tickets = 0;
        Ok(Arc::new(c))
    }

    fn client(&self) -> Result<Arc<rustls::ClientConfig>> {
        let d = &self.dir;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Protocol(format!("TLS: {e}")))?
            .with_root_certificates(roots(d)?);
        let (cert, key_file) = (d.join("client-cert.pem"), d.join("client-key.pem"));
        let c = if cert.exists() {
            builder
                .with_client_auth_cert(certs(&cert)?, key(&key_file)?)
                .map_err(|e| Error::Protocol(format!("TLS credentials: client-cert.pem: {e}")))?
        } else {
            builder.with_no_client_auth()
        };
        Ok(Arc::new(c))
    }

    /// Wraps the source's connection to `host` (the name its certificate
    /// must carry: `tls-hostname`, or the URI's host).
    pub fn connect(&self, conn: Conn, host: &str) -> Result<Conn> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| Error::Protocol(format!("TLS: '{host}' is not a host name: {e}")))?;
        let session = rustls::ClientConnection::new(self.client()?, name)
            .map_err(|e| Error::Protocol(format!("TLS: {e}")))?;
        wrap(conn, rustls::Connection::Client(session), |_| Ok(()))
    }

    /// Wraps a connection the destination accepted; with `authz`, only
    /// the client it names gets through.
    pub fn accept(&self, conn: Conn, authz: Option<&Authz>) -> Result<Conn> {
        if authz.is_some() && !self.verify_peer {
            return Err(Error::Protocol(format!(
                "TLS: tls-authz needs the client's certificate, and credentials '{}' do not ask for it (verify-peer=off)",
                self.id
            )));
        }
        let session = rustls::ServerConnection::new(self.server()?)
            .map_err(|e| Error::Protocol(format!("TLS: {e}")))?;
        wrap(conn, rustls::Connection::Server(session), |s| {
            authz.map_or(Ok(()), |a| a.admit(s.peer_certificates()))
        })
    }
}

/// Runs the handshake on `conn`, then `check` on the session, then
/// relays; returns the plaintext end.
fn wrap(
    conn: Conn,
    mut session: rustls::Connection,
    check: impl FnOnce(&rustls::Connection) -> Result<()>,
) -> Result<Conn> {
    let Conn::Tcp(mut tcp) = conn else {
        return Err(Error::Protocol(
            "TLS runs over tcp: connections only".into(),
        ));
    };
    let hs = |e: std::io::Error| Error::io("the TLS handshake")(e);
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(hs)?;
    while session.is_handshaking() {
        session.complete_io(&mut tcp).map_err(hs)?;
    }
    // What the handshake left to send (the client's last flight).
    while session.wants_write() {
        session.write_tls(&mut tcp).map_err(hs)?;
    }
    tcp.set_read_timeout(None).map_err(hs)?;
    check(&session)?;
    let (plain, relay) = UnixStream::pair().map_err(Error::io("the TLS relay"))?;
    let session = Arc::new(Mutex::new(session));
    let io = || Error::io("the TLS relay");
    let (tcp_in, relay_out) = (
        tcp.try_clone().map_err(io())?,
        relay.try_clone().map_err(io())?,
    );
    let s = session.clone();
    std::thread::Builder::new()
        .name("tls-in".into())
        .spawn(move || inbound(tcp_in, relay_out, &s))
        .map_err(io())?;
    std::thread::Builder::new()
        .name("tls-out".into())
        .spawn(move || outbound(relay, tcp, &session))
        .map_err(io())?;
    Ok(Conn::Unix(plain))
}

/// Socket -> session -> plaintext.
fn inbound(mut tcp: TcpStream, mut plain: UnixStream, session: &Mutex<rustls::Connection>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut out = Vec::with_capacity(64 << 10);
    loop {
        let n = match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        out.clear();
        {
            let mut s = session.lock().expect("tls lock");
            let mut data = &buf[..n];
            let mut ok = true;
            while !data.is_empty() && ok {
                ok = s.read_tls(&mut data).is_ok()
                    && match s.process_new_packets() {
                        Ok(_) => true,
                        Err(e) => {
                            log::warn!("migration TLS: {e}");
                            false
                        }
                    };
                loop {
                    let len = out.len();
                    out.resize(len + (64 << 10), 0);
                    match s.reader().read(&mut out[len..]) {
                        Ok(0) | Err(_) => {
                            out.truncate(len);
                            break;
                        }
                        Ok(m) => out.truncate(len + m),
                    }
                }
            }
            if !ok {
                drop(s);
                let _ = plain.write_all(&out);
                break;
            }
        }
        if plain.write_all(&out).is_err() {
            break;
        }
    }
    let _ = plain.shutdown(std::net::Shutdown::Write);
    let _ = tcp.shutdown(std::net::Shutdown::Read);
}

/// Plaintext -> session -> socket.
fn outbound(mut plain: UnixStream, mut tcp: TcpStream, session: &Mutex<rustls::Connection>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut tls = Vec::with_capacity(80 << 10);
    loop {
        let n = match plain.read(&mut buf) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        tls.clear();
        {
            let mut s = session.lock().expect("tls lock");
            if n == 0 {
                s.send_close_notify();
            } else if s.writer().write_all(&buf[..n]).is_err() {
                break;
            }
            while s.wants_write() {
                if s.write_tls(&mut tls).is_err() {
                    break;
                }
            }
        }
        if tcp.write_all(&tls).is_err() || n == 0 {
            break;
        }
    }
    // The engine is done with the connection (or shut it): so is the
    // socket, which also wakes the inbound relay.
    let _ = tcp.shutdown(std::net::Shutdown::Both);
    let _ = plain.shutdown(std::net::Shutdown::Read);
}
