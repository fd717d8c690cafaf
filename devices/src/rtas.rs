//! RTAS call statuses (PAPR; QEMU's `RTAS_OUT_*`), shared by the sPAPR
//! devices that serve calls and the board that dispatches them.

/// The call failed (`RTAS_OUT_HW_ERROR`).
pub const HW_ERROR: i32 = -1;
/// The call cannot take its arguments (`RTAS_OUT_PARAM_ERROR`).
pub const PARAM_ERROR: i32 = -3;
