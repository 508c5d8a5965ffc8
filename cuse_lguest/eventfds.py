"""The per-Guest eventfd table: where NOTIFY values go instead of read().

The launcher registers (value, eventfd) pairs with LHREQ_EVENTFD, usually one
per virtqueue with the value pfn*4096 of the ring.  When the Guest notifies
that value, the host bumps the eventfd and keeps running the Guest; the
launcher's helper process wakes up and services the queue.  Without a match,
read() returns the value to the launcher instead.

The table's rules are the seed's: append-only, no de-duplication, no removal,
the first registered entry for a value wins, and value 0 can never be
registered because 0 means "nothing pending".  The seed protected it with RCU
so the running Guest never waited for a registration; here a lookup and a
registration each hold the table's mutex for a few instructions (a
registration's allocation happens there too, once per doubling).

The launcher owns each eventfd's count and can fill it to its maximum, where
a write blocks.  The vCPU must never wait on a launcher, so the bump looks
before it writes and drops an increment the eventfd has no room for (its
reader has a wake-up waiting already); one that blocks anyway, because the
launcher filled it in between, is ended by unblock() or close() with a
signal (cpu/_native_build.py, lg_eventfd_post), so neither a read nor the
release of the file can hang on a launcher.

The lookup and the post live in C (struct lg_eventfds), so that the vCPU's
native exits claim a NOTIFY without taking the GIL: in Python, the post
woke the launcher's helper, and the vCPU then waited for the GIL while the
helper, in the same process for the in-process launcher, ran its request.
This class owns the descriptors and the C table's lifetime; `native` is the
table for whoever claims in C.
"""
from __future__ import annotations

import os
import threading

from cuse_lguest.cpu._native import ffi, lib

_UNBLOCK_RETRY_S = 0.01          # how often close() repeats the signal while a post is still stuck
lib.lg_unblock_signal()          # installed once, before any post can need it


class EventfdTable:
    """Append-only (value, fd) pairs; owns the fds and closes them at close()."""

    def __init__(self) -> None:
        table = lib.lg_eventfds_new()
        if table == ffi.NULL:
            raise MemoryError("no memory for an eventfd table")
        # Freed when the last holder lets go: a vCPU's native exits keep it too.
        self.native = ffi.gc(table, lib.lg_eventfds_free)
        self._fds: list[int] = []
        self._lock = threading.Lock()  # serialises writers only

    def register(self, value: int, fd: int) -> None:
        """Append (value, fd).  The table takes ownership of `fd`."""
        if value == 0:
            raise ValueError("value 0 means 'no notify pending' and cannot be registered")
        with self._lock:
            if lib.lg_eventfds_add(self.native, value, fd) != 0:
                raise MemoryError("no memory for another eventfd")
            self._fds.append(fd)

    def claim(self, value: int) -> bool:
        """Signal the first eventfd registered for `value`; False if none is.  Called by the vCPU."""
        return bool(lib.lg_eventfds_claim(self.native, value, 1))

    def native_target(self) -> tuple[int, int, int]:
        """(the C table, lg_eventfds_has's address, lg_eventfds_claim's address): for the native exits."""
        return (int(ffi.cast("uintptr_t", self.native)),
                int(ffi.cast("uintptr_t", ffi.addressof(lib, "lg_eventfds_has"))),
                int(ffi.cast("uintptr_t", ffi.addressof(lib, "lg_eventfds_claim"))))

    def unblock(self) -> None:
        """Any thread: end a post that is stuck on a launcher's full eventfd (its increment is dropped)."""
        lib.lg_eventfds_unblock(self.native)

    def __len__(self) -> int:
        return len(self._fds)

    def stop(self) -> None:
        """No more posts; one still in progress is ended first.  Any thread, idempotent."""
        lib.lg_eventfds_stop(self.native)
        while lib.lg_eventfds_unblock(self.native):
            threading.Event().wait(_UNBLOCK_RETRY_S)

    def close(self) -> None:
        """Drop every reference (release time, once no Guest can claim any more)."""
        self.stop()
        with self._lock:
            fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)
