//! Two "hosts" on one machine: two network namespaces joined by a veth
//! pair, host A at 10.231.N.1 and host B at 10.231.N.2, where N differs
//! per [`Hosts`] so that several can exist at once.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

pub struct Hosts {
    /// The namespaces' names.
    pub a: String,
    pub b: String,
    id: String,
    net: u32,
}

impl Hosts {
    pub fn new() -> Hosts {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}x{n}", std::process::id() % 100_000);
        let net = (std::process::id() + n) % 250;
        let (a, b) = (format!("vmmA{id}"), format!("vmmB{id}"));
        ip(&["netns", "add", &a]);
        ip(&["netns", "add", &b]);
        let (va, vb) = (format!("va{id}"), format!("vb{id}"));
        ip(&[
            "link", "add", &va, "netns", &a, "type", "veth", "peer", "name", &vb, "netns", &b,
        ]);
        ip(&[
            "-n",
            &a,
            "addr",
            "add",
            &format!("10.231.{net}.1/24"),
            "dev",
            &va,
        ]);
        ip(&[
            "-n",
            &b,
            "addr",
            "add",
            &format!("10.231.{net}.2/24"),
            "dev",
            &vb,
        ]);
        for (ns, dev) in [(&a, &va), (&b, &vb)] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        Hosts { a, b, id, net }
    }

    /// Host A's address (`a` true) or host B's.
    pub fn addr(&self, a: bool) -> String {
        format!("10.231.{}.{}", self.net, if a { 1 } else { 2 })
    }

    /// The namespace of host A (`a` true) or host B.
    pub fn ns(&self, a: bool) -> &str {
        if a {
            &self.a
        } else {
            &self.b
        }
    }

    /// Cuts the wire silently: frames are dropped, no RST, no FIN.
    pub fn cut(&self) {
        ip(&[
            "-n",
            &self.b,
            "link",
            "set",
            &format!("vb{}", self.id),
            "down",
        ]);
    }

    /// Mends what [`Hosts::cut`] cut.
    pub fn mend(&self) {
        ip(&[
            "-n",
            &self.b,
            "link",
            "set",
            &format!("vb{}", self.id),
            "up",
        ]);
    }
}

impl Default for Hosts {
    fn default() -> Hosts {
        Hosts::new()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.a]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).status();
    }
}

/// Waits until something listens on TCP `port` in namespace `ns`.
pub fn wait_for_listener(ns: &str, port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "ss", "-ltnH"])
            .output()
            .expect("ss");
        if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on {port} in {ns}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// From namespace `ns`: a connect-and-close and a few bytes of HTTP to
/// `host:port`, as a port scanner or a health check would. Both connects
/// must succeed; the request's write may be reset, since the destination
/// closes a connection once its first 8 bytes show it is not a migration
/// (bash writes the request line by line, and the second line can meet
/// that close).
pub fn probe(ns: &str, host: &str, port: u16) {
    let script = format!(
        "trap '' PIPE; exec 3<>/dev/tcp/{host}/{port} || exit 1; exec 3>&-; \
         exec 3<>/dev/tcp/{host}/{port} || exit 1; \
         printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 2>/dev/null; exit 0"
    );
    let st = Command::new("ip")
        .args(["netns", "exec", ns, "bash", "-c", &script])
        .status()
        .expect("run bash");
    assert!(st.success(), "the probe from {ns} could not connect");
}
