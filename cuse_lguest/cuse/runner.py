"""Reads in flight, and the per-open-file thread that runs them (the vCPU thread).

A read of /dev/lguest runs the guest until it has something to say, which can
take seconds.  Holding a libfuse worker for that long would starve the
writes (LHREQ_IRQ, LHREQ_EVENTFD) the launcher's helpers send meanwhile, so
the worker hands the read to its open file's runner thread and returns.  The
runner calls the device (blocking) and answers the request itself; libfuse
replies may come from any thread.

One runner per open file keeps every guest run on the same thread, which is
what the core's single-owner Unicorn instance wants.  A second read that
arrives while the runner is busy cannot be the owner's (that thread is
blocked in the first read), so the device answers it at once (EPERM); it
gets a short-lived thread of its own rather than waiting behind the guest.
"""
from __future__ import annotations

import errno
import logging
import queue
import threading
from typing import Callable

from cuse_lguest.cuse.session import Request

log = logging.getLogger("cuse_lguest.cuse")


class InFlight:
    """One read from its hand-off until its answer.

    `offset` is what the device sees; `at` is the file position a plain
    read() arrived at through FUSE (None otherwise), which the answer moves
    on (see positions.py).  `cancelled` means "answer EINTR": set by a fatal
    signal, an owner that exited, a release or shutdown.  `started` means the
    device has been asked to run the guest, so a cancel must also interrupt
    the device.
    """

    __slots__ = ("req", "tid", "fh", "offset", "size", "at", "started", "cancelled", "done")

    def __init__(self, req: Request, tid: int, fh: int, offset: int, size: int,
                 at: int | None = None) -> None:
        self.req = req
        self.tid = tid
        self.fh = fh
        self.offset = offset
        self.size = size
        self.at = at
        self.started = False
        self.cancelled = False
        self.done = False


class FileRunner:
    """The thread that runs the guest of one open file."""

    def __init__(self, fh: int, serve: Callable[[InFlight], None]) -> None:
        self.fh = fh
        self._serve = serve
        self._queue: queue.SimpleQueue[InFlight | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._outstanding = 0     # reads queued on or running in the runner
        self._thread = threading.Thread(target=self._run, name=f"vcpu-fh{fh}", daemon=True)
        self._thread.start()

    def submit(self, read: InFlight) -> None:
        """Queue `read` for the runner, or give it its own thread if the runner is taken."""
        with self._lock:
            mine = self._outstanding == 0
            if mine:
                self._outstanding += 1
        if mine:
            self._queue.put(read)
        else:
            threading.Thread(target=self._serve, args=(read,), name=f"read-fh{self.fh}",
                             daemon=True).start()

    def _run(self) -> None:
        while True:
            read = self._queue.get()
            if read is None:
                return
            try:
                self._serve(read)
            finally:
                with self._lock:
                    self._outstanding -= 1

    def stop(self, timeout: float | None = None) -> bool:
        """End the thread after its current read; True if it has ended."""
        self._queue.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()


def answer(read: InFlight, result: bytes | int) -> None:
    """Send the device's result for `read` (bytes, or -errno) to the caller."""
    if isinstance(result, int):
        read.req.reply_err(-result if result < 0 else errno.EIO)
    else:
        read.req.reply_buf(bytes(result[:read.size]))
    log.debug("read fh=%d tid=%d -> %s", read.fh, read.tid,
              result if isinstance(result, int) else f"{len(result)} bytes")
