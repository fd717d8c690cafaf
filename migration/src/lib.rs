//! Migration: device state described as data (QEMU's VMState model) and
//! QEMU's savevm stream, version 3, byte for byte.
//!
//! * [`vmstate`]: descriptions (name, `version_id`, `minimum_version_id`,
//!   ordered typed fields, fields that appeared in a later version,
//!   subsections with a `needed` predicate) and [`vmstate::State`], the
//!   value tree a device converts its runtime state to and from.
//! * [`stream`]: the writer and the reader (header, configuration section
//!   with the machine type, FULL sections with footers, subsections, EOF,
//!   the trailing JSON description), every reader failure a typed error
//!   with the byte offset.
//!
//! Not yet: RAM and iterative (START/PART/END) sections, device
//! integration, transports (issues #6, #8).

pub mod analyze;
pub mod compat;
pub mod stream;
pub mod vmstate;
