"""The live GDT the emulated CPU uses, and lguest's fix-ups of Guest descriptors.

The Guest never runs lgdt: it hands descriptors over with LOAD_GDT_ENTRY and
LOAD_TLS.  Before a descriptor goes live we make the same two changes the
real host made: DPL 0 becomes 1 (the Guest kernel runs at ring 1 and must
never get ring 0), and the "accessed" type bit is set, so the CPU never
writes to the GDT (ours is read-only).  Entries 10, 11 (the host's own
segments), 16 (TSS) and 31 (double-fault TSS) are accepted but never made
live.

The live GDT in the switcher region is the only copy: the native exits
(cpu/_exits_build.py) run LOAD_TLS at a Linux task switch and write its
three entries there themselves, so entry() reads it back rather than
keeping a Python list that C could not update.
"""
from __future__ import annotations

import struct

from cuse_lguest import abi
from cuse_lguest.cpu.switcher import BOOT_CS, BOOT_DS, GDT_ADDR, SWITCHER_BASE, SwitcherRegion
from cuse_lguest.memory.errors import GuestFault

_U64 = struct.Struct("<Q")


def flat_descriptor(dpl: int, code: bool) -> int:
    """A present 4 GiB, 32-bit, page-granular code or data descriptor, already accessed."""
    access = 0x80 | (dpl << 5) | 0x10 | (0xB if code else 0x3)
    return 0xFFFF | (access << 40) | (0xF << 48) | (0xC << 52)


def fix_descriptor(desc: int) -> int:
    """lguest's fix-up: DPL 0 -> GUEST_PL, and mark it accessed."""
    if desc & abi.DESC_DPL_MASK == 0:
        desc |= abi.GUEST_PL << abi.DESC_DPL_SHIFT
    return desc | abi.DESC_ACCESSED


def cache_of(desc: int) -> tuple[int, int, int]:
    """(base, limit, flags) as the CPU's hidden segment cache holds them for `desc`."""
    lo, hi = desc & 0xFFFFFFFF, desc >> 32
    base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
    limit = (lo & 0xFFFF) | (hi & 0xF0000)
    if hi & (1 << 23):
        limit = (limit << 12) | 0xFFF
    return base, limit, hi


class HostGdt:
    """32 descriptors at GDT_ADDR in the switcher region."""

    def __init__(self, region: SwitcherRegion) -> None:
        self._region = region
        self._set(abi.GDT_ENTRY_KERNEL_CS, flat_descriptor(abi.GUEST_PL, True))
        self._set(abi.GDT_ENTRY_KERNEL_DS, flat_descriptor(abi.GUEST_PL, False))
        # Ring 0 for the boot stub's single iret; retired at the first exit.
        self._set(BOOT_CS >> 3, flat_descriptor(0, True))
        self._set(BOOT_DS >> 3, flat_descriptor(0, False))

    limit = abi.GDT_ENTRIES * 8 - 1
    base = GDT_ADDR

    def _set(self, index: int, desc: int) -> None:
        _U64.pack_into(self._region.view, GDT_ADDR - SWITCHER_BASE + index * 8, desc)

    def entry(self, index: int) -> int:
        """The live descriptor `index`, as the CPU reads it."""
        return _U64.unpack_from(self._region.view, GDT_ADDR - SWITCHER_BASE + index * 8)[0]

    def retire_boot_segments(self) -> None:
        """The Guest is at CPL 1 now: no ring-0 descriptor may stay live."""
        self._set(BOOT_CS >> 3, 0)
        self._set(BOOT_DS >> 3, 0)

    def load_entry(self, index: int, lo: int, hi: int) -> None:
        """LHCALL_LOAD_GDT_ENTRY."""
        if index >= abi.GDT_ENTRIES:
            raise GuestFault(f"too many gdt entries {index}")
        if index in abi.GDT_ENTRIES_STORED_UNUSED:
            return
        self._set(index, fix_descriptor((hi << 32) | lo))

    def load_tls(self, descriptors: bytes) -> None:
        """LHCALL_LOAD_TLS: three descriptors into entries 6..8."""
        for k, (desc,) in enumerate(struct.iter_unpack("<Q", descriptors)):
            self._set(abi.GDT_ENTRY_TLS_MIN + k, fix_descriptor(desc))
