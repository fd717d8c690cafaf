//! The KVM-PPC backend's kernel interface (issue 19, item 5): what a
//! pseries VM on a POWER host asks of `/dev/kvm`. kvm-ioctls and
//! kvm-bindings know no ppc64, so this crate defines its own:
//!
//! * [`ioctl`]: powerpc's ioctl encoding (3 direction bits, 13 size bits:
//!   not x86's) and every KVM ioctl the backend makes;
//! * [`uapi`]: the structures, capabilities, VM types, exit reasons and
//!   `ONE_REG` ids, laid out as the kernel's uapi headers say;
//! * [`htab`]: the hash page table's records as KVM's HTAB fd reads and
//!   writes them;
//! * [`exit`]: why a vCPU left `KVM_RUN` and the answer it takes back,
//!   read from and written to its `kvm_run` page;
//! * `sys` (on powerpc64 only): the calls themselves.
//!
//! Nothing here can run on these (x86) machines. The numbers and layouts
//! are checked against the ppc64el kernel headers by a probe built with
//! the cross compiler and run under qemu-user (scripts/ppc64le.sh); the
//! record encoding by unit tests.

pub mod exit;
pub mod htab;
pub mod ioctl;
#[cfg(target_arch = "powerpc64")]
pub mod sys;
pub mod uapi;
