//! A minimal QMP client (greeting, capabilities, commands; events are
//! collected and skipped).

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects (retrying until the socket exists) and negotiates.
    pub fn connect(path: &Path, timeout: Duration) -> Qmp {
        let deadline = Instant::now() + timeout;
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("QMP socket {}: {e}", path.display()),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("socket timeout");
        let mut q = Qmp {
            r: BufReader::new(s.try_clone().expect("clone socket")),
            w: s,
            events: Vec::new(),
        };
        let greeting = q.read();
        assert!(greeting.get("QMP").is_some(), "bad QMP greeting {greeting}");
        q.execute("qmp_capabilities", json!({}));
        q
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("read from QMP");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP sent non-JSON {line:?}: {e}"))
    }

    /// Runs a command; returns `return`, panics on `error`.
    pub fn execute(&mut self, cmd: &str, args: Value) -> Value {
        let msg = json!({"execute": cmd, "arguments": args});
        writeln!(self.w, "{msg}").expect("write to QMP");
        loop {
            let v = self.read();
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            panic!("QMP {cmd} failed: {v}");
        }
    }
}
