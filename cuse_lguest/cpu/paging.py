"""The host page directory that mirrors the Guest's, and host-side address translation.

Unicorn walks page tables like hardware, so we need no shadow page tables:
the Guest's own page tables are used as they are.  Only the top level is
ours.  CR3 always points at a host-owned page directory whose slots 0..1022
are copies of the Guest's entries and whose slot 1023 maps the switcher
region.  The copy is rebuilt at NEW_PGTABLE and kept current at SET_PGD;
every entry is checked on the way in (frame below pfnlimit, only the flag
bits lguest allowed), which is where the real host killed a Guest with
"bad page directory entry".

Before the first NEW_PGTABLE the Guest runs in linear mode: paging is off
and virtual = guest-physical.

Which Guest table is current lives in a small C struct (struct lg_mirror),
not a Python attribute: the native exits (cpu/_exits_build.py) run a Linux
task switch's NEW_PGTABLE themselves and change it in place, and read it
for every address they translate.
"""
from __future__ import annotations

from cuse_lguest import abi
from cuse_lguest.cpu._exits import ffi as _ffi
from cuse_lguest.cpu._exits import lib as _lib
from cuse_lguest.cpu.switcher import PD_ADDR, SWITCHER_PDE_INDEX, SwitcherRegion
from cuse_lguest.memory.errors import GuestFault
from cuse_lguest.memory.guest_memory import GuestMemory

_FRAME = 0xFFFFF000
_pgd_copy = _lib.lg_pgd_copy


class PageDirectoryMirror:
    """Slots 0..1022 of the host page directory, copied from the Guest's current one."""

    def __init__(self, memory: GuestMemory, region: SwitcherRegion) -> None:
        self._mem = memory
        self._region = region
        self._host_pd = _ffi.cast("uint32_t *", region.host_address(PD_ADDR))
        self.native = _ffi.new("struct lg_mirror *")     # the native exits read and change it in place

    @property
    def guest_pgd(self) -> int | None:
        """gpa of the Guest's current top level; None in linear mode."""
        return self.native.guest_pgd if self.native.paging else None

    @property
    def paging(self) -> bool:
        return bool(self.native.paging)

    def _checked(self, entry: int) -> int:
        if not entry & abi.PTE_PRESENT:
            return 0
        if entry & 0xFFF & ~abi.PGD_ALLOWED_FLAGS or (entry >> 12) >= self._mem.pfnlimit:
            raise GuestFault("bad page directory entry")
        # ACCESSED preset: the MMU then never writes into our (read-only) copy.
        return entry | abi.PTE_ACCESSED

    def load(self, pgd_gpa: int) -> None:
        """NEW_PGTABLE: copy and check every Guest entry below the switcher slot.

        A Linux Guest does this at every task switch, so the copy is done in
        C (lg_pgd_copy): the checks of _checked, and nothing written unless
        every entry passes.
        """
        mem = self._mem
        mem.check_read(pgd_gpa & _FRAME, abi.PAGE_SIZE)      # a page outside Guest RAM: the seed's text
        if _pgd_copy(_ffi.cast("uint8_t *", mem.host_address), mem.limit, mem.pfnlimit, pgd_gpa,
                     self._host_pd, SWITCHER_PDE_INDEX, self._region.switcher_pde):
            raise GuestFault("bad page directory entry")
        self.native.guest_pgd, self.native.paging = pgd_gpa & _FRAME, 1

    def sync(self, index: int) -> bool:
        """Re-copy one slot from the current Guest table (SET_PGD, or a fault that
        the Guest's newer entry explains); True if our copy changed."""
        if not self.native.paging or index >= SWITCHER_PDE_INDEX:
            return False
        entry = self._checked(self._mem.read_u32(self.native.guest_pgd + index * 4))
        if self._region.read_u32(PD_ADDR + index * 4) == entry:
            return False
        self._region.write_u32(PD_ADDR + index * 4, entry)
        return True

    def translate(self, vaddr: int) -> int | None:
        """Guest-virtual -> guest-physical as the Guest's tables say, or None if unmapped."""
        if not self.native.paging:
            return vaddr
        index = vaddr >> 22
        if index >= SWITCHER_PDE_INDEX:
            return None
        pde = self._region.read_u32(PD_ADDR + index * 4)
        if not pde & abi.PTE_PRESENT:
            return None
        pte = self._mem.read_u32((pde & _FRAME) + ((vaddr >> 12) & 0x3FF) * 4)
        if not pte & abi.PTE_PRESENT:
            return None
        return (pte & _FRAME) | (vaddr & 0xFFF)
