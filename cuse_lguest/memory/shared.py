"""Shared mode: the launcher's own pages, mapped into the host and into Unicorn.

When the launcher's guest RAM is a MAP_SHARED mapping of a memfd, shm or
file it may write, INITIALIZE took that very object as a handle
(handles.py), and we map it here.  Nothing is ever copied, so there is never
a stale copy to run on: the launcher's device helpers, the host and the
emulated CPU all see one set of pages, exactly as with the real /dev/lguest.
"""
from __future__ import annotations

from cuse_lguest.memory import hostmap
from cuse_lguest.memory.guest_memory import GuestMemory
from cuse_lguest.memory.handles import MIRROR, MemoryHandles, setup_error
from cuse_lguest.memory.mirror import MirrorGuestMemory
from cuse_lguest.memory.written import DeviceWrites


class SharedGuestMemory(GuestMemory):
    """Guest RAM that *is* the launcher's RAM (zero copy, exactly coherent).

    Both sides always see the same bytes, so there is nothing to copy at the
    sync points.  The one thing shared pages cannot do is tell Unicorn that
    the launcher rewrote them: on_irq reports what its helpers filled (see
    written.py) so stale translations of those pages are dropped.
    """

    def __init__(self, handles: MemoryHandles) -> None:
        """Map every piece side by side; the handles are closed either way (the mappings keep the files)."""
        try:
            size = handles.limit
            # One contiguous host view: reserve the span, then put each piece's object over its part.
            try:
                addr = hostmap.reserve(size)
            except OSError as e:
                raise setup_error(e, "cannot reserve host address space for guest memory") from None
            try:
                for piece, fd in zip(handles.pieces, handles.fds()):
                    try:
                        hostmap.map_shared_at(addr + piece.gpa, piece.length, fd, piece.file_offset)
                    except OSError as e:
                        raise setup_error(e, f"cannot map guest memory at {piece.gpa:#x}") from None
            except BaseException:
                hostmap.unmap(addr, size)
                raise
        finally:
            handles.close()
        super().__init__(addr, handles.pfnlimit)
        self._mapped = size
        self._writes = DeviceWrites(self.view, self.limit)

    def on_irq(self) -> None:
        """The launcher filled buffers and said so: forget code translated from those pages."""
        writes = self._writes.since_last()
        if writes:
            self.code_changed(writes)

    def close(self) -> None:
        if self._mapped:
            self._release_view()
            hostmap.unmap(self.host_address, self._mapped)
            self._mapped = 0


def open_guest_memory(handles: MemoryHandles) -> GuestMemory:
    """The launcher's range as a GuestMemory, the way its handles say (handles.py).

    Takes ownership of the handles.  Raises GuestSetupError.
    """
    if handles.mode == MIRROR:
        return MirrorGuestMemory(handles)
    return SharedGuestMemory(handles)
