//! Migration: device state described as data (QEMU's VMState model) and
//! QEMU's savevm stream, version 3, byte for byte. The VMM's save/restore
//! and live migration (connections, precopy, multifd) are built on it
//! (`vmm/src/snapshot.rs`, `vmm/src/migrate.rs`); the devices describe
//! their state with it.
//!
//! * [`vmstate`]: descriptions (name, `version_id`, `minimum_version_id`,
//!   ordered typed fields, fields that appeared in a later version,
//!   subsections with a `needed` predicate) and [`vmstate::State`], the
//!   value tree a device converts its runtime state to and from; a
//!   device declares its state once with [`vmstate!`], which generates
//!   the typed state struct, the description and both conversions.
//! * [`stream`]: the writer and the reader (header, configuration section
//!   with the machine type, FULL sections with footers, subsections, the
//!   iterative `ram` section: START with the block list, PART/END with
//!   page and zero-page records, EOF, the trailing JSON description),
//!   every reader failure a typed error with the byte offset. Pages are
//!   written with `writev` straight from guest memory ([`stream::Gather`])
//!   and read straight into it ([`stream::RamSink`]).
//! * [`analyze`]: decodes any stream from its own trailing description,
//!   like QEMU's `analyze-migration.py` (`vmmctl analyze-migration`).
//! * [`uri`]: where a migration goes (`tcp:`, `unix:`, `fd:`, `file:`).
//! * [`protocol`]: the handshake lines beside the stream (SYNC, LOADED,
//!   GO, RUNNING, ERR), parsed and spelled in one place.
//! * [`compat`]: compares two `-dump-vmstate` dumps and lists every change
//!   that breaks migration, like QEMU's `vmstate-static-checker.py`
//!   (`vmmctl vmstate-check`).

pub mod analyze;
pub mod compat;
pub mod protocol;
pub mod stream;
pub mod uri;
pub mod vmstate;
