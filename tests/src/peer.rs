//! Host-side network peers for the guest's virtio-net test.

use std::net::UdpSocket;
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
