"""Raw register access: straight to uc_reg_read/uc_reg_write through ctypes.

The Python binding's reg_read/reg_write dispatch on register classes and cost
about 4 µs each; the raw calls cost well under 1 µs.  One pre-allocated
8-byte buffer serves every call.  It is zeroed before each read because a
segment register read writes only 16 bits.

Exits that need several registers at once (a hypercall needs CS and five
arguments, an interrupt frame four) read them as a RegBatch: one native
call for all of them instead of one call each.

Every function here is bound through ctypes.PyDLL, so the call keeps the
GIL.  A register access never blocks, and a plain ctypes call would let go
of the GIL and take it back around each one.  That is cheap only while no
other thread wants the GIL: when a launcher's thread has just sent
LHREQ_IRQ, each of the dozen accesses that build the interrupt frame would
hand the GIL to it and wait to get it back.
"""
from __future__ import annotations

import ctypes
import struct

from unicorn import Uc
from unicorn.unicorn_py3.unicorn import uclib
from unicorn.x86_const import (UC_X86_REG_CS, UC_X86_REG_DS, UC_X86_REG_ES, UC_X86_REG_FS,
                               UC_X86_REG_GS, UC_X86_REG_SS)

# Segment selectors are 16 bits wide: Unicorn writes only two bytes of their slot.
_SELECTORS = frozenset({UC_X86_REG_CS, UC_X86_REG_DS, UC_X86_REG_ES, UC_X86_REG_FS,
                        UC_X86_REG_GS, UC_X86_REG_SS})
_SLOT = 8

# The libunicorn the binding loaded, bound again through PyDLL (see above).
# No argtypes: every argument is passed as a ready-made ctypes object or a
# small int, which saves ctypes the conversion work on each call.
_lib = ctypes.PyDLL(uclib._name)
_reg_read, _reg_write, _read_batch = _lib.uc_reg_read, _lib.uc_reg_write, _lib.uc_reg_read_batch
for _f in (_reg_read, _reg_write, _read_batch):
    _f.restype = ctypes.c_int


class RawRegs:
    """read()/write() of 32-bit registers of one Unicorn instance (one thread at a time)."""

    def __init__(self, uc: Uc) -> None:
        self._uc = uc
        self._h = uc._uch
        self._buf = ctypes.c_uint64(0)
        self._ref = ctypes.byref(self._buf)
        self._read = _reg_read
        self._write = _reg_write

    def read(self, reg: int) -> int:
        buf = self._buf
        buf.value = 0
        self._read(self._h, reg, self._ref)
        return buf.value & 0xFFFFFFFF

    def write(self, reg: int, value: int) -> None:
        self._buf.value = value & 0xFFFFFFFF
        self._write(self._h, reg, self._ref)

    def batch(self, *regs: int) -> "RegBatch":
        """A reader of `regs` (32-bit registers or segment selectors) in this order."""
        return RegBatch(self._uc, regs)


class RegBatch:
    """A fixed list of registers, read together with one uc_reg_read_batch call.

    Each register gets an 8-byte slot, and the unpack format looks only at
    the bytes Unicorn writes (4 for a 32-bit register, 2 for a selector), so
    the slots never need zeroing.  Everything the call takes is built once
    here; read() is the native call plus one struct unpack.
    """

    def __init__(self, uc: Uc, regs: tuple[int, ...]) -> None:
        n = len(regs)
        self._h = uc._uch
        self._ids = (ctypes.c_int * n)(*regs)
        self._vals = (ctypes.c_uint64 * n)()
        base = ctypes.addressof(self._vals)
        self._ptrs = (ctypes.c_void_p * n)(*(base + i * _SLOT for i in range(n)))
        self._n = n
        self._unpack = struct.Struct("<" + "".join("H6x" if r in _SELECTORS else "I4x" for r in regs)).unpack
        self.read()                          # an unknown register fails here, not in a hook

    def read(self) -> tuple[int, ...]:
        err = _read_batch(self._h, self._ids, self._ptrs, self._n)
        if err:
            raise RuntimeError(f"uc_reg_read_batch failed (error {err})")
        return self._unpack(self._vals)
