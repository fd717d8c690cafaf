//! ppc64 (sPAPR, the pseries machines): the device tree a guest is given
//! and the RTAS call table it names.

pub mod fdt;
pub mod rtas;
