"""Mirror mode: our own copy of a launcher's private guest RAM, synchronised at the protocol's sync points.

The historical launcher maps guest RAM MAP_PRIVATE from /dev/zero and maps
the kernel privately on top (spec §2.2), so no other process can map those
pages.  Unicorn therefore runs the Guest on a local copy, and we copy bytes
between the two through the handle on the launcher's address space taken at
INITIALIZE (remote.py, handles.py) exactly where the lguest and virtio
protocols promise an ordering.  Between those points each
side works on its own copy, and that is fine because neither looks at what
the other is writing until the protocol says so:

* INITIALIZE: the launcher has loaded the kernel, the zero page, the device
  page and zeroed rings; we pull the whole range once.
* at_run_entry (every read() that runs the Guest): the launcher has just
  handled a NOTIFY.  It may have answered a status change: started a device
  (nothing to copy), or reset one, which zeroes its accepted features (device
  page merge) and its rings (pulled whole, the launcher's copy wins).  Its
  helpers may also have used buffers: pulled as below.
* before_notify (a NOTIFY about to reach an eventfd or the launcher): push
  what the launcher is about to read: new chains of every running ring
  (rings.py), the Guest's fields of the device page (devpage.py), and, for
  an early-console NOTIFY, the NUL-terminated string at that address.
* on_irq (the vCPU takes an LHREQ_IRQ): a helper published used buffers and
  interrupts; pull the used rings, the buffers, and the device page.

Nothing happens at Guest exits.  A launcher's helper interrupts after every
batch of used buffers unless the Guest's avail ring says not to, and the
mirror always shows the launcher that flag cleared (rings.py): so every used
buffer reaches our copy at the LHREQ_IRQ that follows it, even for a Guest
that polls its used ring with interrupts off (the IRQ's sync point runs when
the line is raised, not when the Guest takes it).  Looking at the launcher's
used rings at exits as well only showed a batch a little earlier, and it was
costly: a Linux Guest exits at every system call, so even throttled to once a
millisecond the looks and their timing took about 50 ms of a 1.5 s cold
md5sum of /dev/vda, and a memory that works at exits keeps the vCPU's native
exit path off (core/vcpu.py), which sent every system call through Python.

The launcher's device page is found the way the Guest finds it: right above
RAM, whose size is the zero page's single e820 entry (spec §2.4, §2.6),
read once at INITIALIZE before the Guest can overwrite the zero page.  If
there is none, only early-console strings are pushed.

Bytes pulled into Guest RAM may be code the Guest already ran (a block read
into a page it will execute), so each pull of buffers drops Unicorn's
translations of exactly those buffers through GuestMemory.code_changed.

When the launcher's memory is gone (it exited, or unmapped its RAM) every
sync point raises GuestFault("launcher memory gone: ..."): the Guest dies
with that reason and the service carries on.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import mmap
from dataclasses import asdict, dataclass

from cuse_lguest import abi
from cuse_lguest.core.contract import GuestSetupError
from cuse_lguest.memory.devpage import DevicePageTwin, device_page_gpa
from cuse_lguest.memory.errors import GuestFault
from cuse_lguest.memory.guest_memory import GuestMemory
from cuse_lguest.memory.handles import MemoryHandles, setup_error
from cuse_lguest.memory.remote import LauncherMemory, Piece
from cuse_lguest.memory.rings import RingMirror
from cuse_lguest.virtio import VringError

log = logging.getLogger("cuse_lguest.memory")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.memchr.restype = ctypes.c_void_p
_libc.memchr.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

# The launcher prints an early-console NOTIFY up to the NUL.  Guests send at
# most 16 characters; a Guest that names an endless string gets this much.
EARLY_CONSOLE_MAX = 64 * 1024


@dataclass
class SyncCounts:
    """How often each sync point ran, and how often a pull dropped translations."""
    run_entries: int = 0
    notifies: int = 0
    irqs: int = 0
    code_drops: int = 0


class MirrorGuestMemory(GuestMemory):
    """A local copy of the launcher's [base, base + pfnlimit*4096), kept coherent at the sync points."""

    def __init__(self, handles: MemoryHandles) -> None:
        """Pull the whole range once; the handles are ours from here (closed at close() or on failure)."""
        pid, size = handles.pid, handles.limit
        try:
            try:
                self._local = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
            except OSError as e:
                raise setup_error(e, f"cannot allocate a {size >> 20} MiB mirror of guest memory") from None
            address = ctypes.addressof(ctypes.c_char.from_buffer(self._local))
            self.remote = LauncherMemory(handles.mem_fd, handles.base, size, pid)
            try:
                self.remote.pull([(0, address, size)])
            except GuestFault as fault:
                self._local.close()
                log.error("guest memory of pid %d cannot be mirrored: %s", pid, fault.reason)
                raise GuestSetupError(errno.EFAULT, f"guest memory cannot be read: {fault.reason}") from None
        except BaseException:
            handles.close()
            raise
        self._handles = handles
        super().__init__(address, handles.pfnlimit)
        self.syncs = SyncCounts()
        self.devpage = self._find_device_page()
        self.rings: dict[tuple[int, int], RingMirror] = {}
        self._rescan()
        log.info("guest memory of pid %d mirrored: %d pages, device page %s", pid, handles.pfnlimit,
                 f"{self.devpage.gpa:#x}" if self.devpage else "none")

    def counters(self) -> dict[str, int]:
        """Bytes and system calls in each direction, and sync point counts (for benchmarks)."""
        return {**asdict(self.remote.stats), **asdict(self.syncs)}

    # ---- layout ----------------------------------------------------------------
    def _find_device_page(self) -> DevicePageTwin | None:
        gpa = device_page_gpa(self.view, self.limit)
        return None if gpa is None else DevicePageTwin(gpa, self.view, self.host_address, self.remote)

    def _rescan(self) -> None:
        """Track every queue the device page describes, keeping the state of those that did not move."""
        if self.devpage is None:
            return
        rings = {}
        for rec in self.devpage.records:
            for i, vq in enumerate(rec.vqs):
                old = self.rings.get((rec.offset, i))
                if old is not None and old.gpa == vq.gpa and old.ring.num == vq.num:
                    rings[rec.offset, i] = old
                elif vq.pfn:
                    try:
                        rings[rec.offset, i] = RingMirror(self.view, self.host_address, vq.gpa, vq.num)
                    except (ValueError, VringError) as e:
                        log.warning("mirror: %s queue %d: %s; not mirrored", rec.type, i, e)
        self.rings = rings

    def _live(self) -> list[RingMirror]:
        return [r for r in self.rings.values() if r.live]

    # ---- sync points ---------------------------------------------------------------
    def at_run_entry(self) -> None:
        self.syncs.run_entries += 1
        if self.devpage is None:
            return
        resets = [r for r in self.rings.values() if r.reset_pending]
        if resets:
            self.remote.pull([r.reset_piece() for r in resets])
            for r in resets:
                r.after_reset()
        self._pull()

    def before_notify(self, value: int) -> None:
        self.syncs.notifies += 1
        if self.devpage is not None:
            rec = self.devpage.record_at(value)
            if rec is not None:
                self._status_change(rec)
            pieces = [p for r in self._live() for p in r.push_pieces()]
            if pieces:
                self.remote.push(pieces)
            self.devpage.push()
            if rec is not None or any(r.gpa == value for r in self.rings.values()):
                return
        if value < self.limit:
            self._push_string(value)

    def on_irq(self) -> None:
        self.syncs.irqs += 1
        if self.devpage is not None:
            self._pull()

    # ---- the work ----------------------------------------------------------------------
    def _status_change(self, rec) -> None:
        """Mirror the launcher's reaction to a status NOTIFY (spec §2.8): 0 or FAILED resets, else starts."""
        status = self.devpage.status(rec)
        resetting = status == 0 or status & abi.VIRTIO_CONFIG_S_FAILED
        for i in range(len(rec.vqs)):
            ring = self.rings.get((rec.offset, i))
            if ring is None:
                continue
            if resetting:
                ring.reset()
            else:
                ring.start()

    def _pull(self) -> None:
        """Used rings (elements and buffers) of running queues, and the device page."""
        live = self._live()
        self.remote.pull([r.used_header_piece() for r in live] + [self.devpage.pull_piece])
        ahead = [(r, n) for r in live if (n := r.used_ahead())]
        if ahead:
            self.remote.pull([p for r, n in ahead for p in r.used_elem_pieces(n)])
            buffers = [p for r, n in ahead for p in r.writable_pieces(n)]
            if buffers:
                self.remote.pull(buffers)
                self._drop_code(buffers)
            for r, n in ahead:
                r.publish_used(n)
        if self.devpage.merge_pulled():
            self._rescan()

    def _drop_code(self, pieces: list[Piece]) -> None:
        """One invalidation of the pulled buffers' pages, never of the span between them (see Machine.drop_code)."""
        self.syncs.code_drops += 1
        self.code_changed([(gpa, n) for gpa, _, n in pieces])

    def _push_string(self, gpa: int) -> None:
        room = min(self.limit - gpa, EARLY_CONSOLE_MAX)
        nul = _libc.memchr(self.host_address + gpa, 0, room)
        length = nul - (self.host_address + gpa) + 1 if nul else room
        self.remote.push([(gpa, self.host_address + gpa, length)])

    # ---- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        if not self._local.closed:
            self._release_view()
            self._local.close()
            self._handles.close()
