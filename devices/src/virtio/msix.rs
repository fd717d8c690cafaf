//! The MSI-X table and pending-bit array of a function, and delivery: a
//! masked vector (entry or whole function) is remembered as pending and
//! sent when unmasked, as the PCI spec requires.

use super::VmOps;
use migration::vmstate::U8;

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

migration::vmstate! {
    /// The MSI-X table and pending bits (QEMU migrates both raw with the
    /// function: `msix_save`).
    pub static VMSTATE = "msix", version 1, minimum 1;
    pub struct MsixState {
        /// Every vector's entry; those beyond the function's are zero.
        table: [u8; MAX_VECTORS as usize * ENTRY],
        /// The pending bits, eight vectors a byte.
        pba: [U8; MAX_VECTORS as usize / 8],
    }
}

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
            crate::guest_warn!("MSI-X vector {v} to {addr:#x}: {e}");
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

    /// The migratable state.
    pub fn state(&self) -> MsixState {
        let mut st = MsixState::default();
        let n = self.table.len().min(st.table.len());
        st.table[..n].copy_from_slice(&self.table[..n]);
        for (v, _) in self.pending.iter().enumerate().filter(|p| *p.1) {
            if let Some(byte) = st.pba.get_mut(v / 8) {
                byte.0 |= 1 << (v % 8);
            }
        }
        st
    }

    /// Takes over a saved table and pending bits (as many vectors as this
    /// function has; the flush waits for [`Msix::set_control`]).
    pub fn load(&mut self, st: &MsixState) {
        let n = self.table.len().min(st.table.len());
        self.table[..n].copy_from_slice(&st.table[..n]);
        for (v, p) in self.pending.iter_mut().enumerate() {
            let byte = st.pba.get(v / 8).map_or(0, |b| b.0);
            *p = byte & 1 << (v % 8) != 0;
        }
    }
}
