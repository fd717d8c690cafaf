//! `file:` as a transport of the same engine: the whole (stopped) VM in
//! one pass — RAM straight from guest memory, then every device's
//! section — and loaded back with the same reader a live migration uses.

use crate::destination::{load_stream, LoadTarget};
use crate::error::{Error, Result};
use crate::htab::HtabSource;
use crate::ram::{set_bits, Ram};
use crate::source::Section;
use crate::status::Progress;
use crate::stream::{Writer, PAGE_SIZE};
use std::path::Path;
use std::sync::atomic::Ordering;

/// What a save moved.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub bytes: u64,
    pub pages: u64,
    pub zero_pages: u64,
}

/// Writes the stopped VM (`ram`, the hash page table if it has one, then
/// `sections`) to `path`, counting the
/// bytes in `progress.transferred`; `progress.cancel` stops it after the
/// RAM region it is in.
pub fn save(
    path: &Path,
    machine: &str,
    ram: &Ram,
    htab: Option<&dyn HtabSource>,
    sections: &[Section],
    carried: Option<&serde_json::Value>,
    progress: &Progress,
) -> Result<Stats> {
    let file = std::fs::File::create(path)
        .map_err(Error::io(format!("cannot create {}", path.display())))?;
    let counter = Counter {
        w: std::io::BufWriter::with_capacity(1 << 20, file),
        progress,
    };
    let mut w = Writer::new(counter, machine)?;
    let id = w.ram_start(&[(ram.block, ram.size)])?;
    let htab_id = match htab {
        Some(h) => {
            h.begin();
            Some((w.htab_start(h.order())?, h))
        }
        None => None,
    };
    let mut stats = Stats::default();
    // All of RAM in one pass, straight from the guest mapping. Pages never
    // touched by anyone are zero and need not be read, let alone sent: the
    // destination's memory is fresh. Reading them would fault in the zero
    // page for each.
    for (r, touched) in ram.regions().iter().zip(ram.touched()) {
        let total = r.pages() as u64;
        let pages = set_bits(&touched, r.pages())
            .map(|i| (ram.block, r.offset + (i * PAGE_SIZE) as u64, r.page(i)));
        let (sent, zeros) = w.ram_pages(id, false, pages)?;
        if progress.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        // Never-touched pages count as zero pages too.
        stats.pages += total;
        stats.zero_pages += zeros + (total - sent);
    }
    w.ram_pages(id, true, [])?;
    if let Some((id, h)) = htab_id {
        let chunks = h.changes(true).map_err(Error::Vm)?;
        w.htab_pass(id, true, h.order().is_some(), &chunks)?;
    }
    for (idstr, instance, desc, state) in sections {
        w.section(idstr, *instance, desc, state)?;
    }
    // Complete only once on stable storage: a host crash right after
    // must not lose the only copy of the guest. (A pipe or a socket has no
    // storage to sync: whoever reads it keeps the copy.)
    let durable = || Error::io(format!("cannot write {} to disk", path.display()));
    let file = w
        .finish_with(carried)?
        .w
        .into_inner()
        .map_err(|e| durable()(e.into_error()))?;
    if file.metadata().map_err(durable())?.is_file() {
        file.sync_all().map_err(durable())?;
    }
    stats.bytes = progress.transferred.load(Ordering::Relaxed);
    Ok(stats)
}

/// Loads `path` into `target` (a freshly built, stopped VM).
pub fn load(path: &Path, machine: &str, target: &mut dyn LoadTarget, ram: &Ram) -> Result<()> {
    let file =
        std::fs::File::open(path).map_err(Error::io(format!("cannot open {}", path.display())))?;
    load_stream(file, machine, target, ram, &mut || {})
}

impl<W: std::io::Write> crate::stream::GuestWrite for Counter<'_, W> {
    /// Copied out (volatile) into the file's buffer.
    fn write_slices(&mut self, b: &[vm_memory::VolatileSlice]) -> std::io::Result<usize> {
        crate::stream::copy_out(self, b)
    }
}

/// Counts what reaches the file.
struct Counter<'a, W> {
    w: W,
    progress: &'a Progress,
}

impl<W: std::io::Write> std::io::Write for Counter<'_, W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.w.write(b)?;
        self.progress
            .transferred
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}
