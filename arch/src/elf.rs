//! What every ELF kernel loader here shares: the ELF header and program
//! headers, in either byte order and class, and copying a `PT_LOAD`
//! segment into guest RAM with its bounds checked. Each architecture
//! decides which machines it takes, where segments go and how the kernel
//! is entered (`x86_64::elf`: PVH; `ppc64::boot`: sPAPR).

use std::io::{Read, Seek, SeekFrom};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

pub const PT_LOAD: u32 = 1;
pub const PT_NOTE: u32 = 4;
/// More program headers than any kernel has; bounds what a file can ask for.
const MAX_PHDRS: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the kernel file")]
    Read(#[source] std::io::Error),
    #[error("the file is not an ELF")]
    NotElf,
    #[error("ELF class {0} is neither 1 (32-bit) nor 2 (64-bit)")]
    Class(u8),
    #[error("ELF data encoding {0} is neither 1 (little-endian) nor 2 (big-endian)")]
    Encoding(u8),
    #[error("program header entries are {got} bytes; a {bits}-bit ELF has {want}")]
    PhdrSize { bits: u32, got: u16, want: u16 },
    #[error("the ELF has {0} program headers, more than the {MAX_PHDRS} vmm reads")]
    TooManyPhdrs(usize),
    #[error("segment {index} claims {filesz:#x} bytes of file but only {memsz:#x} of memory")]
    FileLargerThanMemory {
        index: usize,
        filesz: u64,
        memsz: u64,
    },
    #[error("segment {index} (address {addr:#x}, {size:#x} bytes) starts below {min:#x}, where vmm keeps the boot information")]
    BelowKernelArea {
        index: usize,
        addr: u64,
        size: u64,
        min: u64,
    },
    #[error("segment {index} (address {addr:#x}, {size:#x} bytes) does not fit in the guest's {ram_mib} MiB of RAM ({ranges})")]
    OutsideRam {
        index: usize,
        addr: u64,
        size: u64,
        ram_mib: u64,
        ranges: String,
    },
    #[error(
        "segment {index} (file offset {offset:#x}, {size:#x} bytes) lies past the end of the file"
    )]
    Truncated {
        index: usize,
        offset: u64,
        size: u64,
    },
    #[error("cannot write segment {index} to guest memory")]
    Write {
        index: usize,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// The byte order of the file (and of the code in it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endian {
    Little,
    Big,
}

impl Endian {
    pub fn u16(self, b: &[u8], o: usize) -> u16 {
        let v = [b[o], b[o + 1]];
        match self {
            Endian::Little => u16::from_le_bytes(v),
            Endian::Big => u16::from_be_bytes(v),
        }
    }

    pub fn u32(self, b: &[u8], o: usize) -> u32 {
        let v = [b[o], b[o + 1], b[o + 2], b[o + 3]];
        match self {
            Endian::Little => u32::from_le_bytes(v),
            Endian::Big => u32::from_be_bytes(v),
        }
    }

    pub fn u64(self, b: &[u8], o: usize) -> u64 {
        let (lo, hi) = match self {
            Endian::Little => (self.u32(b, o), self.u32(b, o + 4)),
            Endian::Big => (self.u32(b, o + 4), self.u32(b, o)),
        };
        u64::from(lo) | u64::from(hi) << 32
    }
}

/// One program header, whichever the class.
#[derive(Clone, Copy, Debug)]
pub struct Phdr {
    pub kind: u32,
    pub offset: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

/// What the loaders need of an ELF's header.
#[derive(Debug)]
pub struct Header {
    /// 32 or 64.
    pub bits: u32,
    pub endian: Endian,
    pub machine: u16,
    pub entry: u64,
    pub phdrs: Vec<Phdr>,
    /// The file's length, which every segment's bytes must lie within.
    pub file_len: u64,
}

pub fn read_at<F: Read + Seek>(f: &mut F, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

/// The header and program headers of the ELF in `f`, once `check` took
/// its byte order and machine (the loader's refusal comes first).
pub fn read<F: Read + Seek, E: From<Error>>(
    f: &mut F,
    check: impl Fn(Endian, u16) -> Result<(), E>,
) -> Result<Header, E> {
    let mut eh = [0u8; 64];
    f.seek(SeekFrom::Start(0)).map_err(Error::Read)?;
    let n = f.read(&mut eh).map_err(Error::Read)?;
    if n < 52 || &eh[..4] != b"\x7fELF" {
        return Err(Error::NotElf.into());
    }
    let bits = match eh[4] {
        1 => 32,
        2 if n == 64 => 64,
        2 => return Err(Error::NotElf.into()),
        c => return Err(Error::Class(c).into()),
    };
    let e = match eh[5] {
        1 => Endian::Little,
        2 => Endian::Big,
        d => return Err(Error::Encoding(d).into()),
    };
    let machine = e.u16(&eh, 18);
    check(e, machine)?;
    let (entry, phoff, phentsize, phnum, want) = if bits == 32 {
        (
            u64::from(e.u32(&eh, 24)),
            u64::from(e.u32(&eh, 28)),
            e.u16(&eh, 42),
            e.u16(&eh, 44),
            32,
        )
    } else {
        (
            e.u64(&eh, 24),
            e.u64(&eh, 32),
            e.u16(&eh, 54),
            e.u16(&eh, 56),
            56,
        )
    };
    if phentsize != want {
        return Err(Error::PhdrSize {
            bits,
            got: phentsize,
            want,
        }
        .into());
    }
    let phnum = phnum as usize;
    if phnum > MAX_PHDRS {
        return Err(Error::TooManyPhdrs(phnum).into());
    }
    let mut table = vec![0u8; phnum * want as usize];
    read_at(f, phoff, &mut table).map_err(Error::Read)?;
    let phdrs = table
        .chunks_exact(want as usize)
        .map(|p| {
            if bits == 32 {
                Phdr {
                    kind: e.u32(p, 0),
                    offset: e.u32(p, 4).into(),
                    paddr: e.u32(p, 12).into(),
                    filesz: e.u32(p, 16).into(),
                    memsz: e.u32(p, 20).into(),
                    align: e.u32(p, 28).into(),
                }
            } else {
                Phdr {
                    kind: e.u32(p, 0),
                    offset: e.u64(p, 8),
                    paddr: e.u64(p, 24),
                    filesz: e.u64(p, 32),
                    memsz: e.u64(p, 40),
                    align: e.u64(p, 48),
                }
            }
        })
        .collect();
    let file_len = f.seek(SeekFrom::End(0)).map_err(Error::Read)?;
    Ok(Header {
        bits,
        endian: e,
        machine,
        entry,
        phdrs,
        file_len,
    })
}

impl Header {
    /// Whether segment `p`'s file bytes lie within the file.
    pub fn in_file(&self, p: &Phdr) -> bool {
        p.offset
            .checked_add(p.filesz)
            .is_some_and(|e| e <= self.file_len)
    }

    /// Copies `PT_LOAD` segment number `index` to guest address `addr`
    /// (fresh memory: the part past its file bytes, its bss, is left
    /// zero), at or above `min_addr`; the end of its memory.
    pub fn load_segment<F: Read + Seek, M: GuestMemoryBackend>(
        &self,
        mem: &M,
        f: &mut F,
        index: usize,
        addr: u64,
        min_addr: u64,
    ) -> Result<u64, Error> {
        let p = self.phdrs[index];
        if p.filesz > p.memsz {
            return Err(Error::FileLargerThanMemory {
                index,
                filesz: p.filesz,
                memsz: p.memsz,
            });
        }
        if addr < min_addr {
            return Err(Error::BelowKernelArea {
                index,
                addr,
                size: p.memsz,
                min: min_addr,
            });
        }
        if !mem.check_range(GuestAddress(addr), p.memsz as usize) {
            let (ram_mib, ranges) = ram_ranges(mem);
            return Err(Error::OutsideRam {
                index,
                addr,
                size: p.memsz,
                ram_mib,
                ranges,
            });
        }
        if !self.in_file(&p) {
            return Err(Error::Truncated {
                index,
                offset: p.offset,
                size: p.filesz,
            });
        }
        let mut data = vec![0u8; p.filesz as usize];
        read_at(f, p.offset, &mut data).map_err(Error::Read)?;
        mem.write_slice(&data, GuestAddress(addr))
            .map_err(|source| Error::Write { index, source })?;
        Ok(addr + p.memsz)
    }
}

fn ram_ranges<M: GuestMemoryBackend>(mem: &M) -> (u64, String) {
    let mut total = 0;
    let ranges: Vec<String> = mem
        .iter()
        .map(|r| {
            total += r.len();
            format!(
                "{:#x}-{:#x}",
                r.start_addr().0,
                r.start_addr().0 + r.len() - 1
            )
        })
        .collect();
    (total >> 20, format!("RAM at {}", ranges.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_in_either_order() {
        let b = [1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(Endian::Little.u16(&b, 0), 0x0201);
        assert_eq!(Endian::Big.u16(&b, 0), 0x0102);
        assert_eq!(Endian::Little.u32(&b, 0), 0x0403_0201);
        assert_eq!(Endian::Big.u32(&b, 4), 0x0506_0708);
        assert_eq!(Endian::Little.u64(&b, 0), 0x0807_0605_0403_0201);
        assert_eq!(Endian::Big.u64(&b, 0), 0x0102_0304_0506_0708);
    }
}
