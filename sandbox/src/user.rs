//! `-runas USER`: become an unprivileged user before anything is opened.

/// Why vmm could not become the user.
#[derive(Debug, thiserror::Error)]
pub enum RunAsError {
    #[error("-runas {0}: no such user")]
    NoUser(String),
    #[error("-runas {user}: cannot become it: {what} failed: {err}")]
    Failed {
        user: String,
        what: &'static str,
        err: std::io::Error,
    },
    #[error("-runas {0}: the process could still become root again")]
    StillRoot(String),
}

/// Becomes `user`: its groups (from the group database), its group, then
/// its uid, for every thread (none but this one should exist yet). A
/// process that could go back to root afterwards is an error.
pub fn run_as(user: &str) -> Result<(), RunAsError> {
    let name = std::ffi::CString::new(user).map_err(|_| RunAsError::NoUser(user.into()))?;
    // SAFETY: a zeroed passwd is valid; getpwnam_r fills it and `buf`
    // holds its strings.
    let (uid, gid) = unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let mut buf = vec![0 as libc::c_char; 16 << 10];
        let r = libc::getpwnam_r(
            name.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        );
        if r != 0 || out.is_null() {
            return Err(RunAsError::NoUser(user.into()));
        }
        (pw.pw_uid, pw.pw_gid)
    };
    let failed = |what| RunAsError::Failed {
        user: user.into(),
        what,
        err: std::io::Error::last_os_error(),
    };
    // SAFETY: plain credential calls; glibc applies them to every thread.
    unsafe {
        if libc::initgroups(name.as_ptr(), gid) != 0 {
            return Err(failed("initgroups"));
        }
        if libc::setgid(gid) != 0 {
            return Err(failed("setgid"));
        }
        if libc::setuid(uid) != 0 {
            return Err(failed("setuid"));
        }
        if uid != 0 && libc::setuid(0) == 0 {
            return Err(RunAsError::StillRoot(user.into()));
        }
        // Changing uid made the process undumpable, which gives its /proc
        // files to root: vmm could no longer read its own page map (which
        // pages a migration must read). Dumpable again, it is what the
        // same vmm started by the user would be; it holds nothing of
        // root's by now.
        if libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) != 0 {
            return Err(failed("prctl(PR_SET_DUMPABLE)"));
        }
    }
    log::info!("running as {user} (uid {uid}, gid {gid})");
    Ok(())
}
