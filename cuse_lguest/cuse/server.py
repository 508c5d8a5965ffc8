"""The server: one session (CUSE, or FUSE) in front of one `cuse_lguest.device.Device`.

Routing (each request keeps the caller's thread id as `tid`):

* OPEN    -> device.open(); the handle goes back to the kernel as fi->fh and
             names the open file in every later request (RELEASE has pid 0).
* WRITE   -> device.write() on the libfuse worker; IRQ and EVENTFD are short
             and must complete while a read is running.  INITIALIZE reads
             the caller's memory, which the caller can make as slow as it
             likes (a private mapping of a file on its own FUSE mount that
             never answers), so it gets a thread of its own: a few such
             callers must not hold every libfuse worker, and with them every
             other caller's requests.  One per open file at most (a second
             is EBUSY), so the open-file caps bound them.
             Once a file's Guest exists, the device's irq_shortcut() is
             registered with the session, and its LHREQ_IRQ writes are
             answered in C without reaching us (see _build.py); RELEASE and
             shutdown remove it before the Guest is destroyed.
* READ    -> handed to the open file's runner thread (see runner.py), which
             calls device.read() and answers.  The offset is the vCPU index:
             through CUSE the kernel always sends 0; through FUSE an offset
             equal to the file position we track is a plain read()/write()
             and means 0 (positions.py), any other goes through as is.
* RELEASE -> device.release(), after cancelling any read still in flight.
* INTERRUPT, and a watcher that looks at every read's owner every
  `watch_interval` seconds -> signals.judge(); a stop verdict cancels the read,
  which then ends with EINTR (device.interrupt()).

shutdown() answers every read in flight with an error, releases every open
file (destroying its guest), stops the loop and frees the session.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
from typing import TYPE_CHECKING

from cuse_lguest import abi
from cuse_lguest.cuse import signals
from cuse_lguest.cuse.binding import TransportUnavailable
from cuse_lguest.cuse.positions import FilePositions
from cuse_lguest.cuse.runner import FileRunner, InFlight, answer
from cuse_lguest.cuse.session import FileAttrs, Request, Session

if TYPE_CHECKING:
    from cuse_lguest.device import IrqShortcut

log = logging.getLogger("cuse_lguest.cuse")

WATCH_INTERVAL = 0.05   # seconds between looks at the owners of reads in flight
# The first four bytes of an INITIALIZE, whatever the caller's word size.
_INITIALIZE = abi.LHREQ_INITIALIZE.to_bytes(4, "little")
SHUTDOWN_WAIT = 5.0     # seconds shutdown waits for interrupted reads to answer


def open_cuse(path: str = "/dev/cuse") -> int:
    """Open the CUSE control device the way cuse_lowlevel_setup() does (O_RDWR).

    Raises TransportUnavailable with one sentence when it cannot be used.
    """
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TransportUnavailable(
            f"{path} does not exist: this kernel has no CUSE (try 'modprobe cuse', "
            "or run inside a VM with 'cuse-lguest demo').") from None
    except PermissionError:
        raise TransportUnavailable(f"{path} can only be opened by root; run cuse-lguest serve as root.") from None
    except OSError as e:
        if e.errno == errno.ENODEV:
            raise TransportUnavailable(f"{path} has no driver behind it; load it with 'modprobe cuse'.") from None
        raise TransportUnavailable(f"cannot open {path}: {e.strerror}.") from None


class Server:
    """Serve `device` as the character device DEVNAME=`name`, or with `fuse`
    given, as a FUSE filesystem that is one file with those attributes."""

    def __init__(self, device, *, name: str = "lguest", eintr_on_signal: bool = False,
                 watch_interval: float = WATCH_INTERVAL, fuse: FileAttrs | None = None) -> None:
        self.device = device
        self.name = name
        self.eintr_on_signal = eintr_on_signal
        self.transport = "CUSE" if fuse is None else "FUSE"
        self.session = Session(self, name, fuse=fuse)
        self._positions = FilePositions() if fuse is not None else None
        self.registered = threading.Event()
        self._lock = threading.Lock()
        self._runners: dict[int, FileRunner] = {}
        self._shortcuts: dict[int, IrqShortcut] = {}   # registered in C; kept alive here
        self._reads: dict[int, InFlight] = {}
        self._initializing: set[Request] = set()       # INITIALIZEs on threads of their own
        self._closing = False
        self._stopped = threading.Event()
        self._wake = threading.Condition(self._lock)
        self._watch_interval = watch_interval
        self._watcher = threading.Thread(target=self._watch, name="cuse-watch", daemon=True)

    # ---------------------------------------------------------------- lifecycle
    def attach_cuse(self, path: str = "/dev/cuse") -> None:
        """Use the kernel's CUSE (production)."""
        self.session.attach(open_cuse(path))

    def attach_fd(self, fd: int) -> None:
        """Use `fd`, one end of a SOCK_SEQPACKET socketpair whose peer plays the kernel."""
        self.session.attach(fd)

    def start(self) -> None:
        self._watcher.start()
        self.session.start()

    @property
    def finished(self) -> threading.Event:
        """Set when the session loop has ended (kernel or peer gone, or shutdown)."""
        return self.session.finished

    def shutdown(self, timeout: float = SHUTDOWN_WAIT) -> int:
        """Answer every read in flight, release every open file, end the session.

        Returns the loop's result (0 for a clean end).  Idempotent.
        """
        with self._lock:
            if self._closing:
                first = False
            else:
                self._closing = first = True
                self.session.clear_irq_shortcuts()
                self._shortcuts.clear()
            reads = list(self._reads.values())
            initializing, self._initializing = self._initializing, set()
        if first:
            for req in initializing:          # its thread's answer, when it comes, is dropped
                req.reply_err(errno.EIO)
            for read in reads:
                self._cancel(read, "service shutdown")
            self._wait_for_reads(timeout)
            for read in self._take_reads():
                read.req.reply_err(errno.EIO)   # a device.read() that did not come back
            with self._lock:
                runners = list(self._runners.items())
                self._runners.clear()
            for fh, runner in runners:
                self.device.release(fh)
                runner.stop(timeout)
            with self._lock:
                self._stopped.set()
                self._wake.notify_all()
            self.session.stop()
            self.session.destroy()
            log.info("%s session for %s closed", self.transport, self.name)
        self.session.finished.wait()
        return self.session.result or 0

    def _wait_for_reads(self, timeout: float) -> None:
        with self._lock:
            self._wake.wait_for(lambda: not self._reads, timeout)

    def _take_reads(self) -> list[InFlight]:
        with self._lock:
            reads = list(self._reads.values())
            self._reads.clear()
        return reads

    # ---------------------------------------------------------------- requests
    def on_init_done(self) -> None:
        log.info("%s INIT answered: %s, max_write %d", self.transport, self.name, self.session.max_write)
        self.registered.set()

    def on_open(self, req: Request, fi) -> None:
        with self._lock:
            closing = self._closing
        if closing:
            req.reply_err(errno.ENODEV)
            return
        fh = self.device.open(req.caller()[0], pid=req.tid())
        if fh < 0:
            req.reply_err(-fh)
            return
        with self._lock:
            closing = self._closing       # shutdown began meanwhile: it has taken its list of files
            if not closing:
                self._runners[fh] = FileRunner(fh, self._serve)
        if closing:
            self.device.release(fh)
            req.reply_err(errno.ENODEV)
            return
        if self._positions is not None:
            self._positions.opened(fh)
        req.reply_open(fi, fh)
        log.debug("open -> fh %d", fh)

    def on_write(self, req: Request, tid: int, fh: int, offset: int, data: bytes) -> None:
        if len(data) > self.session.max_write:   # the C guard refuses these first
            req.reply_err(errno.EINVAL)
            return
        vcpu, plain = self._vcpu(fh, offset)
        initialize = data[:4] == _INITIALIZE
        with self._lock:
            # One step: an INITIALIZE that shutdown has not seen here is one that
            # shutdown answers, never one whose thread answers a freed session.
            known = fh in self._runners and not self._closing
            if known and initialize:
                self._initializing.add(req)
        if not known:
            req.reply_err(errno.EBADF)
            return
        if not initialize:
            self._write(req, tid, fh, offset, data, vcpu, plain, req.caller())
            return
        threading.Thread(target=self._write, args=(req, tid, fh, offset, data, vcpu, plain, req.caller()),
                         name=f"initialize-fh{fh}", daemon=True).start()

    def _write(self, req: Request, tid: int, fh: int, offset: int, data: bytes, vcpu: int, plain: bool,
               caller: tuple[int, int]) -> None:
        try:
            result = self.device.write(tid, fh, vcpu, data, caller=caller)
        except Exception:
            # On INITIALIZE's own thread no session guard answers for us (session.py _guard).
            log.exception("device.write failed")
            result = -errno.EIO
        log.debug("write fh=%d tid=%d %d bytes at %d -> %d", fh, tid, len(data), offset, result)
        with self._lock:
            if req in self._initializing:
                self._initializing.discard(req)
            elif data[:4] == _INITIALIZE:
                return                        # shutdown answered it
        if result < 0:
            req.reply_err(-result)
        else:
            if plain:                     # before answering: the kernel moves its position on our answer
                self._advance(fh, offset, result)
            self._offer_shortcut(fh)      # first: the launcher's next write may already be an IRQ
            req.reply_write(result)

    def _vcpu(self, fh: int, offset: int) -> tuple[int, bool]:
        """The offset the device sees, and whether it came from a plain read()/write() (FUSE)."""
        if self._positions is None:
            return offset, False
        return self._positions.incoming(fh, offset)

    def _advance(self, fh: int, offset: int, count: int) -> None:
        moved = self._positions.advance(fh, offset, count)
        if moved is not None:
            with self._lock:
                if fh in self._shortcuts:
                    self.session.move_irq_shortcut(fh, moved)

    def _offer_shortcut(self, fh: int) -> None:
        """After a successful write: if `fh` now has a live Guest, let C answer its LHREQ_IRQs."""
        if fh in self._shortcuts:
            return
        shortcut = self.device.irq_shortcut(fh)
        if shortcut is None:
            return
        with self._lock:          # release and shutdown remove entries under this lock
            if fh in self._runners and not self._closing and fh not in self._shortcuts:
                origin = 0 if self._positions is None else self._positions.position(fh)
                if self.session.add_irq_shortcut(fh, shortcut.word, shortcut.request,
                                                 shortcut.line.inject, shortcut.line.target, origin):
                    self._shortcuts[fh] = shortcut

    def on_read(self, req: Request, tid: int, fh: int, offset: int, size: int) -> None:
        vcpu, plain = self._vcpu(fh, offset)
        read = InFlight(req, tid, fh, vcpu, size, at=offset if plain else None)
        with self._lock:
            runner = None if self._closing else self._runners.get(fh)
            if runner is not None:
                self._reads[req.key] = read
                self._wake.notify_all()          # the watcher has something to watch
        if runner is None:
            req.reply_err(errno.EBADF)
            return
        # Registered before the hand-off: an INTERRUPT that already came calls back now.
        req.watch_interrupts(self.session.link)
        runner.submit(read)

    def on_release(self, req: Request, fh: int) -> None:
        with self._lock:
            runner = self._runners.pop(fh, None)
            if self._shortcuts.pop(fh, None) is not None:
                self.session.remove_irq_shortcut(fh)
            reads = [r for r in self._reads.values() if r.fh == fh]
        if self._positions is not None:
            self._positions.released(fh)
        for read in reads:
            self._cancel(read, "file released")
        if runner is not None:
            self.device.release(fh)
            runner.stop()
        req.reply_err(0)
        log.debug("release fh %d", fh)

    def on_interrupt(self, key: int) -> None:
        with self._lock:
            read = self._reads.get(key)
        if read is None:
            return                               # already answered
        verdict = signals.owner_verdict(read.tid, eintr_on_signal=self.eintr_on_signal)
        log.debug("INTERRUPT for read fh=%d tid=%d: %s", read.fh, read.tid, verdict.value)
        if verdict.stops:
            self._cancel(read, verdict.value)

    # ---------------------------------------------------------------- reads
    def _serve(self, read: InFlight) -> None:
        """On the runner: run the guest for `read` and answer it."""
        with self._lock:
            go = not read.cancelled
            read.started = go
        try:
            result = self.device.read(read.tid, read.fh, read.offset, read.size) if go else -errno.EINTR
        except Exception:
            log.exception("device.read failed")
            result = -errno.EIO
        with self._lock:
            read.done = True
            self._reads.pop(read.req.key, None)
            self._wake.notify_all()
        if read.at is not None and not isinstance(result, int):
            self._advance(read.fh, read.at, min(len(result), read.size))
        answer(read, result)

    def _cancel(self, read: InFlight, why: str) -> None:
        """Make `read` end with EINTR: before it starts, or by interrupting the device."""
        with self._lock:
            if read.done:
                return
            first = not read.cancelled
            read.cancelled = True
            started = read.started
        if first:
            log.info("read on fh %d by task %d ends early: %s", read.fh, read.tid, why)
        if started:
            self.device.interrupt(read.fh)

    def _watch(self) -> None:
        """Look at every read's owner while reads are in flight.

        This catches what the single INTERRUPT cannot: a fatal signal that
        arrives later, an owner that exits, and an interrupt that reached the
        device just before its read began (it is repeated until the read ends).
        """
        while True:
            with self._lock:
                self._wake.wait_for(lambda: self._reads or self._stopped.is_set())
                if self._stopped.is_set():
                    return
                reads = list(self._reads.values())
            for read in reads:
                if read.cancelled:
                    if read.started and not read.done:
                        self.device.interrupt(read.fh)
                    continue
                verdict = signals.owner_verdict(read.tid, eintr_on_signal=self.eintr_on_signal)
                if verdict.stops:
                    self._cancel(read, verdict.value)
            self._stopped.wait(self._watch_interval)
