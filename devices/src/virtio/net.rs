//! virtio-net on a tap device: queue 0 receives, queue 1 transmits; one
//! frame per buffer chain, behind the virtio-net header (10 bytes legacy,
//! 12 with VIRTIO_F_VERSION_1), which carries no offloads here.

use super::io::{self, Buf, Op, XferError};
use super::*;
use crate::model::property::{PropKind, Value};
use crate::model::types::{p, TypeInfo};
use crate::registry::{Backend, BackendKind, Build, DeviceType, VirtioType};
use migration::vmstate::Vmstate;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use virtio_queue::QueueOwnedT;

/// Its queues: receive and transmit.
pub const QUEUES: usize = 2;

/// The `virtio-net-pci` type.
pub static DEVICE: DeviceType = DeviceType {
    info: TypeInfo {
        name: "virtio-net-pci",
        parent: Some("virtio-pci"),
        abstract_: false,
        bus: Some("PCI"),
        description: "virtio network device",
        props: &[
            p("netdev", PropKind::Str, "", "the -netdev id of the backend"),
            p(
                "mac",
                PropKind::Str,
                "",
                "MAC address (default 52:54:00:12:34:NN)",
            ),
        ],
    },
    build: Build::Virtio(VirtioType {
        vmstate: &PCI_VMSTATE,
        queues: |_| QUEUES as u64,
        auto: |props, board| {
            if props.str("mac").unwrap_or_default().is_empty() {
                let mac = default_mac(board.nic).map(|b| format!("{b:02x}")).join(":");
                let why = format!("virtio-net device {} of the board", board.nic);
                props.resolve_auto("mac", Value::Str(mac), why);
            }
        },
        backend: BackendKind::Netdev("netdev"),
        create: |props, backend| {
            let (tap, version_1) = match backend {
                Backend::Tap { ifname, version_1 } => (Tap::open(&ifname)?, version_1),
                Backend::Frames { file, version_1 } => (Tap::from_file(file, "fd"), version_1),
                _ => return Err("no netdev".into()),
            };
            let mac = props.str("mac").unwrap_or_default();
            let mac = parse_mac(&mac).ok_or_else(|| {
                format!("invalid mac '{mac}': expected six hex bytes like 52:54:00:12:34:56")
            })?;
            Ok(Box::new(Net::new(tap, mac, version_1)))
        },
    }),
};

/// `52:54:00:12:34:56` as bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    v.try_into().ok()
}

/// The MAC address of the board's `nic`-th virtio-net device when none is
/// given: QEMU's 52:54:00:12:34:56 counting up.
pub fn default_mac(nic: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0x12, 0x34, 0x56u8.wrapping_add(nic)]
}

const F_MAC: u64 = 1 << 5;

const RX: usize = 0;
const TX: usize = 1;

/// A tap interface, opened non-blocking, frames without packet info.
pub struct Tap {
    file: File,
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tap interface name '{0}' is longer than 15 bytes")]
    Name(String),
    #[error("cannot open /dev/net/tun for tap '{name}': {err}")]
    Tun { name: String, err: std::io::Error },
    #[error("cannot attach to tap '{name}' (does it exist, and may this user use it?): {err}")]
    Attach { name: String, err: std::io::Error },
}

impl Tap {
    /// A tap opened elsewhere (a descriptor passed in, as QEMU's
    /// `-netdev tap,fd=N`), or anything that reads and writes whole
    /// frames, non-blocking (a datagram socket: the device fuzzer's wire).
    pub fn from_file(file: File, name: &str) -> Tap {
        Tap {
            file,
            name: name.into(),
        }
    }

    pub fn open(name: &str) -> Result<Tap, Error> {
        if name.len() > 15 {
            return Err(Error::Name(name.into()));
        }
        // SAFETY: a plain open(2) of a constant path.
        let fd = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(Error::Tun {
                name: name.into(),
                err: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: fd was just opened and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        // struct ifreq: the name, then the flags.
        let mut ifr = [0u8; 40];
        ifr[..name.len()].copy_from_slice(name.as_bytes());
        let flags: libc::c_short = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
        const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
        // SAFETY: TUNSETIFF reads and writes a 40-byte ifreq, which ifr is.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
        if r < 0 {
            return Err(Error::Attach {
                name: name.into(),
                err: std::io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            name: name.into(),
        })
    }
}

pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    version_1: bool,
    hdr_len: usize,
}

impl Net {
    pub fn new(tap: Tap, mac: [u8; 6], version_1: bool) -> Net {
        Net {
            tap,
            mac,
            version_1,
            hdr_len: 10,
        }
    }

    /// Moves frames from the tap into receive buffers while both last.
    fn receive(&mut self, queues: &mut Queues) -> Result<(), GuestError> {
        let mem = queues.mem;
        loop {
            let Some(chain) = io::pop(&mut queues.queues[RX], mem) else {
                return Ok(()); // resumed when the driver adds buffers
            };
            let bufs: Vec<Buf> = chain.writable().copied().collect();
            let room: u64 = bufs.iter().map(|b| b.len as u64).sum();
            if room < self.hdr_len as u64 {
                return Err(GuestError(format!(
                    "receive buffer of {room} bytes cannot hold the header"
                )));
            }
            let data = io::skip(&bufs, self.hdr_len as u64);
            match io::transfer(mem, self.tap.file.as_raw_fd(), &data, Op::Readv) {
                Ok(n) => {
                    let hdr = vec![0u8; self.hdr_len];
                    let mut left = &hdr[..];
                    for b in &bufs {
                        if left.is_empty() {
                            break;
                        }
                        let k = (b.len as usize).min(left.len());
                        io::write(mem, b.addr, &left[..k])?;
                        left = &left[k..];
                    }
                    queues.add_used(RX, chain.head, (self.hdr_len + n) as u32)?;
                }
                Err(XferError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    queues.queues[RX].go_to_previous_position();
                    return Ok(());
                }
                Err(XferError::Io(e)) => {
                    queues.queues[RX].go_to_previous_position();
                    log::warn!("tap {}: read: {e}", self.tap.name);
                    return Ok(());
                }
                Err(XferError::Guest(e)) => return Err(e),
            }
        }
    }

    fn transmit(&mut self, queues: &mut Queues) -> Result<(), GuestError> {
        let mem = queues.mem;
        while let Some(chain) = io::pop(&mut queues.queues[TX], mem) {
            let bufs: Vec<Buf> = chain.readable().copied().collect();
            let frame = io::skip(&bufs, self.hdr_len as u64);
            match io::transfer(mem, self.tap.file.as_raw_fd(), &frame, Op::Writev) {
                Ok(_) => {}
                Err(XferError::Guest(e)) => return Err(e),
                // A full or downed tap drops the frame, as a wire would.
                Err(XferError::Io(e)) => log::debug!("tap {}: frame dropped: {e}", self.tap.name),
            }
            queues.add_used(TX, chain.head, 0)?;
        }
        Ok(())
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        TYPE_NET
    }

    fn features(&self) -> u64 {
        F_MAC | F_RING_INDIRECT_DESC | if self.version_1 { F_VERSION_1 } else { 0 }
    }

    fn queue_sizes(&self) -> Vec<u16> {
        vec![256; QUEUES]
    }

    fn config_read(&self, offset: u64, data: &mut [u8]) {
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.mac);
        c[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
        read_config_bytes(&c, offset, data);
    }

    fn activate(&mut self, features: u64) {
        self.hdr_len = if features & F_VERSION_1 != 0 { 12 } else { 10 };
    }

    fn reset(&mut self) {
        self.hdr_len = 10;
    }

    fn process(&mut self, q: usize, queues: &mut Queues) -> Result<(), GuestError> {
        match q {
            RX => self.receive(queues),
            _ => self.transmit(queues),
        }
    }

    fn announce(&mut self) {
        // QEMU's self-announce: a RARP request from the guest's MAC, so
        // switches learn the port it is behind now.
        let mut f = [0u8; 60];
        f[0..6].fill(0xff);
        f[6..12].copy_from_slice(&self.mac);
        f[12..14].copy_from_slice(&0x8035u16.to_be_bytes());
        f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
        f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
        f[18] = 6;
        f[19] = 4;
        f[20..22].copy_from_slice(&3u16.to_be_bytes()); // reverse request
        f[22..28].copy_from_slice(&self.mac);
        f[32..38].copy_from_slice(&self.mac);
        use std::io::Write;
        if let Err(e) = (&self.tap.file).write_all(&f) {
            log::warn!("tap {}: self-announce not sent: {e}", self.tap.name);
        }
    }

    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.tap.file.as_raw_fd())
    }

    fn backend_ready(&mut self, queues: &mut Queues) -> Result<(), GuestError> {
        self.receive(queues)
    }

    fn vmstate(&self) -> &'static Description {
        &VMSTATE
    }

    fn state(&self) -> State {
        NetState { mac: self.mac }.to_state()
    }

    fn load(&mut self, st: &State) -> Result<(), LoadError> {
        self.mac = NetState::from_state(st, "virtio-net")?.mac;
        Ok(())
    }
}

migration::vmstate! {
    /// virtio-net's own state: the MAC address the guest was given.
    pub static VMSTATE = "virtio-net-device", version 1, minimum 1;
    pub struct NetState {
        mac: [u8; 6],
    }
}

crate::virtio_pci_vmstate!(PCI_VMSTATE, "virtio-net", NetState);
