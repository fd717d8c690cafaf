#!/usr/bin/env python3
"""Repacks the test guest ELF64 as an ELF32 (EM_386) with the same
segments and the same PVH note: the PVH ABI enters either class in 32-bit
protected mode, so both must boot the same guest the same way (QEMU's
-kernel loads both).

Usage: mkelf32.py GUEST_ELF64 OUT_ELF32
"""
import struct, sys

elf = open(sys.argv[1], "rb").read()
assert elf[:4] == b"\x7fELF" and elf[4] == 2, "not an ELF64"
entry, phoff = struct.unpack_from("<QQ", elf, 0x18)
phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
segs = []
for i in range(phnum):
    p_type, p_flags, p_offset, _, p_paddr, p_filesz, p_memsz, p_align = \
        struct.unpack_from("<IIQQQQQQ", elf, phoff + i * phentsize)
    if p_type in (1, 4):  # PT_LOAD, PT_NOTE
        assert p_paddr + p_memsz <= 1 << 32, "a 32-bit ELF addresses 4 GiB"
        segs.append([p_type, p_flags, p_offset, p_paddr, p_filesz, p_memsz, p_align])
assert any(s[0] == 1 for s in segs) and any(s[0] == 4 for s in segs)

EHSIZE, PHSIZE = 52, 32
data_start = EHSIZE + PHSIZE * len(segs)
out = bytearray(data_start)
# Each segment's bytes, in file order, at an offset congruent to its address
# modulo its alignment (as a linker would place it).
for s in segs:
    align = max(s[6], 4)
    pad = (s[3] - len(out)) % align
    out += b"\0" * pad
    body = elf[s[2]:s[2] + s[4]]
    s[2] = len(out)
    out += body
struct.pack_into("<4sBBBB8sHHIIIIIHHHHHH", out, 0,
                 b"\x7fELF", 1, 1, 1, 0, b"\0" * 8,  # ELFCLASS32, LSB, version 1
                 2, 3, 1, entry, EHSIZE, 0, 0,       # ET_EXEC, EM_386
                 EHSIZE, PHSIZE, len(segs), 40, 0, 0)
for i, (p_type, p_flags, p_offset, p_paddr, p_filesz, p_memsz, p_align) in enumerate(segs):
    struct.pack_into("<IIIIIIII", out, EHSIZE + i * PHSIZE,
                     p_type, p_offset, p_paddr, p_paddr, p_filesz, p_memsz, p_flags, p_align)
open(sys.argv[2], "wb").write(out)
