"""One timer service per process for every Guest's clock event.

LHCALL_SET_CLOCKEVENT asks for one interrupt `delta` nanoseconds from now.
A thread per Guest would be wasteful, so all armed deadlines sit in one heap
served by one thread.  The thread only runs while some Guest has a deadline
armed or is attached, and is joined when the last Guest detaches, so a
destroyed Guest leaves no thread behind.  Expiry calls the Guest's callback
(which sets IRQ 0 pending and kicks the vCPU) without holding the service's
lock, so a Guest may arm or cancel from anywhere.

Re-arming leaves the old heap entry behind (it is skipped when it comes up),
so a Guest that re-arms a far deadline in a loop would grow the heap without
bound; when stale entries outnumber live ones the heap is rebuilt from the
live deadlines.  A callback that raises is logged and the thread goes on:
one Guest's bug must not stop every Guest's clock.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable

log = logging.getLogger("cuse_lguest.core")

_SLACK = 64          # stale heap entries tolerated before a rebuild is considered


class TimerService:
    """A heap of (deadline, seq, owner) served by one lazily started thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, object]] = []
        self._armed: dict[object, tuple[int, Callable[[], None], float]] = {}   # owner -> seq, fire, deadline
        self._seq = itertools.count()
        self._users = 0
        self._thread: threading.Thread | None = None

    def attach(self) -> None:
        with self._cond:
            self._users += 1

    def detach(self, owner: object) -> None:
        """`owner` will arm no more timers; the last detach stops and joins the thread."""
        with self._cond:
            self._armed.pop(owner, None)
            self._users -= 1
            thread = self._thread if self._users == 0 else None
            if thread is not None:
                self._thread = None
                self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def arm(self, owner: object, delay_ns: int, fire: Callable[[], None]) -> None:
        """(Re-)arm `owner`'s one-shot timer; any earlier deadline of it is forgotten."""
        with self._cond:
            seq = next(self._seq)
            deadline = time.monotonic() + delay_ns / 1e9
            self._armed[owner] = (seq, fire, deadline)
            heapq.heappush(self._heap, (deadline, seq, owner))
            if len(self._heap) > 2 * len(self._armed) + _SLACK:
                self._heap = [(d, q, o) for o, (q, _, d) in self._armed.items()]
                heapq.heapify(self._heap)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="lguest-timer", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def __len__(self) -> int:
        """Heap entries held, stale ones included (bounded by about twice the armed timers)."""
        with self._cond:
            return len(self._heap)

    def cancel(self, owner: object) -> None:
        with self._cond:
            self._armed.pop(owner, None)

    def _serve(self) -> None:
        me = threading.current_thread()
        with self._cond:
            while self._thread is me:
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, seq, owner = self._heap[0]
                now = time.monotonic()
                if deadline > now:
                    self._cond.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
                armed = self._armed.get(owner)
                if armed is None or armed[0] != seq:
                    continue                      # cancelled or re-armed since
                del self._armed[owner]
                self._cond.release()          # never call into a Guest holding our lock
                try:
                    armed[1]()
                except Exception:
                    log.exception("a timer callback of %r failed; the other timers go on", owner)
                finally:
                    self._cond.acquire()


timers = TimerService()
