//! The MSI-X table and pending-bit array of a function, and delivery: a
//! masked vector (entry or whole function) is remembered as pending and
//! sent when unmasked, as the PCI spec requires.

use super::VmOps;
use migration::vmstate::{Description, Field, Kind, LoadError, State, Val};

const ENTRY: usize = 16;
const CTRL_MASKED: u32 = 1;

/// Offsets inside the MSI-X BAR (QEMU's layout: table, then PBA at 2 KiB).
pub const TABLE_OFFSET: u64 = 0;
pub const PBA_OFFSET: u64 = 0x800;
pub const BAR_SIZE: u64 = 0x1000;
/// At most this many vectors fit the table part of the BAR.
pub const MAX_VECTORS: u16 = (PBA_OFFSET as usize / ENTRY) as u16;

pub struct Msix {
    table: Vec<u8>,
    pending: Vec<bool>,
    pub enabled: bool,
    pub function_masked: bool,
}

static VMSTATE_TABLE: Kind = Kind::U8;

/// The MSI-X table and pending bits (QEMU migrates both raw with the
/// function: `msix_save`).
pub static VMSTATE: Description = Description {
    name: "msix",
    version_id: 1,
    minimum_version_id: 1,
    fields: &[
        Field {
            name: "table",
            kind: Kind::Buffer(MAX_VECTORS as usize * ENTRY),
            since: 0,
        },
        Field {
            name: "pba",
            kind: Kind::Array(&VMSTATE_TABLE, MAX_VECTORS as usize / 8),
            since: 0,
        },
    ],
    subsections: &[],
};

impl Msix {
    pub fn new(vectors: u16) -> Msix {
        let mut table = vec![0u8; vectors as usize * ENTRY];
        for e in table.chunks_mut(ENTRY) {
            e[12..16].copy_from_slice(&CTRL_MASKED.to_le_bytes());
        }
        Msix {
            table,
            pending: vec![false; vectors as usize],
            enabled: false,
            function_masked: false,
        }
    }

    fn word(&self, v: usize, off: usize) -> u32 {
        let b = &self.table[v * ENTRY + off..v * ENTRY + off + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn masked(&self, v: usize) -> bool {
        self.function_masked || self.word(v, 12) & CTRL_MASKED != 0
    }

    /// Signals `vector`, or marks it pending if masked. False if it is no
    /// vector of this table.
    pub fn notify(&mut self, vm: &dyn VmOps, vector: u16) -> bool {
        let v = vector as usize;
        if v >= self.pending.len() {
            return false;
        }
        if self.masked(v) {
            self.pending[v] = true;
            return true;
        }
        self.send(vm, v);
        true
    }

    fn send(&self, vm: &dyn VmOps, v: usize) {
        let addr = (self.word(v, 4) as u64) << 32 | self.word(v, 0) as u64;
        if let Err(e) = vm.signal_msi(addr, self.word(v, 8)) {
            log::warn!("MSI-X vector {v} to {addr:#x}: {e}");
        }
    }

    /// Sends every pending vector that is no longer masked.
    pub fn flush(&mut self, vm: &dyn VmOps) {
        if !self.enabled {
            return;
        }
        for v in 0..self.pending.len() {
            if self.pending[v] && !self.masked(v) {
                self.pending[v] = false;
                self.send(vm, v);
            }
        }
    }

    /// A guest access to the MSI-X BAR.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let off = offset as usize;
        if offset < PBA_OFFSET {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.table.get(off + i).copied().unwrap_or(0);
            }
        } else {
            let base = (offset - PBA_OFFSET) as usize * 8;
            for (i, b) in data.iter_mut().enumerate() {
                *b = (0..8)
                    .filter(|bit| {
                        self.pending
                            .get(base + i * 8 + bit)
                            .copied()
                            .unwrap_or(false)
                    })
                    .fold(0u8, |acc, bit| acc | 1 << bit);
            }
        }
    }

    pub fn write(&mut self, vm: &dyn VmOps, offset: u64, data: &[u8]) {
        if offset >= PBA_OFFSET {
            return; // the PBA is read-only
        }
        let off = offset as usize;
        for (i, b) in data.iter().enumerate() {
            if let Some(t) = self.table.get_mut(off + i) {
                *t = *b;
            }
        }
        self.flush(vm);
    }

    /// The MSI-X capability's control bits changed (enable, function mask).
    pub fn set_control(&mut self, vm: &dyn VmOps, enabled: bool, function_masked: bool) {
        self.enabled = enabled;
        self.function_masked = function_masked;
        self.flush(vm);
    }

    pub fn state(&self) -> State {
        let mut table = self.table.clone();
        table.resize(MAX_VECTORS as usize * ENTRY, 0);
        let pba = (0..MAX_VECTORS as usize / 8)
            .map(|i| {
                Val::Uint(
                    (0..8)
                        .filter(|b| self.pending.get(i * 8 + b).copied().unwrap_or(false))
                        .fold(0u64, |acc, b| acc | 1 << b),
                )
            })
            .collect();
        let mut st = State::default();
        st.set("table", Val::Bytes(table))
            .set("pba", Val::Array(pba));
        st
    }

    pub fn load(&mut self, st: &State) -> Result<(), LoadError> {
        let Some(Val::Bytes(t)) = st.get("table") else {
            return Err(LoadError::field("msix", "table"));
        };
        let Some(Val::Array(pba)) = st.get("pba") else {
            return Err(LoadError::field("msix", "pba"));
        };
        let n = self.table.len();
        self.table.copy_from_slice(&t[..n]);
        for v in 0..self.pending.len() {
            let byte = match pba.get(v / 8) {
                Some(Val::Uint(b)) => *b,
                _ => 0,
            };
            self.pending[v] = byte & 1 << (v % 8) != 0;
        }
        Ok(())
    }
}
