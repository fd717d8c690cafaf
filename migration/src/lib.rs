//! Migration, end to end: device state described as data (QEMU's VMState
//! model), QEMU's savevm stream (version 3, byte for byte), and the engine
//! that moves a VM over it — to a file, or live to another process.
//!
//! The format:
//! * [`vmstate`]: descriptions (name, `version_id`, `minimum_version_id`,
//!   ordered typed fields, fields that appeared in a later version,
//!   subsections with a `needed` predicate), [`vmstate::State`], the value
//!   tree a device converts its runtime state to and from, the one
//!   [`vmstate::Migratable`] trait with its one [`vmstate::LoadError`];
//!   a device declares its state once with [`vmstate!`], which generates
//!   the typed state struct, the description and both conversions.
//! * [`stream`]: the writer and the reader (header, configuration section
//!   with the machine type, FULL sections with footers, subsections, the
//!   iterative `ram` section, EOF, the trailing JSON description), every
//!   reader failure a typed error with the byte offset. Pages are written
//!   with `writev` straight from guest memory ([`stream::Gather`]) and read
//!   straight into it ([`stream::RamSink`]).
//! * [`analyze`]: decodes any stream from its own trailing description,
//!   like QEMU's `analyze-migration.py` (`vmmctl analyze-migration`).
//! * [`compat`]: compares two `-dump-vmstate` dumps and lists every change
//!   that breaks migration, like QEMU's `vmstate-static-checker.py`.
//!
//! The engine (the VM is behind two small traits: [`source::SourceVm`],
//! its RAM and dirty log, and [`destination::LoadTarget`], its sections):
//! * [`uri`]: where a migration goes (`tcp:`, `unix:`, `fd:`, `file:`);
//!   [`transport`]: the connections, with dead-link detection.
//! * [`protocol`]: the handshake lines beside the stream (SYNC, LOADED,
//!   GO, RUNNING, ERR); [`return_path`] reads them on the source.
//! * [`source`]: precopy in named phases (setup, iterate, catch-up,
//!   stop-and-copy, commit); [`destination`]: accept, load, confirm;
//!   [`multifd`]: RAM on parallel channels; [`file`]: save and restore.
//! * [`ram`]: guest RAM as host mappings of one block; [`status`]: the
//!   migration's status, parameters and progress.

// The parsers of what a peer or a file sends (stream, vmstate, destination,
// protocol, return_path, tls, analyze) have no unsafe code, and may not
// grow any; only RAM mappings and socket options need it.
#![deny(unsafe_code)]

pub mod analyze;
pub mod compat;
pub mod destination;
mod error;
pub mod file;
pub mod htab;
#[allow(unsafe_code)]
pub mod multifd;
pub mod protocol;
#[allow(unsafe_code)]
pub mod ram;
pub(crate) mod return_path;
pub mod source;
pub mod status;
pub mod stream;
pub mod tls;
#[allow(unsafe_code)]
pub mod transport;
pub mod uri;
pub mod vmstate;

pub use error::{Error, Result};
