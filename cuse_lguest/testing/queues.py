"""The device side of each virtqueue, one Python thread per queue (the C launcher's helpers).

A worker sleeps on its eventfd (registered with LHREQ_EVENTFD, so the host
signals it on every kick), takes chains off the avail ring, hands each to
its service, publishes the used element, and raises the queue's IRQ with
LHREQ_IRQ when it is about to sleep, unless the Guest asked for no
interrupts.  While awake it sets VRING_USED_F_NO_NOTIFY so the Guest need
not kick, and re-checks the ring after clearing it so no kick is lost.
"""
from __future__ import annotations

import os
import select
import struct
import threading
from typing import Callable, Iterable, Iterator

from cuse_lguest import abi
from cuse_lguest.virtio import Buffer, Chain, Vring


class Stopped(Exception):
    """The worker is being stopped (device reset or the run is over)."""


class QueueWorker(threading.Thread):
    """Services one vring until stopped.  `service(ring, chain)` returns (used length, interrupt now)."""

    def __init__(self, name: str, ring: Vring, irq: int, service: Callable[["QueueWorker", Chain], tuple[int, bool]],
                 send_irq: Callable[[int], None], on_error: Callable[[str], None]) -> None:
        super().__init__(name=name, daemon=True)
        self.ring = ring
        self.irq = irq
        self.service = service
        self.send_irq = send_irq
        self.on_error = on_error
        self.kick_fd = os.eventfd(0, os.EFD_CLOEXEC)
        self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.stopping = threading.Event()
        self.last_avail = 0
        self.pending_used = 0

    def stop(self) -> None:
        self.stopping.set()
        os.eventfd_write(self._stop_fd, 1)

    def close(self) -> None:
        """After join(): our eventfd copies go; the host keeps its own duplicate."""
        os.close(self.kick_fd)
        os.close(self._stop_fd)

    def sleep_until(self, fd: int) -> None:
        """Block until `fd` is readable; raise Stopped if the worker is stopped first."""
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._stop_fd, select.POLLIN)
        while True:
            ready = {f for f, _ in poller.poll()}
            if self._stop_fd in ready or self.stopping.is_set():
                raise Stopped
            if fd in ready:
                return

    def run(self) -> None:
        try:
            while True:
                head = self._next_head()
                length, now = self.service(self, self.ring.chain(head))
                self.ring.push_used(head, length)
                self.pending_used += 1
                if now:
                    self.trigger_irq()
        except Stopped:
            return
        except Exception as e:  # a helper dying takes the whole launcher down, as in C
            self.on_error(f"{self.name}: {e}")

    def _next_head(self) -> int:
        ring = self.ring
        while self.last_avail == ring.avail_idx:
            self.trigger_irq()
            ring.used_flags = ring.used_flags & ~abi.VRING_USED_F_NO_NOTIFY
            if self.last_avail != ring.avail_idx:
                ring.used_flags = ring.used_flags | abi.VRING_USED_F_NO_NOTIFY
                break
            self.sleep_until(self.kick_fd)
            os.eventfd_read(self.kick_fd)
            ring.used_flags = ring.used_flags | abi.VRING_USED_F_NO_NOTIFY
        head = ring.avail_entry(self.last_avail)
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        return head

    def trigger_irq(self) -> None:
        if not self.pending_used:
            return
        self.pending_used = 0
        if not self.ring.avail_flags & abi.VRING_AVAIL_F_NO_INTERRUPT:
            self.send_irq(self.irq)


# ---------------------------------------------------------------------------
# Services.

class ConsoleOutput:
    """Queue 1: the Guest's output, appended to the launcher's console."""

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self.sink = sink

    def __call__(self, worker: QueueWorker, chain: Chain) -> tuple[int, bool]:
        if chain.writable:
            raise ValueError("input buffers in console output queue")
        self.sink(worker.ring.read_buffers(chain.readable))
        return 0, False


class WaitFor:
    """A console-input item: hold further input until the console output contains `marker`."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker


class ConsoleInput:
    """Queue 0: bytes from the test's input items into the Guest's receive buffers.

    Items are bytes, or WaitFor(marker).  When the items run out the worker
    keeps the buffer and idles, like the C launcher when stdin closes.
    """

    def __init__(self, items: Iterable[bytes | WaitFor], wait_output: Callable[[bytes, threading.Event], None]) -> None:
        self.items: Iterator[bytes | WaitFor] = iter(items)
        self.wait_output = wait_output
        self.pending = b""

    def __call__(self, worker: QueueWorker, chain: Chain) -> tuple[int, bool]:
        if chain.readable:
            raise ValueError("output buffers in console input queue")
        while not self.pending:
            item = next(self.items, None)
            if item is None:
                worker.stopping.wait()
                raise Stopped
            if isinstance(item, WaitFor):
                self.wait_output(item.marker, worker.stopping)
                if worker.stopping.is_set():
                    raise Stopped
            else:
                self.pending = bytes(item)
        n = worker.ring.write_buffers(chain.writable, self.pending)
        self.pending = self.pending[n:]
        return n, True          # the next sleep is on input, not on the ring: interrupt now


class BlockService:
    """The block queue: header, data, status byte; I/O at explicit offsets in the backing file.

    The data moves between the file and guest RAM with one preadv or pwritev
    over the chain's own buffers, as the C launcher does: a 128 KiB readahead
    request is 32 buffers, and copying it through a bytes object (and then
    buffer by buffer) cost this thread about three times the system call.
    """

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def __call__(self, worker: QueueWorker, chain: Chain) -> tuple[int, bool]:
        ring = worker.ring
        readable, writable = chain.readable, chain.writable
        header_buffers, payload = _split(readable, abi.VIRTIO_BLK_OUTHDR.size)
        header = ring.read_buffers(header_buffers)
        if len(header) < abi.VIRTIO_BLK_OUTHDR.size or not writable or writable[-1].len == 0:
            raise ValueError(f"bad virtblk request {chain.head}")
        req, _, sector = abi.VIRTIO_BLK_OUTHDR.unpack(header)
        last = writable[-1]
        status_gpa = last.gpa + last.len - 1
        data_in = writable[:-1] + ([Buffer(last.gpa, last.len - 1, True)] if last.len > 1 else [])
        status, written = self._do(req, sector * abi.SECTOR_SIZE, payload, data_in, ring)
        ring.mem[status_gpa] = status
        return written + 1, False

    def _do(self, req: int, offset: int, payload: list[Buffer], data_in: list[Buffer],
            ring: Vring) -> tuple[int, int]:
        if req in (abi.VIRTIO_BLK_T_IN, abi.VIRTIO_BLK_T_OUT):
            buffers = payload if req == abi.VIRTIO_BLK_T_OUT else data_in
            length = sum(b.len for b in buffers)
            if offset + length > self.size:
                return abi.VIRTIO_BLK_S_IOERR, 0
            try:
                with ring.views(buffers) as views:
                    done = (os.pwritev if req == abi.VIRTIO_BLK_T_OUT else os.preadv)(self.fd, views, offset)
            except OSError:
                return abi.VIRTIO_BLK_S_IOERR, 0
            status = abi.VIRTIO_BLK_S_OK if done == length else abi.VIRTIO_BLK_S_IOERR
            return status, done if req == abi.VIRTIO_BLK_T_IN else 0
        if req == abi.VIRTIO_BLK_T_FLUSH:
            try:
                os.fdatasync(self.fd)
            except OSError:
                return abi.VIRTIO_BLK_S_IOERR, 0
            return abi.VIRTIO_BLK_S_OK, 0
        return abi.VIRTIO_BLK_S_UNSUPP, 0


def _split(buffers: list[Buffer], count: int) -> tuple[list[Buffer], list[Buffer]]:
    """(the first `count` bytes of `buffers`, the rest), wherever the Guest split them (the request header)."""
    head, rest = [], []
    for b in buffers:
        cut = min(count, b.len)
        count -= cut
        if cut:
            head.append(Buffer(b.gpa, cut, b.writable))
        if b.len > cut:
            rest.append(Buffer(b.gpa + cut, b.len - cut, b.writable))
    return head, rest


def rng_service(worker: QueueWorker, chain: Chain) -> tuple[int, bool]:
    """The entropy queue: fill every writable buffer from the OS."""
    if chain.readable:
        raise ValueError("output buffers in rng queue")
    total = sum(b.len for b in chain.writable)
    return worker.ring.write_buffers(chain.writable, os.urandom(total)), False


def irq_request(word: int, irq: int) -> bytes:
    fmt = "<II" if word == 4 else "<QQ"
    return struct.pack(fmt, abi.LHREQ_IRQ, irq)


def eventfd_request(word: int, addr: int, fd: int) -> bytes:
    fmt = "<III" if word == 4 else "<QQQ"
    return struct.pack(fmt, abi.LHREQ_EVENTFD, addr, fd)
