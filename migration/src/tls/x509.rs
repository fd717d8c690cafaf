//! `tls-creds-x509` with rustls: QEMU's file names in the directory, the
//! CA in `ca-cert.pem`, each side's certificate and key.

use super::{Creds, Session};
use crate::error::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

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
    pub(super) fn x509_server(&self) -> Result<Arc<rustls::ServerConfig>> {
        let d = &self.dir;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Protocol(format!("TLS: {e}")))?;
        let builder = if self.identifies_clients() {
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

    pub(super) fn x509_client(&self) -> Result<Arc<rustls::ClientConfig>> {
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
}

impl Session for rustls::Connection {
    fn handshaking(&self) -> bool {
        self.is_handshaking()
    }

    fn peer(&self) -> Option<String> {
        let cert = self.peer_certificates()?.first()?;
        Some(super::dn::subject(cert).unwrap_or_else(|| "(a subject this cannot read)".into()))
    }

    fn receive(&mut self, mut tls: &[u8], plain: &mut Vec<u8>) -> std::result::Result<(), String> {
        loop {
            if !tls.is_empty() {
                self.read_tls(&mut tls).map_err(|e| e.to_string())?;
                self.process_new_packets().map_err(|e| e.to_string())?;
            }
            loop {
                let len = plain.len();
                plain.resize(len + (64 << 10), 0);
                match self.reader().read(&mut plain[len..]) {
                    Ok(0) | Err(_) => {
                        plain.truncate(len);
                        break;
                    }
                    Ok(m) => plain.truncate(len + m),
                }
            }
            if tls.is_empty() {
                return Ok(());
            }
        }
    }

    fn handshake_step(
        &mut self,
        mut tls: &[u8],
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), String> {
        while !tls.is_empty() {
            self.read_tls(&mut tls).map_err(|e| e.to_string())?;
            self.process_new_packets().map_err(|e| e.to_string())?;
        }
        while self.wants_write() {
            self.write_tls(out).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn send(&mut self, plain: &[u8], tls: &mut Vec<u8>) -> std::result::Result<(), String> {
        if plain.is_empty() {
            self.send_close_notify();
        } else {
            self.writer().write_all(plain).map_err(|e| e.to_string())?;
        }
        while self.wants_write() {
            self.write_tls(tls).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
