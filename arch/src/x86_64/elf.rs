//! ELF kernels booted through PVH: 32-bit or 64-bit ELF, every `PT_LOAD`
//! segment copied to its physical address, the entry point taken from the
//! Xen `XEN_ELFNOTE_PHYS32_ENTRY` note. The PVH ABI allows both ELF
//! classes (the entry is 32-bit protected mode either way), as QEMU's
//! `-kernel` does.

use crate::elf::{self, Endian, PT_LOAD, PT_NOTE};
use std::io::{Read, Seek};
use vm_memory::GuestMemoryBackend;

const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Notes are small; a larger note segment is not a kernel's.
const MAX_NOTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Elf(#[from] crate::elf::Error),
    #[error("the ELF is big-endian; x86 kernels are little-endian")]
    BigEndian,
    #[error("the ELF is for machine {0}, not x86 ({EM_386}) or x86-64 ({EM_X86_64})")]
    Machine(u16),
    #[error("the PVH entry note holds {0} bytes, too few for an address")]
    BadEntryNote(u32),
    #[error("the PVH entry {0:#x} is above 4 GiB; the PVH entry runs in 32-bit mode")]
    EntryAbove4G(u64),
    #[error(
        "the ELF has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY), which vmm needs to boot an ELF"
    )]
    NoPvhEntry,
}

/// A loaded kernel: where to enter it and the end of its highest segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub entry: u64,
    pub end: u64,
    /// 32 or 64.
    pub bits: u32,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    Endian::Little.u32(b, o)
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    Endian::Little.u64(b, o)
}

/// The PVH entry in a `PT_NOTE` segment's bytes, if it holds one. Notes
/// are walked 4-byte aligned, as Linux writes them even in a segment the
/// linker aligned to 8 (and as QEMU and linux-loader read them); a segment
/// that says 8 is walked the gABI's 8-byte way too if that finds nothing.
fn pvh_entry(notes: &[u8], align: u64) -> Result<Option<u64>, Error> {
    match walk_notes(notes, 4)? {
        None if align == 8 => walk_notes(notes, 8),
        found => Ok(found),
    }
}

fn walk_notes(notes: &[u8], align: usize) -> Result<Option<u64>, Error> {
    // glibc's ELF_NOTE_DESC_OFFSET / ELF_NOTE_NEXT_OFFSET: the name
    // follows the 12-byte header, the descriptor and the next note start
    // aligned (the segment's start is).
    let up = |x: usize| x.div_ceil(align).saturating_mul(align);
    let mut o = 0usize;
    while o + 12 <= notes.len() {
        let (namesz, descsz, kind) = (
            u32_at(notes, o) as usize,
            u32_at(notes, o + 4) as usize,
            u32_at(notes, o + 8),
        );
        let name = o + 12;
        let desc = up(name.saturating_add(namesz));
        let next = up(desc.saturating_add(descsz));
        if next > notes.len() || next <= o {
            break;
        }
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && &notes[name..name + namesz] == b"Xen\0" {
            // Linux writes a pointer-sized value (8 bytes on x86_64); a
            // 32-bit kernel 4. Either way the entry is a 32-bit address.
            let entry = match descsz {
                8 => u64_at(notes, desc),
                n if n >= 4 => u64::from(u32_at(notes, desc)),
                n => return Err(Error::BadEntryNote(n as u32)),
            };
            if entry > u64::from(u32::MAX) {
                return Err(Error::EntryAbove4G(entry));
            }
            return Ok(Some(entry));
        }
        o = next;
    }
    Ok(None)
}

/// Loads the ELF kernel in `f` into `mem`, whose memory is fresh: the
/// part of a segment past its file bytes (its bss) is left as it is, zero.
/// Segments start at `min_addr` or above.
pub fn load<F: Read + Seek, M: GuestMemoryBackend>(
    mem: &M,
    f: &mut F,
    min_addr: u64,
) -> Result<Loaded, Error> {
    let h = elf::read(f, |endian, machine| match (endian, machine) {
        (Endian::Big, _) => Err(Error::BigEndian),
        (_, EM_386 | EM_X86_64) => Ok(()),
        (_, m) => Err(Error::Machine(m)),
    })?;
    let mut entry = None;
    let mut end = 0;
    for (index, p) in h.phdrs.iter().enumerate() {
        match p.kind {
            PT_NOTE if entry.is_none() && p.filesz <= MAX_NOTES && h.in_file(p) => {
                let mut notes = vec![0u8; p.filesz as usize];
                elf::read_at(f, p.offset, &mut notes).map_err(elf::Error::Read)?;
                entry = pvh_entry(&notes, p.align)?;
            }
            PT_LOAD if p.memsz > 0 => {
                end = end.max(h.load_segment(mem, f, index, p.paddr, min_addr)?);
            }
            _ => {}
        }
    }
    let entry = entry.ok_or(Error::NoPvhEntry)?;
    Ok(Loaded {
        entry,
        end,
        bits: h.bits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    /// An ELF of `bits` with one PT_LOAD (`code` at `paddr`, `bss` more
    /// bytes of memory) and the PVH note naming `entry` (`entry_len` bytes).
    fn elf(bits: u32, paddr: u64, code: &[u8], bss: u64, entry: u64, entry_len: u32) -> Vec<u8> {
        let (ehsize, phsize) = if bits == 32 { (52, 32) } else { (64, 56) };
        let mut note = vec![];
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&entry_len.to_le_bytes());
        note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&entry.to_le_bytes()[..entry_len as usize]);
        let note_off = ehsize + 2 * phsize;
        let code_off = note_off + note.len();
        let mut f = vec![0u8; ehsize];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = if bits == 32 { 1 } else { 2 };
        f[5] = 1;
        f[6] = 1;
        let machine = if bits == 32 { EM_386 } else { EM_X86_64 };
        f[18..20].copy_from_slice(&machine.to_le_bytes());
        let phdr = |kind: u32, off: usize, addr: u64, filesz: usize, memsz: u64, align: u64| {
            let mut p = vec![0u8; phsize];
            p[..4].copy_from_slice(&kind.to_le_bytes());
            if bits == 32 {
                p[4..8].copy_from_slice(&(off as u32).to_le_bytes());
                p[8..12].copy_from_slice(&(addr as u32).to_le_bytes());
                p[12..16].copy_from_slice(&(addr as u32).to_le_bytes());
                p[16..20].copy_from_slice(&(filesz as u32).to_le_bytes());
                p[20..24].copy_from_slice(&(memsz as u32).to_le_bytes());
                p[28..32].copy_from_slice(&(align as u32).to_le_bytes());
            } else {
                p[8..16].copy_from_slice(&(off as u64).to_le_bytes());
                p[16..24].copy_from_slice(&addr.to_le_bytes());
                p[24..32].copy_from_slice(&addr.to_le_bytes());
                p[32..40].copy_from_slice(&(filesz as u64).to_le_bytes());
                p[40..48].copy_from_slice(&memsz.to_le_bytes());
                p[48..56].copy_from_slice(&align.to_le_bytes());
            }
            p
        };
        if bits == 32 {
            f[28..32].copy_from_slice(&(ehsize as u32).to_le_bytes());
            f[42..44].copy_from_slice(&(phsize as u16).to_le_bytes());
            f[44..46].copy_from_slice(&2u16.to_le_bytes());
        } else {
            f[32..40].copy_from_slice(&(ehsize as u64).to_le_bytes());
            f[54..56].copy_from_slice(&(phsize as u16).to_le_bytes());
            f[56..58].copy_from_slice(&2u16.to_le_bytes());
        }
        f.extend(phdr(
            1, // PT_LOAD, as the gABI numbers it
            code_off,
            paddr,
            code.len(),
            code.len() as u64 + bss,
            0x1000,
        ));
        f.extend(phdr(
            4, /* PT_NOTE */
            note_off,
            0,
            note.len(),
            note.len() as u64,
            4,
        ));
        f.extend(note);
        f.extend_from_slice(code);
        f
    }

    fn ram(mib: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mib << 20)]).unwrap()
    }

    #[test]
    fn both_classes_load_their_segments_and_pvh_entry() {
        for (bits, entry_len) in [(32, 4), (64, 4), (64, 8)] {
            let mem = ram(4);
            let image = elf(bits, 0x10_0000, b"kernel!", 0x100, 0x10_0004, entry_len);
            let l = load(&mem, &mut Cursor::new(image), 0x10_0000).unwrap();
            assert_eq!(
                l,
                Loaded {
                    entry: 0x10_0004,
                    end: 0x10_0000 + 7 + 0x100,
                    bits
                }
            );
            let mut got = [0u8; 7];
            mem.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
            assert_eq!(&got, b"kernel!");
        }
    }

    /// One note: header, name, descriptor, each padded to `align`.
    fn note(name: &[u8], kind: u32, desc: &[u8], align: usize) -> Vec<u8> {
        let mut n = vec![];
        n.extend_from_slice(&(name.len() as u32).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().div_ceil(align) * align, 0);
        n.extend_from_slice(desc);
        n.resize(n.len().div_ceil(align) * align, 0);
        n
    }

    #[test]
    fn the_entry_note_is_found_however_the_notes_are_aligned() {
        let entry = 0x100_0abc_u64.to_le_bytes();
        // Linux: 4-byte aligned notes in a segment the linker aligned to 8,
        // a 5-byte name before the Xen note throwing an 8-byte walk off.
        let mut linux = note(b"Linux", 6, b"6.1", 4);
        linux.extend(note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &entry, 4));
        assert_eq!(pvh_entry(&linux, 8).unwrap(), Some(0x100_0abc));
        // gABI ELF64: notes aligned to 8 throughout.
        let mut gabi = note(b"Linux", 6, b"6.1", 8);
        gabi.extend(note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &entry, 8));
        assert_eq!(pvh_entry(&gabi, 8).unwrap(), Some(0x100_0abc));
        // A 4-byte entry, and a descriptor too short for one.
        let short = note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &entry[..4], 4);
        assert_eq!(pvh_entry(&short, 4).unwrap(), Some(0x100_0abc));
        let bad = note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &entry[..2], 4);
        assert!(matches!(pvh_entry(&bad, 4), Err(Error::BadEntryNote(2))));
        // Other notes only, or a header claiming more than there is.
        assert_eq!(pvh_entry(&note(b"GNU\0", 3, &[1; 20], 4), 4).unwrap(), None);
        let mut lying = note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &entry, 4);
        lying[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pvh_entry(&lying, 8).unwrap(), None);
    }

    #[test]
    fn a_segment_outside_ram_is_named_with_the_ram_size() {
        let mem = ram(2);
        let image = elf(32, 0x80_0000, b"far", 0x1000, 0x80_0000, 4);
        let e = load(&mem, &mut Cursor::new(image), 0x10_0000)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "segment 0 (address 0x800000, 0x1003 bytes) does not fit in the guest's 2 MiB of RAM (RAM at 0x0-0x1fffff)"
        );
        // The bss counts: file bytes in RAM, the rest past its end.
        let image = elf(64, 0x1f_f000, b"x", 0x2000, 0x1f_f000, 4);
        assert!(matches!(
            load(&mem, &mut Cursor::new(image), 0x10_0000),
            Err(Error::Elf(elf::Error::OutsideRam { index: 0, .. }))
        ));
    }

    #[test]
    fn malformed_kernels_say_what_is_wrong() {
        let mem = ram(4);
        let good = elf(32, 0x10_0000, b"k", 0, 0x10_0000, 4);
        let case = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut image = good.clone();
            f(&mut image);
            load(&mem, &mut Cursor::new(image), 0x10_0000)
                .unwrap_err()
                .to_string()
        };
        assert!(case(&|i| i[0] = b'X').contains("not an ELF"));
        assert!(case(&|i| i[4] = 3).contains("class 3"));
        assert!(case(&|i| i[5] = 2).contains("big-endian"));
        assert!(case(&|i| i[18] = 40).contains("machine 40"));
        assert!(case(&|i| i[42] = 56).contains("56 bytes; a 32-bit ELF has 32"));
        // The note's type is no longer PHYS32_ENTRY.
        assert!(case(&|i| i[52 + 64 + 8] = 17).contains("no PVH entry note"));
        // The PT_LOAD's file part ends past the end of the file.
        assert!(case(&|i| i.truncate(i.len() - 1)).contains("past the end of the file"));
        let low = elf(64, 0x1000, b"k", 0, 0x1000, 4);
        let e = load(&mem, &mut Cursor::new(low), 0x10_0000).unwrap_err();
        assert!(e.to_string().contains("below 0x100000"), "{e}");
    }
}
