//! An address bus (port I/O or MMIO): non-overlapping ranges, each served
//! by one device.

use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the start of its range.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("range {start:#x}+{len:#x} overlaps a device already at {other:#x}")]
    Overlap { start: u64, len: u64, other: u64 },
    #[error("empty range at {0:#x}")]
    Empty(u64),
}

type Entry = (u64, u64, Arc<Mutex<dyn BusDevice>>);

#[derive(Default)]
pub struct Bus {
    ranges: Vec<Entry>,
}

impl Bus {
    pub fn new() -> Bus {
        Bus::default()
    }

    pub fn insert(
        &mut self,
        start: u64,
        len: u64,
        dev: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), Error> {
        if len == 0 {
            return Err(Error::Empty(start));
        }
        if let Some(o) = self
            .ranges
            .iter()
            .find(|(s, l, _)| start < s + l && *s < start + len)
        {
            return Err(Error::Overlap {
                start,
                len,
                other: o.0,
            });
        }
        let at = self.ranges.partition_point(|(s, _, _)| *s < start);
        self.ranges.insert(at, (start, len, dev));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<&Entry> {
        let i = self.ranges.partition_point(|(s, _, _)| *s <= addr);
        let e = self.ranges.get(i.checked_sub(1)?)?;
        (addr < e.0 + e.1).then_some(e)
    }

    /// Reads into `data`; false (and `data` all ones) when nothing is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((s, _, d)) => {
                d.lock().expect("device lock poisoned").read(addr - s, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes `data`; false when nothing is there (the write is dropped).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((s, _, d)) => {
                d.lock()
                    .expect("device lock poisoned")
                    .write(addr - s, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn routes_by_range_and_rejects_overlap() {
        let mut bus = Bus::new();
        bus.insert(0x10, 4, Arc::new(Mutex::new(Reg(1)))).unwrap();
        bus.insert(0x20, 4, Arc::new(Mutex::new(Reg(7)))).unwrap();
        assert!(matches!(
            bus.insert(0x12, 0x10, Arc::new(Mutex::new(Reg(0)))),
            Err(Error::Overlap { .. })
        ));
        let mut b = [0u8; 1];
        assert!(bus.read(0x13, &mut b));
        assert_eq!(b[0], 4);
        assert!(bus.write(0x20, &[9]));
        assert!(bus.read(0x20, &mut b));
        assert_eq!(b[0], 9);
        assert!(!bus.read(0x14, &mut b));
        assert_eq!(b[0], 0xff);
        assert!(!bus.read(0x0, &mut b));
    }
}
