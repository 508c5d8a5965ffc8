"""One virtqueue in mirror mode: which of its bytes to copy, in which direction, and when.

A legacy vring splits cleanly by owner (spec §2.6): the Guest writes the
descriptor table and the avail ring, the launcher's helper writes the used
ring; the buffers belong to whoever the descriptor says may write them.  So
a mirror needs two cursors per ring and nothing else:

* `pushed_avail`: how far the launcher's copy of the avail ring goes.  When
  the Guest has made more chains available, a push sends their
  device-readable buffers and indirect tables, then the descriptor table,
  then the avail entries, and the avail index last of all, so a helper that
  is awake and polling never sees an index before what it names.
* `seen_used`: how far our copy of the used ring goes.  When the helper has
  used more chains, a pull brings their device-writable buffers and the used
  elements, and only then does our used index move, so the Guest never sees
  an element before its data.

Two flags are hints that one side reads without any sync point after the
other wrote them: VRING_USED_F_NO_NOTIFY ("don't kick me") and
VRING_AVAIL_F_NO_INTERRUPT ("don't interrupt me").  Trusting a stale one
loses a wake-up forever (the Guest skips the kick the sleeping helper needed,
or the helper skips the interrupt the halted Guest needed).  Both are only
permissions to skip work, so the mirror shows each side the flag cleared:
the Guest always kicks and the launcher always interrupts.  Correct, at the
price of some kicks and interrupts that shared memory would have saved.

The chain walking is virtio.Vring's, run over our copy, where the Guest's
descriptors are authoritative.
"""
from __future__ import annotations

import ctypes
import logging
import struct

from cuse_lguest import abi
from cuse_lguest.memory.remote import Piece
from cuse_lguest.virtio import Chain, UsedElem, Vring, VringError

log = logging.getLogger("cuse_lguest.memory")

_HEADER = struct.Struct("<HH")      # flags, idx: the first four bytes of the avail and of the used ring


class RingMirror:
    """Cursors and copy lists for the vring at `gpa` (`num` entries) of our copy `local`."""

    def __init__(self, local: memoryview, local_address: int, gpa: int, num: int) -> None:
        self.ring = Vring(local, gpa, num)          # raises for an impossible size or placement
        self.address = local_address
        self.live = False                          # the launcher has started this ring's device
        self.reset_pending = False                 # the launcher is zeroing it before its next read()
        self.pushed_avail = 0
        self.seen_used = 0
        self.fresh = False                         # just started: push the whole ring once
        self._avail_header = (ctypes.c_char * _HEADER.size)()
        self._used_header = (ctypes.c_char * _HEADER.size)()

    @property
    def gpa(self) -> int:
        return self.ring.gpa

    def _piece(self, gpa: int, length: int) -> Piece:
        return gpa, self.address + gpa, length

    # ---- lifecycle (driven by the status NOTIFYs the launcher acts on) ---------
    def start(self) -> None:
        """The launcher starts the device: it will read every chain from avail index 0."""
        if not self.live:
            self.live = True
            self.pushed_avail = 0
            self.seen_used = self.ring.used_idx
            self.fresh = True

    def reset(self) -> None:
        """The launcher stops the device and zeroes the ring before it reads again."""
        self.live = False
        self.reset_pending = True

    def reset_piece(self) -> Piece:
        """The whole ring: after a reset the launcher's (zeroed) copy replaces ours."""
        gpa, size = self.ring.gpa, abi.vring_size(self.ring.num)
        return self._piece(gpa, size)

    def after_reset(self) -> None:
        self.reset_pending = False
        self.pushed_avail = self.ring.avail_idx
        self.seen_used = self.ring.used_idx

    # ---- push: what the helper is about to read -------------------------------
    def push_pieces(self) -> list[Piece]:
        """Pieces to send, in publishing order; empty if the Guest made nothing new available."""
        ring = self.ring
        idx = ring.avail_idx
        if idx == self.pushed_avail and not self.fresh:
            return []
        self.fresh = False
        pieces = [self._piece(gpa, n) for chain in self._new_chains(idx) for gpa, n in _readable(chain)]
        pieces.append(self._piece(*ring.desc_range))
        avail_gpa, avail_len = ring.avail_range
        pieces.append(self._piece(avail_gpa + _HEADER.size, avail_len - _HEADER.size))
        _HEADER.pack_into(self._avail_header, 0, ring.avail_flags & ~abi.VRING_AVAIL_F_NO_INTERRUPT, idx)
        pieces.append((avail_gpa, ctypes.addressof(self._avail_header), _HEADER.size))
        self.pushed_avail = idx
        return pieces

    def _new_chains(self, idx: int) -> list[Chain]:
        ring = self.ring
        count = (idx - self.pushed_avail) & 0xFFFF
        if count > ring.num:
            log.warning("mirror: ring %#x: avail index jumped by %d; pushing the ring without buffers",
                        ring.gpa, count)
            return []
        chains = []
        for i in range(count):
            head = ring.avail_entry(self.pushed_avail + i)
            try:
                chains.append(ring.chain(head))
            except VringError as e:       # the launcher will find the same fault in what we push
                log.warning("mirror: ring %#x: %s", ring.gpa, e)
        return chains

    # ---- pull: what the helper wrote ---------------------------------------------
    def used_header_piece(self) -> Piece:
        """Where a pull of the launcher's used flags and index lands."""
        return self.ring.used_gpa, ctypes.addressof(self._used_header), _HEADER.size

    def used_ahead(self) -> int:
        """How many elements the pulled used header is ahead of our copy (0 if none, or if nonsense)."""
        _, idx = _HEADER.unpack(self._used_header)
        count = (idx - self.seen_used) & 0xFFFF
        if count > self.ring.num:
            log.warning("mirror: ring %#x: used index jumped by %d; ignored", self.ring.gpa, count)
            return 0
        return count

    def used_elem_pieces(self, count: int) -> list[Piece]:
        """The `count` new used elements, straight into our copy (two pieces if they wrap)."""
        ring = self.ring
        first = self.seen_used % ring.num
        elems = ring.used_gpa + 4
        size = abi.VRING_USED_ELEM.size
        head = min(count, ring.num - first)
        pieces = [self._piece(elems + first * size, head * size)]
        if count > head:
            pieces.append(self._piece(elems, (count - head) * size))
        return pieces

    def writable_pieces(self, count: int) -> list[Piece]:
        """Device-writable buffers of the new used elements (already in our copy), whole."""
        pieces = []
        for i in range(count):
            elem: UsedElem = self.ring.used_entry(self.seen_used + i)
            try:
                chain = self.ring.chain(elem.id)
            except VringError as e:
                log.warning("mirror: ring %#x: used element names a bad chain: %s", self.ring.gpa, e)
                continue
            pieces += [self._piece(b.gpa, b.len) for b in chain.writable if b.len]
        return pieces

    def publish_used(self, count: int) -> None:
        """Move our used index (flags shown with NO_NOTIFY cleared); the Guest may now see the elements."""
        flags, idx = _HEADER.unpack(self._used_header)
        self.ring.used_flags = flags & ~abi.VRING_USED_F_NO_NOTIFY
        self.ring.used_idx = idx
        self.seen_used = idx


def _readable(chain: Chain):
    """(gpa, length) of what the device reads: indirect tables, then the readable buffers."""
    yield from chain.tables
    for b in chain.readable:
        if b.len:
            yield b.gpa, b.len
