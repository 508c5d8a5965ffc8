"""NEW_PGTABLE's copy of the Guest's page directory (PageDirectoryMirror.load, done in C) against _checked.

sync() still checks one entry in Python with _checked; load() checks all 1023
in lg_pgd_copy.  Both must agree entry for entry, and a bad entry anywhere
must kill with the seed's text and leave our copy as it was.
"""
from __future__ import annotations

import ctypes
import random
import struct

import pytest

from cuse_lguest import abi
from cuse_lguest.cpu.machine import Machine
from cuse_lguest.cpu.switcher import PD_ADDR, SWITCHER_BASE, SWITCHER_PDE_INDEX
from cuse_lguest.memory.errors import GuestFault
from cuse_lguest.memory.guest_memory import GuestMemory

PFNLIMIT = 64
PGD_GPA = 0x3000


def good_entry(rng: random.Random) -> int:
    flags = abi.PTE_PRESENT | rng.choice((0, abi.PTE_RW)) | rng.choice((0, abi.PTE_USER, abi.PTE_ACCESSED))
    return (rng.randrange(PFNLIMIT) << 12) | flags


@pytest.fixture
def machine():
    buf = ctypes.create_string_buffer(PFNLIMIT * abi.PAGE_SIZE)
    m = Machine(GuestMemory(ctypes.addressof(buf), PFNLIMIT), 0)
    yield m, buf
    m.close()


def host_pd(m: Machine) -> list[int]:
    off = PD_ADDR - SWITCHER_BASE
    return list(struct.unpack_from(f"<{abi.PTRS_PER_PGD}I", m.region.view, off))


def test_load_copies_each_entry_as_checked_says(machine):
    m, buf = machine
    rng = random.Random(15)
    entries = [rng.choice((0, good_entry(rng), rng.getrandbits(32) & ~abi.PTE_PRESENT)) for _ in range(1024)]
    entries[1023] = 0xFFFFFFFF                       # the switcher's slot is never the Guest's
    struct.pack_into("<1024I", buf, PGD_GPA, *entries)
    m.pgdir.load(PGD_GPA | 0x123)
    assert m.pgdir.guest_pgd == PGD_GPA
    want = [m.pgdir._checked(e) for e in entries[:SWITCHER_PDE_INDEX]] + [m.region.switcher_pde]
    assert host_pd(m) == want


@pytest.mark.parametrize("bad", [(PFNLIMIT << 12) | abi.PTE_PRESENT,          # frame past the Guest's RAM
                                 0x1000 | abi.PTE_PRESENT | abi.PTE_GLOBAL,   # a flag lguest never allowed
                                 0x1000 | abi.PTE_PRESENT | abi.PTE_PSE])
def test_one_bad_entry_kills_and_changes_nothing(machine, bad):
    m, buf = machine
    before = host_pd(m)
    rng = random.Random(1)
    entries = [good_entry(rng) for _ in range(1024)]
    entries[rng.randrange(SWITCHER_PDE_INDEX)] = bad
    struct.pack_into("<1024I", buf, PGD_GPA, *entries)
    with pytest.raises(GuestFault, match="^bad page directory entry$"):
        m.pgdir.load(PGD_GPA)
    assert host_pd(m) == before and m.pgdir.guest_pgd is None


def test_a_page_outside_ram_is_a_bad_read(machine):
    m, _ = machine
    with pytest.raises(GuestFault, match="^bad read address"):
        m.pgdir.load(PFNLIMIT << 12)
