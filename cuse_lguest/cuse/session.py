"""One libfuse session, CUSE or FUSE: the wire, its loop thread, and the Python callbacks.

This module owns everything that touches libfuse objects directly.  It turns
each request into a call on a *handler* (the server) with plain Python values,
and gives the handler a `Request` to answer exactly once, from any thread.

Transport facts the handler can rely on (measured on a genuine CUSE device,
see docs/architecture.md §2):

* `tid` is `fuse_req_ctx()->pid`: the calling *thread* id, not the process id.
* RELEASE arrives with pid 0, so per-open state is keyed on the file handle.
* Through CUSE the kernel always sends offset 0 for read and write.  Through
  FUSE it sends the caller's offset: pread/pwrite's, or the file position
  for read()/write() (the server maps that back, see positions.py).  The
  session passes it through untouched.
* One signal to a task blocked in our read produces one FUSE INTERRUPT.

Rules that keep libfuse safe from Python: a `fuse_req_t` is answered once (a
second answer is a use-after-free), and no libfuse function is called while
holding a lock that an interrupt callback might want (libfuse holds the
request's own lock while it runs the callback).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import threading
from typing import Protocol

from cuse_lguest.cpu._native import lib as _native
from cuse_lguest.cuse.binding import load

ffi, lib = load()
log = logging.getLogger("cuse_lguest.cuse")
# What cl_loop sends a waiting worker to end its read: the project's one signal for
# ending a blocked call (a do-nothing handler without SA_RESTART).
_WAKE_SIGNAL = _native.lg_unblock_signal()

DEFAULT_MAX_WRITE = 65536   # an lguest request is at most 32 bytes; the kernel splits bigger writes
MAX_THREADS = 16            # workers never hold a running guest, so a few are plenty


class Request:
    """A libfuse request that can be answered once, from any thread."""

    __slots__ = ("_req", "_lock", "_answered", "key")

    def __init__(self, req) -> None:
        self._req = req
        self._lock = threading.Lock()
        self._answered = False
        self.key = int(ffi.cast("uintptr_t", req))

    def _claim(self) -> bool:
        with self._lock:
            if self._answered:
                return False
            self._answered = True
            return True

    def caller(self) -> tuple[int, int]:
        """(uid, gid) of the task that made the request, as the kernel put them in its header."""
        ctx = lib.fuse_req_ctx(self._req)
        return ctx.uid, ctx.gid

    def tid(self) -> int:
        """The id of the thread that made the request (0 for RELEASE, and outside our PID namespace)."""
        return lib.fuse_req_ctx(self._req).pid

    def reply_err(self, err: int) -> bool:
        """Answer with errno `err` (positive; 0 means success with no data)."""
        if not self._claim():
            return False
        lib.fuse_reply_err(self._req, err)
        return True

    def reply_buf(self, data: bytes) -> bool:
        if not self._claim():
            return False
        lib.fuse_reply_buf(self._req, data, len(data))
        return True

    def reply_write(self, count: int) -> bool:
        if not self._claim():
            return False
        lib.fuse_reply_write(self._req, count)
        return True

    def reply_open(self, fi, fh: int) -> bool:
        """Only valid inside the OPEN callback: `fi` lives as long as it does."""
        if not self._claim():
            return False
        fi.fh = fh
        lib.cl_reply_open(self._req, fi)
        return True

    def watch_interrupts(self, link) -> None:
        """Have FUSE INTERRUPTs for this request call the handler's on_interrupt(key).

        If the request was interrupted already, libfuse calls back at once, on
        this thread.
        """
        lib.fuse_req_interrupt_func(self._req, lib.cl_py_interrupt, link)


class Handler(Protocol):
    """What the session calls; every method runs on a libfuse worker thread."""

    def on_init_done(self) -> None: ...
    def on_open(self, req: Request, fi) -> None: ...
    def on_read(self, req: Request, tid: int, fh: int, offset: int, size: int) -> None: ...
    def on_write(self, req: Request, tid: int, fh: int, offset: int, data: bytes) -> None: ...
    def on_release(self, req: Request, fh: int) -> None: ...
    def on_interrupt(self, key: int) -> None: ...


@dataclasses.dataclass(frozen=True)
class FileAttrs:
    """What a FUSE session's one file says in stat(): the kernel enforces it
    (the mount has default_permissions), as it enforces a node's mode."""
    mode: int
    uid: int
    gid: int


class Session:
    """A CUSE session announcing DEVNAME=`name`, or with `fuse` given, a FUSE
    session whose filesystem is one regular file with those attributes;
    served by `handler` either way.

    attach() gives it its wire: an open /dev/cuse or /dev/fuse (mounted, see
    fusenode.py), or one end of a SOCK_SEQPACKET socketpair whose other end
    plays the kernel.  The session owns the fd from then on and closes it in
    destroy().
    """

    def __init__(self, handler: Handler, name: str, *, max_write: int = DEFAULT_MAX_WRITE,
                 fuse: FileAttrs | None = None) -> None:
        self.handler = handler
        self.name = name
        self.fuse = fuse
        self._handle = ffi.new_handle(self)
        self._link = ffi.new("struct cl_link *")
        self._link.stop_fd = os.eventfd(0, os.EFD_CLOEXEC)
        self._link.max_write = max_write
        self._link.handle = self._handle
        if fuse is None:
            self._se = lib.cl_new(self._link, ("DEVNAME=" + name).encode())
        else:
            self._link.node_mode, self._link.node_uid, self._link.node_gid = fuse.mode, fuse.uid, fuse.gid
            self._se = lib.cl_new(self._link, ffi.NULL)
        if self._se == ffi.NULL:
            os.close(self._link.stop_fd)
            raise RuntimeError("libfuse could not create the session (see its message above)")
        self._thread: threading.Thread | None = None
        self.result: int | None = None
        self.finished = threading.Event()

    @property
    def max_write(self) -> int:
        return self._link.max_write

    @property
    def refused(self) -> int:
        """Malformed messages answered with an error before libfuse saw them."""
        return self._link.refused

    @property
    def dropped(self) -> int:
        """Messages too short to answer, dropped before libfuse saw them."""
        return self._link.dropped

    @property
    def fast_irqs(self) -> int:
        """LHREQ_IRQ writes answered in C through a shortcut, never reaching the handler."""
        return self._link.fast_irqs

    def add_irq_shortcut(self, fh: int, word: int, request: int, inject: int, line: int,
                         origin: int = 0) -> bool:
        """Have C answer file `fh`'s LHREQ_IRQ writes at offset `origin` through inject(line, irq).

        `inject` and `line` are addresses; the caller keeps what they point at
        alive until remove_irq_shortcut(fh).  False if the table is full: the
        file keeps the Python path.  See _build.py.
        """
        return lib.cl_shortcut_add(self._link, fh, word, request, ffi.cast("cl_irq_fn", inject),
                                   ffi.cast("void *", line), origin) == 0

    def move_irq_shortcut(self, fh: int, origin: int) -> None:
        """The offset that names vCPU 0 for `fh` is now `origin` (FUSE: the file position moved)."""
        lib.cl_shortcut_set_origin(self._link, fh, origin)

    def remove_irq_shortcut(self, fh: int) -> None:
        """Once this returns, no worker is still using the shortcut's line."""
        lib.cl_shortcut_remove(self._link, fh)

    def clear_irq_shortcuts(self) -> None:
        lib.cl_shortcut_clear(self._link)

    def attach(self, fd: int) -> None:
        if lib.cl_attach(self._se, fd) != 0:
            raise RuntimeError("fuse_session_custom_io failed")

    def start(self) -> None:
        """Run libfuse's multithreaded loop on a thread of its own."""
        self._thread = threading.Thread(target=self._loop, name="cuse-loop", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            self.result = lib.cl_loop(self._se, self._link, MAX_THREADS, _WAKE_SIGNAL)
            log.debug("session loop ended (%d)", self.result)
        finally:
            self.finished.set()

    def stop(self, timeout: float | None = None) -> None:
        """Make the loop end: every worker sees the stop fd and leaves."""
        if self._thread is None:           # never started: nothing to end
            self.finished.set()
            return
        if not self.finished.is_set():
            os.eventfd_write(self._link.stop_fd, 1)
        self._thread.join(timeout)

    def destroy(self) -> None:
        """Free the session and close its wire.  Only after stop() and every reply."""
        if self._se != ffi.NULL:
            lib.cl_destroy(self._se, self._link)
            self._se = ffi.NULL
            os.close(self._link.stop_fd)

    @property
    def link(self):
        return self._link


def _session_of(link_ptr) -> Session:
    return ffi.from_handle(ffi.cast("struct cl_link *", link_ptr).handle)


@contextlib.contextmanager
def _guard(what: str, req: Request | None):
    """Log a handler's exception and make sure its request is still answered.

    The service never dies because of a request: an exception here would
    otherwise be printed by cffi and leave the caller blocked for ever.
    """
    try:
        yield
    except Exception:
        log.exception("%s failed", what)
        if req is not None:
            req.reply_err(errno.EIO)


@ffi.def_extern()
def cl_py_init_done(userdata) -> None:
    with _guard("init_done", None):
        _session_of(userdata).handler.on_init_done()


@ffi.def_extern()
def cl_py_open(req, fi) -> None:
    r = Request(req)
    with _guard("open", r):
        _session_of(lib.fuse_req_userdata(req)).handler.on_open(r, fi)


@ffi.def_extern()
def cl_py_read(req, size, off, fi) -> None:
    r = Request(req)
    with _guard("read", r):
        tid = lib.fuse_req_ctx(req).pid
        _session_of(lib.fuse_req_userdata(req)).handler.on_read(r, tid, fi.fh, off, size)


@ffi.def_extern()
def cl_py_write(req, buf, size, off, fi) -> None:
    r = Request(req)
    with _guard("write", r):
        tid = lib.fuse_req_ctx(req).pid
        data = ffi.unpack(buf, size)
        _session_of(lib.fuse_req_userdata(req)).handler.on_write(r, tid, fi.fh, off, data)


@ffi.def_extern()
def cl_py_release(req, fi) -> None:
    r = Request(req)
    with _guard("release", r):
        _session_of(lib.fuse_req_userdata(req)).handler.on_release(r, fi.fh)


@ffi.def_extern()
def cl_py_interrupt(req, data) -> None:
    # Runs with libfuse's lock on `req` held: never answer `req` here, and
    # never wait for a thread that might be calling into libfuse.
    with _guard("interrupt", None):
        _session_of(data).handler.on_interrupt(int(ffi.cast("uintptr_t", req)))
