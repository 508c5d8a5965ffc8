"""Shared mode: the launcher's own pages, mapped into the host and into Unicorn.

When the launcher's guest RAM is a MAP_SHARED mapping of a memfd, shm or
file, we open the very same object through /proc/<pid>/map_files and map it
here.  Nothing is ever copied, so there is never a stale copy to run on: the
launcher's device helpers, the host and the emulated CPU all see one set of
pages, exactly as with the real /dev/lguest.
"""
from __future__ import annotations

import errno
import logging
import os

from cuse_lguest import abi
from cuse_lguest.core.contract import GuestSetupError
from cuse_lguest.memory import hostmap
from cuse_lguest.memory.guest_memory import GuestMemory
from cuse_lguest.memory.launcher_maps import covering, parse_maps
from cuse_lguest.memory.mirror import MirrorGuestMemory
from cuse_lguest.memory.mode import needs_mirror
from cuse_lguest.memory.written import DeviceWrites

log = logging.getLogger("cuse_lguest.memory")


def _refuse(pid: int, why: str) -> GuestSetupError:
    log.error("guest memory of pid %d cannot be shared: %s", pid, why)
    return GuestSetupError(errno.EFAULT, f"guest memory cannot be shared: {why}")


class SharedGuestMemory(GuestMemory):
    """Guest RAM that *is* the launcher's RAM (zero copy, exactly coherent).

    Both sides always see the same bytes, so there is nothing to copy at the
    sync points.  The one thing shared pages cannot do is tell Unicorn that
    the launcher rewrote them: on_irq reports what its helpers filled (see
    written.py) so stale translations of those pages are dropped.
    """

    def __init__(self, pid: int, base: int, pfnlimit: int) -> None:
        if pfnlimit <= 0 or pfnlimit > (1 << 20):
            raise _refuse(pid, f"pfnlimit {pfnlimit} is not a usable page count")
        if base % abi.PAGE_SIZE:
            raise _refuse(pid, f"base {base:#x} is not page aligned")
        size = pfnlimit * abi.PAGE_SIZE
        try:
            with open(f"/proc/{pid}/maps") as f:
                maps = parse_maps(f.read())
        except OSError as e:
            raise _refuse(pid, f"cannot read /proc/{pid}/maps: {e.strerror}") from None
        pieces, why = covering(maps, base, base + size)
        if why:
            raise _refuse(pid, f"range {base:#x}-{base + size:#x}: {why}")
        # One contiguous host view: reserve the span, then put each piece's object over its part.
        try:
            addr = hostmap.reserve(size)
        except OSError:
            raise GuestSetupError(errno.ENOMEM, "cannot reserve host address space for guest memory") from None
        try:
            for m in pieces:
                lo, hi = max(m.start, base), min(m.end, base + size)
                path = f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}"
                try:
                    fd = os.open(path, os.O_RDWR)
                except OSError as e:
                    raise _refuse(pid, f"cannot open {path} ({m.describe}): {e.strerror}") from None
                try:
                    hostmap.map_shared_at(addr + (lo - base), hi - lo, fd, m.offset + (lo - m.start))
                except OSError as e:
                    raise _refuse(pid, f"cannot map {m.describe}: {e.strerror}") from None
                finally:
                    os.close(fd)
        except BaseException:
            hostmap.unmap(addr, size)
            raise
        super().__init__(addr, pfnlimit)
        self._mapped = size
        self._writes = DeviceWrites(self.view, self.limit)

    def on_irq(self) -> None:
        """The launcher filled buffers and said so: forget code translated from those pages."""
        span = self._writes.span()
        if span is not None:
            self.code_changed(*span)

    def close(self) -> None:
        if self._mapped:
            self._release_view()
            hostmap.unmap(self.host_address, self._mapped)
            self._mapped = 0


def open_guest_memory(pid: int, base: int, pfnlimit: int) -> GuestMemory:
    """The launcher's range as a GuestMemory: shared if its pages can be, else mirrored (mode.py).

    Raises GuestSetupError if neither is possible.
    """
    if needs_mirror(pid, base, pfnlimit):
        return MirrorGuestMemory(pid, base, pfnlimit)
    return SharedGuestMemory(pid, base, pfnlimit)
