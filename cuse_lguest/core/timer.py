"""One timer service per process for every Guest's clock event.

LHCALL_SET_CLOCKEVENT asks for one interrupt `delta` nanoseconds from now.
A thread per Guest would be wasteful, so all armed deadlines sit in one heap
served by one thread.  The thread only runs while some Guest has a deadline
armed or is attached, and is joined when the last Guest detaches, so a
destroyed Guest leaves no thread behind.  Expiry calls the Guest's callback
(which sets IRQ 0 pending and kicks the vCPU) without holding the service's
lock, so a Guest may arm or cancel from anywhere.

A Guest's clock event is a timerfd instead (watch()): the vCPU arms it at
each SET_CLOCKEVENT, in C on the native exits' path, without this
service's lock or the GIL, and the thread waits for it in poll() beside
the heap's next deadline.  The thread owns a watched fd's last moments:
release() hands it over, and the thread closes it once no poll of its own
can still name it, so a number the process reuses is never read as a
Guest's timer.

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
import os
import select
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
        self._watched: dict[object, tuple[int, Callable[[], None]]] = {}   # owner -> timerfd, fire
        self._closing: list[int] = []     # released fds the thread closes after its poll
        self._wake: tuple[int, int] | None = None   # the thread's self-pipe, while it runs

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
                self._notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
            _wait_until_gone(thread.native_id)

    def watch(self, owner: object, fd: int, fire: Callable[[], None]) -> None:
        """Call fire() whenever the non-blocking timerfd `fd` expires, until release(owner).

        The caller arms and disarms `fd` itself (a one-shot, as a clock event is)."""
        with self._cond:
            self._watched[owner] = (fd, fire)
            self._start()
            self._notify()

    def release(self, owner: object) -> None:
        """Stop watching `owner`'s timerfd and close it (now, or after the thread's current poll)."""
        with self._cond:
            fd, _ = self._watched.pop(owner, (None, None))
            if fd is None:
                return
            if self._thread is None:
                os.close(fd)
            else:
                self._closing.append(fd)
                self._notify()

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
            self._start()
            self._notify()

    def _start(self) -> None:
        """Caller holds the lock: the thread, if it is not running."""
        if self._thread is None:
            self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._thread = threading.Thread(target=self._serve, args=(self._wake,), name="lguest-timer",
                                            daemon=True)
            self._thread.start()

    def _notify(self) -> None:
        """Caller holds the lock: make the thread look again (it may be in poll())."""
        if self._wake is not None:
            try:
                os.write(self._wake[1], b"x")
            except BlockingIOError:
                pass                              # the pipe is full: a wake-up is pending anyway

    def __len__(self) -> int:
        """Heap entries held, stale ones included (bounded by about twice the armed timers)."""
        with self._cond:
            return len(self._heap)

    def cancel(self, owner: object) -> None:
        with self._cond:
            self._armed.pop(owner, None)

    def _serve(self, wake: tuple[int, int]) -> None:
        me = threading.current_thread()
        poller = select.poll()
        poller.register(wake[0], select.POLLIN)
        polled: set[int] = set()
        while True:
            due = []
            with self._cond:
                if self._thread is not me:
                    break
                for fd in self._closing:          # no poll of ours can name them any more
                    if fd in polled:
                        poller.unregister(fd)
                        polled.discard(fd)
                    os.close(fd)
                self._closing.clear()
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, seq, owner = heapq.heappop(self._heap)
                    armed = self._armed.get(owner)
                    if armed is not None and armed[0] == seq:   # else cancelled or re-armed since
                        del self._armed[owner]
                        due.append((owner, armed[1]))
                timeout = None if due or not self._heap else self._heap[0][0] - now
                fds = {fd: fire for fd, fire in self._watched.values()}
            for owner, fire in due:               # never call into a Guest holding our lock
                self._fire(owner, fire)
            if due:
                continue
            for fd in polled - fds.keys():
                poller.unregister(fd)
            for fd in fds.keys() - polled:
                poller.register(fd, select.POLLIN)
            polled = set(fds)
            ready = poller.poll(None if timeout is None else max(0, int(timeout * 1000) + 1))
            for fd, _ in ready:
                if fd == wake[0]:
                    while True:
                        try:
                            if not os.read(fd, 4096):
                                break
                        except BlockingIOError:
                            break
                elif fd in fds:
                    try:
                        os.read(fd, 8)            # the expiry count: one-shot, so 1
                    except BlockingIOError:
                        continue                  # re-armed or disarmed since it expired
                    self._fire(fd, fds[fd])
        with self._cond:
            for fd in self._closing:
                os.close(fd)
            self._closing.clear()
            os.close(wake[0])
            os.close(wake[1])
            if self._wake == wake:
                self._wake = None

    @staticmethod
    def _fire(owner: object, fire: Callable[[], None]) -> None:
        try:
            fire()
        except Exception:
            log.exception("a timer callback of %r failed; the other timers go on", owner)


def _wait_until_gone(tid: int, limit: float = 1.0) -> None:
    """join() returns once the thread's Python side is done; its OS thread ends a moment later.

    Whoever detaches last is promised that no thread is left (a destroyed
    Guest leaves none behind), so wait, briefly and bounded, for the kernel
    to see it gone too."""
    deadline = time.monotonic() + limit
    while os.path.exists(f"/proc/self/task/{tid}") and time.monotonic() < deadline:
        time.sleep(0.0001)


timers = TimerService()
