"""The switcher region: host-owned pages at the top of the Guest's address space.

Real lguest kept its world-switch code, GDT and TSS in the top few pages of
every Guest address space and told the Guest (lguest_data.reserve_mem) never
to use them.  We need the same for different reasons: Unicorn fetches the
GDT through linear addresses, and emu_start's `until` address must be mapped
and user-readable under every Guest page table (or Unicorn plants a hidden
page fault at each exit).  So the top 4 MiB are ours:

  physical = virtual 0xFFC00000 (page directory slot 1023)
    +0x0000  page table for slot 1023 (maps the GDT and the stop page)
    +0x1000  host page directory: the Guest's PDEs 0..1022 plus slot 1023
    +0x2000  GDT, 32 entries (the live copy, with lguest's fix-ups)
    +0x3000  boot stub: one CPL0 `iret` into the Guest at CPL 1, and its frame
    +0x4000  stop page: empty, user-readable; `until` points into it

These pages live at physical addresses no Guest RAM can reach (RAM ends at
pfnlimit*4096, far below), and Unicorn maps them read-only: a Guest page
table that names them can read an empty page and the GDT, never write.
"""
from __future__ import annotations

import ctypes
import mmap
import struct

from unicorn import UC_PROT_EXEC, UC_PROT_READ, Uc

from cuse_lguest import abi

SWITCHER_BASE = 0xFFC00000
SWITCHER_PDE_INDEX = SWITCHER_BASE >> 22          # 1023
RESERVE_MEM = (1 << 32) - SWITCHER_BASE           # what lguest_data.reserve_mem tells the Guest

PT_ADDR = SWITCHER_BASE
PD_ADDR = SWITCHER_BASE + 0x1000
GDT_ADDR = SWITCHER_BASE + 0x2000
STUB_ADDR = SWITCHER_BASE + 0x3000
STOP_PAGE = SWITCHER_BASE + 0x4000
UNTIL_ADDR = STOP_PAGE + 0xFF0                    # never executed: emu_start's `until`
REGION_SIZE = 0x5000

# Host-only flat ring-0 segments, live only until the boot stub has run.
BOOT_CS = abi.GDT_ENTRY_LGUEST_CS << 3            # 0x50
BOOT_DS = abi.GDT_ENTRY_LGUEST_DS << 3            # 0x58
STUB_STACK = STUB_ADDR + 0x800

_U32 = struct.Struct("<I")


class SwitcherRegion:
    """The host pages above, as one host mmap that Unicorn maps read-only."""

    def __init__(self, uc: Uc) -> None:
        self.buf = mmap.mmap(-1, REGION_SIZE)
        self.view = memoryview(self.buf)
        self._host = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))
        uc.mem_map_ptr(SWITCHER_BASE, REGION_SIZE, UC_PROT_READ | UC_PROT_EXEC, self._host)
        # Slot 1023's page table: the GDT (supervisor) and the stop page (user), both read-only.
        # ACCESSED is preset so the MMU never needs to write into these read-only pages.
        self._put(PT_ADDR + ((GDT_ADDR >> 12) & 0x3FF) * 4, GDT_ADDR | abi.PTE_PRESENT | abi.PTE_ACCESSED)
        self._put(PT_ADDR + ((STOP_PAGE >> 12) & 0x3FF) * 4,
                  STOP_PAGE | abi.PTE_PRESENT | abi.PTE_USER | abi.PTE_ACCESSED)
        self._put(PD_ADDR + SWITCHER_PDE_INDEX * 4, self.switcher_pde)

    @property
    def switcher_pde(self) -> int:
        """U so a stop at CPL 3 can reach the stop page; no RW: nothing here is Guest-writable."""
        return PT_ADDR | abi.PTE_PRESENT | abi.PTE_USER | abi.PTE_ACCESSED

    def host_address(self, addr: int) -> int:
        """Where the region's `addr` is in this process (for native code that reads it)."""
        return self._host + addr - SWITCHER_BASE

    def _put(self, addr: int, value: int) -> None:
        _U32.pack_into(self.view, addr - SWITCHER_BASE, value)

    def read_u32(self, addr: int) -> int:
        return _U32.unpack_from(self.view, addr - SWITCHER_BASE)[0]

    def write_u32(self, addr: int, value: int) -> None:
        self._put(addr, value)

    def write_bytes(self, addr: int, data: bytes) -> None:
        off = addr - SWITCHER_BASE
        self.view[off:off + len(data)] = data

    def install_boot_stub(self, start: int) -> None:
        """`iret` at CPL 0 into the Guest: EIP = start, CS 0x61, EFLAGS 0x202, ESP 0, SS 0x69."""
        self.write_bytes(STUB_ADDR, b"\xcf")
        self.write_bytes(STUB_STACK, struct.pack("<5I", start, abi.GUEST_CS, abi.INITIAL_EFLAGS, 0, abi.GUEST_DS))

    def close(self) -> None:
        self.view.release()
        self.buf.close()
