"""Facts about the processes that talk to /dev/lguest, read the Linux way.

A CUSE request names its caller by *thread* id.  Most process-level things we
need (duplicating an fd out of the caller, its memory, its executable) want
the thread-group id instead, so everything here starts by mapping one to the
other.  The caller is blocked in our request while we look, so its ids are live.
"""
from __future__ import annotations

import ctypes
import errno
import os
import queue
import threading

import psutil
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_PIDFD_GETFD = 438  # x86-64; pidfd_getfd(2) has no wrapper in Python's os module


def tgid_of(tid: int) -> int:
    """The thread-group (process) id of thread `tid`.  Raises ProcessLookupError if it is gone."""
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    raise ProcessLookupError(errno.ESRCH, f"no such task {tid}")


def word_size_of(pid: int) -> int | None:
    """4 or 8: the word size of the program process `pid` runs (its ELF class).

    Real lguest launchers are 32-bit; a 64-bit build sends 8-byte words.  The
    executable is read through /proc/<pid>/exe, so a renamed or deleted binary
    still answers.  None if the process or its executable cannot be read.
    """
    try:
        psutil.Process(pid)  # a clear "gone" before we touch /proc/<pid>/exe
        with open(f"/proc/{pid}/exe", "rb") as f:
            return ELFFile(f).elfclass // 8
    except (psutil.Error, OSError, ELFError):
        return None


def duplicate_fd(tid: int, fd: int) -> int:
    """Copy file descriptor `fd` out of the process that thread `tid` belongs to.

    The launcher closes its own copy of an eventfd right after LHREQ_EVENTFD
    returns, so the copy has to be taken while the write is being served.
    pidfd_open() refuses non-leader thread ids on kernels before 6.9, hence the
    tid -> tgid step.  Raises OSError with EBADF for a closed fd, ESRCH when
    the process is gone, EPERM when we may not look into it.
    """
    if not 0 <= fd <= 0x7FFFFFFF:
        raise OSError(errno.EBADF, f"fd {fd} is out of range")
    tgid = tgid_of(tid)
    pidfd = os.pidfd_open(tgid)
    try:
        if tgid == os.getpid() and pidfd == fd:
            # The caller is this very process (in-process launchers and tests):
            # the pidfd took the lowest free number, so `fd` was not open.
            raise OSError(errno.EBADF, f"fd {fd} is not open")
        newfd = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if newfd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd(fd {fd} of task {tid}): {os.strerror(err)}")
        return newfd
    finally:
        os.close(pidfd)


_EVENTFD_LINK = "anon_inode:[eventfd]"


def is_eventfd(fd: int) -> bool:
    """True if our descriptor `fd` is an eventfd (the kernel names its inode that way)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == _EVENTFD_LINK
    except OSError:
        return False


def names_eventfd(tid: int, fd: int) -> bool:
    """True if descriptor `fd` of the process thread `tid` belongs to is an eventfd.

    Asked *before* duplicate_fd(), because a copy of anything else must then be
    closed, and close() is not harmless: on a file of the caller's own FUSE
    mount every close() waits for its filesystem's answer to FLUSH, which it
    need never give.  Reading the link touches nothing of the file.  Raises
    OSError: EBADF for a closed fd, ESRCH when the process is gone.
    """
    if not 0 <= fd <= 0x7FFFFFFF:
        raise OSError(errno.EBADF, f"fd {fd} is out of range")
    try:
        return os.readlink(f"/proc/{tgid_of(tid)}/fd/{fd}") == _EVENTFD_LINK
    except FileNotFoundError:
        raise OSError(errno.EBADF, f"fd {fd} of task {tid} is not open") from None


_strays: queue.SimpleQueue[int] = queue.SimpleQueue()
_strays_lock = threading.Lock()
_strays_closer: threading.Thread | None = None


def _close_strays() -> None:
    while True:
        fd = _strays.get()
        try:
            os.close(fd)
        except OSError:
            pass                # e.g. ECONNABORTED: its filesystem went away meanwhile


def discard(fd: int) -> None:
    """Close our copy `fd` of a caller's file on a thread that may wait, never on the caller's.

    For the copy that names_eventfd() said was an eventfd but was not by the
    time we took it (the caller swapped it in between): its close() may wait
    for ever (see names_eventfd), and it must hold no thread that serves requests.
    """
    global _strays_closer
    with _strays_lock:
        if _strays_closer is None:
            _strays_closer = threading.Thread(target=_close_strays, name="stray-fds", daemon=True)
            _strays_closer.start()
    _strays.put(fd)


def describe(pid: int) -> str:
    """A short name for logs: `lguest32[1234]`."""
    try:
        return f"{psutil.Process(pid).name()}[{pid}]"
    except psutil.Error:
        return f"pid {pid}"
