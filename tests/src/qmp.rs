//! A minimal QMP client for tests: greeting, capabilities, commands (with
//! their error replies), raw input, and events.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
    pub greeting: Value,
    pub events: Vec<Value>,
    /// What was read of a line not yet ended (a read that timed out).
    partial: Vec<u8>,
}

impl Qmp {
    /// Connects (retrying until the socket exists) and negotiates.
    pub fn connect(path: &Path, timeout: Duration) -> Qmp {
        let mut q = Qmp::connect_raw(path, timeout);
        q.execute("qmp_capabilities", json!({}));
        q
    }

    /// Connects and reads the greeting, without negotiating.
    pub fn connect_raw(path: &Path, timeout: Duration) -> Qmp {
        let deadline = Instant::now() + timeout;
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("QMP socket {}: {e}", path.display()),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("socket timeout");
        let mut q = Qmp {
            r: BufReader::new(s.try_clone().expect("clone socket")),
            w: s,
            greeting: Value::Null,
            events: vec![],
            partial: vec![],
        };
        q.greeting = q.read().expect("QMP greeting");
        assert!(
            q.greeting.get("QMP").is_some(),
            "bad QMP greeting {}",
            q.greeting
        );
        q
    }

    /// The next whole line as JSON; `None` at the end or when a read
    /// times out (what was read of the line is kept for the next call).
    fn read(&mut self) -> Option<Value> {
        match self.r.read_until(b'\n', &mut self.partial) {
            Ok(_) if self.partial.ends_with(b"\n") => {
                let line = String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned();
                Some(
                    serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("QMP sent non-JSON {line:?}: {e}")),
                )
            }
            Ok(_) | Err(_) => None,
        }
    }

    /// Sends raw text; returns the next reply (events are kept aside).
    pub fn raw(&mut self, text: &str) -> Value {
        self.w.write_all(text.as_bytes()).expect("write to QMP");
        self.next_reply()
    }

    fn next_reply(&mut self) -> Value {
        loop {
            let v = self.read().expect("QMP closed before replying");
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            return v;
        }
    }

    /// Runs a command; `Ok(return)` or `Err(error object)`.
    pub fn try_execute(&mut self, cmd: &str, args: Value) -> Result<Value, Value> {
        let v = self.raw(&json!({"execute": cmd, "arguments": args}).to_string());
        match (v.get("return"), v.get("error")) {
            (Some(r), _) => Ok(r.clone()),
            (_, Some(e)) => Err(e.clone()),
            _ => panic!("QMP reply without return or error: {v}"),
        }
    }

    /// Runs a command; panics on an error reply.
    pub fn execute(&mut self, cmd: &str, args: Value) -> Value {
        self.try_execute(cmd, args)
            .unwrap_or_else(|e| panic!("QMP {cmd} failed: {e}"))
    }

    /// Caps migration bandwidth at `bytes_per_second` and turns on
    /// auto-converge, so a guest that dirties fast still converges.
    pub fn cap_bandwidth_and_auto_converge(&mut self, bytes_per_second: u64) {
        self.execute(
            "migrate-set-parameters",
            json!({"max-bandwidth": bytes_per_second}),
        );
        self.execute(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "auto-converge", "state": true}]}),
        );
    }

    /// Polls `query-migrate` until the migration (or save) has ended;
    /// returns its last answer.
    pub fn wait_migration(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.execute("query-migrate", json!({}));
            if matches!(
                m["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            ) {
                return m;
            }
            assert!(Instant::now() < deadline, "the migration did not end: {m}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls `query-migrate` until the migration has RAM on the wire, so
    /// that a fault injected next lands in the middle of RAM however long
    /// the setup took; returns that answer.
    pub fn wait_ram_sent(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.execute("query-migrate", json!({}));
            assert!(
                matches!(m["status"].as_str(), Some("setup" | "active")),
                "the migration ended before its RAM was sent: {m}"
            );
            if m["ram"]["transferred"].as_u64().unwrap_or(0) > 0 {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no RAM sent within {timeout:?}: {m}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for event `name` (already received ones count).
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
                return self.events.remove(i);
            }
            assert!(
                Instant::now() < deadline,
                "no {name} event within {timeout:?}; got {:?}",
                self.events
            );
            self.w
                .set_read_timeout(Some(Duration::from_millis(100)))
                .ok();
            if let Some(v) = self.read() {
                self.events.push(v);
            }
            self.w.set_read_timeout(Some(Duration::from_secs(30))).ok();
        }
    }
}
