"""Guest-physical memory as the host sees it: one bounds-checked accessor.

Every host-side touch of Guest memory (lguest_data, hypercall arguments,
interrupt frames, the async ring, page tables) goes through this class, so
one rule decides what a Guest may make us read or write: the range
[addr, addr+len) must lie below pfnlimit*4096 (the 3.18 rule; 3.10 wrongly
excluded the last page).  Anything else kills the Guest with the seed's text.

The class also names the *sync points* where the lguest protocol orders the
Guest's view against the launcher's.  Shared mode needs none of them (both
sides map the same pages); mirror mode, which keeps a private copy of a
launcher's MAP_PRIVATE RAM, overrides them.  The core calls them at:

  at_run_entry()        each read() that runs the Guest: pull launcher changes
  before_notify(value)  before a NOTIFY reaches an eventfd or the launcher:
                        push what the launcher is about to read
  on_irq()              when the vCPU takes an LHREQ_IRQ it was sent: pull
                        what the device wrote (used rings, buffers, config)

There is no sync point at Guest exits: everything a launcher writes is
followed by an LHREQ_IRQ (see mirror.py), and a Linux Guest exits at every
system call, which the native exits (cpu/exits.py) finish without Python.
"""
from __future__ import annotations

import ctypes
import struct
from typing import Callable, Iterable

from cuse_lguest import abi
from cuse_lguest.memory.errors import GuestFault

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class GuestMemory:
    """[0, pfnlimit*4096) of guest-physical memory at host address `host_address`."""

    def __init__(self, host_address: int, pfnlimit: int) -> None:
        self.host_address = host_address
        self.pfnlimit = pfnlimit
        self.limit = pfnlimit * abi.PAGE_SIZE
        self._view = (ctypes.c_char * self.limit).from_address(host_address)
        self.view = memoryview(self._view).cast("B")
        # Called with [(gpa, length), ...] after host writes that may rewrite Guest code.
        self.code_changed: Callable[[Iterable[tuple[int, int]]], None] = lambda ranges: None

    # ---- bounds -------------------------------------------------------
    def check_read(self, addr: int, length: int) -> None:
        if addr < 0 or length < 0 or addr + length > self.limit:
            raise GuestFault(f"bad read address {addr:#x} len {length}")

    def check_write(self, addr: int, length: int) -> None:
        if addr < 0 or length < 0 or addr + length > self.limit:
            raise GuestFault(f"bad write address {addr:#x} len {length}")

    # ---- accessors ----------------------------------------------------
    def read_u8(self, addr: int) -> int:
        self.check_read(addr, 1)
        return self.view[addr]

    def read_u16(self, addr: int) -> int:
        self.check_read(addr, 2)
        return _U16.unpack_from(self.view, addr)[0]

    def read_u32(self, addr: int) -> int:
        self.check_read(addr, 4)
        return _U32.unpack_from(self.view, addr)[0]

    def read_bytes(self, addr: int, length: int) -> bytes:
        self.check_read(addr, length)
        return bytes(self.view[addr:addr + length])

    def write_u8(self, addr: int, value: int) -> None:
        self.check_write(addr, 1)
        self.view[addr] = value & 0xFF

    def write_u16(self, addr: int, value: int) -> None:
        self.check_write(addr, 2)
        _U16.pack_into(self.view, addr, value & 0xFFFF)

    def write_u32(self, addr: int, value: int) -> None:
        self.check_write(addr, 4)
        _U32.pack_into(self.view, addr, value & 0xFFFFFFFF)

    def write_bytes(self, addr: int, data: bytes, may_be_code: bool = False) -> None:
        """Write `data`; with may_be_code, also drop any translation of those bytes."""
        self.check_write(addr, len(data))
        self.view[addr:addr + len(data)] = data
        if may_be_code:
            self.code_changed([(addr, len(data))])

    # ---- sync points (see module docstring); shared mode: nothing to do -
    def at_run_entry(self) -> None:
        """A read() is about to run the Guest."""

    def before_notify(self, value: int) -> None:
        """NOTIFY(value) is about to reach an eventfd or the launcher."""

    def on_irq(self) -> None:
        """The vCPU is taking an LHREQ_IRQ the launcher sent."""

    # ---- lifetime -----------------------------------------------------
    def _release_view(self) -> None:
        self.view.release()

    def close(self) -> None:
        """Unmap everything; the object must not be used afterwards."""
        self._release_view()
