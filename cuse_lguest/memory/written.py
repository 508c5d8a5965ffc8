"""Which Guest pages the launcher filled through its virtqueues (shared mode).

In shared mode the launcher's device helpers write straight into Guest RAM:
a block read lands in the buffer the Guest posted, and Unicorn never sees
that store.  If such a page once held code the Guest ran (Linux reuses page
cache pages all the time), Unicorn would go on running its old translation.
The launcher always follows its writes with LHREQ_IRQ, so at that sync point
we walk every used ring from where we last looked, collect the
device-writable buffers of the newly used chains, and report their span so
the CPU can drop translations there.  Mirror mode learns the same ranges as a
side effect of pulling them; this is the shared-mode equivalent, reading the
rings in place.  Each buffer is reported on its own: the span between the
lowest and the highest would cover the Guest kernel's own code too.

In shared mode the device page is Guest RAM, so the Guest can write garbage
there.  A page we cannot parse is that Guest's fault and kills it (GuestFault
at the LHREQ_IRQ sync point), like any other bad structure it hands the host.
"""
from __future__ import annotations

import logging

from cuse_lguest import abi
from cuse_lguest.memory.devpage import device_page_gpa
from cuse_lguest.memory.errors import GuestFault
from cuse_lguest.virtio import Vring, VringError, parse_device_page

log = logging.getLogger("cuse_lguest.memory")


class DeviceWrites:
    """Follows the used rings named on the device page; reports what the launcher wrote."""

    def __init__(self, view: memoryview, limit: int) -> None:
        self._view = view
        self._devpage = device_page_gpa(view, limit)
        self._rings: dict[tuple[int, int], tuple[Vring, int]] = {}   # (gpa, num) -> (ring, used cursor)

    def since_last(self) -> list[tuple[int, int]]:
        """(gpa, length) of every device-writable buffer used since the last call."""
        if self._devpage is None:
            return []
        page = bytes(self._view[self._devpage:self._devpage + abi.PAGE_SIZE])
        try:
            records = parse_device_page(page)
        except VringError as e:
            raise GuestFault(f"malformed device page: {e}") from None
        return [w for rec in records for vq in rec.vqs if vq.pfn
                for w in self._new_writes(vq.gpa, vq.num)]

    def _new_writes(self, gpa: int, num: int) -> list[tuple[int, int]]:
        key = (gpa, num)
        try:
            ring, seen = self._rings.get(key) or (Vring(self._view, gpa, num), 0)
            used = ring.used_since(seen)
        except (ValueError, VringError):
            # A ring the launcher just reset (its index went back to 0) or a
            # placement that cannot be a ring: start again from where it is now.
            self._rings.pop(key, None)
            return []
        writes = []
        for elem in used:
            try:
                writes += [(b.gpa, b.len) for b in ring.chain(elem.id).writable]
            except VringError as e:
                log.debug("used element %d of the ring at %#x: %s", elem.id, gpa, e)
        self._rings[key] = (ring, (seen + len(used)) & 0xFFFF)
        return writes
