"""A bare 32-bit x86 Unicorn shaped like a lguest guest's machine, without the core.

Flat 4 GiB segments at ring 0 and all RAM read-write-execute: in a non-PAE
32-bit guest every page is executable, which is exactly what sends every store
of the stock Unicorn down its slow path.  The store benchmark and the
self-modifying-code tests measure and check Unicorn itself on this machine.
It imports nothing but unicorn, so it also runs in the benchmark's subprocess
that loads another Unicorn build.
"""
from __future__ import annotations

import struct

from unicorn import UC_ARCH_X86, UC_MODE_32, UC_PROT_ALL, Uc
from unicorn.x86_const import (
    UC_X86_REG_CS, UC_X86_REG_DS, UC_X86_REG_ES, UC_X86_REG_ESP, UC_X86_REG_FS, UC_X86_REG_GDTR,
    UC_X86_REG_GS, UC_X86_REG_SS)

RAM = 16 << 20
GDT = 0x1000
STACK_TOP = 0x90000
CODE_SELECTOR, DATA_SELECTOR = 0x08, 0x10


def segment(access: int) -> bytes:
    """A flat 4 GiB 32-bit segment descriptor with the given access byte."""
    return struct.pack("<Q", 0xFFFF | (access << 40) | (0xF << 48) | (0xC << 52))


def machine() -> Uc:
    """RAM at physical 0, a GDT with one code and one data segment loaded, a stack; paging off."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, RAM, UC_PROT_ALL)
    gdt = bytes(8) + segment(0x9B) + segment(0x93)
    uc.mem_write(GDT, gdt)
    uc.reg_write(UC_X86_REG_GDTR, (0, GDT, len(gdt) - 1, 0))
    uc.reg_write(UC_X86_REG_CS, CODE_SELECTOR)
    for reg in (UC_X86_REG_DS, UC_X86_REG_ES, UC_X86_REG_SS, UC_X86_REG_FS, UC_X86_REG_GS):
        uc.reg_write(reg, DATA_SELECTOR)
    uc.reg_write(UC_X86_REG_ESP, STACK_TOP)
    return uc
