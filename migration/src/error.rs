//! Why a migration, a save or a load failed.

/// Everything the migration engine can fail with. Printed with its
/// sources (`{:#}` through anyhow, or [`Error::chain`]), each variant is one
/// sentence naming what was being done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stream itself: writing it, or reading and checking it.
    #[error(transparent)]
    Stream(#[from] crate::stream::Error),
    /// A connection, a file or a thread, and what was being done with it.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A device (or the VM) refused the state the stream carried for it.
    #[error(transparent)]
    Load(#[from] crate::vmstate::LoadError),
    /// The destination answered `ERR` with its reason.
    #[error("the destination refused the stream: {0}")]
    Refused(String),
    /// The peer said something the handshake does not allow there, or
    /// nothing in time.
    #[error("{0}")]
    Protocol(String),
    /// The VM's side could not do its part (dirty log, stop, a device that
    /// refused its state).
    #[error("{0}")]
    Vm(String),
    /// `migrate_cancel`.
    #[error("migration cancelled")]
    Cancelled,
}

impl Error {
    /// An I/O failure while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    /// The message with every source after it (`a: b: c`), as QMP shows it.
    pub fn chain(&self) -> String {
        let mut s = self.to_string();
        let mut cur = std::error::Error::source(self);
        while let Some(e) = cur {
            s.push_str(": ");
            s.push_str(&e.to_string());
            cur = e.source();
        }
        s
    }
}

pub type Result<T> = std::result::Result<T, Error>;
