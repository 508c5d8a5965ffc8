"""Raw register access: straight to uc_reg_read/uc_reg_write through ctypes.

The Python binding's reg_read/reg_write dispatch on register classes and cost
about 4 µs each; the raw calls cost about 1 µs, and a hypercall exit reads
five registers.  One pre-allocated 8-byte buffer serves every call.  It is
zeroed before each read because a segment register read writes only 16 bits.
"""
from __future__ import annotations

import ctypes

from unicorn import Uc
from unicorn.unicorn_py3.unicorn import uclib


class RawRegs:
    """read()/write() of 32-bit registers of one Unicorn instance (one thread at a time)."""

    def __init__(self, uc: Uc) -> None:
        self._h = uc._uch
        self._buf = ctypes.c_uint64(0)
        self._ref = ctypes.byref(self._buf)
        self._read = uclib.uc_reg_read
        self._write = uclib.uc_reg_write

    def read(self, reg: int) -> int:
        buf = self._buf
        buf.value = 0
        self._read(self._h, reg, self._ref)
        return buf.value & 0xFFFFFFFF

    def write(self, reg: int, value: int) -> None:
        self._buf.value = value & 0xFFFFFFFF
        self._write(self._h, reg, self._ref)
