//! `tls-creds-psk` with OpenSSL (rustls has no external pre-shared keys):
//! the directory's `keys.psk` holds `username:hexkey` lines, as QEMU's
//! (GnuTLS's `psktool`) files do; a client sends its `username` (QEMU's
//! default `qemu`) and the key of that line, a server takes any line's.
//! TLS 1.3 (or 1.2 with the ECDHE-PSK, DHE-PSK and PSK suites QEMU
//! enables).
//!
//! The session runs on memory buffers, so the relays in `tls` drive it as
//! they drive rustls: ciphertext in and out, never the socket itself.

use super::{Creds, Endpoint, Session};
use crate::error::{Error, Result};
use openssl::ssl::{ErrorCode, Ssl, SslContext, SslMethod, SslStream, SslVersion};
use std::io::{Read, Write};
use std::sync::Arc;

/// `keys.psk`: each username with its key.
type Keys = Arc<Vec<(String, Vec<u8>)>>;

/// The lines of `keys.psk`.
fn keys(creds: &Creds) -> Result<Keys> {
    let path = creds.dir.join("keys.psk");
    let bad = |why: String| Error::Protocol(format!("TLS credentials: {}: {why}", path.display()));
    let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
    let mut keys = vec![];
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let (user, hex) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("line {} is not username:hexkey", n + 1)))?;
        let hex = hex.trim();
        let key = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .filter(|k| !k.is_empty() && k.len() <= 64)
            .ok_or_else(|| {
                bad(format!(
                    "line {}: the key is not 1 to 64 bytes of hex",
                    n + 1
                ))
            })?;
        keys.push((user.to_string(), key));
    }
    if keys.is_empty() {
        return Err(bad("no keys in it".into()));
    }
    Ok(Arc::new(keys))
}

fn ossl(e: impl std::fmt::Display) -> Error {
    Error::Protocol(format!("TLS (PSK): {e}"))
}

impl Creds {
    /// The OpenSSL context for these PSK credentials; a server notes in
    /// `seen` the username it accepted (OpenSSL does not keep a TLS 1.3
    /// one).
    pub(super) fn psk_context(&self, username: &str, seen: Seen) -> Result<SslContext> {
        let keys = keys(self)?;
        let mut b = SslContext::builder(SslMethod::tls()).map_err(ossl)?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(ossl)?;
        b.set_cipher_list("ECDHE-PSK:DHE-PSK:PSK").map_err(ossl)?;
        match self.endpoint {
            Endpoint::Server => {
                // No session tickets: after the handshake the destination
                // has nothing of its own to send.
                b.set_num_tickets(0).map_err(ossl)?;
                b.set_psk_server_callback(move |_, identity, psk| {
                    let who = identity.and_then(|i| std::str::from_utf8(i).ok());
                    match keys.iter().find(|(u, _)| Some(u.as_str()) == who) {
                        Some((user, key)) if key.len() <= psk.len() => {
                            psk[..key.len()].copy_from_slice(key);
                            *seen.lock().expect("psk lock") = Some(user.clone());
                            Ok(key.len())
                        }
                        // Unknown: the handshake fails.
                        _ => Ok(0),
                    }
                });
            }
            Endpoint::Client => {
                let key = keys
                    .iter()
                    .find(|(u, _)| u == username)
                    .map(|(_, k)| k.clone())
                    .ok_or_else(|| {
                        Error::Protocol(format!(
                            "TLS credentials: {}: no key for username '{username}'",
                            self.dir.join("keys.psk").display()
                        ))
                    })?;
                let user = username.as_bytes().to_vec();
                b.set_psk_client_callback(move |_, _, identity, psk| {
                    if user.len() >= identity.len() || key.len() > psk.len() {
                        return Ok(0);
                    }
                    identity[..user.len()].copy_from_slice(&user);
                    identity[user.len()] = 0;
                    psk[..key.len()].copy_from_slice(&key);
                    Ok(key.len())
                });
            }
        }
        Ok(b.build())
    }

    /// A session for one connection, on memory buffers.
    pub(super) fn psk_session(&self, username: &str) -> Result<PskSession> {
        let seen = Seen::default();
        let ctx = self.psk_context(username, seen.clone())?;
        let mut ssl = Ssl::new(&ctx).map_err(ossl)?;
        match self.endpoint {
            Endpoint::Server => ssl.set_accept_state(),
            Endpoint::Client => ssl.set_connect_state(),
        }
        let s = SslStream::new(ssl, Buffers::default()).map_err(ossl)?;
        Ok(PskSession(s, seen))
    }
}

/// What the session reads (ciphertext from the peer) and writes (for the
/// peer).
#[derive(Default)]
pub(super) struct Buffers {
    rx: std::collections::VecDeque<u8>,
    tx: Vec<u8>,
}

impl Read for Buffers {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        if self.rx.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        self.rx.read(b)
    }
}

impl Write for Buffers {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.tx.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The username a server accepted.
pub(super) type Seen = Arc<std::sync::Mutex<Option<String>>>;

pub(super) struct PskSession(SslStream<Buffers>, Seen);

/// An OpenSSL error that only means "feed me more".
fn waiting(e: &openssl::ssl::Error) -> bool {
    matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE)
}

impl Session for PskSession {
    fn handshaking(&self) -> bool {
        !self.0.ssl().is_init_finished()
    }

    fn peer(&self) -> Option<String> {
        self.1.lock().expect("psk lock").clone()
    }

    fn handshake_step(&mut self, tls: &[u8], out: &mut Vec<u8>) -> std::result::Result<(), String> {
        self.0.get_mut().rx.extend(tls);
        let r = self.0.do_handshake();
        out.append(&mut self.0.get_mut().tx);
        match r {
            Ok(()) => Ok(()),
            Err(e) if waiting(&e) => Ok(()),
            Err(e) => Err(e
                .ssl_error()
                .map_or_else(|| e.to_string(), |s| s.to_string())),
        }
    }

    fn receive(&mut self, tls: &[u8], plain: &mut Vec<u8>) -> std::result::Result<(), String> {
        self.0.get_mut().rx.extend(tls);
        let mut buf = [0u8; 16 << 10];
        loop {
            match self.0.ssl_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => plain.extend_from_slice(&buf[..n]),
                Err(e) if waiting(&e) || e.code() == ErrorCode::ZERO_RETURN => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        // What reading made the session say (a key update's answer)
        // leaves with the next `send`: only the outbound relay writes.
        Ok(())
    }

    fn send(&mut self, plain: &[u8], tls: &mut Vec<u8>) -> std::result::Result<(), String> {
        if plain.is_empty() {
            let _ = self.0.shutdown();
        } else {
            let mut rest = plain;
            while !rest.is_empty() {
                let n = self.0.ssl_write(rest).map_err(|e| e.to_string())?;
                rest = &rest[n..];
            }
        }
        tls.append(&mut self.0.get_mut().tx);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Kind;

    fn creds(text: &str, tag: &str) -> Creds {
        let dir = std::env::temp_dir().join(format!("vmm-psk-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("keys.psk"), text).unwrap();
        Creds {
            id: "tls0".into(),
            dir,
            endpoint: Endpoint::Client,
            kind: Kind::Psk {
                username: "qemu".into(),
            },
        }
    }

    #[test]
    fn keys_psk_is_read_as_qemu_writes_it_and_bad_lines_are_named() {
        let c = creds("qemu:00ff10\nalice:abcd\n\n", "good");
        let k = keys(&c).unwrap();
        assert_eq!(k[0], ("qemu".to_string(), vec![0, 0xff, 0x10]));
        assert_eq!(k[1].0, "alice");
        assert!(c.check().is_ok());
        let missing = Creds {
            kind: Kind::Psk {
                username: "bob".into(),
            },
            ..c
        };
        let e = missing.check().unwrap_err().to_string();
        assert!(e.contains("no key for username 'bob'"), "{e}");
        for (text, want) in [
            ("qemu 00ff\n", "line 1 is not username:hexkey"),
            ("a:00\nqemu:0g\n", "line 2: the key is not"),
            ("qemu:abc\n", "line 1: the key is not"),
            ("\n", "no keys"),
        ] {
            let e = keys(&creds(text, "bad")).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
