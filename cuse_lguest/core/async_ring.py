"""The asynchronous hypercall ring in lguest_data.

To batch page-table updates the Guest queues up to 64 hypercalls in
lguest_data (status byte 0 = queued, 0xFF = free) and only traps when it
makes a real hypercall.  We drain the ring then, before that call, in ring
order from a cursor that persists across drains (the Guest's producer index
and ours walk the same circle), marking each slot free again as we go.  A
NOTIFY in the ring must reach the launcher before anything queued after it
runs, so the drain stops right after a call that left a notify pending; the
rest (and the synchronous call) wait for the next pass.
"""
from __future__ import annotations

from typing import Callable

from cuse_lguest import abi
from cuse_lguest.memory.guest_memory import GuestMemory

_STATUS = abi.LGUEST_DATA_HCALL_STATUS
_ARGS = abi.LGUEST_DATA_HCALLS


class AsyncRing:
    """The host's consumer side of the ring."""

    def __init__(self, memory: GuestMemory, ld: int) -> None:
        self._mem = memory
        self._ld = ld
        self.cursor = 0

    def drain(self, execute: Callable[[int, int, int, int, int], None],
              notify_pending: Callable[[], bool]) -> None:
        """Run queued calls; stop at a free slot, after 64, or after one that left a NOTIFY pending."""
        mem, ld = self._mem, self._ld
        status = mem.read_bytes(ld + _STATUS, abi.LHCALL_RING_SIZE)
        for _ in range(abi.LHCALL_RING_SIZE):
            slot = self.cursor
            if status[slot] == abi.HCALL_STATUS_FREE:
                break
            args = abi.HCALL_ARGS.unpack(mem.read_bytes(ld + _ARGS + slot * abi.HCALL_ARGS.size,
                                                        abi.HCALL_ARGS.size))
            execute(*args)
            mem.write_u8(ld + _STATUS + slot, abi.HCALL_STATUS_FREE)
            self.cursor = (slot + 1) % abi.LHCALL_RING_SIZE
            if notify_pending():
                break
