"""Synthetic kernel images for launcher tests: a minimal i386 ELF and a minimal bzImage.

They carry recognisable bytes rather than code: a test loads one, then
checks that every byte landed where the spec (§2.3) says a launcher puts it.
"""
from __future__ import annotations

import struct

from cuse_lguest import abi

_EHDR = struct.Struct("<16sHHIIIIIHHHHHH")
_PHDR = struct.Struct("<IIIIIIII")
_PT_LOAD = 1
_ET_EXEC = 2
_EM_386 = 3


def make_elf(segments: list[tuple[int, int, bytes]], entry: int, first_offset: int = abi.PAGE_SIZE) -> bytes:
    """An ET_EXEC EM_386 ELF with one PT_LOAD per (p_paddr, p_vaddr, data).

    Each segment's file offset keeps the paddr's offset within a page, the
    way real linkers lay files out, so a launcher may map it page by page.
    """
    ident = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
    phoff = _EHDR.size
    out = bytearray(_EHDR.pack(ident, _ET_EXEC, _EM_386, 1, entry, phoff, 0, 0, _EHDR.size, _PHDR.size,
                               len(segments), 0, 0, 0))
    offset = first_offset
    placed = []
    for paddr, vaddr, data in segments:
        offset = (offset + abi.PAGE_SIZE - 1) // abi.PAGE_SIZE * abi.PAGE_SIZE + paddr % abi.PAGE_SIZE
        placed.append((offset, paddr, vaddr, data))
        offset += len(data)
    for off, paddr, vaddr, data in placed:
        out += _PHDR.pack(_PT_LOAD, off, vaddr, paddr, len(data), len(data) + 0x100, 7, abi.PAGE_SIZE)
    for off, _, _, data in placed:
        out += bytes(off - len(out)) + data
    return bytes(out)


def make_bzimage(payload: bytes, setup_sects: int = 2, code32_start: int = abi.BZIMAGE_LOAD_ADDR) -> bytes:
    """Boot sector + `setup_sects` setup sectors (with the HdrS header), then the protected-mode payload."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[abi.BP_SETUP_SECTS] = setup_sects
    setup[abi.BP_HDR_MAGIC:abi.BP_HDR_MAGIC + 4] = abi.BOOT_HDR_MAGIC
    struct.pack_into("<H", setup, abi.BP_HDR_VERSION, 0x020A)
    struct.pack_into("<I", setup, abi.BP_CODE32_START, code32_start)
    setup[0x1FE:0x200] = b"\x55\xaa"
    return bytes(setup) + payload
