//! The seccomp sandbox: each class of thread runs under an allow-list of
//! the system calls it really makes, installed when the thread starts,
//! before it touches guest memory, a device queue, a monitor client or a
//! migration peer.
//!
//! Filters stack: a thread keeps its creator's and adds its own, so the
//! main thread's list ([`Class::Main`], installed first) is the union of
//! everything vmm does, and each other class narrows it for its threads.
//! A call outside a thread's list raises SIGSYS; the handler writes one
//! line naming the thread and the call and ends the process (exit status
//! 159, as QEMU's `-sandbox on` kills it). `VMM_SANDBOX=log` reports
//! instead of enforcing (the kernel's audit log gets each call a list
//! lacks: how the lists were grown, see docs/security.md).
//!
//! x86_64 only: seccompiler has no ppc64 backend; there the sandbox is off
//! and says so.
//!
//! [`run_as`] (`-runas USER`) is the other half of confinement: vmm becomes
//! an unprivileged user before it opens anything.

mod user;

pub use user::{run_as, RunAsError};

#[cfg(target_arch = "x86_64")]
mod lists;
#[cfg(target_arch = "x86_64")]
mod syscalls;

use std::sync::atomic::{AtomicU8, Ordering};

/// A class of thread, each with its allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// The main loop: boards, devices, QMP dispatch; whatever any thread
    /// does (its filter is inherited by all).
    Main,
    /// A vCPU: KVM_RUN and the emulated devices it reaches.
    Vcpu,
    /// A virtio device's worker: its queues and its backend (an image, a
    /// tap, a console, the host's random source).
    Worker,
    /// A monitor client (and the thread that accepts them).
    Qmp,
    /// A migration: its connections, the dirty log, a file save.
    Migration,
}

/// How the sandbox runs (`-sandbox on|off`, `VMM_SANDBOX=log`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off = 0,
    On = 1,
    /// Allow what a list lacks, and log it (the kernel's audit log).
    Log = 2,
}

static MODE: AtomicU8 = AtomicU8::new(Mode::Off as u8);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the {0:?} seccomp filter: {1}")]
    Build(Class, String),
    #[error("cannot install the {0:?} seccomp filter: {1}")]
    Install(Class, String),
}

/// Sets the mode for every thread that enters a class from now on, and
/// installs the SIGSYS handler that reports a denied call.
pub fn set_mode(mode: Mode) {
    let mode = match std::env::var("VMM_SANDBOX").as_deref() {
        Ok("log") if mode != Mode::Off => Mode::Log,
        _ => mode,
    };
    if mode != Mode::Off && !cfg!(target_arch = "x86_64") {
        log::warn!("the seccomp sandbox is x86_64 only: vmm runs without it here");
        return;
    }
    MODE.store(mode as u8, Ordering::SeqCst);
    if mode == Mode::On {
        #[cfg(target_arch = "x86_64")]
        report_denied_calls();
    }
}

pub fn mode() -> Mode {
    match MODE.load(Ordering::SeqCst) {
        1 => Mode::On,
        2 => Mode::Log,
        _ => Mode::Off,
    }
}

/// Puts the calling thread under `class`'s filter (nothing with the
/// sandbox off). A thread cannot leave it, and threads it starts inherit
/// it.
pub fn enter(class: Class) -> Result<(), Error> {
    let r = enter_quietly(class);
    if class == Class::Main && r.is_ok() {
        forbidden_call(class);
    }
    r
}

fn enter_quietly(class: Class) -> Result<(), Error> {
    match mode() {
        Mode::Off => Ok(()),
        #[cfg(target_arch = "x86_64")]
        m => install(class, m),
        #[cfg(not(target_arch = "x86_64"))]
        _ => {
            let _ = class;
            Ok(())
        }
    }
}

/// Like [`enter`], for threads that cannot return an error: a thread that
/// cannot be confined ends the process (it would run unconfined).
pub fn enter_or_exit(class: Class) {
    if let Err(e) = enter_quietly(class) {
        eprintln!("vmm: {e}; vmm stops");
        std::process::exit(1);
    }
    forbidden_call(class);
}

/// Test-only (feature `fault-injection`): if `VMM_TEST_FORBIDDEN` names
/// `class`, its thread makes a call the main loop may make but this class
/// may not, right after entering it: how a test sees each filter live.
#[cfg(feature = "fault-injection")]
fn forbidden_call(class: Class) {
    let name = format!("{class:?}").to_lowercase();
    if std::env::var("VMM_TEST_FORBIDDEN").is_ok_and(|c| c == name) {
        log::warn!("fault injection: a forbidden call from the {name} thread");
        let nr = match class {
            // Nobody may trace.
            Class::Main => libc::SYS_ptrace,
            // The main loop makes eventfds, a migration does not.
            Class::Migration => libc::SYS_eventfd2,
            // The main loop (a migration) opens sockets, these do not.
            Class::Vcpu | Class::Worker | Class::Qmp => libc::SYS_socket,
        };
        // Only the main loop makes other than KVM's ioctls: a terminal's,
        // on stdin, is another's.
        let (nr, a0, a1) = match std::env::var("VMM_TEST_FORBIDDEN_IOCTL") {
            Ok(_) if class != Class::Main => (libc::SYS_ioctl, 0, libc::TCGETS as i64),
            _ => (nr, 0, 0),
        };
        // SAFETY: the call is denied before it does anything.
        unsafe { libc::syscall(nr, a0, a1, 0) };
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
fn forbidden_call(_class: Class) {}

#[cfg(target_arch = "x86_64")]
fn install(class: Class, mode: Mode) -> Result<(), Error> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    let build = |e: seccompiler::BackendError| Error::Build(class, e.to_string());
    let mut rules: std::collections::BTreeMap<i64, Vec<SeccompRule>> =
        lists::allowed(class).iter().map(|&n| (n, vec![])).collect();
    if lists::opens_read_only(class) {
        // openat(dirfd, path, flags, mode): no write access, no creating,
        // no truncating.
        let write = (libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC | libc::O_TMPFILE) as u64;
        let read_only =
            SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(write), 0)
                .map_err(build)?;
        rules.insert(
            libc::SYS_openat,
            vec![SeccompRule::new(vec![read_only]).map_err(build)?],
        );
    }
    let denied = match mode {
        Mode::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    if let Some(also) = lists::ioctls(class) {
        // ioctl(fd, request, ...): the request's type byte (bits 8-15) is
        // KVMIO, or the request is one of `also`.
        let kvm = SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(0xff00),
            0xae00,
        )
        .map_err(build)?;
        let mut allowed = vec![SeccompRule::new(vec![kvm]).map_err(build)?];
        for &request in also {
            let exactly =
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
                    .map_err(build)?;
            allowed.push(SeccompRule::new(vec![exactly]).map_err(build)?);
        }
        rules.insert(libc::SYS_ioctl, allowed);
    }
    let filter = SeccompFilter::new(rules, denied, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(build)?;
    let program: seccompiler::BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| Error::Build(class, e.to_string()))?;
    seccompiler::apply_filter(&program).map_err(|e| Error::Install(class, e.to_string()))?;
    log::debug!(
        "thread {:?} entered the {class:?} sandbox",
        std::thread::current().name()
    );
    Ok(())
}

/// Installs the SIGSYS handler: a denied call is reported and ends vmm.
#[cfg(target_arch = "x86_64")]
fn report_denied_calls() {
    // SAFETY: a zeroed sigaction is valid; the handler is an extern "C"
    // fn that only makes async-signal-safe calls.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut());
    }
}

/// The message for a denied call: no allocation, no lock (a signal
/// handler), just bytes into `buf`.
#[cfg(target_arch = "x86_64")]
fn denied_message(thread: &[u8], nr: i32, buf: &mut [u8; 256]) -> usize {
    let mut n = 0;
    let mut put = |b: &[u8]| {
        for &c in b {
            if n < buf.len() {
                buf[n] = c;
                n += 1;
            }
        }
    };
    put(b"vmm: sandbox: thread '");
    put(thread);
    put(b"' made a system call outside its seccomp list: ");
    match usize::try_from(nr)
        .ok()
        .and_then(|i| syscalls::NAMES.get(i))
    {
        Some(name) if !name.is_empty() => put(name.as_bytes()),
        _ => put(b"?"),
    }
    put(b" (");
    let mut digits = [0u8; 12];
    let mut d = digits.len();
    let mut v = nr.unsigned_abs();
    loop {
        d -= 1;
        digits[d] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(&digits[d..]);
    put(b"); vmm stops\n");
    n
}

#[cfg(target_arch = "x86_64")]
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SIGSYS's siginfo carries the call's number after the address of the
    // call (`_sigsys._syscall`: the seventh int).
    // SAFETY: the kernel hands the handler a valid siginfo for SIGSYS.
    let nr = unsafe { *(info as *const i32).add(6) };
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into `name`.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    let len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    let mut buf = [0u8; 256];
    let n = denied_message(&name[..len], nr, &mut buf);
    // SAFETY: write and _exit are async-signal-safe; `buf` holds `n`
    // bytes.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
        libc::_exit(159);
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn a_denied_call_is_named_with_its_thread() {
        let mut buf = [0u8; 256];
        let n = denied_message(b"vcpu0", libc::SYS_socket as i32, &mut buf);
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            "vmm: sandbox: thread 'vcpu0' made a system call outside its seccomp list: socket (41); vmm stops\n"
        );
        let n = denied_message(b"x", 9999, &mut buf);
        assert!(std::str::from_utf8(&buf[..n])
            .unwrap()
            .contains(": ? (9999)"));
    }

    #[test]
    fn every_list_builds_and_narrows_main() {
        for class in [
            Class::Main,
            Class::Vcpu,
            Class::Worker,
            Class::Qmp,
            Class::Migration,
        ] {
            let list = lists::allowed(class);
            assert!(!list.is_empty());
            for n in list {
                assert!(
                    lists::allowed(Class::Main).contains(&n),
                    "{class:?} allows {} that Main does not: its threads could never make it",
                    syscalls::NAMES[n as usize]
                );
            }
        }
    }
}
