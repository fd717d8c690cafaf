//! QEMU's savevm stream, version 3.
//!
//! ```text
//! be32 0x5145564d "QEVM", be32 3
//! 0x07 configuration: be32 len, machine type name        (no header, no footer)
//! 0x04 FULL: be32 section id, u8 len + idstr, be32 instance id, be32 version id,
//!      fields (big-endian, in order, no tags), subsections (0x05, u8 len + name,
//!      be32 version, fields, nested subsections), footer 0x7e + be32 section id
//! 0x00 EOF
//! 0x06 be32 len + JSON description of every section (for tools)
//! ```
//!
//! The reader never trusts the stream: every length is bounded, nothing is
//! read outside the description's layout, and every failure is a typed
//! error saying what and at which byte offset.

use crate::htab;
use crate::vmstate::{default_value, Description, Field, Kind, State, Val};
use std::io::{Read, Write};
use vm_memory::VolatileSlice;

pub const MAGIC: u32 = 0x5145_564d;
pub const VERSION: u32 = 3;
const EOF: u8 = 0x00;
const SECTION_START: u8 = 0x01;
const SECTION_PART: u8 = 0x02;
const SECTION_END: u8 = 0x03;
const SECTION_FULL: u8 = 0x04;
const SUBSECTION: u8 = 0x05;
const VMDESCRIPTION: u8 = 0x06;
const CONFIGURATION: u8 = 0x07;
const FOOTER: u8 = 0x7e;
/// Target page size (x86).
pub const PAGE_SIZE: usize = 4096;
/// The RAM section's name, instance and version, as QEMU's.
pub const RAM_IDSTR: &str = "ram";
pub const RAM_VERSION: u32 = 4;
const RAM_ZERO: u64 = 0x02;
const RAM_MEM_SIZE: u64 = 0x04;
const RAM_PAGE: u64 = 0x08;
const RAM_EOS: u64 = 0x10;
const RAM_CONTINUE: u64 = 0x20;
const RAM_FLAGS: u64 = (PAGE_SIZE as u64) - 1;
/// Bound on the trailing JSON a reader accepts.
pub const MAX_VMDESC: u32 = 64 << 20;

/// Whether a page is all zero (word by word: this runs for every page
/// a migration sends).
pub fn is_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(8);
    words.all(|w| u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) == 0)
        && words.remainder().iter().all(|b| *b == 0)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a migration stream: magic {found:#010x} at offset 0, expected {MAGIC:#010x} (\"QEVM\")")]
    BadMagic { found: u32 },
    #[error("unsupported savevm stream version {found} (only version 3 is supported)")]
    BadVersion { found: u32 },
    #[error("configuration section missing at offset {offset}: found byte {found:#04x}")]
    ConfigurationMissing { offset: u64, found: u8 },
    #[error("machine type received is '{stream}' and local is '{local}'")]
    MachineMismatch { stream: String, local: String },
    #[error("Unknown savevm section type {found} at offset {offset}")]
    UnknownSectionType { found: u8, offset: u64 },

    #[error("Unknown savevm section or instance '{idstr}' {instance} at offset {offset}: the destination has no such device")]
    UnknownSection {
        idstr: String,
        instance: u32,
        offset: u64,
    },
    #[error("section '{section}' has version {stream}, newer than the {local} this side can read (offset {offset})")]
    VersionTooNew {
        section: String,
        stream: u32,
        local: u32,
        offset: u64,
    },
    #[error("section '{section}' has version {stream}, older than the minimum {minimum} this side accepts (offset {offset})")]
    VersionTooOld {
        section: String,
        stream: u32,
        minimum: u32,
        offset: u64,
    },
    #[error("missing section footer for '{section}' at offset {offset}: found byte {found:#04x} (the device read a different amount than was written)")]
    FooterMissing {
        section: String,
        offset: u64,
        found: u8,
    },
    #[error("mismatched section id in footer for '{section}' at offset {offset}: {found}, expected {expected}")]
    FooterMismatch {
        section: String,
        expected: u32,
        found: u32,
        offset: u64,
    },
    #[error("unknown subsection '{name}' in '{device}' at offset {offset}: this side does not know that state")]
    UnknownSubsection {
        name: String,
        device: String,
        offset: u64,
    },
    #[error(
        "value {value} out of range for {kind} field '{field}' of '{device}' at offset {offset}"
    )]
    OutOfRange {
        device: String,
        field: String,
        kind: &'static str,
        value: u64,
        offset: u64,
    },
    #[error("'{device}' says at offset {offset} that its '{field}' holds {count} elements: not a count from 0 to {MAX_VARRAY}")]
    BadCount {
        device: String,
        field: String,
        count: i128,
        offset: u64,
    },
    #[error("'{device}' says at offset {offset} that its '{field}' is {size} bytes: not a size from 0 to {MAX_VBUFFER}")]
    BadSize {
        device: String,
        field: String,
        size: i128,
        offset: u64,
    },
    #[error("stream truncated at offset {offset}: {wanted} more bytes needed for {what}")]
    Truncated {
        offset: u64,
        wanted: usize,
        what: String,
    },
    #[error(
        "vm description of {len} bytes at offset {offset} exceeds the {MAX_VMDESC}-byte limit"
    )]
    DescriptionTooLarge { len: u32, offset: u64 },
    #[error("Unknown ramblock \"{name}\" at offset {offset}, cannot accept migration")]
    UnknownRamBlock { name: String, offset: u64 },
    #[error(
        "RAM block '{name}' is {stream} bytes in the stream but {local} here (offset {offset})"
    )]
    RamLengthMismatch {
        name: String,
        stream: u64,
        local: u64,
        offset: u64,
    },
    #[error("RAM page at {addr:#x} is outside block '{name}' ({len} bytes), offset {offset}")]
    RamOutOfRange {
        name: String,
        addr: u64,
        len: u64,
        offset: u64,
    },
    #[error("RAM record flags {flags:#x} at offset {offset} are not supported")]
    RamFlags { flags: u64, offset: u64 },
    #[error("RAM record at offset {offset} continues a block, but no block was named yet in this section")]
    RamNoBlock { offset: u64 },
    #[error(
        "the hash page table's order {order} at offset {offset} is not one from {} to {}",
        htab::MIN_ORDER,
        htab::MAX_ORDER
    )]
    HtabOrder { order: u32, offset: u64 },
    #[error("hash page table entries at offset {offset} come before the table's size")]
    HtabNoTable { offset: u64 },
    #[error("hash page table chunk at offset {offset} covers entries {index} to {end}, past the table's {entries}")]
    HtabOutOfRange {
        index: u32,
        end: u64,
        entries: u64,
        offset: u64,
    },
    #[error("hash page table section at offset {offset} goes on past {MAX_HTAB_SWEEPS} times the table's {entries} entries without its end marker")]
    HtabTooLong { entries: u64, offset: u64 },
    #[error("section id {id} at offset {offset} was never started")]
    UnknownSectionId { id: u32, offset: u64 },
    #[error("the state of '{device}' lacks field '{field}' or has the wrong type for it")]
    StateShape { device: String, field: String },
    #[error("write failed")]
    Write(#[source] std::io::Error),
    #[error("read failed at offset {offset}")]
    Read {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Writes a stream.
pub struct Writer<W: Write> {
    w: W,
    next_id: u32,
    vmdesc: Vec<serde_json::Value>,
}

impl<W: Write> Writer<W> {
    /// Writes the header and the configuration section.
    pub fn new(mut w: W, machine: &str) -> Result<Writer<W>> {
        let mut b = Vec::with_capacity(16 + machine.len());
        b.extend_from_slice(&MAGIC.to_be_bytes());
        b.extend_from_slice(&VERSION.to_be_bytes());
        b.push(CONFIGURATION);
        b.extend_from_slice(&(machine.len() as u32).to_be_bytes());
        b.extend_from_slice(machine.as_bytes());
        w.write_all(&b).map_err(Error::Write)?;
        Ok(Writer {
            w,
            next_id: 0,
            vmdesc: vec![],
        })
    }

    /// One device's state as a FULL section.
    pub fn section(
        &mut self,
        idstr: &str,
        instance: u32,
        desc: &Description,
        state: &State,
    ) -> Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        let mut b = vec![SECTION_FULL];
        b.extend_from_slice(&id.to_be_bytes());
        let idb = &idstr.as_bytes()[..idstr.len().min(255)];
        b.push(idb.len() as u8);
        b.extend_from_slice(idb);
        b.extend_from_slice(&instance.to_be_bytes());
        b.extend_from_slice(&desc.version_id.to_be_bytes());
        encode(&mut b, desc, state)?;
        b.push(FOOTER);
        b.extend_from_slice(&id.to_be_bytes());
        self.w.write_all(&b).map_err(Error::Write)?;
        let mut d = desc.vmdesc(state);
        d["name"] = idstr.into();
        d["instance_id"] = instance.into();
        self.vmdesc.push(d);
        Ok(())
    }

    /// The `ram` START section: the block list. Returns its section id,
    /// for [`Writer::ram_pages`].
    pub fn ram_start(&mut self, blocks: &[(&str, u64)]) -> Result<u32> {
        let id = self.next_id;
        self.next_id += 1;
        let total: u64 = blocks.iter().map(|b| b.1).sum();
        let mut b = self.iterative_header(SECTION_START, id, RAM_IDSTR, RAM_VERSION);
        b.extend_from_slice(&(total | RAM_MEM_SIZE).to_be_bytes());
        for (name, len) in blocks {
            b.push(name.len().min(255) as u8);
            b.extend_from_slice(&name.as_bytes()[..name.len().min(255)]);
            b.extend_from_slice(&len.to_be_bytes());
        }
        b.extend_from_slice(&RAM_EOS.to_be_bytes());
        b.push(FOOTER);
        b.extend_from_slice(&id.to_be_bytes());
        self.w.write_all(&b).map_err(Error::Write)?;
        Ok(id)
    }

    /// One `ram` PART (or, with `last`, END) section with these pages:
    /// (block, offset in block, page). All-zero pages become ZERO records.
    /// Returns how many pages were written, and how many of them were zero.
    pub fn ram_pages<'p>(
        &mut self,
        id: u32,
        last: bool,
        pages: impl IntoIterator<Item = (&'p str, u64, VolatileSlice<'p>)>,
    ) -> Result<(u64, u64)>
    where
        W: GuestWrite,
    {
        let (mut count, mut zeros) = (0u64, 0u64);
        let mut g = Gather::new();
        g.head(&[if last { SECTION_END } else { SECTION_PART }]);
        g.head(&id.to_be_bytes());
        let mut prev: Option<&str> = None;
        for (block, off, data) in pages {
            let zero = is_zero_page(&data);
            count += 1;
            zeros += zero as u64;
            let mut flags = if zero { RAM_ZERO } else { RAM_PAGE };
            if prev == Some(block) {
                flags |= RAM_CONTINUE;
            }
            g.head(&((off & !RAM_FLAGS) | flags).to_be_bytes());
            if prev != Some(block) {
                let name = &block.as_bytes()[..block.len().min(255)];
                g.head(&[name.len() as u8]);
                g.head(name);
                prev = Some(block);
            }
            if zero {
                g.head(&[0]);
            } else if data.len() == PAGE_SIZE {
                g.page(data);
            } else {
                let mut p = vec![0; PAGE_SIZE];
                data.copy_to(&mut p);
                g.head(&p);
            }
            if g.full() {
                g.write_to(&mut self.w).map_err(Error::Write)?;
            }
        }
        g.head(&RAM_EOS.to_be_bytes());
        g.head(&[FOOTER]);
        g.head(&id.to_be_bytes());
        g.write_to(&mut self.w).map_err(Error::Write)?;
        Ok((count, zeros))
    }

    /// The `spapr/htab` START section: the table's order, or none.
    /// Returns its section id, for [`Writer::htab_pass`].
    pub fn htab_start(&mut self, order: Option<u32>) -> Result<u32> {
        let id = self.next_id;
        self.next_id += 1;
        let mut b = self.iterative_header(SECTION_START, id, htab::IDSTR, htab::VERSION);
        b.extend_from_slice(&order.unwrap_or(htab::NONE).to_be_bytes());
        b.push(FOOTER);
        b.extend_from_slice(&id.to_be_bytes());
        self.w.write_all(&b).map_err(Error::Write).map(|()| id)
    }

    /// One `spapr/htab` PART (or, with `last`, END) section: `chunks`, or
    /// "no table" when `has_table` is false.
    pub fn htab_pass(
        &mut self,
        id: u32,
        last: bool,
        has_table: bool,
        chunks: &[htab::Chunk],
    ) -> Result<()> {
        let mut b = vec![if last { SECTION_END } else { SECTION_PART }];
        b.extend_from_slice(&id.to_be_bytes());
        htab::encode_pass(has_table, chunks, &mut b);
        b.push(FOOTER);
        b.extend_from_slice(&id.to_be_bytes());
        self.w.write_all(&b).map_err(Error::Write)
    }

    /// A START section's header: type, id, name, instance 0, version.
    fn iterative_header(&self, kind: u8, id: u32, idstr: &str, version: u32) -> Vec<u8> {
        let mut b = vec![kind];
        b.extend_from_slice(&id.to_be_bytes());
        b.push(idstr.len() as u8);
        b.extend_from_slice(idstr.as_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&version.to_be_bytes());
        b
    }

    /// Pushes what was written so far to the underlying writer.
    pub fn flush(&mut self) -> Result<()> {
        self.w.flush().map_err(Error::Write)
    }

    /// EOF and the trailing JSON description; returns the writer.
    pub fn finish(self) -> Result<W> {
        self.finish_with(None)
    }

    /// [`Writer::finish`], the description carrying `vmm` too: what vmm
    /// itself needs beyond QEMU's sections (the devices' configuration).
    /// A reader that does not know the key ignores it.
    pub fn finish_with(mut self, vmm: Option<&serde_json::Value>) -> Result<W> {
        let mut desc = serde_json::json!({"page_size": 4096, "devices": self.vmdesc});
        if let Some(v) = vmm {
            desc["vmm"] = v.clone();
        }
        let json = desc.to_string();
        let mut b = vec![EOF, VMDESCRIPTION];
        b.extend_from_slice(&(json.len() as u32).to_be_bytes());
        b.extend_from_slice(json.as_bytes());
        self.w.write_all(&b).map_err(Error::Write)?;
        self.w.flush().map_err(Error::Write)?;
        Ok(self.w)
    }
}

/// One section's body as a writer sends it (after the section header,
/// before the footer): `state` described by `desc`.
pub fn encode_state(desc: &Description, state: &State) -> Result<Vec<u8>> {
    let mut b = vec![];
    encode(&mut b, desc, state)?;
    Ok(b)
}

/// One section's body read as a loader reads it, with `desc` at stream
/// version `version`: what a device's `load` is handed. The body must be
/// all of `body`. For the device-state fuzzer and tools.
pub fn decode_state(desc: &'static Description, version: u32, body: &[u8]) -> Result<State> {
    // The footer ends the body as it would in a stream.
    let mut rd = Reader {
        r: body.chain(&[FOOTER][..]),
        offset: 0,
        ahead: Vec::new(),
        ram_id: None,
        ram_blocks: vec![],
        htab_id: None,
        htab_entries: None,
    };
    rd.check_version(desc, desc.name, version, 0)?;
    let state = rd.decode(desc, version)?;
    let at = rd.offset;
    match rd.u8("the end of the section")? {
        FOOTER if at == body.len() as u64 => Ok(state),
        found => Err(Error::FooterMissing {
            section: desc.name.to_string(),
            offset: at,
            found,
        }),
    }
}

fn encode(b: &mut Vec<u8>, desc: &Description, state: &State) -> Result<()> {
    let shape = |f: &Field| Error::StateShape {
        device: desc.name.to_string(),
        field: f.name.to_string(),
    };
    for f in desc.fields {
        let v = state.get(f.name).ok_or_else(|| shape(f))?;
        // A counted array has exactly as many elements as its count says,
        // a sized buffer as many bytes as its size.
        match (f.kind, v) {
            (Kind::VarArray(_, count), Val::Array(xs))
                if varray_len(state, count) != Some(xs.len()) =>
            {
                return Err(shape(f))
            }
            (Kind::VBuffer(size), Val::Bytes(b)) if vbuffer_len(state, size) != Some(b.len()) => {
                return Err(shape(f))
            }
            _ => {}
        }
        encode_value(b, f.kind, v).ok_or_else(|| shape(f))??;
    }
    for s in desc.subsections {
        if !(s.needed)(state) {
            continue;
        }
        let Some(sub) = state.subsection(s.desc.name) else {
            continue;
        };
        b.push(SUBSECTION);
        b.push(s.desc.name.len() as u8);
        b.extend_from_slice(s.desc.name.as_bytes());
        b.extend_from_slice(&s.desc.version_id.to_be_bytes());
        encode(b, s.desc, sub)?;
    }
    Ok(())
}

/// `None` when the value does not fit the kind.
fn encode_value(b: &mut Vec<u8>, kind: Kind, v: &Val) -> Option<Result<()>> {
    match (kind, v) {
        (Kind::Bool, Val::Bool(x)) => b.push(*x as u8),
        (Kind::U8, Val::Uint(x)) if *x <= u8::MAX as u64 => b.push(*x as u8),
        (Kind::U16, Val::Uint(x)) if *x <= u16::MAX as u64 => {
            b.extend_from_slice(&(*x as u16).to_be_bytes())
        }
        (Kind::U32, Val::Uint(x)) if *x <= u32::MAX as u64 => {
            b.extend_from_slice(&(*x as u32).to_be_bytes())
        }
        (Kind::U64, Val::Uint(x)) => b.extend_from_slice(&x.to_be_bytes()),
        (Kind::I32, Val::Int(x)) if i32::try_from(*x).is_ok() => {
            b.extend_from_slice(&(*x as i32).to_be_bytes())
        }
        (Kind::I64, Val::Int(x)) => b.extend_from_slice(&x.to_be_bytes()),
        (Kind::Buffer(n), Val::Bytes(x)) if x.len() == n => b.extend_from_slice(x),
        (Kind::VBuffer(_), Val::Bytes(x)) => b.extend_from_slice(x),
        (Kind::Array(k, n), Val::Array(xs)) if xs.len() == n => {
            for x in xs {
                if let Err(e) = encode_value(b, *k, x)? {
                    return Some(Err(e));
                }
            }
        }
        (Kind::Struct(d), Val::Struct(s)) => return Some(encode(b, d, s)),
        (Kind::VarArray(k, _), Val::Array(xs)) => {
            for x in xs {
                if let Err(e) = encode_value(b, *k, x)? {
                    return Some(Err(e));
                }
            }
        }
        _ => return None,
    }
    Some(Ok(()))
}

/// The element count field `count` of `state` gives a counted array; `None`
/// if it is missing, not an integer, or negative.
fn varray_len(state: &State, count: &str) -> Option<usize> {
    count_value(state, count)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n <= MAX_VARRAY)
}

/// The bytes field `size` of `state` gives a sized buffer; `None` if it is
/// missing, not an integer, or past [`MAX_VBUFFER`].
fn vbuffer_len(state: &State, size: &str) -> Option<usize> {
    count_value(state, size)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n <= MAX_VBUFFER)
}

/// Field `count`'s value as a count (-1 when it is no integer).
fn count_value(state: &State, count: &str) -> Option<i128> {
    match state.get(count)? {
        Val::Uint(n) => Some(i128::from(*n)),
        Val::Int(n) => Some(i128::from(*n)),
        _ => None,
    }
}

/// The most elements a counted array may have in a stream (a count past
/// it is a corrupt stream, refused before anything is allocated).
const MAX_VARRAY: usize = 1 << 16;
/// Whether `section`'s stream version `v` (at `offset`) is one this build
/// reads.
fn versions(
    section: &str,
    v: u32,
    readable: std::ops::RangeInclusive<u32>,
    offset: u64,
) -> Result<()> {
    if v > *readable.end() {
        return Err(Error::VersionTooNew {
            section: section.to_string(),
            stream: v,
            local: *readable.end(),
            offset,
        });
    }
    if v < *readable.start() {
        return Err(Error::VersionTooOld {
            section: section.to_string(),
            stream: v,
            minimum: *readable.start(),
            offset,
        });
    }
    Ok(())
}

/// Bound on what one `spapr/htab` section covers, in tables: a source
/// reading KVM's table may sweep it (and then what changed) more than
/// once in a pass; the bound keeps a section from running on without its
/// end marker.
const MAX_HTAB_SWEEPS: u64 = 8;
/// Bound on a sized buffer (QEMU's largest: an NVRAM's 1 MiB; a device
/// tree blob's few hundred KiB).
const MAX_VBUFFER: usize = 16 << 20;

/// Where the reader puts guest RAM (the VMM's guest memory).
pub trait RamSink {
    /// This side's length of block `name`, if it has one.
    fn block_len(&self, name: &str) -> Option<u64>;
    /// A page (`data` is `PAGE_SIZE` bytes; all zero for a ZERO record).
    fn page(&mut self, block: &str, offset: u64, data: &[u8]);
    /// Where a data page for `offset` of `block` belongs, if the sink holds
    /// it in memory: the reader then reads the page straight into it (a
    /// migration's pages go from the socket's buffer into guest RAM with
    /// no copy between) instead of calling [`RamSink::page`]. The offset
    /// is within the block's length.
    fn page_target(&mut self, block: &str, offset: u64) -> Option<&mut [u8]> {
        let _ = (block, offset);
        None
    }
    /// The length this side accepts for `name` when the stream says
    /// `stream_len` (tools that only read a stream accept any).
    fn accept_len(&self, name: &str, stream_len: u64) -> Option<u64> {
        let _ = stream_len;
        self.block_len(name)
    }
}

/// A sink for streams without RAM.
pub struct NoRam;
impl RamSink for NoRam {
    fn block_len(&self, _: &str) -> Option<u64> {
        None
    }
    fn page(&mut self, _: &str, _: u64, _: &[u8]) {}
}

/// What the reader found.
#[derive(Debug)]
pub enum Record {
    /// A `ram` START (the block list was checked) or PART/END section
    /// (`pages` pages went to the sink).
    Ram { pages: u64, last: bool },
    /// A `spapr/htab` section (START, PART, or with `last` END).
    Htab { pass: htab::Pass, last: bool },
    /// A device's state.
    Section {
        idstr: String,
        instance: u32,
        version: u32,
        state: State,
    },
    /// The end; the trailing description follows if present.
    Eof { vmdesc: Option<serde_json::Value> },
}

/// Reads a stream, counting bytes for error offsets.
pub struct Reader<R: Read> {
    r: R,
    offset: u64,
    /// Bytes read ahead (peeked) but not consumed, in stream order.
    ahead: Vec<u8>,
    /// The stream's section id of `ram`, once started.
    ram_id: Option<u32>,
    /// This side's block lengths, from the START section.
    ram_blocks: Vec<(String, u64)>,
    /// The stream's section id of `spapr/htab`, once started.
    htab_id: Option<u32>,
    /// The hash page table's entries, once its order came (0: none).
    htab_entries: Option<u64>,
}

impl<R: Read> Reader<R> {
    /// Reads the header and the configuration section; the machine type
    /// must be `local_machine`.
    pub fn new(r: R, local_machine: &str) -> Result<Reader<R>> {
        let mut rd = Reader {
            r,
            offset: 0,
            ahead: Vec::new(),
            ram_id: None,
            ram_blocks: vec![],
            htab_id: None,
            htab_entries: None,
        };
        let magic = rd.u32("the stream header")?;
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        let version = rd.u32("the stream header")?;
        if version != VERSION {
            return Err(Error::BadVersion { found: version });
        }
        let at = rd.offset;
        let t = rd.u8("the configuration section")?;
        if t != CONFIGURATION {
            return Err(Error::ConfigurationMissing {
                offset: at,
                found: t,
            });
        }
        let len = rd.u32("the machine type length")?;
        if len > 256 {
            return Err(Error::Truncated {
                offset: rd.offset,
                wanted: len as usize,
                what: "an implausibly long machine type".into(),
            });
        }
        let name = rd.bytes(len as usize, "the machine type")?;
        let stream = String::from_utf8_lossy(&name).into_owned();
        if stream != local_machine {
            return Err(Error::MachineMismatch {
                stream,
                local: local_machine.to_string(),
            });
        }
        Ok(rd)
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let take = self.ahead.len().min(buf.len());
        buf[..take].copy_from_slice(&self.ahead[..take]);
        self.ahead.drain(..take);
        let mut done = take;
        while done < buf.len() {
            match self.r.read(&mut buf[done..]) {
                Ok(0) => {
                    return Err(Error::Truncated {
                        offset: self.offset + done as u64,
                        wanted: buf.len() - done,
                        what: what.to_string(),
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::Read {
                        offset: self.offset + done as u64,
                        source,
                    })
                }
            }
        }
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        let mut b = [0u8; 1];
        self.fill(&mut b, what)?;
        Ok(b[0])
    }

    /// The next `n` bytes, without consuming them (n is small).
    fn peek_n(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        while self.ahead.len() < n {
            let mut b = [0u8; 64];
            let want = (n - self.ahead.len()).min(b.len());
            match self.r.read(&mut b[..want]) {
                Ok(0) => {
                    return Err(Error::Truncated {
                        offset: self.offset + self.ahead.len() as u64,
                        wanted: n - self.ahead.len(),
                        what: what.to_string(),
                    })
                }
                Ok(k) => self.ahead.extend_from_slice(&b[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::Read {
                        offset: self.offset + self.ahead.len() as u64,
                        source,
                    })
                }
            }
        }
        Ok(&self.ahead[..n])
    }

    fn peek(&mut self, what: &str) -> Result<u8> {
        Ok(self.peek_n(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let mut b = [0u8; 4];
        self.fill(&mut b, what)?;
        Ok(u32::from_be_bytes(b))
    }

    fn bytes(&mut self, n: usize, what: &str) -> Result<Vec<u8>> {
        // n is bounded by the caller (a description's size or <= 255).
        let mut v = vec![0u8; n];
        self.fill(&mut v, what)?;
        Ok(v)
    }

    /// The next record. `lookup` maps a section's idstr and instance to
    /// this side's description.
    pub fn next_record(
        &mut self,
        lookup: &dyn Fn(&str, u32) -> Option<&'static Description>,
        ram: &mut dyn RamSink,
    ) -> Result<Record> {
        let at = self.offset;
        match self.u8("a section type")? {
            EOF => {
                let vmdesc = match self.peek("the vm description") {
                    Ok(VMDESCRIPTION) => {
                        self.u8("the vm description")?;
                        let len = self.u32("the vm description length")?;
                        if len > MAX_VMDESC {
                            return Err(Error::DescriptionTooLarge {
                                len,
                                offset: self.offset,
                            });
                        }
                        let j = self.bytes(len as usize, "the vm description")?;
                        serde_json::from_slice(&j).ok()
                    }
                    _ => None,
                };
                Ok(Record::Eof { vmdesc })
            }
            SECTION_FULL => self.full_section(lookup),
            SECTION_START => self.start(ram, at),
            t @ (SECTION_PART | SECTION_END) => {
                let id = self.u32("a section id")?;
                let last = t == SECTION_END;
                if self.htab_id == Some(id) {
                    let pass = self.htab_pass()?;
                    self.footer(htab::IDSTR, id)?;
                    return Ok(Record::Htab { pass, last });
                }
                if self.ram_id != Some(id) {
                    return Err(Error::UnknownSectionId { id, offset: at });
                }
                let pages = self.ram_records(ram)?;
                self.footer("ram", id)?;
                Ok(Record::Ram { pages, last })
            }
            t => Err(Error::UnknownSectionType {
                found: t,
                offset: at,
            }),
        }
    }

    fn full_section(
        &mut self,
        lookup: &dyn Fn(&str, u32) -> Option<&'static Description>,
    ) -> Result<Record> {
        let id = self.u32("a section id")?;
        let len = self.u8("a section name length")? as usize;
        let idstr = String::from_utf8_lossy(&self.bytes(len, "a section name")?).into_owned();
        let instance = self.u32("an instance id")?;
        let version = self.u32("a version id")?;
        let at = self.offset;
        let desc = lookup(&idstr, instance).ok_or_else(|| Error::UnknownSection {
            idstr: idstr.clone(),
            instance,
            offset: at,
        })?;
        self.check_version(desc, &idstr, version, at)?;
        let state = self.decode(desc, version)?;
        self.footer(&idstr, id)?;
        Ok(Record::Section {
            idstr,
            instance,
            version,
            state,
        })
    }

    fn footer(&mut self, section: &str, id: u32) -> Result<()> {
        let at = self.offset;
        let f = self.u8("a section footer")?;
        if f != FOOTER {
            return Err(Error::FooterMissing {
                section: section.to_string(),
                offset: at,
                found: f,
            });
        }
        let fid = self.u32("a section footer")?;
        if fid != id {
            return Err(Error::FooterMismatch {
                section: section.to_string(),
                expected: id,
                found: fid,
                offset: at,
            });
        }
        Ok(())
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let mut b = [0u8; 8];
        self.fill(&mut b, what)?;
        Ok(u64::from_be_bytes(b))
    }

    fn counted(&mut self, what: &str) -> Result<String> {
        let len = self.u8(what)? as usize;
        Ok(String::from_utf8_lossy(&self.bytes(len, what)?).into_owned())
    }

    /// START: `ram` or `spapr/htab`, the iterative sections there are.
    fn start(&mut self, ram: &mut dyn RamSink, at: u64) -> Result<Record> {
        let id = self.u32("a section id")?;
        let idstr = self.counted("a section name")?;
        let instance = self.u32("an instance id")?;
        let version = self.u32("a version id")?;
        match (idstr.as_str(), instance) {
            (RAM_IDSTR, 0) => self.ram_start(ram, id, idstr, version, at),
            (htab::IDSTR, 0) => {
                versions(&idstr, version, htab::VERSION..=htab::VERSION, at)?;
                let pass = self.htab_pass()?;
                self.footer(htab::IDSTR, id)?;
                self.htab_id = Some(id);
                Ok(Record::Htab { pass, last: false })
            }
            _ => Err(Error::UnknownSection {
                idstr,
                instance,
                offset: at,
            }),
        }
    }

    /// One `spapr/htab` section's body, as QEMU's `htab_load` reads it: a
    /// header word (no table, a new order, or 0: chunks to the end marker),
    /// every chunk inside the table.
    fn htab_pass(&mut self) -> Result<htab::Pass> {
        let at = self.offset;
        match self.u32("the hash page table's header")? {
            htab::NONE => {
                self.htab_entries = Some(0);
                return Ok(htab::Pass::Free);
            }
            0 => {}
            order if (htab::MIN_ORDER..=htab::MAX_ORDER).contains(&order) => {
                self.htab_entries = Some(1 << (order - 4));
                return Ok(htab::Pass::Order(order));
            }
            order => return Err(Error::HtabOrder { order, offset: at }),
        }
        let entries = self.htab_entries.ok_or(Error::HtabNoTable { offset: at })?;
        let mut chunks = vec![];
        let mut covered = 0u64;
        loop {
            let at = self.offset;
            let index = self.u32("a hash page table chunk")?;
            let mut h = [0u8; 4];
            self.fill(&mut h, "a hash page table chunk")?;
            let n_valid = u16::from_be_bytes([h[0], h[1]]);
            let n_invalid = u16::from_be_bytes([h[2], h[3]]);
            if index == 0 && n_valid == 0 && n_invalid == 0 {
                return Ok(htab::Pass::Chunks(chunks));
            }
            let end = u64::from(index) + u64::from(n_valid) + u64::from(n_invalid);
            if end > entries {
                return Err(Error::HtabOutOfRange {
                    index,
                    end,
                    entries,
                    offset: at,
                });
            }
            covered += (end - u64::from(index)).max(1);
            if covered > MAX_HTAB_SWEEPS * entries {
                return Err(Error::HtabTooLong {
                    entries,
                    offset: at,
                });
            }
            let valid = self.bytes(
                usize::from(n_valid) * htab::HPTE_SIZE,
                "a hash page table chunk's entries",
            )?;
            chunks.push(htab::Chunk {
                index,
                n_invalid,
                valid,
            });
        }
    }

    /// `ram`'s START: check its blocks against ours.
    fn ram_start(
        &mut self,
        ram: &mut dyn RamSink,
        id: u32,
        idstr: String,
        version: u32,
        at: u64,
    ) -> Result<Record> {
        versions(&idstr, version, RAM_VERSION..=RAM_VERSION, at)?;
        let at = self.offset;
        let head = self.u64("the RAM size")?;
        if head & RAM_FLAGS != RAM_MEM_SIZE {
            return Err(Error::RamFlags {
                flags: head & RAM_FLAGS,
                offset: at,
            });
        }
        let total = head & !RAM_FLAGS;
        let mut seen = 0u64;
        self.ram_blocks.clear();
        while seen < total {
            let at = self.offset;
            let name = self.counted("a RAM block name")?;
            let len = self.u64("a RAM block length")?;
            let local = ram
                .accept_len(&name, len)
                .ok_or_else(|| Error::UnknownRamBlock {
                    name: name.clone(),
                    offset: at,
                })?;
            if local != len {
                return Err(Error::RamLengthMismatch {
                    name,
                    stream: len,
                    local,
                    offset: at,
                });
            }
            seen = seen.saturating_add(len.max(1));
            self.ram_blocks.push((name, len));
        }
        let at = self.offset;
        let eos = self.u64("the end of the RAM block list")?;
        if eos != RAM_EOS {
            return Err(Error::RamFlags {
                flags: eos,
                offset: at,
            });
        }
        self.footer(RAM_IDSTR, id)?;
        self.ram_id = Some(id);
        Ok(Record::Ram {
            pages: 0,
            last: false,
        })
    }

    /// Page records until EOS.
    fn ram_records(&mut self, ram: &mut dyn RamSink) -> Result<u64> {
        let mut block: Option<usize> = None;
        let mut pages = 0u64;
        let mut page = vec![0u8; PAGE_SIZE];
        loop {
            let at = self.offset;
            let word = self.u64("a RAM record")?;
            let (addr, flags) = (word & !RAM_FLAGS, word & RAM_FLAGS);
            if flags == RAM_EOS {
                return Ok(pages);
            }
            let kind = flags & !RAM_CONTINUE;
            if kind != RAM_ZERO && kind != RAM_PAGE {
                return Err(Error::RamFlags { flags, offset: at });
            }
            if flags & RAM_CONTINUE == 0 {
                let name = self.counted("a RAM block name")?;
                let i = self.ram_blocks.iter().position(|b| b.0 == name);
                block = Some(i.ok_or(Error::UnknownRamBlock { name, offset: at })?);
            }
            let bi = block.ok_or(Error::RamNoBlock { offset: at })?;
            let len = self.ram_blocks[bi].1;
            if addr
                .checked_add(PAGE_SIZE as u64)
                .is_none_or(|end| end > len)
            {
                return Err(Error::RamOutOfRange {
                    name: self.ram_blocks[bi].0.clone(),
                    addr,
                    len,
                    offset: at,
                });
            }
            let name = std::mem::take(&mut self.ram_blocks[bi].0);
            let got = if kind == RAM_ZERO {
                self.u8("a zero page's fill byte").map(|fill| {
                    page.fill(fill);
                    ram.page(&name, addr, &page);
                })
            } else if let Some(target) = ram.page_target(&name, addr) {
                self.fill(target, "a RAM page")
            } else {
                self.fill(&mut page, "a RAM page")
                    .map(|()| ram.page(&name, addr, &page))
            };
            self.ram_blocks[bi].0 = name;
            got?;
            pages += 1;
        }
    }

    fn check_version(&self, d: &Description, section: &str, v: u32, offset: u64) -> Result<()> {
        versions(section, v, d.minimum_version_id..=d.version_id, offset)
    }

    /// Reads `desc`'s fields as of stream version `version`, then its
    /// subsections.
    fn decode(&mut self, desc: &'static Description, version: u32) -> Result<State> {
        let mut st = State::default();
        for f in desc.fields {
            let v = if f.since > version {
                default_value(f.kind)
            } else if let Kind::VBuffer(size) = f.kind {
                let at = self.offset;
                let n = vbuffer_len(&st, size).ok_or_else(|| Error::BadSize {
                    device: desc.name.into(),
                    field: f.name.into(),
                    size: count_value(&st, size).unwrap_or(-1),
                    offset: at,
                })?;
                Val::Bytes(self.bytes(n, &format!("field '{}' of '{}'", f.name, desc.name))?)
            } else if let Kind::VarArray(k, count) = f.kind {
                let at = self.offset;
                let n = varray_len(&st, count).ok_or_else(|| Error::BadCount {
                    device: desc.name.into(),
                    field: f.name.into(),
                    count: count_value(&st, count).unwrap_or(-1),
                    offset: at,
                })?;
                Val::Array(
                    (0..n)
                        .map(|_| self.value(desc, f, *k))
                        .collect::<Result<_>>()?,
                )
            } else {
                self.value(desc, f, f.kind)?
            };
            st.fields.push((f.name, v));
        }
        while self.peek("a subsection or the section end")? == SUBSECTION {
            // As QEMU: the subsection is this description's only if its
            // name starts with ours; otherwise it belongs to an enclosing
            // description (this one was a nested struct, its last field).
            let len = self.peek_n(2, "a subsection name length")?[1] as usize;
            let prefix = self.peek_n(2 + len, "a subsection name")?[2..].to_vec();
            if !prefix.starts_with(desc.name.as_bytes()) {
                break;
            }
            let at = self.offset;
            self.u8("a subsection")?;
            let len = self.u8("a subsection name length")? as usize;
            let name = String::from_utf8_lossy(&self.bytes(len, "a subsection name")?).into_owned();
            let Some(sub) = desc.subsections.iter().find(|s| s.desc.name == name) else {
                return Err(Error::UnknownSubsection {
                    name,
                    device: desc.name.to_string(),
                    offset: at,
                });
            };
            let v = self.u32("a subsection version")?;
            self.check_version(sub.desc, &name, v, at)?;
            let s = self.decode(sub.desc, v)?;
            st.subsections.push((sub.desc.name, s));
        }
        Ok(st)
    }

    fn value(&mut self, desc: &Description, f: &Field, kind: Kind) -> Result<Val> {
        let what = || format!("field '{}' of '{}'", f.name, desc.name);
        Ok(match kind {
            Kind::Bool => {
                let at = self.offset;
                match self.u8(&what())? {
                    0 => Val::Bool(false),
                    1 => Val::Bool(true),
                    v => {
                        return Err(Error::OutOfRange {
                            device: desc.name.into(),
                            field: f.name.into(),
                            kind: "bool",
                            value: v as u64,
                            offset: at,
                        })
                    }
                }
            }
            Kind::U8 => Val::Uint(self.u8(&what())? as u64),
            Kind::U16 => {
                let b = self.bytes(2, &what())?;
                Val::Uint(u16::from_be_bytes([b[0], b[1]]) as u64)
            }
            Kind::U32 => Val::Uint(self.u32(&what())? as u64),
            Kind::U64 | Kind::I64 => {
                let mut b = [0u8; 8];
                self.fill(&mut b, &what())?;
                if matches!(kind, Kind::U64) {
                    Val::Uint(u64::from_be_bytes(b))
                } else {
                    Val::Int(i64::from_be_bytes(b))
                }
            }
            Kind::I32 => Val::Int(self.u32(&what())? as i32 as i64),
            Kind::Buffer(n) => Val::Bytes(self.bytes(n, &what())?),
            Kind::Array(k, n) => Val::Array(
                (0..n)
                    .map(|_| self.value(desc, f, *k))
                    .collect::<Result<_>>()?,
            ),
            Kind::Struct(d) => Val::Struct(self.decode(d, d.version_id)?),
            // Only a description's own field (`decode`, which knows the
            // count) can be a counted array or a sized buffer.
            Kind::VarArray(..) | Kind::VBuffer(_) => {
                return Err(Error::StateShape {
                    device: desc.name.into(),
                    field: f.name.into(),
                })
            }
        })
    }
}

// Reads guest memory that a running guest writes (volatile loads).
#[allow(unsafe_code)]
mod gather;
pub use gather::{copy_out, is_zero_page, Gather, GuestWrite};

#[cfg(test)]
mod tests;
