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

The launcher owns each eventfd's count and can fill it to its maximum, where
a write blocks.  The vCPU must never wait on a launcher, so the bump looks
before it writes and drops an increment the eventfd has no room for (its
reader has a wake-up waiting already); one that blocks anyway, because the
launcher filled it in between, is ended by unblock() or close() with a
signal (cpu/_native_build.py, lg_eventfd_post), so neither a read nor the
release of the file can hang on a launcher.
"""
from __future__ import annotations

import os
import signal
import threading

from cuse_lguest.cpu._native import lib

_UNBLOCK = lib.lg_unblock_signal()
_UNBLOCK_RETRY_S = 0.01          # how often close() repeats the signal while a post is still stuck


class EventfdTable:
    """Append-only (value, fd) pairs; owns the fds and closes them at close()."""

    def __init__(self) -> None:
        self._entries: tuple[tuple[int, int], ...] = ()
        self._lock = threading.Lock()  # serialises writers only
        self._post_lock = threading.Lock()   # guards `_poster`: the thread inside a post, or 0
        self._poster = 0
        self._closed = False

    def register(self, value: int, fd: int) -> None:
        """Append (value, fd).  The table takes ownership of `fd`."""
        if value == 0:
            raise ValueError("value 0 means 'no notify pending' and cannot be registered")
        with self._lock:
            self._entries = self._entries + ((value, fd),)

    def claim(self, value: int) -> bool:
        """Signal the first eventfd registered for `value`; False if none is.

        Called by the vCPU on every NOTIFY, so it takes no table lock: the
        tuple it reads is never modified, only replaced.
        """
        for v, fd in self._entries:
            if v == value:
                self._post(fd)
                return True
        return False

    def _post(self, fd: int, look_first: bool = True) -> None:
        with self._post_lock:
            if self._closed:
                return
            self._poster = threading.get_ident()
        try:
            lib.lg_eventfd_post(fd, look_first)
        finally:
            with self._post_lock:
                self._poster = 0

    def unblock(self) -> None:
        """Any thread: end a post that is stuck on a launcher's full eventfd (its increment is dropped)."""
        with self._post_lock:        # held, so the poster cannot leave (or exit) under the signal
            if self._poster:
                signal.pthread_kill(self._poster, _UNBLOCK)

    def __len__(self) -> int:
        return len(self._entries)

    def stop(self) -> None:
        """No more posts; one still in progress is ended first.  Any thread, idempotent."""
        with self._post_lock:
            self._closed = True
        while self._poster:
            self.unblock()
            threading.Event().wait(_UNBLOCK_RETRY_S)

    def close(self) -> None:
        """Drop every reference (release time, once no Guest can claim any more)."""
        self.stop()
        with self._lock:
            entries, self._entries = self._entries, ()
        for _, fd in entries:
            os.close(fd)
