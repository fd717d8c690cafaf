//! Moving bytes between guest buffers and host files without copies:
//! descriptor chains become iovecs for `preadv`/`pwritev`/`readv`/`writev`,
//! and every range the host writes into is marked dirty for migration.

use super::{GuestError, Memory};
use std::os::fd::RawFd;
use virtio_queue::{Queue, QueueT};
use vm_memory::bitmap::{AtomicBitmap, Bitmap, BS};
use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileSlice};

/// One buffer of a chain.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: GuestAddress,
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// A descriptor chain the driver made available, flattened.
pub struct Chain {
    pub head: u16,
    pub bufs: Vec<Buf>,
}

impl Chain {
    pub fn readable(&self) -> impl Iterator<Item = &Buf> {
        self.bufs.iter().filter(|b| !b.write)
    }
    pub fn writable(&self) -> impl Iterator<Item = &Buf> {
        self.bufs.iter().filter(|b| b.write)
    }
}

/// The next available chain of queue `q`, if any.
pub fn pop(queue: &mut Queue, mem: &Memory) -> Option<Chain> {
    let chain = queue.pop_descriptor_chain(mem)?;
    let head = chain.head_index();
    let bufs = chain
        .map(|d| Buf {
            addr: d.addr(),
            len: d.len(),
            write: d.is_write_only(),
        })
        .collect();
    Some(Chain { head, bufs })
}

type Slice<'a> = VolatileSlice<'a, BS<'a, AtomicBitmap>>;

/// The host mappings of guest range [addr, addr+len).
fn slices(mem: &Memory, addr: GuestAddress, len: usize) -> Result<Vec<Slice<'_>>, GuestError> {
    let v: Result<Vec<_>, _> = mem.get_slices(addr, len).collect();
    v.map_err(|e| {
        GuestError(format!(
            "buffer {:#x}+{len:#x} is not guest RAM: {e}",
            addr.0
        ))
    })
}

/// Reads `dst.len()` bytes of guest memory at `addr`.
pub fn read(mem: &Memory, addr: GuestAddress, dst: &mut [u8]) -> Result<(), GuestError> {
    use vm_memory::Bytes;
    mem.read_slice(dst, addr)
        .map_err(|e| GuestError(format!("cannot read buffer {:#x}: {e}", addr.0)))
}

/// Writes `src` to guest memory at `addr` (marked dirty).
pub fn write(mem: &Memory, addr: GuestAddress, src: &[u8]) -> Result<(), GuestError> {
    use vm_memory::Bytes;
    mem.write_slice(src, addr)
        .map_err(|e| GuestError(format!("cannot write buffer {:#x}: {e}", addr.0)))
}

/// How a host transfer failed: a guest mistake or a host I/O error.
#[derive(Debug)]
pub enum XferError {
    Guest(GuestError),
    Io(std::io::Error),
}

impl From<GuestError> for XferError {
    fn from(e: GuestError) -> Self {
        XferError::Guest(e)
    }
}

/// The iovecs of `bufs` (and the slices, to mark dirty afterwards).
fn iovecs<'a>(
    mem: &'a Memory,
    bufs: &[Buf],
) -> Result<(Vec<libc::iovec>, Vec<Slice<'a>>), GuestError> {
    let mut iov = vec![];
    let mut all = vec![];
    for b in bufs {
        for s in slices(mem, b.addr, b.len as usize)? {
            iov.push(libc::iovec {
                iov_base: s.ptr_guard_mut().as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            });
            all.push(s);
        }
    }
    Ok((iov, all))
}

/// Which file operation to run over the iovecs.
#[derive(Clone, Copy)]
pub enum Op {
    /// Read the file at this offset into the guest buffers.
    ReadAt(u64),
    /// Write the guest buffers to the file at this offset.
    WriteAt(u64),
    /// One `readv` (a packet from a tap); returns its length.
    Readv,
    /// One `writev` (a packet to a tap).
    Writev,
}

/// Runs `op` between `fd` and the guest buffers `bufs`; returns the bytes
/// moved. Positioned transfers loop until done (a short read at end of
/// file is an error: the device's size is the file's).
pub fn transfer(mem: &Memory, fd: RawFd, bufs: &[Buf], op: Op) -> Result<usize, XferError> {
    let (mut iov, slices) = iovecs(mem, bufs)?;
    let total: usize = iov.iter().map(|v| v.iov_len).sum();
    let mut done = 0usize;
    let mut first = 0usize;
    loop {
        let cnt = (iov.len() - first).min(1024) as libc::c_int;
        let ptr = iov[first..].as_ptr();
        // SAFETY: every iovec points into guest memory mapped for the VM's
        // lifetime (the slices keep the mapping borrowed) and `cnt` is
        // within the vector; the fd is owned by the caller.
        let n = unsafe {
            match op {
                Op::ReadAt(off) => libc::preadv(fd, ptr, cnt, (off + done as u64) as libc::off_t),
                Op::WriteAt(off) => libc::pwritev(fd, ptr, cnt, (off + done as u64) as libc::off_t),
                Op::Readv => libc::readv(fd, ptr, cnt),
                Op::Writev => libc::writev(fd, ptr, cnt),
            }
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(XferError::Io(e));
        }
        let n = n as usize;
        done += n;
        if matches!(op, Op::Readv | Op::Writev) || done >= total {
            break;
        }
        if n == 0 {
            return Err(XferError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "short transfer at the end of the file",
            )));
        }
        // Skip what was moved.
        let mut skip = n;
        while skip > 0 && first < iov.len() {
            let l = iov[first].iov_len;
            if skip >= l {
                skip -= l;
                first += 1;
            } else {
                // SAFETY: advancing inside the same mapped buffer.
                iov[first].iov_base =
                    unsafe { (iov[first].iov_base as *mut u8).add(skip) } as *mut _;
                iov[first].iov_len -= skip;
                skip = 0;
            }
        }
    }
    if matches!(op, Op::ReadAt(_) | Op::Readv) {
        let mut left = done;
        for s in &slices {
            let l = left.min(s.len());
            if l == 0 {
                break;
            }
            s.bitmap().mark_dirty(0, l);
            left -= l;
        }
    }
    Ok(done)
}

/// `bufs` without their first `n` bytes (a header the device consumed).
pub fn skip(bufs: &[Buf], mut n: u64) -> Vec<Buf> {
    let mut out = vec![];
    for b in bufs {
        if n >= b.len as u64 {
            n -= b.len as u64;
            continue;
        }
        out.push(Buf {
            // Past the end of the address space is no guest address: the
            // access that follows fails as the guest's error.
            addr: GuestAddress(b.addr.0.saturating_add(n)),
            len: b.len - n as u32,
            write: b.write,
        });
        n = 0;
    }
    out
}
