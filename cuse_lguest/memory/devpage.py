"""The lguest device page in mirror mode: one page written by both sides, merged byte by byte.

The device page (spec §2.6) is the one place where the launcher and the
Guest write into the same page.  The launcher owns the structure of each
record (type, queue configs, offered features) and its config space; the
Guest writes the status byte, the accepted-features bitmap and, rarely,
config bytes; the launcher zeroes the accepted bitmap again when it resets
a device.  Copying the whole page in either direction would undo the other
side's latest writes, so we keep a *twin*: the page as both sides last
agreed on it.  A byte that differs between the launcher's page and the twin
was written by the launcher; one that differs between our copy and the twin
was written by the Guest.  Pulling takes the launcher's changed bytes,
pushing sends only the Guest's changed bytes in the fields the Guest may
write.  If both sides changed one byte (a protocol conflict) the launcher's
value wins when we pull, which is always before we push.

The record structure is read from the twin, i.e. from what the launcher
wrote, never from bytes the Guest may have scribbled on.

One feature bit is hidden from the Guest: VIRTIO_RING_F_EVENT_IDX.  With it
each side tells the other, in ring fields, when to bother sending the next
kick or interrupt, and reads the other's hint without any sync point in
between; a mirror cannot keep those hints fresh, so it offers the Guest
only the plain ring protocol.
"""
from __future__ import annotations

import ctypes
import logging

from cuse_lguest import abi
from cuse_lguest.memory.remote import LauncherMemory, Piece
from cuse_lguest.virtio import DeviceRecord, VringError, parse_device_page

log = logging.getLogger("cuse_lguest.memory")

VIRTIO_RING_F_EVENT_IDX = 29      # the ring feature a mirror cannot honour (see module docstring)
_CHUNK = 64                       # compare granularity: whole chunks first, bytes only where they differ


class DevicePageTwin:
    """The device page at `gpa` of our local copy `local`, its twin, and the launcher's page."""

    def __init__(self, gpa: int, local: memoryview, local_address: int, remote: LauncherMemory) -> None:
        self.gpa = gpa
        self.local = local
        self.address = local_address + gpa
        self.remote = remote
        self.twin = bytearray(local[gpa:gpa + abi.PAGE_SIZE])
        self._pulled = bytearray(abi.PAGE_SIZE)
        self._pulled_c = (ctypes.c_char * abi.PAGE_SIZE).from_buffer(self._pulled)
        self.records: list[DeviceRecord] = []
        self._reparse()

    # ---- reading the structure -------------------------------------------
    def record_at(self, gpa: int) -> DeviceRecord | None:
        """The record whose first byte is at `gpa` (a status-change NOTIFY names exactly that)."""
        for rec in self.records:
            if self.gpa + rec.offset == gpa:
                return rec
        return None

    def status(self, rec: DeviceRecord) -> int:
        """The status byte as the Guest last wrote it."""
        return self.local[self.gpa + rec.status_offset]

    # ---- pulling -----------------------------------------------------------
    @property
    def pull_piece(self) -> Piece:
        """Where a pull of the launcher's page lands; merge_pulled() then takes its changes."""
        return self.gpa, ctypes.addressof(self._pulled_c), abi.PAGE_SIZE

    def pull(self) -> bool:
        self.remote.pull([self.pull_piece])
        return self.merge_pulled()

    def merge_pulled(self) -> bool:
        """Take every byte the launcher changed since the twin; True if there was one."""
        pulled, twin = self._pulled, self.twin
        if pulled == twin:
            return False
        local, base = self.local, self.gpa
        for lo in range(0, abi.PAGE_SIZE, _CHUNK):
            hi = lo + _CHUNK
            if pulled[lo:hi] == twin[lo:hi]:
                continue
            for i in range(lo, hi):
                if pulled[i] != twin[i]:
                    twin[i] = local[base + i] = pulled[i]
        self._reparse()
        return True

    # ---- pushing -------------------------------------------------------------
    def push(self) -> None:
        """Send the Guest's writes to the launcher, after taking the launcher's own.

        Most NOTIFYs are kicks, and the Guest rarely writes its fields of the
        page: when none differs from the twin there is nothing to send, and
        the launcher's own changes can wait for the next pull (run entry or
        LHREQ_IRQ), which takes them as always.
        """
        if not self._guest_wrote():
            return
        self.pull()
        pieces = [piece for lo, hi in self._guest_fields() for piece in self._changed_runs(lo, hi)]
        if pieces:
            self.remote.push(pieces)
            for gpa, _, n in pieces:
                off = gpa - self.gpa
                self.twin[off:off + n] = self.local[gpa:gpa + n]

    def _guest_wrote(self) -> bool:
        """Whether any field the Guest may write differs between our copy and the twin."""
        local, twin, base = self.local, self.twin, self.gpa
        return any(local[base + lo:base + hi] != twin[lo:hi] for lo, hi in self._guest_fields())

    def _guest_fields(self):
        """(start, end) page offsets of every field the Guest may write."""
        for rec in self.records:
            yield rec.status_offset, rec.status_offset + 1
            yield rec.accepted_offset, rec.accepted_offset + len(rec.accepted)
            yield rec.config_offset, rec.config_offset + len(rec.config)

    def _changed_runs(self, lo: int, hi: int):
        """Runs of bytes in [lo, hi) where our copy differs from the twin, as pieces."""
        local, twin, base = self.local, self.twin, self.gpa
        i = lo
        while i < hi:
            if local[base + i] == twin[i]:
                i += 1
                continue
            start = i
            while i < hi and local[base + i] != twin[i]:
                i += 1
            yield base + start, self.address + start, i - start

    # ---- structure ----------------------------------------------------------------
    def _reparse(self) -> None:
        try:
            self.records = parse_device_page(bytes(self.twin))
        except VringError as e:
            log.warning("mirror: the launcher's device page is malformed (%s); ignoring its devices", e)
            self.records = []
        self._hide_event_idx()

    def _hide_event_idx(self) -> None:
        byte, mask = divmod(VIRTIO_RING_F_EVENT_IDX, 8)
        for rec in self.records:
            if byte < len(rec.features):
                at = rec.features_offset + byte
                self.local[self.gpa + at] = self.twin[at] & ~(1 << mask)


def device_page_gpa(view: memoryview, limit: int) -> int | None:
    """Where the launcher put the device page: the first page above RAM (spec §2.6).

    The Guest finds it as its max_pfn, from the zero page's single e820 entry;
    so do we.  None when the zero page describes no usable RAM below `limit`.
    """
    if view[abi.BP_E820_ENTRIES] < 1:
        return None
    addr, size, _ = abi.E820_ENTRY.unpack_from(view, abi.BP_E820_MAP)
    if addr != 0 or size <= 0 or size % abi.PAGE_SIZE or size + abi.PAGE_SIZE > limit:
        return None
    return size
