//! `strace` attached to a running process, for tests that check which
//! system calls vmm makes (an fsync, how many writes a line takes).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// strace on every thread of a process, logging to a file until
/// [`Strace::log`] detaches it.
pub struct Strace {
    child: Child,
    log: PathBuf,
}

impl Strace {
    /// Attaches to `pid` and its threads (`-f`, so threads made later are
    /// followed too) tracing `calls` (strace's `-e trace=` list), with
    /// `-s 256` of each string; returns once every thread is traced.
    pub fn attach(pid: u32, calls: &str, log: &Path) -> Strace {
        let mut child = Command::new("strace")
            .args(["-f", "-s", "256", "-e", &format!("trace={calls}"), "-o"])
            .arg(log)
            .args(["-p", &pid.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .expect("run strace (scripts/setup.sh installs it)");
        let traced = || {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the tasks");
            tasks.flatten().all(|t| {
                // A thread that ended meanwhile needs no tracer.
                std::fs::read_to_string(t.path().join("status")).map_or(true, |st| {
                    st.lines().any(|l| {
                        l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0")
                    })
                })
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !traced() {
            assert!(
                Instant::now() < deadline && child.try_wait().unwrap().is_none(),
                "strace did not attach to {pid}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Strace {
            child,
            log: log.to_path_buf(),
        }
    }

    /// Detaches (SIGINT: strace writes out its log) and returns the log.
    pub fn log(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).expect("the strace log")
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
