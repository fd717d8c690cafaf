//! The state model (VMState descriptions) and QEMU's savevm v3 stream.
//!
//! Empty until the migration-core issue (#6).
