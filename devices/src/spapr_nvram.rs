//! spapr-nvram: the partition's non-volatile RAM on the VIO bus (QEMU's
//! `hw/nvram/spapr_nvram.c`), which QEMU's pseries always has: 64 KiB the
//! guest reads with RTAS `nvram-fetch` and writes with `nvram-store`
//! (Linux keeps its oops log and firmware variables there). Its contents
//! migrate as QEMU's `spapr_nvram` section: the size, then the bytes.
//! QEMU backs it with `-drive if=pflash` when given; vmm keeps it in
//! memory, as QEMU does without one.

use crate::spapr_vio::VioAddr;
use migration::vmstate::{Description, LoadError, State, VBuffer, Vmstate};

/// QEMU's sizes: the default, and what a backing image may have.
pub const DEFAULT_SIZE: u32 = 64 << 10;
pub const MIN_SIZE: u32 = 8 << 10;
pub const MAX_SIZE: u32 = 1 << 20;

migration::vmstate! {
    pub static VMSTATE = "spapr_nvram", version 1, minimum 1;
    pub struct NvramState {
        size: u32,
        #[since(1)]
        #[count(size)]
        buf: VBuffer,
    }
}

/// Why an RTAS transfer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NvramError {
    /// The range runs past the NVRAM (or wraps): RTAS's parameter error.
    OutOfRange,
}

pub struct SpaprNvram {
    addr: VioAddr,
    buf: Vec<u8>,
}

impl SpaprNvram {
    /// An NVRAM of QEMU's default size, zeroed, at `addr`.
    pub fn new(addr: VioAddr) -> SpaprNvram {
        SpaprNvram {
            addr,
            buf: vec![0; DEFAULT_SIZE as usize],
        }
    }

    pub fn addr(&self) -> VioAddr {
        self.addr
    }

    /// Its size in bytes (the device tree's `#bytes`).
    pub fn size(&self) -> u32 {
        self.buf.len() as u32
    }

    /// Its contents: what a guest reset keeps (QEMU's NVRAM has no reset
    /// handler; the board is built anew and takes them back).
    pub fn contents(&self) -> &[u8] {
        &self.buf
    }

    /// Takes back what [`SpaprNvram::contents`] gave.
    pub fn set_contents(&mut self, bytes: Vec<u8>) {
        self.buf = bytes;
    }

    /// The bytes `len` from `offset` cover, if inside the NVRAM.
    pub fn range(&self, offset: u64, len: u64) -> Result<std::ops::Range<usize>, NvramError> {
        let end = offset.checked_add(len).ok_or(NvramError::OutOfRange)?;
        if end > self.buf.len() as u64 {
            return Err(NvramError::OutOfRange);
        }
        Ok(offset as usize..end as usize)
    }

    /// `nvram-fetch`'s bytes: `len` from `offset`.
    pub fn fetch(&self, offset: u64, len: u64) -> Result<&[u8], NvramError> {
        Ok(&self.buf[self.range(offset, len)?])
    }

    /// `nvram-store`: `data` at `offset`.
    pub fn store(&mut self, offset: u64, data: &[u8]) -> Result<(), NvramError> {
        let r = self.range(offset, data.len() as u64)?;
        self.buf[r].copy_from_slice(data);
        Ok(())
    }

    /// The section's name in the stream, QEMU's: the device's path on the
    /// VIO bus (`nvram@71000001`), then the description's name.
    pub fn section(&self) -> String {
        format!("nvram@{:x}/{}", self.addr.reg, VMSTATE.name)
    }
}

impl migration::vmstate::Migratable for SpaprNvram {
    fn description(&self) -> &'static Description {
        &VMSTATE
    }

    fn section(&self) -> String {
        SpaprNvram::section(self)
    }

    fn state(&self) -> State {
        NvramState {
            size: self.size(),
            buf: VBuffer(self.buf.clone()),
        }
        .to_state()
    }

    /// Takes the source's contents at the source's size (QEMU allocates
    /// what the stream says), within the sizes an NVRAM may have.
    fn load(&mut self, st: &State) -> Result<(), LoadError> {
        let s = NvramState::from_state(st, VMSTATE.name)?;
        if !(MIN_SIZE..=MAX_SIZE).contains(&s.size) {
            return Err(LoadError::new(
                self.section(),
                format!(
                    "the stream's NVRAM is {} bytes: not a size from {MIN_SIZE} to {MAX_SIZE}",
                    s.size
                ),
            ));
        }
        if s.buf.0.len() != s.size as usize {
            return Err(LoadError::new(
                self.section(),
                format!(
                    "the stream's NVRAM says {} bytes and holds {}",
                    s.size,
                    s.buf.0.len()
                ),
            ));
        }
        self.buf = s.buf.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use migration::vmstate::Migratable;

    const AT: VioAddr = VioAddr {
        reg: 0x7100_0001,
        irq: 0x1101,
    };

    #[test]
    fn fetch_and_store_stay_inside() {
        let mut n = SpaprNvram::new(AT);
        assert_eq!(n.size(), 65536);
        n.store(65530, b"oops!!").unwrap();
        assert_eq!(n.fetch(65528, 8).unwrap(), b"\0\0oops!!");
        assert_eq!(n.store(65531, b"oops!!"), Err(NvramError::OutOfRange));
        assert_eq!(n.fetch(u64::MAX, 2), Err(NvramError::OutOfRange));
        assert_eq!(n.fetch(65536, 0).unwrap(), b"");
    }

    #[test]
    fn the_contents_travel_and_a_bad_size_is_refused() {
        let mut a = SpaprNvram::new(AT);
        a.store(100, b"kept").unwrap();
        let st = a.state();
        let bytes = migration::stream::encode_state(&VMSTATE, &st).unwrap();
        assert_eq!(bytes.len(), 4 + 65536);
        assert_eq!(bytes[..4], 65536u32.to_be_bytes());
        let mut b = SpaprNvram::new(AT);
        b.load(&migration::stream::decode_state(&VMSTATE, 1, &bytes).unwrap())
            .unwrap();
        assert_eq!(b.fetch(100, 4).unwrap(), b"kept");
        assert_eq!(b.section(), "nvram@71000001/spapr_nvram");
        let small = NvramState {
            size: 16,
            buf: VBuffer(vec![1; 16]),
        };
        let e = b.load(&small.to_state()).unwrap_err().to_string();
        assert!(e.contains("16 bytes"), "{e}");
        assert_eq!(b.fetch(100, 4).unwrap(), b"kept", "unchanged");
    }
}
