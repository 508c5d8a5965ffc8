"""The asynchronous hypercall ring in lguest_data.

To batch page-table updates the Guest queues up to 64 hypercalls in
lguest_data (status byte 0 = queued, 0xFF = free) and only traps when it
makes a real hypercall.  We drain the ring then, before that call, in ring
order from a cursor that persists across drains (the Guest's producer index
and ours walk the same circle), marking each slot free again as we go.  A
NOTIFY in the ring must reach the launcher before anything queued after it
runs, so the drain stops right after a call that left a notify pending; the
rest (and the synchronous call) wait for the next pass.

The drain stops at the first free slot, so when the slot at the cursor is
free nothing else in the ring matters, whatever the other status bytes say.
Every hypercall drains and most find the ring empty, so that one byte is
looked at first: an empty drain costs one memory read.
"""
from __future__ import annotations

from typing import Callable

from cuse_lguest import abi
from cuse_lguest.memory.guest_memory import GuestMemory

_FREE = abi.HCALL_STATUS_FREE
_SIZE = abi.LHCALL_RING_SIZE
_ARGS = abi.HCALL_ARGS


class AsyncRing:
    """The host's consumer side of the ring.

    `execute(nr, a1, a2, a3, a4)` runs one call; `notify_pending()` says
    whether that left a NOTIFY for the launcher, which ends the drain.
    """

    def __init__(self, memory: GuestMemory, ld: int, execute: Callable[[int, int, int, int, int], None],
                 notify_pending: Callable[[], bool], cursor_cell=None) -> None:
        """`cursor_cell`: where the cursor lives (`cell[0]`) when native code drains the ring
        too (cpu/exits.py); a private cell when None."""
        self._mem = memory
        self._status = ld + abi.LGUEST_DATA_HCALL_STATUS
        self._args = ld + abi.LGUEST_DATA_HCALLS
        self._execute = execute
        self._notify_pending = notify_pending
        self._cell = cursor_cell if cursor_cell is not None else [0]
        self.cursor = 0

    @property
    def cursor(self) -> int:
        return self._cell[0]

    @cursor.setter
    def cursor(self, value: int) -> None:
        self._cell[0] = value

    def drain(self) -> None:
        """Run queued calls; stop at a free slot, after 64, or after one that left a NOTIFY pending."""
        mem, status = self._mem, self._status
        # The handshake checked that all of lguest_data lies inside Guest
        # memory, so this one byte needs no bounds check of its own.
        if mem.view[status + self.cursor] == _FREE:
            return
        # Something is queued: from here on, as lguest did, work from one
        # copy of all 64 status bytes taken before the first call runs.
        queued = mem.read_bytes(status, _SIZE)
        for _ in range(_SIZE):
            slot = self.cursor
            if queued[slot] == _FREE:
                break
            self._execute(*_ARGS.unpack(mem.read_bytes(self._args + slot * _ARGS.size, _ARGS.size)))
            mem.write_u8(status + slot, _FREE)
            self.cursor = (slot + 1) % _SIZE
            if self._notify_pending():
                break
