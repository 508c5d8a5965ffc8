"""The async hypercall ring: order, a full ring, stop after a NOTIFY, slots written back to 0xFF, the cursor."""
from __future__ import annotations

import ctypes

from cuse_lguest import abi
from cuse_lguest.core.async_ring import AsyncRing
from cuse_lguest.core.contract import RunExit
from cuse_lguest.memory.guest_memory import GuestMemory
from test_core_support import boot, symbol


def test_ring_order_full_ring_and_notify_in_the_middle(native_build):
    g = boot(native_build, "asyncring")
    try:
        status_at = symbol(g.elf, "lguest_data") + abi.LGUEST_DATA_HCALL_STATUS
        seen = []
        for _ in range(70):
            why, value = g.guest.run()
            if why is not RunExit.NOTIFY:
                break
            seen.append(g.string_at(value))
            if seen[-1] == "r100":
                # Stopped right after this NOTIFY: the GDT call queued behind it has not run yet.
                assert g.ram.buf[status_at + 1] == 0
        assert g.run_to_end() == "CRASH: async ring test done"
        assert seen == [f"r{i:03d}" for i in range(65)] + ["r100", "r101", "done\n"]
        assert set(g.ram.buf[status_at:status_at + 64]) == {abi.HCALL_STATUS_FREE}
    finally:
        g.close()


def test_claimed_notifies_do_not_return(native_build):
    g = boot(native_build, "asyncring", claim=lambda value: True)
    try:
        assert g.run_to_end() == "CRASH: async ring test done"
        assert [g.string_at(v) for v in g.claimed] == [f"r{i:03d}" for i in range(65)] + ["r100", "r101", "done\n"]
    finally:
        g.close()


# ---- the consumer on its own, over plain memory -------------------------------------------

LD = 0x1000                      # where this lguest_data sits in the scratch memory
STATUS = LD + abi.LGUEST_DATA_HCALL_STATUS


class _Ring:
    """An AsyncRing over a page of scratch memory, recording what it executes."""

    def __init__(self, notify_after: int | None = None) -> None:
        self.buf = ctypes.create_string_buffer(2 * abi.PAGE_SIZE)
        self.mem = GuestMemory(ctypes.addressof(self.buf), 2)
        self.mem.view[STATUS:STATUS + abi.LHCALL_RING_SIZE] = bytes([abi.HCALL_STATUS_FREE]) * abi.LHCALL_RING_SIZE
        self.ran: list[int] = []
        self.notify_after = notify_after
        self.ring = AsyncRing(self.mem, LD, self._execute, lambda: self.ran[-1] == self.notify_after)

    def _execute(self, nr: int, *args: int) -> None:
        self.ran.append(nr)

    def queue(self, slot: int, nr: int) -> None:
        """Put call `nr` in `slot`, as the Guest does (arguments, then status 0)."""
        args_at = LD + abi.LGUEST_DATA_HCALLS + slot * abi.HCALL_ARGS.size
        abi.HCALL_ARGS.pack_into(self.mem.view, args_at, nr, 0, 0, 0, 0)
        self.mem.view[STATUS + slot] = 0

    def free(self) -> set[int]:
        return {i for i in range(abi.LHCALL_RING_SIZE) if self.mem.view[STATUS + i] == abi.HCALL_STATUS_FREE}


def test_ring_is_consumed_only_from_the_cursor():
    r = _Ring()
    r.ring.cursor = 10
    r.queue(9, 1)                # behind the cursor
    r.queue(11, 2)               # ahead of it, past a free slot
    r.ring.drain()
    assert r.ran == [] and r.ring.cursor == 10 and r.free() == set(range(64)) - {9, 11}
    r.queue(10, 3)               # now the cursor's slot is queued: 10 and 11 run, 12 is free
    r.ring.drain()
    assert r.ran == [3, 2] and r.ring.cursor == 12 and r.free() == set(range(64)) - {9}


def test_ring_wraps_and_stops_after_a_full_circle():
    r = _Ring()
    r.ring.cursor = 60
    for slot in range(64):
        r.queue(slot, 100 + slot)
    r.ring.drain()
    assert r.ran == [100 + (60 + i) % 64 for i in range(64)]
    assert r.ring.cursor == 60 and r.free() == set(range(64))


def test_ring_stops_right_after_a_call_that_left_a_notify():
    r = _Ring(notify_after=2)
    for slot, nr in enumerate((1, 2, 3)):
        r.queue(slot, nr)
    r.ring.drain()
    assert r.ran == [1, 2] and r.ring.cursor == 2 and r.free() == set(range(64)) - {2}
    r.ring.drain()                # the next pass picks up where this one stopped
    assert r.ran == [1, 2, 3] and r.ring.cursor == 3 and r.free() == set(range(64))
