"""Shared mode reports the pages a launcher filled through a used ring, once, at LHREQ_IRQ."""
from __future__ import annotations

import os
import struct

import pytest

from cuse_lguest import abi
from cuse_lguest.memory.errors import GuestFault
from cuse_lguest.memory.handles import acquire
from cuse_lguest.memory.shared import SharedGuestMemory
from cuse_lguest.testing.guestram import GuestRam
from cuse_lguest.virtio import VqConfig, build_record

MEM = 1 << 20
RING = MEM + abi.PAGE_SIZE
NUM = 8


def lay_out(ram: GuestRam) -> None:
    """A zero page with one e820 entry, and a device page naming one queue at RING."""
    buf = ram.buf
    buf[abi.BP_E820_ENTRIES] = 1
    abi.E820_ENTRY.pack_into(buf, abi.BP_E820_MAP, 0, MEM, abi.E820_RAM)
    rec = build_record(abi.VIRTIO_ID_BLOCK, [VqConfig(NUM, 1, RING // abi.PAGE_SIZE)])
    buf[MEM:MEM + len(rec)] = rec


def use(ram: GuestRam, used_idx: int, head: int, descs: list[tuple[int, int, int]]) -> None:
    """The Guest posted chain `descs` at `head`; the launcher used it as element `used_idx`."""
    buf = ram.buf
    for i, (addr, length, flags) in enumerate(descs):
        nxt = head + i + 1 if i + 1 < len(descs) else 0
        f = flags | (abi.VRING_DESC_F_NEXT if i + 1 < len(descs) else 0)
        abi.VRING_DESC.pack_into(buf, RING + 16 * (head + i), addr, length, f, nxt)
    used = RING + abi.vring_used_offset(NUM)
    abi.VRING_USED_ELEM.pack_into(buf, used + 4 + 8 * (used_idx % NUM), head, 512)
    struct.pack_into("<H", buf, used + 2, used_idx + 1)


def test_on_irq_reports_the_writable_buffers_of_newly_used_chains():
    from tests.conftest import needs_root
    needs_root()
    with GuestRam(MEM, device_pages=8) as ram:
        lay_out(ram)
        mem = SharedGuestMemory(acquire(os.getpid(), ram.base, (MEM >> 12) + 8))
        seen = []
        mem.code_changed = seen.append
        try:
            mem.on_irq()
            assert seen == []                      # nothing used yet
            # header (device-readable), data (writable), status (writable)
            use(ram, 0, 0, [(0x10000, 16, 0), (0x20000, 512, abi.VRING_DESC_F_WRITE),
                            (0x30000, 1, abi.VRING_DESC_F_WRITE)])
            mem.on_irq()
            assert seen == [[(0x20000, 512), (0x30000, 1)]]   # each buffer, not the span between
            mem.on_irq()
            assert len(seen) == 1                  # reported once
            use(ram, 1, 3, [(0x40000, 64, 0)])     # a chain the launcher only read
            mem.on_irq()
            assert len(seen) == 1
        finally:
            mem.close()


def test_a_malformed_device_page_is_the_guests_fault():
    """The device page is Guest RAM in shared mode: garbage there kills that Guest, nothing else."""
    from tests.conftest import needs_root
    needs_root()
    with GuestRam(MEM, device_pages=8) as ram:
        lay_out(ram)
        mem = SharedGuestMemory(acquire(os.getpid(), ram.base, (MEM >> 12) + 8))
        try:
            mem.on_irq()
            # Two of the largest records a header can describe: the second runs past the page.
            big = abi.DEVICE_DESC.pack(abi.VIRTIO_ID_BLOCK, 255, 255, 255, 0)
            size = abi.device_record_size(255, 255, 255)
            ram.buf[MEM:MEM + size] = big + bytes(size - len(big))
            ram.buf[MEM + size:MEM + size + len(big)] = big
            with pytest.raises(GuestFault, match=f"^malformed device page: device record at {size} "):
                mem.on_irq()
        finally:
            mem.close()
