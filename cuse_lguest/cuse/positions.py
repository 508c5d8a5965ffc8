"""Through FUSE, which offset names vCPU 0?  The file position the kernel keeps.

A character device never moves a file's position, so a launcher's write()
and read() always name vCPU 0.  A FUSE file is a regular file: the kernel
sends each read() and write() at the file's current position and moves that
position on by the count we answer.  The seed's INITIALIZE answers three
words (12 or 24 bytes), so the launcher's next plain write() (LHREQ_EVENTFD,
LHREQ_IRQ) would arrive at offset 12 or 24 and be refused as vCPU 12 or 24.
pread()/pwrite() carry the caller's own offset and move nothing.

The server cannot see which call the caller made, so it keeps, per open
file, the position the kernel holds: 0 at open, moved on by every count it
answers to a request that arrived *at* that position.  An offset equal to
the tracked position is taken for a plain read()/write() and handed to the
device as 0; any other offset is an explicit one and goes through as is, so
pwrite(fd, buf, n, 1) still reaches the device as vCPU 1 (EINVAL).

What remains ambiguous, and is documented (docs/architecture.md): a pread or
pwrite whose offset happens to equal the tracked position is taken for a
plain call (offset 0, and the position moves on as if it were one), and an
lseek() the server never hears of leaves the tracked position behind.  The
kernel serializes plain read()/write() on one open file (f_pos_lock), so the
updates arrive in order.
"""
from __future__ import annotations

import threading


class FilePositions:
    """The kernel's file position of each open file, as our answers moved it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pos: dict[int, int] = {}

    def opened(self, fh: int) -> None:
        with self._lock:
            self._pos[fh] = 0

    def released(self, fh: int) -> None:
        with self._lock:
            self._pos.pop(fh, None)

    def position(self, fh: int) -> int:
        with self._lock:
            return self._pos.get(fh, 0)

    def incoming(self, fh: int, offset: int) -> tuple[int, bool]:
        """(the offset the device sees, whether this is a plain read()/write())."""
        with self._lock:
            plain = self._pos.get(fh) == offset
        return (0 if plain else offset), plain

    def advance(self, fh: int, offset: int, count: int) -> int | None:
        """A plain call that arrived at `offset` was answered `count` bytes: the new position.

        None if the file is gone or the position is no longer `offset`.
        """
        with self._lock:
            if self._pos.get(fh) != offset or count <= 0:
                return None
            self._pos[fh] = offset + count
            return offset + count
