//! Versioned machine types (`pc-q35-X.Y`) and their compat arrays.
//!
//! Empty until the device-model issue (#4).
