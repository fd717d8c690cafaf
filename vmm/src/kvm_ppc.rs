//! The KVM-PPC backend: a pseries guest on a POWER host's `/dev/kvm`
//! (kvm-ppc crate for the kernel interface). A VM of the HV flavour where
//! the host has it (PR otherwise) in PAPR mode, its hash page table
//! allocated, the in-kernel XICS with every vCPU connected as its own
//! interrupt server; vCPU exits for MMIO and for the hypercalls KVM leaves
//! to userspace go to the board (`ExitHandler::papr_hcall`).
//!
//! What a vCPU and the in-kernel XICS hold travels as sections `cpu` and
//! `kvm-xics`, described here on every host (so `-dump-vmstate` and the
//! encodings' tests run on x86 too); the backend itself builds for
//! powerpc64 only and cannot run on these machines (no POWER host).

use kvm_ppc::uapi::{KvmRegs, KvmSregs, ONE_REGS};
use migration::htab::{Chunk, HtabSource};
use migration::vmstate::Description;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `kvm_regs` as 49 little-endian doublewords.
pub const REGS_BYTES: usize = 49 * 8;
/// `kvm_sregs`: the PVR, 4 bytes of padding, 153 doublewords.
pub const SREGS_BYTES: usize = 8 + 153 * 8;
/// The `ONE_REG` SPRs, a doubleword each.
pub const SPRS_BYTES: usize = ONE_REGS.len() * 8;

migration::vmstate! {
    /// One vCPU: the kernel's register sets, little-endian as the hosts
    /// that run it are, the SPRs `ONE_REG` reaches, floating point and
    /// vector state, and its interrupt presentation controller.
    pub static CPU = "cpu", version 1, minimum 1;
    pub struct CpuState {
        regs: [u8; REGS_BYTES],
        sregs: [u8; SREGS_BYTES],
        /// `kvm_ppc::uapi::ONE_REGS`, in that order.
        sprs: [u8; SPRS_BYTES],
        fpscr: [u8; 8],
        vscr: [u8; 4],
        /// VSX registers 0-31 (their high halves are the FPRs), 16 bytes
        /// each as KVM gives them.
        vsr: [u8; 32 * 16],
        /// Vector registers (VSX 32-63).
        vr: [u8; 32 * 16],
        /// `KVM_REG_PPC_ICP_STATE`.
        icp: [u8; 8],
    }
}

/// An in-kernel XICS source's attribute for `route` (QEMU's
/// `ics_set_kvm_state_one`): the server, the priority it has or will get
/// back when unmasked, masked or not, level-triggered or not; what the
/// kernel holds of its delivery (pending, presented, queued) is kept
/// from `old`, its attribute now.
pub fn xics_source_attr(old: u64, route: devices::xics::Route) -> u64 {
    use kvm_ppc::uapi::{
        KVM_XICS_LEVEL_SENSITIVE, KVM_XICS_MASKED, KVM_XICS_PENDING, KVM_XICS_PRESENTED,
        KVM_XICS_PRIORITY_SHIFT, KVM_XICS_QUEUED,
    };
    let mut v = old & (KVM_XICS_PENDING | KVM_XICS_PRESENTED | KVM_XICS_QUEUED);
    v |= u64::from(route.server);
    v |= u64::from(route.saved_priority) << KVM_XICS_PRIORITY_SHIFT;
    if route.priority == devices::xics::MASKED {
        v |= KVM_XICS_MASKED;
    }
    if route.lsi {
        v |= KVM_XICS_LEVEL_SENSITIVE;
    }
    v
}

/// The sources of the in-kernel XICS (from `devices::xics::IRQ_BASE`).
pub const XICS_SOURCES: usize = 0x1000;

migration::vmstate! {
    /// The in-kernel XICS's sources, each its 64-bit attribute
    /// (little-endian).
    pub static XICS = "kvm-xics", version 1, minimum 1;
    pub struct XicsState {
        sources: [u8; XICS_SOURCES * 8],
    }
}

/// Every description of KVM-PPC state, for -dump-vmstate.
pub static DESCRIPTIONS: &[&Description] = &[&CPU, &XICS];

/// `r` as the `regs` field carries it.
pub fn regs_to_bytes(r: &KvmRegs) -> [u8; REGS_BYTES] {
    let words = [r.pc, r.cr, r.ctr, r.lr, r.xer, r.msr, r.srr0, r.srr1, r.pid]
        .into_iter()
        .chain(r.sprg)
        .chain(r.gpr);
    let mut b = [0u8; REGS_BYTES];
    for (w, out) in words.zip(b.chunks_exact_mut(8)) {
        out.copy_from_slice(&w.to_le_bytes());
    }
    b
}

pub fn regs_from_bytes(b: &[u8; REGS_BYTES]) -> KvmRegs {
    let w: Vec<u64> = b
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    KvmRegs {
        pc: w[0],
        cr: w[1],
        ctr: w[2],
        lr: w[3],
        xer: w[4],
        msr: w[5],
        srr0: w[6],
        srr1: w[7],
        pid: w[8],
        sprg: w[9..17].try_into().expect("8 SPRGs"),
        gpr: w[17..49].try_into().expect("32 GPRs"),
    }
}

pub fn sregs_to_bytes(s: &KvmSregs) -> [u8; SREGS_BYTES] {
    let mut b = [0u8; SREGS_BYTES];
    b[..4].copy_from_slice(&s.pvr.to_le_bytes());
    for (w, out) in s.u.iter().zip(b[8..].chunks_exact_mut(8)) {
        out.copy_from_slice(&w.to_le_bytes());
    }
    b
}

pub fn sregs_from_bytes(b: &[u8; SREGS_BYTES]) -> KvmSregs {
    let mut s = KvmSregs::default();
    s.pvr = u32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
    for (w, c) in s.u.iter_mut().zip(b[8..].chunks_exact(8)) {
        *w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
    }
    s
}

/// A dirty bitmap of host pages, `ratio` small (4 KiB) pages each, as one
/// of `pages` small pages.
pub fn small_pages(host: &[u64], ratio: u64, pages: u64) -> Vec<u64> {
    let mut out = vec![0u64; pages.div_ceil(64) as usize];
    for (w, word) in host.iter().enumerate() {
        for bit in 0..64 {
            if word >> bit & 1 == 0 {
                continue;
            }
            let first = (w as u64 * 64 + bit) * ratio;
            for p in first..(first + ratio).min(pages) {
                out[(p / 64) as usize] |= 1 << (p % 64);
            }
        }
    }
    out
}

/// The timebase's frequency on every POWER host KVM-PPC runs on, and
/// QEMU's outside KVM: 512 MHz.
pub const TIMEBASE_HZ: u64 = 512_000_000;

/// A timebase in ns (the VM's clock).
pub fn tb_to_ns(tb: u64) -> u64 {
    (u128::from(tb) * 1_000_000_000 / u128::from(TIMEBASE_HZ)) as u64
}

/// A clock in ns as timebase ticks.
pub fn ns_to_tb(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(TIMEBASE_HZ) / 1_000_000_000) as u64
}

/// How long a pass before the last reads KVM's hash page table (QEMU
/// reads 5 ms an iteration, but iterates more often than vmm's RAM
/// passes); the last reads it to the end.
const HTAB_PASS: Duration = Duration::from_millis(50);
/// What one read of the HTAB fd asks for.
const HTAB_READ: usize = 64 << 10;

/// KVM's hash page table as the migration engine reads it (QEMU's
/// `kvmppc_save_htab`): one HTAB fd for the whole migration, which hands
/// out every valid entry first and then only the entries changed since
/// (the kernel keeps track), until a read returns nothing.
pub struct KvmHtab<R> {
    order: u32,
    fd: Mutex<R>,
}

impl<R: Read + Send> KvmHtab<R> {
    /// The table of 2^order bytes behind `fd` (the HTAB fd, opened to
    /// read from entry 0).
    pub fn new(order: u32, fd: R) -> KvmHtab<R> {
        KvmHtab {
            order,
            fd: Mutex::new(fd),
        }
    }
}

impl<R: Read + Send> HtabSource for KvmHtab<R> {
    /// Each migration opens its own HTAB fd, which starts with every
    /// valid entry.
    fn begin(&self) {}

    fn order(&self) -> Option<u32> {
        Some(self.order)
    }

    fn changes(&self, last: bool) -> Result<Vec<Chunk>, String> {
        let entries = 1u64 << (self.order - 4);
        let mut fd = self.fd.lock().expect("htab lock");
        let mut buf = vec![0; HTAB_READ];
        let mut out = vec![];
        let t0 = Instant::now();
        // Where the last record ended: a read starting below it began a
        // new sweep of the table (the kernel stops each read at its end).
        let mut at = 0u64;
        loop {
            let n = match fd.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("cannot read KVM's hash page table: {e}")),
            };
            let mut wrapped = false;
            kvm_ppc::htab::from_kvm(&buf[..n], entries, |index, valid, n_invalid| {
                let c = Chunk {
                    index,
                    n_invalid,
                    valid: valid.to_vec(),
                };
                wrapped |= u64::from(index) < at;
                at = c.end();
                out.push(c);
            })
            .map_err(|e| format!("KVM's hash page table: {e}"))?;
            // Before the last pass, one sweep at most (the reader bounds a
            // section by the table), and 50 ms.
            if !last && (wrapped || t0.elapsed() >= HTAB_PASS) {
                break;
            }
        }
        Ok(out)
    }
}

/// What a write to KVM's HTAB fd takes for a stream's chunks (QEMU's
/// `kvmppc_load_htab_chunk`, one record a chunk).
pub fn htab_records(chunks: &[Chunk]) -> Vec<u8> {
    let mut b = vec![];
    for c in chunks {
        kvm_ppc::htab::to_kvm(c.index, &c.valid, c.n_invalid, &mut b);
    }
    b
}

#[cfg(target_arch = "powerpc64")]
pub use backend::KvmPpcHypervisor;

#[cfg(target_arch = "powerpc64")]
mod backend {
    use super::*;
    use crate::hypervisor::{
        Blobs, Error, Exit, ExitHandler, Hypervisor, Vcpu, VcpuPpc64, Vm, VmPpc64,
    };
    use devices::virtio::Doorbell;
    use kvm_ppc::exit::{complete_hcall, complete_mmio_read, decode, RunExit};
    use kvm_ppc::sys;
    use kvm_ppc::uapi::*;
    use migration::vmstate::{State, Val, Vmstate};
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::sync::Arc;
    use vmm_sys_util::eventfd::EventFd;

    fn err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error { what, source }
    }

    /// KVM-PPC (`/dev/kvm` on a POWER host).
    pub struct KvmPpcHypervisor;

    impl Hypervisor for KvmPpcHypervisor {
        fn create_vm(&self) -> Result<Arc<dyn Vm>, Error> {
            let kvm = Arc::new(sys::open_kvm().map_err(err("cannot open /dev/kvm"))?);
            // HV (POWER8 and later with KVM-HV), else PR.
            let fd = sys::create_vm(&kvm, KVM_VM_PPC_HV)
                .or_else(|_| sys::create_vm(&kvm, KVM_VM_PPC_PR))
                .map_err(err("KVM_CREATE_VM failed (neither HV nor PR)"))?;
            // The kernel serves H_SET_MODE's breakpoint resources itself
            // and leaves the rest to the board (QEMU's
            // kvmppc_enable_set_mode_hcall; an older kernel forwards all).
            const H_SET_MODE: u64 = 0x31c;
            if let Err(e) = sys::enable_vm_cap(&fd, KVM_CAP_PPC_ENABLE_HCALL, [H_SET_MODE, 1, 0, 0])
            {
                log::debug!("KVM-PPC: H_SET_MODE stays with userspace: {e}");
            }
            let xics = sys::create_xics(&fd).map_err(err("cannot create the in-kernel XICS"))?;
            // Every source exists in the kernel from the start (masked, as
            // at reset; QEMU's xics_kvm_connect sets each), so MSIs and the
            // vty's input reach one and a save can read them all.
            let masked = 0xff << KVM_XICS_PRIORITY_SHIFT | KVM_XICS_MASKED;
            for i in 0..XICS_SOURCES as u64 {
                let irq = u64::from(devices::xics::IRQ_BASE) + i;
                sys::set_device_attr(&xics, KVM_DEV_XICS_GRP_SOURCES, irq, masked)
                    .map_err(err("cannot create the in-kernel XICS's sources"))?;
            }
            Ok(Arc::new(PpcVm {
                kvm,
                fd,
                xics,
                slots: Mutex::new(vec![]),
                pins: Default::default(),
                hpt_order: Mutex::new(None),
                vcpu_fds: Mutex::new(vec![]),
            }))
        }
    }

    struct Slot {
        slot: u32,
        gpa: u64,
        size: u64,
        host: u64,
    }

    struct PpcVm {
        kvm: Arc<File>,
        fd: File,
        xics: File,
        slots: Mutex<Vec<Slot>>,
        pins: devices::pci::intx::SharedLines,
        /// The hash page table's order the kernel granted, if it keeps one.
        hpt_order: Mutex<Option<u32>>,
        /// Each vCPU's fd, for the guest's timebase (the VM's clock).
        vcpu_fds: Mutex<Vec<File>>,
    }

    impl devices::virtio::VmOps for PpcVm {
        /// sPAPR MSIs are interrupt sources: the message's data names
        /// the source (as QEMU's `spapr_msi_write`).
        fn signal_msi(&self, _addr: u64, data: u32) -> std::io::Result<()> {
            sys::irq_line(&self.fd, data & 0xffff, KVM_INTERRUPT_SET)
        }

        /// A function's INTx: its bridge pin's source, up while any
        /// function on the pin holds it.
        fn set_irq_line(&self, gsi: u32, level: bool) -> std::io::Result<()> {
            let Some(level) = self.pins.set(gsi, level) else {
                return Ok(());
            };
            let level = if level {
                KVM_INTERRUPT_SET_LEVEL
            } else {
                KVM_INTERRUPT_UNSET
            };
            sys::irq_line(&self.fd, gsi, level)
        }

        fn add_doorbell(&self, fd: &EventFd, bell: Doorbell) -> std::io::Result<()> {
            match bell {
                Doorbell::Mmio { addr } => sys::ioeventfd(&self.fd, fd.as_raw_fd(), addr, 2, None, true),
                // PCI I/O space is MMIO on pseries (the PHB's window).
                Doorbell::Pio { .. } => Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "pseries has no port I/O: a legacy virtio doorbell is an MMIO write in the PHB's I/O window",
                )),
            }
        }

        fn remove_doorbell(&self, fd: &EventFd, bell: Doorbell) -> std::io::Result<()> {
            match bell {
                Doorbell::Mmio { addr } => {
                    sys::ioeventfd(&self.fd, fd.as_raw_fd(), addr, 2, None, false)
                }
                Doorbell::Pio { .. } => Ok(()),
            }
        }
    }

    impl VmPpc64 for PpcVm {
        fn allocate_hpt(&self, shift: u32) -> Result<Option<u32>, Error> {
            let has = |cap| sys::check_extension(&self.kvm, cap).unwrap_or(0) > 0;
            if has(KVM_CAP_PPC_MMU_RADIX) || !has(KVM_CAP_PPC_ALLOC_HTAB) {
                return Ok(None);
            }
            let order =
                sys::allocate_htab(&self.fd, shift).map_err(err("KVM_PPC_ALLOCATE_HTAB failed"))?;
            *self.hpt_order.lock().expect("hpt lock") = Some(order);
            Ok(Some(order))
        }

        fn htab_source(&self) -> Result<Option<Box<dyn HtabSource>>, Error> {
            let Some(order) = *self.hpt_order.lock().expect("hpt lock") else {
                return Ok(None);
            };
            let fd = sys::htab_fd(&self.fd, 0, 0).map_err(err(
                "cannot open KVM's hash page table (KVM_PPC_GET_HTAB_FD)",
            ))?;
            Ok(Some(Box::new(super::KvmHtab::new(order, fd))))
        }

        /// As QEMU's `htab_load`: a new order reallocates (and clears)
        /// the table; chunks go through a write-mode HTAB fd.
        fn load_htab(&self, pass: &migration::htab::Pass) -> Result<(), Error> {
            use migration::htab::Pass;
            use std::io::Write;
            match pass {
                // A radix guest's: nothing to hold.
                Pass::Free => Ok(()),
                Pass::Order(order) => match self.allocate_hpt(*order)? {
                    Some(got) if got == *order => Ok(()),
                    got => Err(Error {
                        what: "the host cannot give the stream's hash page table",
                        source: std::io::Error::other(format!(
                            "2^{order} bytes asked, {} given",
                            got.map_or("none".into(), |g| format!("2^{g}"))
                        )),
                    }),
                },
                Pass::Chunks(chunks) => {
                    let mut fd = sys::htab_fd(&self.fd, KVM_GET_HTAB_WRITE, 0)
                        .map_err(err("cannot open KVM's hash page table to write it"))?;
                    fd.write_all(&super::htab_records(chunks))
                        .map_err(err("cannot write KVM's hash page table"))
                }
            }
        }

        fn ail_mode_3(&self) -> bool {
            sys::check_extension(&self.kvm, KVM_CAP_PPC_AIL_MODE_3).unwrap_or(0) > 0
        }

        /// As QEMU's `spapr_set_vsmt_mode`: only where the host's mode
        /// differs; a host that cannot change it will do if its cores hold
        /// the guest's threads and divide the mode (vCPU ids are wasted).
        fn set_smt(&self, vsmt: u32, threads: u32) -> Result<(), Error> {
            let host = u32::try_from(sys::check_extension(&self.fd, KVM_CAP_PPC_SMT).unwrap_or(0))
                .unwrap_or(0);
            if host == 0 || host == vsmt {
                return Ok(());
            }
            match sys::enable_vm_cap(&self.fd, KVM_CAP_PPC_SMT, [vsmt.into(), 0, 0, 0]) {
                Err(e) if host >= threads && vsmt % host == 0 => {
                    log::warn!("KVM-PPC: cannot set the virtual SMT mode to {vsmt} (the host's is {host}): {e}");
                    Ok(())
                }
                r => r.map_err(err("cannot set KVM's threads per core (KVM_CAP_PPC_SMT)")),
            }
        }
    }

    impl Vm for PpcVm {
        fn ppc64(&self) -> Option<&dyn VmPpc64> {
            Some(self)
        }

        unsafe fn add_memory(
            &self,
            slot: u32,
            gpa: u64,
            size: u64,
            host: *mut u8,
        ) -> Result<(), Error> {
            // SAFETY: the caller keeps the host mapping alive for the VM's lifetime.
            unsafe { sys::set_memory(&self.fd, slot, 0, gpa, size, host as u64) }
                .map_err(err("KVM_SET_USER_MEMORY_REGION failed"))?;
            self.slots.lock().expect("slots lock").push(Slot {
                slot,
                gpa,
                size,
                host: host as u64,
            });
            Ok(())
        }

        fn set_dirty_logging(&self, on: bool) -> Result<(), Error> {
            let flags = if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 };
            for s in self.slots.lock().expect("slots lock").iter() {
                // SAFETY: the same mapping as registered; only the flag changes.
                unsafe { sys::set_memory(&self.fd, s.slot, flags, s.gpa, s.size, s.host) }
                    .map_err(err("KVM_SET_USER_MEMORY_REGION (dirty logging) failed"))?;
            }
            Ok(())
        }

        /// KVM logs host pages (64 KiB on most ppc64le hosts); the stream
        /// counts 4 KiB ones: each host page's bit stands for all of its.
        fn dirty_log(&self, slot: u32) -> Result<Vec<u64>, Error> {
            let size = self
                .slots
                .lock()
                .expect("slots lock")
                .iter()
                .find(|s| s.slot == slot)
                .map_or(0, |s| s.size);
            // SAFETY: sysconf has no preconditions.
            let host_page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
            // SAFETY: the bitmap has a bit for every host page of the slot.
            let host = unsafe { sys::dirty_log(&self.fd, slot, size.div_ceil(host_page) as usize) }
                .map_err(err("KVM_GET_DIRTY_LOG failed"))?;
            Ok(small_pages(&host, host_page / 4096, size / 4096))
        }

        fn add_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), Error> {
            sys::irqfd(&self.fd, evt.as_raw_fd(), gsi).map_err(err("KVM_IRQFD failed"))
        }

        fn route_source(&self, nr: u32, route: devices::xics::Route) -> Result<(), Error> {
            let group = KVM_DEV_XICS_GRP_SOURCES;
            let old = sys::get_device_attr(&self.xics, group, nr.into())
                .map_err(err("cannot read an in-kernel XICS source"))?;
            sys::set_device_attr(&self.xics, group, nr.into(), xics_source_attr(old, route))
                .map_err(err("cannot route an in-kernel XICS source"))
        }

        fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>, Error> {
            let fd =
                sys::create_vcpu(&self.fd, id.into()).map_err(err("KVM_CREATE_VCPU failed"))?;
            sys::enable_papr(&fd).map_err(err("cannot put the vCPU in PAPR mode"))?;
            sys::connect_xics(&fd, &self.xics, id.into())
                .map_err(err("cannot connect the vCPU to the in-kernel XICS"))?;
            let run = sys::RunPage::map(&self.kvm, &fd).map_err(err("cannot map kvm_run"))?;
            // The VM's clock reads and sets each vCPU's timebase offset.
            let clock_fd = fd.try_clone().map_err(err("cannot keep the vCPU's fd"))?;
            self.vcpu_fds.lock().expect("vcpu fds lock").push(clock_fd);
            Ok(Box::new(PpcVcpu { fd, run, id }))
        }

        /// The guest's timebase (in ns): the host's plus vCPU 0's offset
        /// (`KVM_REG_PPC_TB_OFFSET`; PR KVM has none: the host's). Taken
        /// when the guest stops and given back when it runs again, here or
        /// on another host, as QEMU's `timebase_save`/`timebase_load`: the
        /// guest's timebase does not count the pause.
        fn clock(&self) -> Result<u64, Error> {
            let fds = self.vcpu_fds.lock().expect("vcpu fds lock");
            let offset = match fds.first() {
                Some(fd) => optional(sys::get_one_reg(fd, KVM_REG_PPC_TB_OFFSET))
                    .map_err(err("cannot read the guest's timebase offset"))?,
                None => 0,
            };
            Ok(super::tb_to_ns(sys::timebase().wrapping_add(offset)))
        }

        /// Every vCPU's offset from this host's timebase (the kernel rounds
        /// it up to a multiple of 2^24 on POWER9, as for QEMU).
        fn set_clock(&self, ns: u64) -> Result<(), Error> {
            let offset = super::ns_to_tb(ns).wrapping_sub(sys::timebase());
            for fd in self.vcpu_fds.lock().expect("vcpu fds lock").iter() {
                optional(sys::set_one_reg(fd, KVM_REG_PPC_TB_OFFSET, offset).map(|()| 0))
                    .map_err(err("cannot set the guest's timebase offset"))?;
            }
            Ok(())
        }

        fn state_description(&self) -> &'static Description {
            &XICS
        }

        fn save(&self) -> Result<Blobs, Error> {
            let mut st = XicsState::default();
            for (i, out) in st.sources.chunks_exact_mut(8).enumerate() {
                let irq = u64::from(devices::xics::IRQ_BASE) + i as u64;
                let v = match sys::get_device_attr(&self.xics, KVM_DEV_XICS_GRP_SOURCES, irq) {
                    // A source the kernel does not have: none there.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => 0,
                    r => r.map_err(err("cannot read an in-kernel XICS source"))?,
                };
                out.copy_from_slice(&v.to_le_bytes());
            }
            Ok(to_blobs(st.to_state()))
        }

        fn restore(&self, state: &Blobs) -> Result<(), Error> {
            let sources = field(state, "sources", XICS_SOURCES * 8)?;
            for (i, v) in sources.chunks_exact(8).enumerate() {
                let irq = u64::from(devices::xics::IRQ_BASE) + i as u64;
                let v = u64::from_le_bytes(v.try_into().expect("8 bytes"));
                sys::set_device_attr(&self.xics, KVM_DEV_XICS_GRP_SOURCES, irq, v)
                    .map_err(err("cannot set an in-kernel XICS source"))?;
            }
            Ok(())
        }
    }

    /// A state of byte fields as the hypervisor interface's blobs.
    fn to_blobs(st: State) -> Blobs {
        st.fields
            .into_iter()
            .filter_map(|(name, v)| match v {
                Val::Bytes(b) => Some((name, b)),
                _ => None,
            })
            .collect()
    }

    /// Blob `name` of a saved state, which must be `len` bytes.
    fn field<'a>(st: &'a Blobs, name: &str, len: usize) -> Result<&'a [u8], Error> {
        let b = st
            .iter()
            .find(|x| x.0 == name)
            .map_or(&[][..], |x| x.1.as_slice());
        if b.len() != len {
            return Err(Error {
                what: "saved KVM-PPC state refused",
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("field '{name}' holds {} bytes, not {len}", b.len()),
                ),
            });
        }
        Ok(b)
    }

    struct PpcVcpu {
        fd: File,
        run: sys::RunPage,
        /// Its KVM vCPU id: its interrupt server number.
        id: u8,
    }

    /// A `ONE_REG` a host's KVM may lack (PR lacks the HV ones and the
    /// reverse): read as 0, not set.
    fn optional(r: std::io::Result<u64>) -> std::io::Result<u64> {
        match r {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => Ok(0),
            r => r,
        }
    }

    impl VcpuPpc64 for PpcVcpu {
        fn set_entry(&mut self, e: &arch::ppc64::boot::Entry) -> Result<(), Error> {
            let mut r = sys::get_regs(&self.fd).map_err(err("KVM_GET_REGS failed"))?;
            r.pc = e.pc;
            r.msr = e.msr;
            r.gpr[3] = e.fdt;
            r.gpr[4] = e.kernel_base;
            r.gpr[5] = e.client_interface;
            sys::set_regs(&self.fd, &r).map_err(err("KVM_SET_REGS failed"))
        }

        fn start_cpu(&mut self, nip: u64, r3: u64) -> Result<(), Error> {
            let mut r = sys::get_regs(&self.fd).map_err(err("KVM_GET_REGS failed"))?;
            r.pc = nip;
            r.msr = arch::ppc64::boot::MSR_SF | arch::ppc64::boot::MSR_ME;
            r.gpr[1] = 0;
            r.gpr[3] = r3;
            r.gpr[4] = 0;
            r.gpr[5] = 0;
            sys::set_regs(&self.fd, &r).map_err(err("KVM_SET_REGS failed"))?;
            self.set_online(true)
        }

        fn set_online(&mut self, online: bool) -> Result<(), Error> {
            // HV KVM counts the online threads of a core (QEMU's
            // kvmppc_set_reg_ppc_online); PR KVM has no such register.
            optional(sys::set_one_reg(&self.fd, KVM_REG_PPC_ONLINE, online.into()).map(|()| 0))
                .map(drop)
                .map_err(err("cannot set the vCPU's online state"))
        }

        fn set_lpcr(&mut self, bits: u64, mask: u64) -> Result<(), Error> {
            let lpcr =
                sys::get_one_reg(&self.fd, KVM_REG_PPC_LPCR_64).map_err(err("cannot read LPCR"))?;
            sys::set_one_reg(
                &self.fd,
                KVM_REG_PPC_LPCR_64,
                (lpcr & !mask) | (bits & mask),
            )
            .map_err(err("cannot set LPCR"))
        }
    }

    impl Vcpu for PpcVcpu {
        fn ppc64(&mut self) -> Option<&mut dyn VcpuPpc64> {
            Some(self)
        }

        fn state_description(&self) -> &'static Description {
            &CPU
        }

        fn save(&self) -> Result<Blobs, Error> {
            let fd = &self.fd;
            let regs = sys::get_regs(fd).map_err(err("KVM_GET_REGS failed"))?;
            let sregs = sys::get_sregs(fd).map_err(err("KVM_GET_SREGS failed"))?;
            let mut sprs = [0u8; SPRS_BYTES];
            for ((_, id), out) in ONE_REGS.iter().zip(sprs.chunks_exact_mut(8)) {
                let v =
                    optional(sys::get_one_reg(fd, *id)).map_err(err("KVM_GET_ONE_REG failed"))?;
                out.copy_from_slice(&v.to_le_bytes());
            }
            let wide = |id: fn(u64) -> u64| -> Result<[u8; 512], Error> {
                let mut b = [0u8; 512];
                for (n, out) in b.chunks_exact_mut(16).enumerate() {
                    out.copy_from_slice(
                        &sys::get_one_reg128(fd, id(n as u64))
                            .map_err(err("KVM_GET_ONE_REG (vector) failed"))?,
                    );
                }
                Ok(b)
            };
            let st = CpuState {
                regs: regs_to_bytes(&regs),
                sregs: sregs_to_bytes(&sregs),
                sprs,
                fpscr: sys::get_one_reg(fd, KVM_REG_PPC_FPSCR)
                    .map_err(err("cannot read FPSCR"))?
                    .to_le_bytes(),
                vscr: (sys::get_one_reg(fd, KVM_REG_PPC_VSCR).map_err(err("cannot read VSCR"))?
                    as u32)
                    .to_le_bytes(),
                vsr: wide(vsr)?,
                vr: wide(vr)?,
                icp: sys::get_one_reg(fd, KVM_REG_PPC_ICP_STATE)
                    .map_err(err("cannot read the ICP state"))?
                    .to_le_bytes(),
            };
            Ok(to_blobs(st.to_state()))
        }

        fn restore(&mut self, st: &Blobs) -> Result<(), Error> {
            let fixed = |n: &str, len: usize| field(st, n, len);
            let fd = &self.fd;
            let regs = regs_from_bytes(fixed("regs", REGS_BYTES)?.try_into().expect("sized"));
            let sregs = sregs_from_bytes(fixed("sregs", SREGS_BYTES)?.try_into().expect("sized"));
            sys::set_sregs(fd, &sregs).map_err(err("KVM_SET_SREGS failed"))?;
            sys::set_regs(fd, &regs).map_err(err("KVM_SET_REGS failed"))?;
            for ((_, id), v) in ONE_REGS
                .iter()
                .zip(fixed("sprs", SPRS_BYTES)?.chunks_exact(8))
            {
                let v = u64::from_le_bytes(v.try_into().expect("8 bytes"));
                match sys::set_one_reg(fd, *id, v) {
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
                    r => r.map_err(err("KVM_SET_ONE_REG failed"))?,
                }
            }
            let le64 = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
            sys::set_one_reg(fd, KVM_REG_PPC_FPSCR, le64(fixed("fpscr", 8)?))
                .map_err(err("cannot set FPSCR"))?;
            let vscr = u32::from_le_bytes(fixed("vscr", 4)?.try_into().expect("4 bytes"));
            sys::set_one_reg(fd, KVM_REG_PPC_VSCR, vscr.into()).map_err(err("cannot set VSCR"))?;
            for (name, id) in [("vsr", vsr as fn(u64) -> u64), ("vr", vr)] {
                for (n, v) in fixed(name, 512)?.chunks_exact(16).enumerate() {
                    sys::set_one_reg128(fd, id(n as u64), v.try_into().expect("16 bytes"))
                        .map_err(err("KVM_SET_ONE_REG (vector) failed"))?;
                }
            }
            sys::set_one_reg(fd, KVM_REG_PPC_ICP_STATE, le64(fixed("icp", 8)?))
                .map_err(err("cannot set the ICP state"))
        }

        fn run(&mut self, h: &dyn ExitHandler) -> Exit {
            if let Err(e) = sys::run(&self.fd, &mut self.run) {
                return match e.raw_os_error() {
                    Some(libc::EINTR | libc::EAGAIN) => Exit::Interrupted,
                    _ => Exit::Fatal(format!("KVM_RUN failed: {e}")),
                };
            }
            let page = self.run.bytes();
            match decode(page) {
                RunExit::Mmio {
                    addr,
                    len,
                    write: Some(data),
                } => {
                    h.mmio_write(addr, &data[..len]);
                    Exit::Handled
                }
                RunExit::Mmio {
                    addr,
                    len,
                    write: None,
                } => {
                    let mut data = [0u8; 8];
                    h.mmio_read(addr, &mut data[..len]);
                    complete_mmio_read(page, &data[..len]);
                    Exit::Handled
                }
                RunExit::Hcall { opcode, mut args } => {
                    let ret = h.papr_hcall(self.id, opcode, &mut args);
                    complete_hcall(page, ret, &args);
                    Exit::Handled
                }
                RunExit::Intr => Exit::Interrupted,
                RunExit::Shutdown => Exit::Shutdown,
                RunExit::SystemEvent(t) => Exit::Fatal(format!("KVM system event {t}")),
                RunExit::InternalError => Exit::Fatal("KVM internal error".into()),
                RunExit::FailEntry(r) => {
                    Exit::Fatal(format!("KVM entry failure: hardware reason {r:#x}"))
                }
                RunExit::Other(r) => Exit::Fatal(format!("unexpected KVM exit {r}")),
            }
        }

        fn describe(&self) -> String {
            match sys::get_regs(&self.fd) {
                Ok(r) => format!(
                    "pc={:#x} msr={:#x} lr={:#x} ctr={:#x} cr={:#x} r1={:#x} r3={:#x}",
                    r.pc, r.msr, r.lr, r.ctr, r.cr, r.gpr[1], r.gpr[3]
                ),
                Err(e) => format!("(registers unreadable: {e})"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use migration::stream::{decode_state, encode_state};
    use migration::vmstate::Vmstate;

    /// The HTAB fd as the kernel hands it out: a read returns records up
    /// to the table's end, the next from its start only what changed, an
    /// empty read a whole pass with nothing new.
    struct Reads(std::collections::VecDeque<Vec<u8>>);
    impl Read for Reads {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let r = self.0.pop_front().unwrap_or_default();
            buf[..r.len()].copy_from_slice(&r);
            Ok(r.len())
        }
    }

    fn record(index: u32, n: u8, n_invalid: u16) -> Vec<u8> {
        let mut e = [0u8; 16];
        e[7] = 1;
        e[15] = n;
        let mut b = vec![];
        kvm_ppc::htab::to_kvm(index, &e, n_invalid, &mut b);
        b
    }

    /// Each pass reads until the kernel has nothing more; the chunks are
    /// what the stream carries, and become the same records again on the
    /// destination.
    #[test]
    fn kvms_table_is_read_to_the_end_of_each_pass() {
        let reads = [
            [record(0, 1, 0), record(9, 2, 3)].concat(),
            record(4000, 3, 0),
            vec![],
            record(9, 4, 0),
            vec![],
        ];
        let h = KvmHtab::new(18, Reads(reads.into_iter().collect()));
        assert_eq!(h.order(), Some(18));
        let first = h.changes(true).unwrap();
        assert_eq!(
            first
                .iter()
                .map(|c| (c.index, c.n_valid(), c.n_invalid))
                .collect::<Vec<_>>(),
            [(0, 1, 0), (9, 1, 3), (4000, 1, 0)]
        );
        let last = h.changes(true).unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].valid[15], 4);
        assert_eq!(
            htab_records(&first),
            [record(0, 1, 0), record(9, 2, 3), record(4000, 3, 0)].concat()
        );
        // Before the last pass, a read that starts a new sweep ends it.
        let sweeps = [
            record(100, 1, 0),
            record(16_000, 2, 0),
            record(5, 3, 0),
            record(9, 4, 0),
        ];
        let h = KvmHtab::new(18, Reads(sweeps.into_iter().collect()));
        let pass: Vec<u32> = h.changes(false).unwrap().iter().map(|c| c.index).collect();
        assert_eq!(pass, [100, 16_000, 5]);
        assert_eq!(h.changes(true).unwrap()[0].index, 9);
        // A record past the table is an error naming it.
        let bad = KvmHtab::new(18, Reads([record(16_384, 1, 0)].into_iter().collect()));
        let e = bad.changes(true).unwrap_err();
        assert!(e.contains("16384"), "{e}");
    }

    /// 512 ticks a microsecond, both ways; no overflow at the top.
    #[test]
    fn the_timebase_and_the_clock_convert() {
        assert_eq!(ns_to_tb(1_000), 512);
        assert_eq!(tb_to_ns(512), 1_000);
        // 64 ticks are exactly 125 ns; other counts lose less than a tick.
        assert_eq!(ns_to_tb(tb_to_ns(64 * 123_456_789)), 64 * 123_456_789);
        assert_eq!(ns_to_tb(tb_to_ns(123_456_789_001)), 123_456_789_000);
        assert_eq!(tb_to_ns(u64::MAX), (u64::MAX as u128 * 1000 / 512) as u64);
        assert_eq!(ns_to_tb(999), 511);
    }

    /// A 64 KiB host page's bit marks its sixteen 4 KiB pages; a slot's
    /// last host page may be cut short.
    #[test]
    fn host_pages_become_stream_pages() {
        let host = [0b101u64];
        let small = small_pages(&host, 16, 40);
        assert_eq!(small, vec![0xffff | 0xff << 32]);
        assert_eq!(small_pages(&[0b10], 1, 64), vec![0b10]);
    }

    /// The attribute QEMU's `ics_set_kvm_state_one` writes for the same
    /// routing, with the kernel's delivery state kept.
    #[test]
    fn a_routing_becomes_the_kernels_source_attribute() {
        use devices::xics::Route;
        use kvm_ppc::uapi::*;
        let r = |server, priority, saved_priority, lsi| Route {
            server,
            priority,
            saved_priority,
            lsi,
        };
        assert_eq!(xics_source_attr(0, r(3, 5, 5, false)), 3 | 5 << 32);
        assert_eq!(
            xics_source_attr(0, r(3, 0xff, 5, true)),
            3 | 5 << 32 | KVM_XICS_MASKED | KVM_XICS_LEVEL_SENSITIVE
        );
        let busy = KVM_XICS_PENDING | KVM_XICS_PRESENTED | KVM_XICS_QUEUED;
        let old = busy | KVM_XICS_MASKED | KVM_XICS_LEVEL_SENSITIVE | 7 | 0x10 << 32;
        assert_eq!(xics_source_attr(old, r(1, 4, 4, false)), busy | 1 | 4 << 32);
    }

    #[test]
    fn registers_round_trip_through_their_bytes() {
        let mut r = KvmRegs {
            pc: 0x10,
            msr: 0x8000_0000_0000_1000,
            lr: 7,
            ..Default::default()
        };
        r.gpr[3] = 0xff0_0000;
        r.gpr[31] = u64::MAX;
        r.sprg[7] = 9;
        let b = regs_to_bytes(&r);
        assert_eq!(b[..8], 0x10u64.to_le_bytes(), "pc first");
        assert_eq!(regs_from_bytes(&b), r);
        let mut s = KvmSregs::default();
        s.pvr = 0x004e_1202;
        s.u[0] = 0xabc;
        s.u[152] = 1;
        assert_eq!(sregs_from_bytes(&sregs_to_bytes(&s)), s);
    }

    /// The sections' encodings: a vCPU's state and 4096 sources through
    /// the stream.
    #[test]
    fn the_sections_travel() {
        let st = CpuState {
            regs: regs_to_bytes(&KvmRegs {
                pc: 0x100,
                ..Default::default()
            }),
            fpscr: 3u64.to_le_bytes(),
            icp: (0x05u64 << 56).to_le_bytes(),
            ..Default::default()
        }
        .to_state();
        let bytes = encode_state(&CPU, &st).unwrap();
        assert_eq!(
            bytes.len(),
            REGS_BYTES + SREGS_BYTES + SPRS_BYTES + 8 + 4 + 1024 + 8
        );
        assert_eq!(bytes[..8], 0x100u64.to_le_bytes(), "pc first");
        let back = CpuState::from_state(&decode_state(&CPU, 1, &bytes).unwrap(), "cpu").unwrap();
        assert_eq!(regs_from_bytes(&back.regs).pc, 0x100);
        assert_eq!(u64::from_le_bytes(back.icp) >> 56, 5);
        let mut xics = XicsState::default();
        xics.sources[8..16].copy_from_slice(&kvm_ppc::uapi::KVM_XICS_MASKED.to_le_bytes());
        let bytes = encode_state(&XICS, &xics.to_state()).unwrap();
        assert_eq!(bytes.len(), 0x1000 * 8);
        let back =
            XicsState::from_state(&decode_state(&XICS, 1, &bytes).unwrap(), "kvm-xics").unwrap();
        assert_eq!(back.sources, xics.sources);
    }
}
