//! The device model: types, typed properties, buses and every device.
//!
//! Empty until the device-model issue (#4).
