//! A VM process whose stdout is the guest's serial console.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    /// Pipes (stdout, stderr) whose reader has reached end of file.
    ended: u8,
    /// Both pipes ended: every line the process wrote is in `lines`.
    closed: bool,
    /// What the console printed after its last newline, once it ended: a
    /// line the process was stopped in the middle of (a guest writes a
    /// byte per port write, so a save or a migration can pause it there).
    cut: Option<String>,
}

/// A running VM process and the lines its console printed so far.
pub struct Vm {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<(Mutex<Lines>, Condvar)>,
    name: String,
}

impl Vm {
    /// Spawns `cmd` with stdin/stdout piped; stderr lines join the console
    /// log prefixed with `stderr:` so that failures show everything.
    pub fn spawn(name: &str, mut cmd: Command) -> Vm {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}"));
        let out = Arc::new((Mutex::new(Lines::default()), Condvar::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for (stream, prefix) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, ""),
            (Box::new(stderr), "stderr: "),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                            let (m, cv) = &*out;
                            let mut g = m.lock().unwrap();
                            if prefix.is_empty() && !buf.ends_with(b"\n") {
                                g.cut = Some(String::from_utf8_lossy(&buf).into_owned());
                            } else {
                                g.lines.push(format!("{prefix}{line}"));
                            }
                            cv.notify_all();
                        }
                    }
                }
                // The process's last words may be on either pipe (an error
                // goes to stderr after the console closed): the log is
                // complete only when both readers are done.
                let (m, cv) = &*out;
                let mut g = m.lock().unwrap();
                g.ended += 1;
                g.closed = g.ended == 2;
                cv.notify_all();
            });
        }
        let stdin = child.stdin.take();
        Vm {
            child,
            stdin,
            out,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.out.0.lock().unwrap().lines.clone()
    }

    /// What the console printed after its last newline, once the process
    /// ended (`None` if every line was ended, or while it runs).
    pub fn cut(&self) -> Option<String> {
        self.out.0.lock().unwrap().cut.clone()
    }

    /// The whole log, for assertion messages.
    pub fn log(&self) -> String {
        let cut = self.out.0.lock().unwrap().cut.clone();
        format!(
            "---- {} console ----\n{}{}\n----",
            self.name,
            self.lines().join("\n"),
            cut.map(|c| format!("\n{c}[cut]")).unwrap_or_default()
        )
    }

    /// The console across a save and restore or a migration: the console
    /// lines (not stderr's) of `self`, which has ended, then those of
    /// `after`, which continues its guest; a line `self` was stopped in
    /// the middle of is joined to the rest of it, which `after` prints
    /// first.
    pub fn across(&self, after: &Vm) -> Vec<String> {
        // Joined to nothing, a cut tick would read as a tick.
        let console = |l: &String| !l.starts_with("stderr: ");
        let g = self.out.0.lock().unwrap();
        assert!(g.closed, "{}: the console has not ended", self.name);
        let mut lines: Vec<String> = g.lines.iter().filter(|l| console(l)).cloned().collect();
        let mut rest = after.lines().into_iter().filter(console);
        if let Some(cut) = &g.cut {
            let first = rest
                .next()
                .unwrap_or_else(|| panic!("{}: no line yet to end {cut:?}", after.name));
            lines.push(format!("{cut}{first}").trim_end().to_string());
        }
        lines.extend(rest);
        lines
    }

    /// Waits for a line for which `pred` holds (searching from the start).
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        self.try_wait_for(timeout, pred).unwrap_or_else(|| {
            panic!(
                "{}: no line {what} within {timeout:?}\n{}",
                self.name,
                self.log()
            )
        })
    }

    pub fn try_wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.out;
        let mut g = m.lock().unwrap();
        loop {
            if let Some(l) = g.lines.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if g.closed || now >= deadline {
                return None;
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// Whether a line containing `what` arrives within `timeout`: for what
    /// vmm logs on stderr, which its reader may not have read yet when
    /// something else (a QMP reply, a console line) shows it happened.
    pub fn logged(&self, what: &str, timeout: Duration) -> bool {
        self.try_wait_for(timeout, |l| l.contains(what)).is_some()
    }

    /// Waits for a line starting with `prefix`.
    pub fn wait_prefix(&self, prefix: &str, timeout: Duration) -> String {
        self.wait_for(&format!("starting with {prefix:?}"), timeout, |l| {
            l.starts_with(prefix)
        })
    }

    /// How many lines so far satisfy `pred`.
    pub fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.out
            .0
            .lock()
            .unwrap()
            .lines
            .iter()
            .filter(|l| pred(l))
            .count()
    }

    /// Waits until at least `n` lines satisfy `pred`.
    pub fn wait_count(&self, what: &str, n: usize, timeout: Duration, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        while self.count(&pred) < n {
            assert!(
                Instant::now() < deadline,
                "{}: fewer than {n} lines {what} within {timeout:?}\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The guest's counter ticks so far (`tick n=` lines).
    pub fn ticks(&self) -> usize {
        self.count(|l| l.starts_with("tick n="))
    }

    /// Waits until the guest printed `n` ticks.
    pub fn wait_ticks(&self, n: usize, timeout: Duration) {
        self.wait_count("ticking", n, timeout, |l| l.starts_with("tick n="));
    }

    /// Has the guest verify every page it wrote (`v` on its console) and
    /// asserts that none is bad.
    pub fn verify_memory(&mut self, timeout: Duration) {
        let is_verify = |l: &str| l.starts_with("mem.verify") && l.contains("reason=request");
        let before = self.count(is_verify);
        self.send(b"v");
        self.wait_count("a verify", before + 1, timeout, is_verify);
        let v = self
            .lines()
            .into_iter()
            .rfind(|l| is_verify(l))
            .unwrap_or_default();
        assert_eq!(
            field(&v, "bad_pages").as_deref(),
            Some("0"),
            "{v}\n{}",
            self.log()
        );
    }

    /// Guest boots so far (a reset may cut the previous line, so the
    /// banner is searched anywhere in a line).
    pub fn boots(&self) -> usize {
        self.count(|l| l.contains("guest=vmm-test-guest"))
    }

    /// Bytes to the guest's serial input.
    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(bytes)
            .and_then(|_| stdin.flush())
            .expect("write to the VM's console");
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for the VM")
    }

    /// Waits for the process to exit; kills it after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait for the VM") {
                // Let the reader threads drain both pipes.
                let _ = self.try_wait_for(Duration::from_secs(5), |_| false);
                return st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "{}: did not exit within {timeout:?}\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The guest's verdict line (`RESULT ...`).
    pub fn result(&self) -> Option<String> {
        self.lines().into_iter().find(|l| l.starts_with("RESULT "))
    }

    /// `check.NAME=ok|FAIL` lines, as (name, ok) in order.
    pub fn checks(&self) -> Vec<(String, bool)> {
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix("check."))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v == "ok"))
            .collect()
    }

    /// The first value of `key=` on a line starting with `prefix`.
    pub fn value(&self, prefix: &str, key: &str) -> Option<String> {
        self.lines()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .find_map(|l| field(l, key))
    }

    /// Asserts the guest passed: RESULT PASS, no failed check, and the
    /// isa-debug-exit status of a pass (QEMU: (0 << 1) | 1 = 1).
    pub fn assert_pass(&mut self, timeout: Duration) {
        let st = self.wait_exit(timeout);
        let failed: Vec<_> = self
            .checks()
            .into_iter()
            .filter(|c| !c.1)
            .map(|c| c.0)
            .collect();
        assert!(
            failed.is_empty(),
            "{}: failed checks {failed:?}\n{}",
            self.name,
            self.log()
        );
        assert_eq!(
            self.result().as_deref(),
            Some("RESULT PASS"),
            "{}",
            self.log()
        );
        assert_eq!(
            st.code(),
            Some(1),
            "{}: exit status {st}\n{}",
            self.name,
            self.log()
        );
    }
}

/// `key=value` out of a space-separated line.
pub fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace().find_map(|w| {
        w.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    })
}

impl Vm {
    /// SIGKILL, as a crash would; returns once everything the process
    /// wrote is in the log.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.try_wait_for(Duration::from_secs(5), |_| false);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that closes its console and then writes its error to
    /// stderr right before exiting (what a refusing destination does):
    /// after `wait_exit` the log holds every stderr line.
    #[test]
    fn the_log_after_exit_holds_the_last_stderr_line() {
        for _ in 0..100 {
            let mut cmd = Command::new("sh");
            cmd.args([
                "-c",
                "exec >&-; i=0; while [ $i -lt 40 ]; do echo line$i >&2; i=$((i+1)); done; echo last >&2",
            ]);
            let mut vm = Vm::spawn("closer", cmd);
            assert!(vm.wait_exit(Duration::from_secs(30)).success());
            assert!(vm.log().contains("stderr: last"), "{}", vm.log());
        }
    }

    /// A console killed in the middle of a line, and the process that
    /// continues it: the cut line is not a line of its own (a tick cut in
    /// its number would read as another tick), and across the two the
    /// line is whole again.
    #[test]
    fn a_line_cut_by_a_kill_is_whole_across_the_two_consoles() {
        let sh = |name: &str, script: &str| {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", script]);
            Vm::spawn(name, cmd)
        };
        let mut before = sh(
            "before",
            "printf 'tick n=1 ns=5\ntick n=2 ns=1'; exec sleep 60",
        );
        before.wait_prefix("tick n=1", Duration::from_secs(10));
        before.kill();
        assert_eq!(before.lines(), ["tick n=1 ns=5"]);
        assert!(
            before.log().contains("tick n=2 ns=1[cut]"),
            "{}",
            before.log()
        );
        let mut after = sh("after", "printf '7\r\ntick n=3 ns=29\n'; echo err >&2");
        after.wait_exit(Duration::from_secs(10));
        assert_eq!(
            before.across(&after),
            ["tick n=1 ns=5", "tick n=2 ns=17", "tick n=3 ns=29"]
        );
    }
}
