//! ppc64 (sPAPR, the pseries machines): the device tree a guest is given,
//! the RTAS call table it names, and booting its kernel.

pub mod boot;
pub mod cpu;
pub mod dtb;
pub mod fdt;
pub mod rtas;
