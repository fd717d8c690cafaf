#!/usr/bin/env python3
"""Packs the test guest ELF as a minimal bzImage, so that VMMs' Linux
boot-protocol path (boot_params, 32-bit entry at code32_start) can be tested
with the same guest. There is no real-mode setup code: loaders that enter
the 32-bit protocol directly (vmm, Firecracker-style) can boot it; loaders
that run the kernel's 16-bit setup (QEMU's linuxboot ROM) cannot.

Usage: mkbzimage.py GUEST_ELF OUT_BZIMAGE
"""
import struct, sys

elf = open(sys.argv[1], "rb").read()
assert elf[:4] == b"\x7fELF" and elf[4] == 2, "not an ELF64"
phoff, = struct.unpack_from("<Q", elf, 0x20)
phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
loads = []
for i in range(phnum):
    p_type, _, p_offset, _, p_paddr, p_filesz, p_memsz, _ = struct.unpack_from("<IIQQQQQQ", elf, phoff + i * phentsize)
    if p_type == 1:
        loads.append((p_paddr, p_offset, p_filesz, p_memsz))
assert len(loads) == 1, "expected one PT_LOAD segment"
paddr, offset, filesz, memsz = loads[0]
assert paddr == 0x100000, "the guest must be linked at 1 MiB"
payload = elf[offset:offset + filesz]
payload += b"\0" * (-len(payload) % 16)

setup_sects = 1
hdr = bytearray(512 * (setup_sects + 1))
struct.pack_into("<B", hdr, 0x1f1, setup_sects)
struct.pack_into("<I", hdr, 0x1f4, len(payload) // 16)          # syssize
struct.pack_into("<H", hdr, 0x1fe, 0xAA55)                      # boot_flag
hdr[0x202:0x206] = b"HdrS"
struct.pack_into("<H", hdr, 0x206, 0x020F)                      # version 2.15
struct.pack_into("<B", hdr, 0x211, 0x01)                        # loadflags: LOADED_HIGH
struct.pack_into("<I", hdr, 0x214, 0x100000)                    # code32_start
struct.pack_into("<I", hdr, 0x22C, 0x7FFFFFFF)                  # initrd_addr_max
struct.pack_into("<I", hdr, 0x230, 0x200000)                    # kernel_alignment
struct.pack_into("<I", hdr, 0x238, 4095)                        # cmdline_size
struct.pack_into("<I", hdr, 0x260, (memsz + 4095) & ~4095)      # init_size
open(sys.argv[2], "wb").write(bytes(hdr) + payload)
