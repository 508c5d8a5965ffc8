"""The per-Guest eventfd table: where NOTIFY values go instead of read().

The launcher registers (value, eventfd) pairs with LHREQ_EVENTFD, usually one
per virtqueue with the value pfn*4096 of the ring.  When the Guest notifies
that value, the host bumps the eventfd and keeps running the Guest; the
launcher's helper process wakes up and services the queue.  Without a match,
read() returns the value to the launcher instead.

The table's rules are the seed's: append-only, no de-duplication, no removal,
the first registered entry for a value wins, and value 0 can never be
registered because 0 means "nothing pending".  The seed protected it with RCU
so the running Guest never waited for a registration; we do the same thing
with an immutable tuple that registration replaces (copy-on-write).  Readers
take whatever tuple is current without a lock.
"""
from __future__ import annotations

import os
import threading


class EventfdTable:
    """Append-only (value, fd) pairs; owns the fds and closes them at close()."""

    def __init__(self) -> None:
        self._entries: tuple[tuple[int, int], ...] = ()
        self._lock = threading.Lock()  # serialises writers only

    def register(self, value: int, fd: int) -> None:
        """Append (value, fd).  The table takes ownership of `fd`."""
        if value == 0:
            raise ValueError("value 0 means 'no notify pending' and cannot be registered")
        with self._lock:
            self._entries = self._entries + ((value, fd),)

    def claim(self, value: int) -> bool:
        """Signal the first eventfd registered for `value`; False if none is.

        Called by the vCPU on every NOTIFY, so it takes no lock: the tuple it
        reads is never modified, only replaced.
        """
        for v, fd in self._entries:
            if v == value:
                os.eventfd_write(fd, 1)
                return True
        return False

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        """Drop every reference (release time)."""
        with self._lock:
            entries, self._entries = self._entries, ()
        for _, fd in entries:
            os.close(fd)
