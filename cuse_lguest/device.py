"""The seed: what `/dev/lguest` does with each open file (3.x `lguest_user.c`).

An open file holds at most one Guest.  The launcher talks to it with three
calls and nothing else:

* write() carries a request: LHREQ_INITIALIZE creates the Guest, LHREQ_IRQ
  makes an interrupt pending, LHREQ_EVENTFD wires a NOTIFY value to an eventfd;
* read() runs the Guest until it has something to say: a NOTIFY value (one
  word), its death (ENOENT, or ERESTART for a reboot, then the reason), or an
  interruption;
* the last close() frees everything.

This layer knows nothing about FUSE and nothing about Unicorn.  It takes
(caller thread id, file handle, offset, bytes) and gives back bytes or a
negative errno, so every path of the seed can be tested directly.  The file
offset names the vCPU; a 3.x Guest has exactly one, number 0.  (Through the
kernel's CUSE the offset always arrives as 0; see docs/architecture.md.)

Requests are made of the launcher's words.  The historical launcher is a
32-bit program and sends 4-byte words; a 64-bit build sends 8-byte words.
The word size of an open file is fixed at INITIALIZE from the caller's ELF
class and the length it wrote, and every later request must have that shape.
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import struct
import threading
from dataclasses import dataclass
from typing import Callable, Protocol

from cuse_lguest import abi, procs, userns
from cuse_lguest.core.contract import GuestFactory, GuestParams, GuestSetupError, MemorySource, RunExit
from cuse_lguest.core.exitstats import StatsDirectory
from cuse_lguest.eventfds import EventfdTable
from cuse_lguest.limits import Accounts, Limits
from cuse_lguest.memory.handles import MIRROR, acquire

log = logging.getLogger("cuse_lguest.device")

_WORD_FORMAT = {4: "<I", 8: "<Q"}
_RELEASE_WAIT = 5.0  # seconds a release waits for an interrupted read to leave the Guest


class NativeIrqLine(Protocol):
    """A Guest's IRQ line as native code calls it: int inject(void *target, uint64_t irq)."""
    inject: int     # the function's address; 0 = done as Guest.irq() would, else refused
    target: int     # the address of the state it changes


@dataclass(frozen=True)
class IrqShortcut:
    """What a transport may do without calling write(): LHREQ_IRQ on one file's live Guest.

    A write of exactly two `word`-byte words, the first `request`, at offset
    0, is what write() would answer with 0 after `line.inject(line.target,
    irq)`, provided inject accepts it (it refuses an IRQ >= 32 and a dead
    Guest, and then write() must answer).  `line` is the Guest's native IRQ
    line (core/guest.py IrqLine), opaque here.  The transport must stop using
    it before it calls release() for the file.
    """
    word: int
    request: int
    line: NativeIrqLine


class _OpenFile:
    """Per-open-file state.  `guest` is attached once, by INITIALIZE, and never replaced."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)  # signalled when a read leaves the Guest
        self.reading = False
        self.guest = None
        self.word = 0             # 4 or 8 once INITIALIZE succeeded
        self.owner_tid = 0        # the only thread allowed to run the Guest
        self.eventfds = EventfdTable()
        self.released = False
        self.stats: tuple[int, str] | None = None   # the published exit stats block: (fd, path)
        self.initializing = False # an INITIALIZE is building this file's Guest (without the lock)
        self.uid = 0              # who opened it (charged one open file)
        self.guest_uid: int | None = None   # who is charged its Guest, once there is one
        self.mirror_bytes = 0     # what its Guest's mirror copy takes from the budget


class Device:
    """Every open file of one `/dev/lguest` node, keyed by file handle."""

    def __init__(self, guest_factory: GuestFactory | None = None, *,
                 caller_word_size: Callable[[int], int | None] = procs.word_size_of,
                 memory: MemorySource = acquire, stats: StatsDirectory | None = None,
                 limits: Limits = Limits()) -> None:
        """`memory` takes the launcher's memory handles at INITIALIZE (a double that never
        touches guest memory passes testing.nomemory.no_memory).  `stats`: where to publish
        each Guest's exit counters for `cuse-lguest stat` (None: nowhere).  `limits` caps
        what users hold."""
        if guest_factory is None:
            from cuse_lguest.core import create_guest
            guest_factory = create_guest
        self._factory = guest_factory
        self._memory = memory
        self._caller_word_size = caller_word_size
        self._stats = stats
        self._files: dict[int, _OpenFile] = {}
        self._fh = itertools.count(1)
        self._lock = threading.Lock()
        self.accounts = Accounts(limits)
        # The seed serialised every INITIALIZE with one global mutex, which
        # guarded its global state.  Ours has its own locks, and an INITIALIZE
        # may wait on its caller's memory for as long as the caller likes, so
        # INITIALIZEs of different files never wait for each other.

    # ------------------------------------------------------------------ open/release
    def open(self, uid: int = 0, pid: int | None = None) -> int:
        """A new open file with no Guest (the 4.x lesson: never inherit state), or -errno.

        `uid` is the opener (task `pid`, when known), charged one open file:
        EMFILE past its share, ENFILE past the service's (limits.py).  An
        opener inside a user namespace is charged to that namespace's owner
        (userns.py).
        """
        if pid:
            uid = userns.payer(pid, uid)
        refused = self.accounts.files.take(uid)
        if refused:
            log.warning("open by uid %d refused: %s", uid, errno.errorcode[refused])
            return -refused
        fh = next(self._fh)
        f = _OpenFile()
        f.uid = uid
        with self._lock:
            self._files[fh] = f
        return fh

    def release(self, fh: int) -> None:
        """The last close: free the Guest, its eventfds and everything it held.  Never fails."""
        with self._lock:
            f = self._files.pop(fh, None)
        if f is None:
            return
        with f.lock:
            f.released = True
            guest = f.guest
            if guest is not None:
                # Normally no read is in flight at the last close; at service
                # shutdown there may be one.  Stop it before freeing its Guest,
                # even if it is stuck bumping a launcher's full eventfd.
                guest.interrupt()
                f.eventfds.stop()
                if not f.idle.wait_for(lambda: not f.reading, timeout=_RELEASE_WAIT):
                    log.error("release: a read did not leave its Guest within %.0f s", _RELEASE_WAIT)
            f.guest = None
        if guest is not None:
            guest.destroy()
            self._uncharge(f)
        if f.stats is not None:
            StatsDirectory.withdraw(*f.stats)
        f.eventfds.close()
        self.accounts.files.give(f.uid)

    def _uncharge(self, f: _OpenFile) -> None:
        """Give back what a Guest was charged (once)."""
        if f.guest_uid is not None:
            self.accounts.guests.give(f.guest_uid)
            f.guest_uid = None
        if f.mirror_bytes:
            self.accounts.mirror.give(0, f.mirror_bytes)
            f.mirror_bytes = 0

    def irq_shortcut(self, fh: int) -> IrqShortcut | None:
        """The shortcut for `fh`'s LHREQ_IRQ writes, once it has a live Guest that offers one.

        A Guest offers one through an `irq_line` attribute (the core's does;
        a test double need not).
        """
        f = self._files.get(fh)
        guest = f.guest if f is not None else None
        line = getattr(guest, "irq_line", None)
        if line is None or guest.death is not None:
            return None
        return IrqShortcut(word=f.word, request=abi.LHREQ_IRQ, line=line)

    def interrupt(self, fh: int) -> None:
        """End a read in progress on `fh` with EINTR (a fatal signal, or shutdown).

        Only a read in flight is interrupted: a late interrupt must not make
        the launcher's *next* read fail, which it would treat as fatal.
        """
        f = self._files.get(fh)
        if f is None:
            return
        with f.lock:
            if f.reading and f.guest is not None:
                f.guest.interrupt()
                f.eventfds.unblock()

    def shutdown(self) -> None:
        """Release every open file: the service is going away."""
        for fh in list(self._files):
            self.release(fh)

    def __len__(self) -> int:
        return len(self._files)

    def guests_alive(self) -> int:
        """Open files whose Guest was created and has not died: the service's status line."""
        with self._lock:
            files = list(self._files.values())
        return sum(1 for f in files if f.guest is not None and f.guest.death is None)

    # ------------------------------------------------------------------ write
    def write(self, tid: int, fh: int, offset: int, data: bytes, *,
              caller: tuple[int, int] | None = None) -> int:
        """Serve one request.  Returns the count for the launcher (>= 0) or -errno.

        `caller` is the (uid, gid) the request carries, when the transport knows it.
        """
        f = self._files.get(fh)
        if f is None:
            return -errno.EBADF
        word = f.word or 4
        if len(data) < word:
            return -errno.EFAULT          # the request word itself is unreadable
        req = int.from_bytes(data[:word], "little")
        if req == abi.LHREQ_INITIALIZE:
            return self._initialize(tid, f, data, caller)
        if f.guest is None or offset >= 1:
            return -errno.EINVAL
        if f.guest.death is not None:
            return -errno.ENOENT
        if req not in (abi.LHREQ_IRQ, abi.LHREQ_EVENTFD):
            return -errno.EINVAL          # GETDMA, BREAK and anything unknown
        args = self._payload(f, req, data)
        if isinstance(args, int):
            return args
        if req == abi.LHREQ_IRQ:
            return self._irq(f, *args)
        return self._eventfd(tid, f, *args)

    def _payload(self, f: _OpenFile, req: int, data: bytes) -> tuple[int, ...] | int:
        """The words after the request code, or -errno if the write has the wrong shape."""
        n = abi.LHREQ_PAYLOAD_WORDS[req]
        want = (1 + n) * f.word
        if len(data) < want:
            return -errno.EFAULT
        if len(data) != want:
            return -errno.EINVAL
        return struct.unpack_from("<" + _WORD_FORMAT[f.word][1] * n, data, f.word)

    def _initialize(self, tid: int, f: _OpenFile, data: bytes, caller: tuple[int, int] | None) -> int:
        """INITIALIZE: this file's lock is held only to claim and to attach, never while
        the Guest is built (which reads the caller's memory, as slowly as the caller likes)."""
        with f.lock:
            if f.guest is not None or f.initializing:
                return -errno.EBUSY       # "close and reopen to start again"
            if f.released:
                return -errno.EBADF
            f.initializing = True
        try:
            made = self._create(tid, f, data, caller)
            if isinstance(made, int):
                return made
            guest, word, uid, mirror_bytes, stats = made
            with f.lock:
                if not f.released:
                    f.guest, f.word, f.owner_tid = guest, word, tid
                    f.guest_uid, f.mirror_bytes, f.stats = uid, mirror_bytes, stats
                    return 3 * word
            # Released while it was being built: it never belonged to anyone.
            guest.destroy()
            if stats is not None:
                StatsDirectory.withdraw(*stats)
            self.accounts.guests.give(uid)
            self.accounts.mirror.give(0, mirror_bytes)
            return -errno.EBADF
        finally:
            with f.lock:
                f.initializing = False

    def _create(self, tid: int, f: _OpenFile, data: bytes, caller: tuple[int, int] | None):
        """(guest, word size, uid charged, mirror bytes charged, published stats), or -errno."""
        try:
            pid = procs.tgid_of(tid)
        except ProcessLookupError:
            if tid == 0:
                # FUSE names callers by their pid in the service's PID namespace.
                log.warning("INITIALIZE refused: the caller is outside the service's PID namespace "
                            "(a launcher in another container must share the service's, "
                            "e.g. docker run --pid container:NAME)")
            return -errno.ESRCH
        word = self._caller_word_size(pid)
        if word is None:
            word = abi.INITIALIZE_LEN_TO_WORD.get(len(data))
            if word is None:
                return -errno.EFAULT if len(data) < 16 else -errno.EINVAL
        want = 4 * word
        if len(data) < want:
            return -errno.EFAULT
        if len(data) != want:
            log.warning("INITIALIZE of %d bytes from %s, whose words are %d bytes: refused",
                        len(data), procs.describe(pid), word)
            return -errno.EINVAL
        _, base, pfnlimit, start = struct.unpack("<4" + _WORD_FORMAT[word][1], data)
        name = procs.describe(pid)
        if start >> 32:
            # The Guest is 32-bit: its first eip cannot be wider (the seed's was a 32-bit long).
            log.warning("INITIALIZE from %s refused: start %#x is beyond 32 bits", name, start)
            return -errno.EINVAL
        uid = userns.payer(pid, caller[0]) if caller is not None else 0
        refused = self.accounts.guests.take(uid)
        if refused:
            log.warning("INITIALIZE from %s refused: uid %d has %d live guests of %d, the service %d of %d",
                        name, uid, self.accounts.guests.held(uid), self.accounts.limits.guests_per_user,
                        self.accounts.guests.held(), self.accounts.limits.guests)
            return -refused
        mirror_bytes = 0
        try:
            handles = self._memory(pid, base, pfnlimit, caller=caller)
            if handles is not None and handles.mode == MIRROR:
                if self.accounts.mirror.take(0, handles.limit):
                    handles.close()
                    raise GuestSetupError(errno.ENOMEM, f"a {handles.limit >> 20} MiB mirror copy does not fit "
                                                        f"the budget ({self.accounts.mirror.held() >> 20} of "
                                                        f"{self.accounts.mirror.total >> 20} MiB in use)")
                mirror_bytes = handles.limit
        except BaseException as e:
            self.accounts.guests.give(uid)
            if isinstance(e, GuestSetupError):
                log.warning("INITIALIZE from %s refused: %s", name, e)
                return -e.errno
            raise
        stats = self._publish_stats(name, pid)
        try:
            params = GuestParams(pid=pid, base=base, pfnlimit=pfnlimit, start=start,
                                 claim_notify=f.eventfds.claim, eventfds=f.eventfds, memory=handles, name=name,
                                 stats_fd=stats[0] if stats else None)
            guest = self._build(params)
        except BaseException as e:
            if stats is not None:
                StatsDirectory.withdraw(*stats)
            self.accounts.guests.give(uid)
            self.accounts.mirror.give(0, mirror_bytes)
            if isinstance(e, GuestSetupError):
                log.warning("INITIALIZE from %s refused: %s", name, e)
                return -e.errno
            raise
        log.info("guest created for %s: base %#x, %d pages, start %#x, %d-bit launcher",
                 name, base, pfnlimit, start, 8 * word)
        return guest, word, uid, mirror_bytes, stats

    def _build(self, params: GuestParams):
        """The factory's Guest, which owns the memory handles from then on; until then we do."""
        try:
            try:
                return self._factory(params)
            except MemoryError:
                raise GuestSetupError(errno.ENOMEM, "out of memory building the guest") from None
        except BaseException:
            if params.memory is not None:
                params.memory.close()
            raise

    def _publish_stats(self, name: str, pid: int) -> tuple[int, str] | None:
        """A published exit stats block for a new Guest, or None (none wanted, or it cannot be made)."""
        if self._stats is None:
            return None
        try:
            return self._stats.publish(name, pid)
        except OSError as e:
            log.warning("no exit stats for %s: %s", name, e)
            return None

    def _irq(self, f: _OpenFile, irq: int) -> int:
        if irq >= abi.LGUEST_IRQS:
            return -errno.EINVAL
        f.guest.irq(irq)
        return 0

    def _eventfd(self, tid: int, f: _OpenFile, addr: int, fd: int) -> int:
        if addr == 0:
            return -errno.EINVAL
        if len(f.eventfds) >= self.accounts.limits.eventfds_per_guest:
            return -errno.ENOMEM          # the seed's table growth failing
        try:
            # Look before we take: a copy of anything else would have to be closed here,
            # and closing a file on the caller's own FUSE mount can wait for ever (procs.py).
            if not procs.names_eventfd(tid, fd):
                return -errno.EINVAL
            ours = procs.duplicate_fd(tid, fd)
        except OSError as e:
            if e.errno in (errno.EBADF, errno.ESRCH):   # closed fd, or the caller is gone
                return -errno.EBADF
            log.warning("LHREQ_EVENTFD: cannot copy fd %d from task %d: %s", fd, tid, e)
            return -(e.errno or errno.EBADF)
        if not procs.is_eventfd(ours):
            procs.discard(ours)           # swapped by another of the caller's threads meanwhile
            return -errno.EINVAL
        f.eventfds.register(addr, ours)
        # A Guest in another process signals its eventfds itself: it gets a copy.
        added = getattr(f.guest, "eventfd_added", None)
        if added is not None:
            added(addr, ours)
        return 0

    # ------------------------------------------------------------------ read
    def read(self, tid: int, fh: int, offset: int, size: int) -> bytes | int:
        """Run the Guest (blocking) and return what the launcher reads, or -errno."""
        f = self._files.get(fh)
        if f is None:
            return -errno.EBADF
        guest = f.guest
        if guest is None:
            return -errno.EINVAL
        if (offset & 0xFFFFFFFF) >= 1:
            return -errno.EINVAL
        if tid != f.owner_tid:
            return -errno.EPERM
        death = guest.death
        if death is not None:
            return self._death_report(death, size)
        with f.lock:
            if f.released:
                return -errno.EBADF
            f.reading = True
        try:
            how, value = guest.run()
        finally:
            with f.lock:
                f.reading = False
                f.idle.notify_all()
        if how is RunExit.NOTIFY:
            return struct.pack(_WORD_FORMAT[f.word], value)[:size]
        if how is RunExit.INTERRUPTED:
            return -errno.EINTR
        return -abi.ERESTART if guest.death == abi.ERESTART else -errno.ENOENT

    @staticmethod
    def _death_report(death: str | int, size: int) -> bytes | int:
        """After the dying read: the error code forever, or the reason with its NUL if it fits."""
        if isinstance(death, int):
            return -death
        text = death.encode(errors="replace") + b"\0"
        return text[:size]
