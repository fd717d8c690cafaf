//! virtio-blk on a raw image file: read, write, flush and get-id, one or
//! more request queues (`num-queues`), read-only drives.
//!
//! Requests complete before the device thread lets go of the device, so a
//! paused device has nothing in flight and its state is the queues' (the
//! destination serves whatever the driver queued after the last one).

use super::io::{self, Buf, Op, XferError};
use super::*;
use crate::model::property::{PropKind, Value};
use crate::model::types::{p, TypeInfo};
use crate::registry::{Backend, BackendKind, Build, DeviceType, VirtioType};
use migration::vmstate::Vmstate;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use vm_memory::GuestAddress;

/// The `virtio-blk-pci` type.
pub static DEVICE: DeviceType = DeviceType {
    info: TypeInfo {
        name: "virtio-blk-pci",
        parent: Some("virtio-pci"),
        abstract_: false,
        bus: Some("PCI"),
        description: "virtio block device",
        props: &[
            p(
                "drive",
                PropKind::Str,
                "",
                "the -drive (or -blockdev) id of the backing image",
            ),
            p(
                "num-queues",
                PropKind::U16,
                "65535",
                "request queues (65535: one per vCPU)",
            ),
            p(
                "queue-size",
                PropKind::U16,
                "256",
                "descriptors per queue (a power of two)",
            ),
            p(
                "serial",
                PropKind::Str,
                "",
                "serial number the guest reads (GET_ID)",
            ),
        ],
    },
    build: Build::Virtio(VirtioType {
        vmstate: &PCI_VMSTATE,
        queues: |props| props.uint("num-queues").unwrap_or(1),
        auto: |props, board| {
            if props.uint("num-queues") == Some(u64::from(AUTO_QUEUES)) {
                let why = format!("-smp {}", board.vcpus);
                props.resolve_auto("num-queues", Value::Uint(board.vcpus.into()), why);
            }
        },
        backend: BackendKind::Drive("drive"),
        create: |props, backend| {
            let Backend::Drive {
                path,
                read_only,
                version_1,
                claim,
            } = backend
            else {
                return Err("no drive".into());
            };
            let blk = Blk::new(BlkConfig {
                path,
                read_only,
                num_queues: props.uint("num-queues").unwrap_or(1) as u16,
                queue_size: props.uint("queue-size").unwrap_or(256) as u16,
                serial: props.str("serial").unwrap_or_default(),
                version_1,
                claim,
            })?;
            Ok(Box::new(blk))
        },
    }),
};

/// `num-queues` left at its default: one request queue per vCPU.
pub const AUTO_QUEUES: u16 = 0xffff;

const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_MQ: u64 = 1 << 12;

/// Sets (or clears, `F_UNLCK`) an open-file-description lock on all of
/// `file`; a conflicting lock of another process is an error at once.
fn lock(file: &File, kind: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock is plain data; zero is a valid empty value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_SETLK with a valid flock on a descriptor we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

const SECTOR: u64 = 512;
const ID_BYTES: usize = 20;

/// How the drive is configured.
#[derive(Clone, Debug)]
pub struct BlkConfig {
    pub path: PathBuf,
    pub read_only: bool,
    pub num_queues: u16,
    pub queue_size: u16,
    /// The serial number reported by GET_ID.
    pub serial: String,
    /// The backend supports VIRTIO_F_VERSION_1 (a test knob:
    /// `-drive ...,x-virtio-version-1=off`).
    pub version_1: bool,
    /// Lock the image at once (see [`Blk::claim`]).
    pub claim: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open drive file {path}: {err}")]
    Open { path: String, err: std::io::Error },
    #[error("drive file {path} is {len} bytes, not a whole number of 512-byte sectors")]
    NotSectors { path: String, len: u64 },
    #[error("num-queues={0} is out of range (1 to {max})", max = MAX_QUEUES)]
    Queues(u16),
    #[error("queue-size={0} must be a power of two from 2 to 1024")]
    QueueSize(u16),
    #[error("drive file {path} is in use by another process ({err}): two VMs writing one image corrupt it")]
    Locked { path: String, err: std::io::Error },
}

pub struct Blk {
    cfg: BlkConfig,
    file: File,
    /// This process holds the image's lock.
    claimed: bool,
    sectors: u64,
    config: [u8; 60],
}

impl Blk {
    pub fn new(cfg: BlkConfig) -> Result<Blk, Error> {
        if cfg.num_queues == 0 || cfg.num_queues as usize > MAX_QUEUES {
            return Err(Error::Queues(cfg.num_queues));
        }
        if !cfg.queue_size.is_power_of_two() || !(2..=QUEUE_MAX).contains(&cfg.queue_size) {
            return Err(Error::QueueSize(cfg.queue_size));
        }
        let path = cfg.path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!cfg.read_only)
            .open(&cfg.path)
            .map_err(|err| Error::Open {
                path: path.clone(),
                err,
            })?;
        let len = file
            .metadata()
            .map_err(|err| Error::Open {
                path: path.clone(),
                err,
            })?
            .len();
        if len % SECTOR != 0 {
            return Err(Error::NotSectors { path, len });
        }
        let sectors = len / SECTOR;
        let mut config = [0u8; 60];
        config[0..8].copy_from_slice(&sectors.to_le_bytes());
        // seg_max: what fits a queue with the header and status.
        config[12..16].copy_from_slice(&(cfg.queue_size as u32 - 2).to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        config[34..36].copy_from_slice(&cfg.num_queues.to_le_bytes());
        let claim = cfg.claim;
        let mut blk = Blk {
            cfg,
            file,
            claimed: false,
            sectors,
            config,
        };
        if claim {
            blk.claim()?;
        }
        Ok(blk)
    }

    /// Takes the image's lock (an open-file-description lock on the whole
    /// file, as QEMU locks images): exclusive for a writable drive, shared
    /// for a read-only one. Another process holding a conflicting one
    /// refuses it, so no two VMs write one image. A migration hands it
    /// over: the source releases it at GO, the destination claims it then.
    pub fn claim(&mut self) -> Result<(), Error> {
        if self.claimed {
            return Ok(());
        }
        let kind = if self.cfg.read_only {
            libc::F_RDLCK
        } else {
            libc::F_WRLCK
        };
        lock(&self.file, kind).map_err(|err| Error::Locked {
            path: self.cfg.path.display().to_string(),
            err,
        })?;
        self.claimed = true;
        Ok(())
    }

    /// Gives up the image's lock.
    pub fn release(&mut self) {
        if std::mem::take(&mut self.claimed) {
            if let Err(e) = lock(&self.file, libc::F_UNLCK) {
                log::warn!("cannot unlock {}: {e}", self.cfg.path.display());
            }
        }
    }

    /// Serves one request; returns the bytes written into the chain.
    fn request(&mut self, mem: &Memory, chain: &io::Chain) -> Result<u32, GuestError> {
        let readable: Vec<Buf> = chain.readable().copied().collect();
        let writable: Vec<Buf> = chain.writable().copied().collect();
        let mut hdr = [0u8; 16];
        gather(mem, &readable, &mut hdr)?;
        let ty = u32::from_le_bytes(hdr[0..4].try_into().unwrap_or_default());
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
        let (data_in, status) = split_status(&writable).ok_or_else(|| {
            GuestError(format!(
                "request at descriptor {} has no status byte",
                chain.head
            ))
        })?;
        let data_out = io::skip(&readable, 16);
        let len = |b: &[Buf]| b.iter().map(|b| b.len as u64).sum::<u64>();
        let in_range = |n: u64| {
            n.is_multiple_of(SECTOR)
                && sector
                    .checked_add(n / SECTOR)
                    .is_some_and(|e| e <= self.sectors)
        };
        let fd = self.file.as_raw_fd();
        let (st, written) = match ty {
            T_IN if in_range(len(&data_in)) => {
                match io::transfer(mem, fd, &data_in, Op::ReadAt(sector * SECTOR)) {
                    Ok(n) => (S_OK, n as u32),
                    Err(XferError::Guest(e)) => return Err(e),
                    Err(XferError::Io(e)) => {
                        log::error!("{}: read at sector {sector}: {e}", self.cfg.path.display());
                        (S_IOERR, 0)
                    }
                }
            }
            T_OUT if self.cfg.read_only => (S_IOERR, 0),
            T_OUT if in_range(len(&data_out)) => {
                match io::transfer(mem, fd, &data_out, Op::WriteAt(sector * SECTOR)) {
                    Ok(_) => (S_OK, 0),
                    Err(XferError::Guest(e)) => return Err(e),
                    Err(XferError::Io(e)) => {
                        log::error!("{}: write at sector {sector}: {e}", self.cfg.path.display());
                        (S_IOERR, 0)
                    }
                }
            }
            T_IN | T_OUT => {
                crate::guest_warn!(
                    "{}: request beyond the end of the drive (sector {sector})",
                    self.cfg.path.display()
                );
                (S_IOERR, 0)
            }
            T_FLUSH => match self.file.sync_data() {
                Ok(()) => (S_OK, 0),
                Err(e) => {
                    log::error!("{}: flush: {e}", self.cfg.path.display());
                    (S_IOERR, 0)
                }
            },
            T_GET_ID => {
                let mut id = [0u8; ID_BYTES];
                let s = self.cfg.serial.as_bytes();
                id[..s.len().min(ID_BYTES)].copy_from_slice(&s[..s.len().min(ID_BYTES)]);
                let n = scatter(mem, &data_in, &id)?;
                (S_OK, n as u32)
            }
            _ => (S_UNSUPP, 0),
        };
        io::write(mem, status, &[st])?;
        Ok(written + 1)
    }
}

/// Copies the first `out.len()` bytes of `bufs` into `out`.
fn gather(mem: &Memory, bufs: &[Buf], out: &mut [u8]) -> Result<(), GuestError> {
    let mut done = 0;
    for b in bufs {
        if done == out.len() {
            break;
        }
        let n = (b.len as usize).min(out.len() - done);
        io::read(mem, b.addr, &mut out[done..done + n])?;
        done += n;
    }
    if done < out.len() {
        return Err(GuestError(format!(
            "request header is {done} bytes, not 16"
        )));
    }
    Ok(())
}

/// Copies `src` into the start of `bufs`; returns the bytes copied.
fn scatter(mem: &Memory, bufs: &[Buf], src: &[u8]) -> Result<usize, GuestError> {
    let mut done = 0;
    for b in bufs {
        let n = (b.len as usize).min(src.len() - done);
        io::write(mem, b.addr, &src[done..done + n])?;
        done += n;
    }
    Ok(done)
}

/// Splits off the last byte of the writable buffers (the status); `None`
/// without one (or with one past the end of the address space).
fn split_status(bufs: &[Buf]) -> Option<(Vec<Buf>, GuestAddress)> {
    let last = bufs.iter().rposition(|b| b.len > 0)?;
    let b = bufs[last];
    let status = GuestAddress(b.addr.0.checked_add(b.len as u64 - 1)?);
    let mut data = bufs[..last].to_vec();
    if b.len > 1 {
        data.push(Buf {
            len: b.len - 1,
            ..b
        });
    }
    Some((data, status))
}

impl VirtioDevice for Blk {
    fn claim_backend(&mut self) -> Result<(), String> {
        self.claim().map_err(|e| e.to_string())
    }

    fn release_backend(&mut self) {
        self.release();
    }

    fn device_type(&self) -> u16 {
        TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        let mut f = F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_RING_INDIRECT_DESC;
        if self.cfg.read_only {
            f |= F_RO;
        }
        if self.cfg.num_queues > 1 {
            f |= F_MQ;
        }
        if self.cfg.version_1 {
            f |= F_VERSION_1;
        }
        f
    }

    fn queue_sizes(&self) -> Vec<u16> {
        vec![self.cfg.queue_size; self.cfg.num_queues as usize]
    }

    fn config_read(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process(&mut self, q: usize, queues: &mut Queues) -> Result<(), GuestError> {
        let mem = queues.mem;
        while let Some(chain) = io::pop(&mut queues.queues[q], mem) {
            let len = self.request(mem, &chain)?;
            queues.add_used(q, chain.head, len)?;
        }
        Ok(())
    }

    fn vmstate(&self) -> &'static Description {
        &VMSTATE
    }

    fn state(&self) -> State {
        BlkState {
            capacity: self.sectors,
        }
        .to_state()
    }

    fn load(&mut self, st: &State) -> Result<(), LoadError> {
        let c = BlkState::from_state(st, "virtio-blk")?.capacity;
        if c != self.sectors {
            return Err(LoadError::new("virtio-blk", format!(
                "the source's drive has {c} sectors, {} here has {}: the destination must use the same disk",
                self.cfg.path.display(),
                self.sectors
            )));
        }
        Ok(())
    }
}

migration::vmstate! {
    /// virtio-blk's own state: the drive size, checked on arrival.
    pub static VMSTATE = "virtio-blk-device", version 1, minimum 1;
    pub struct BlkState {
        capacity: u64,
    }
}

crate::virtio_pci_vmstate!(PCI_VMSTATE, "virtio-blk", BlkState);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_byte_past_the_address_space_is_no_status_byte() {
        let at = |addr: u64, len: u32| Buf {
            addr: GuestAddress(addr),
            len,
            write: true,
        };
        let (data, status) = split_status(&[at(0x1000, 512), at(0x2000, 1)]).unwrap();
        assert_eq!((data.len(), status), (1, GuestAddress(0x2000)));
        let (data, status) = split_status(&[at(0x1000, 513)]).unwrap();
        assert_eq!((data[0].len, status), (512, GuestAddress(0x1200)));
        // The guest's own numbers: an address and a length whose sum does
        // not fit in 64 bits.
        assert!(split_status(&[at(u64::MAX - 2, 16)]).is_none());
    }
}
