//! Host-side network peers for the guest's virtio-net test.

use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Echoes every Ethernet frame QEMU's `-netdev socket,udp=...` sends back
/// to it, on a thread. Holds the two loopback ports.
pub struct UdpEcho {
    pub listen: u16,
    pub qemu: u16,
}

impl UdpEcho {
    pub fn start() -> UdpEcho {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind echo socket");
        let listen = sock.local_addr().expect("local addr").port();
        let qemu = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free port")
            .port();
        sock.set_read_timeout(Some(Duration::from_secs(120)))
            .expect("timeout");
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok((n, _)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], ("127.0.0.1", qemu));
            }
        });
        UdpEcho { listen, qemu }
    }

    /// The `-netdev` option for QEMU.
    pub fn netdev(&self, id: &str) -> String {
        format!(
            "socket,id={id},udp=127.0.0.1:{},localaddr=127.0.0.1:{}",
            self.listen, self.qemu
        )
    }
}

/// The guest test's frames: this EtherType, then the magic.
const ETHERTYPE: u16 = 0x88b5;
const MAGIC: &[u8; 8] = b"VMMTEST!";

/// A tap interface made for one test (removed on drop), with a host-side
/// peer on it: an AF_PACKET socket that echoes the guest test's frames and
/// records their sequence numbers (the host's half of the check).
pub struct TapEcho {
    pub ifname: String,
    /// More taps on the same bridge (for a destination VMM).
    pub others: Vec<String>,
    bridge: Option<String>,
    /// Sequence numbers of the guest frames seen, in arrival order.
    pub seen: Arc<Mutex<Vec<u32>>>,
    /// Source MACs of the RARP self-announcements seen (after a migration).
    pub announced: Arc<Mutex<Vec<[u8; 6]>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

impl TapEcho {
    pub fn start() -> TapEcho {
        Self::with_taps(1)
    }

    /// `n` taps on one Linux bridge, the peer on the bridge: a guest that
    /// moves from one tap to another (a migration) keeps its peer.
    pub fn bridged(n: usize) -> TapEcho {
        Self::with_taps(n)
    }

    fn with_taps(n: usize) -> TapEcho {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = || {
            format!(
                "vt{}x{}",
                std::process::id() % 100_000,
                N.fetch_add(1, Ordering::SeqCst)
            )
        };
        let taps: Vec<String> = (0..n).map(|_| name()).collect();
        for t in &taps {
            // vmm, run as its user, may attach to it.
            let user = crate::vmm_user().map_or(0, |u| u.0).to_string();
            ip(&["tuntap", "add", "dev", t, "mode", "tap", "user", &user]);
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{t}/disable_ipv6"), "1");
        }
        let bridge = (n > 1).then(|| {
            let b = format!("b{}", name());
            ip(&["link", "add", &b, "type", "bridge"]);
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{b}/disable_ipv6"), "1");
            for t in &taps {
                ip(&["link", "set", t, "master", &b]);
            }
            ip(&["link", "set", &b, "up"]);
            b
        });
        for t in &taps {
            ip(&["link", "set", t, "up"]);
        }
        let listen_on = bridge.clone().unwrap_or_else(|| taps[0].clone());
        let c = std::ffi::CString::new(listen_on.clone()).expect("name");
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert!(index > 0, "{listen_on} has no index");
        // Every frame: the test's EtherType to echo, RARP to record.
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: an all-zero sockaddr_ll is valid; the fields follow.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: sll is a sockaddr_ll of the size passed.
        let r = unsafe {
            libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert!(
            r == 0,
            "bind to {listen_on}: {}",
            std::io::Error::last_os_error()
        );
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: SO_RCVTIMEO takes a timeval.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        let seen = Arc::new(Mutex::new(vec![]));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let announced = Arc::new(Mutex::new(vec![]));
        let announced2 = announced.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::SeqCst) {
                // SAFETY: recv into a live buffer of its length.
                let n =
                    unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
                if n < 34 {
                    continue;
                }
                let f = &buf[..n as usize];
                let ethertype = u16::from_be_bytes([f[12], f[13]]);
                if ethertype == 0x8035 {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(&f[6..12]);
                    announced2.lock().unwrap().push(mac);
                    continue;
                }
                // Frames the guest sent (its MAC as source); an echo we
                // sent ourselves is seen here too on some kernels: skip it.
                if ethertype != ETHERTYPE || &f[14..22] != MAGIC || f[0..6] != [0xff; 6] {
                    continue;
                }
                let seq = u32::from_be_bytes([f[22], f[23], f[24], f[25]]);
                seen2.lock().unwrap().push(seq);
                let mut out = f.to_vec();
                // Back to the guest: to its MAC, from a made-up host MAC.
                out.copy_within(6..12, 0);
                out[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
                // SAFETY: send a live buffer on the bound socket.
                unsafe { libc::send(fd, out.as_ptr() as *const libc::c_void, out.len(), 0) };
            }
            // SAFETY: the fd is this thread's.
            unsafe { libc::close(fd) };
        });
        TapEcho {
            announced,
            ifname: taps[0].clone(),
            others: taps[1..].to_vec(),
            bridge,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// The `-netdev` option for vmm (and QEMU).
    pub fn netdev(&self, id: &str) -> String {
        format!("tap,id={id},ifname={},script=no,downscript=no", self.ifname)
    }

    /// The `-netdev` option on the `i`-th other tap of the bridge.
    pub fn netdev_other(&self, id: &str, i: usize) -> String {
        format!(
            "tap,id={id},ifname={},script=no,downscript=no",
            self.others[i]
        )
    }
}

impl Drop for TapEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for t in std::iter::once(&self.ifname).chain(&self.others) {
            let _ = Command::new("ip").args(["link", "del", t]).status();
        }
        if let Some(b) = &self.bridge {
            let _ = Command::new("ip").args(["link", "del", b]).status();
        }
    }
}
