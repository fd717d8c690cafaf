//! The allow-lists, per class of thread. Each started from reading the
//! code and was grown from the kernel's audit log of the whole test suite
//! run with `VMM_SANDBOX=log` (docs/security.md says how).

use super::Class;
use libc::*;

/// What every thread does: memory, locks, time, signals, logging, ending.
const COMMON: &[c_long] = &[
    SYS_read,
    SYS_write,
    SYS_writev,
    SYS_close,
    SYS_futex,
    SYS_brk,
    SYS_mmap,
    SYS_munmap,
    SYS_mremap,
    SYS_madvise,
    SYS_mprotect,
    SYS_rt_sigreturn,
    SYS_rt_sigprocmask,
    // glibc sets its own signals' handlers lazily (SIGRT_1, at a thread's
    // start).
    SYS_rt_sigaction,
    SYS_restart_syscall,
    SYS_sigaltstack,
    SYS_sched_yield,
    SYS_nanosleep,
    SYS_clock_nanosleep,
    SYS_clock_gettime,
    SYS_gettid,
    SYS_getpid,
    SYS_getrandom,
    SYS_prctl,
    SYS_exit,
    SYS_exit_group,
];

/// Starting a thread (in the thread that starts it, and in the new one
/// before it enters a class of its own).
const THREADS: &[c_long] = &[
    SYS_clone,
    SYS_clone3,
    SYS_set_robust_list,
    SYS_rseq,
    SYS_sched_getaffinity,
];

/// KVM_RUN and the devices it reaches; a socket write (std's `send`) when
/// the first vCPU of a migrated-in guest tells the source it runs.
const VCPU: &[c_long] = &[SYS_ioctl, SYS_tgkill, SYS_sendto];

const WORKER: &[c_long] = &[
    SYS_epoll_wait,
    SYS_epoll_pwait,
    SYS_readv,
    SYS_pread64,
    SYS_pwrite64,
    SYS_preadv,
    SYS_pwritev,
    SYS_fsync,
    SYS_fdatasync,
    SYS_ioctl,
    SYS_sendto,
    SYS_recvfrom,
];

const QMP: &[c_long] = &[
    SYS_accept4,
    SYS_recvmsg,
    SYS_recvfrom,
    SYS_sendmsg,
    SYS_sendto,
    SYS_fcntl,
    SYS_poll,
    SYS_shutdown,
];

const MIGRATION: &[c_long] = &[
    SYS_socket,
    SYS_connect,
    SYS_bind,
    SYS_listen,
    SYS_accept4,
    SYS_setsockopt,
    SYS_getsockopt,
    SYS_getsockname,
    SYS_getpeername,
    SYS_socketpair,
    SYS_shutdown,
    SYS_recvmsg,
    SYS_recvfrom,
    SYS_sendmsg,
    SYS_sendto,
    SYS_poll,
    SYS_fcntl,
    SYS_ioctl,
    SYS_openat,
    SYS_fstat,
    SYS_newfstatat,
    SYS_statx,
    SYS_lseek,
    SYS_fsync,
    SYS_fdatasync,
    SYS_ftruncate,
    SYS_readv,
    SYS_unlink,
];

/// The main loop's own (beyond what it shares with every class): boards
/// (KVM, memory, eventfds, epoll, disk images), the monitor's sockets.
const MAIN: &[c_long] = &[
    // Each thread enters its class's filter.
    SYS_seccomp,
    SYS_ioctl,
    SYS_openat,
    SYS_fstat,
    SYS_newfstatat,
    SYS_statx,
    SYS_lseek,
    SYS_eventfd2,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_fcntl,
    SYS_flock,
    SYS_dup,
    SYS_tgkill,
    SYS_kill,
    SYS_fchmod,
    SYS_unlink,
    SYS_readlink,
    SYS_getdents64,
    SYS_memfd_create,
    SYS_fallocate,
    SYS_ftruncate,
    SYS_getuid,
    SYS_geteuid,
];

/// Whether `class` may open files read-only (and only that), beside its
/// list: glibc's malloc reads `/proc/sys/vm/overcommit_memory` the first
/// time a thread's arena shrinks, in whichever thread that is, and
/// seccomp cannot see a path. (The main thread and a migration, which
/// writes `file:` saves, open freely: it is in their lists.)
pub fn opens_read_only(class: Class) -> bool {
    !allowed(class).contains(&SYS_openat)
}

/// Which `ioctl`s `class` may make, if not any: KVM's (request type
/// `KVMIO`, 0xAE), and these requests besides. A vCPU runs the guest and
/// the devices it reaches; a device thread signals interrupts (MSI,
/// INTx) through KVM; a migration reads the dirty log and the VM's state
/// through KVM and makes its sockets non-blocking (std's
/// `set_nonblocking` is FIONBIO). None of that needs another device's
/// ioctls. The main loop builds boards (a tap's TUNSETIFF) and may make
/// any.
pub fn ioctls(class: Class) -> Option<&'static [u64]> {
    match class {
        Class::Vcpu | Class::Worker => Some(&[]),
        Class::Migration => Some(&[libc::FIONBIO]),
        Class::Main | Class::Qmp => None,
    }
}

/// The system calls `class` may make.
pub fn allowed(class: Class) -> Vec<c_long> {
    let own: &[&[c_long]] = match class {
        Class::Vcpu => &[VCPU],
        Class::Worker => &[WORKER],
        Class::Qmp => &[QMP, THREADS],
        Class::Migration => &[MIGRATION, THREADS],
        Class::Main => &[MAIN, THREADS, VCPU, WORKER, QMP, MIGRATION],
    };
    let mut v: Vec<c_long> = COMMON
        .iter()
        .chain(own.iter().copied().flatten())
        .copied()
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}
