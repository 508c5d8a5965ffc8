"""Memory handles: what the service takes from a launcher at INITIALIZE, and all it ever uses.

The service runs as root, and root may open any file and read or write any
process.  A launcher is whoever can open /dev/lguest, so everything the
service does with guest memory must be something the launcher could have
done itself.  That is decided once, here, while the launcher is blocked in
its INITIALIZE write, and the result is a handful of open files:

* **shared**: every page of [base, base + pfnlimit*4096) is a MAP_SHARED
  mapping of a file (memfd, shm, ordinary file) that the launcher may write
  (the `mw` VmFlag, see launcher_maps.py).  The handles are those files,
  opened through /proc/<tgid>/map_files, each with (guest offset, file
  offset, length).  Each open is checked afterwards: the file must be the
  inode the maps line named, and a second read of the maps must still show
  it there, so a mapping swapped in between is refused.
* **mirror**: anything else that is mapped and readable.  The handle is an
  open /proc/<tgid>/mem, which is bound to the address space the launcher
  has *now*: after it exits or execs, every read and write through it fails.
  Nothing ever goes through a bare pid afterwards, so a reused pid or a
  setuid exec cannot put another program's memory under a Guest.

Between looking and opening, another thread of the launcher could exec a
setuid program, and then the pid names a process the caller cannot touch.
The kernel marks such a process undumpable, which makes its /proc directory
root's; so the owner of /proc/<tgid> must be the caller both before the
first open and after the last one.

Handles are plain data plus open files, so the privileged front end can pass
them to an unprivileged process (SCM_RIGHTS) that then holds the memory and
nothing more: `fds()` and `description()` go over the socket,
`MemoryHandles.received()` rebuilds them on the other side.
"""
from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from typing import Any

from cuse_lguest import abi
from cuse_lguest.core.contract import GuestSetupError
from cuse_lguest.cpu.switcher import SWITCHER_BASE
from cuse_lguest.memory.launcher_maps import Mapping, covering, first_hole, read_smaps

log = logging.getLogger("cuse_lguest.memory")

SHARED = "shared"
MIRROR = "mirror"
# Guest-physical memory must end below the switcher region at the top of the
# Guest's address space, where the host keeps its own pages.
MAX_PFNLIMIT = SWITCHER_BASE // abi.PAGE_SIZE


@dataclass(frozen=True)
class SharedPiece:
    """`length` bytes at guest-physical `gpa` are the file's bytes from `file_offset`."""
    gpa: int
    file_offset: int
    length: int


class MemoryHandles:
    """One launcher's guest RAM as open files: the only power over it the service keeps.

    Owns its fds: close() closes them, and is idempotent.  For SHARED there
    is one fd per piece, in order; for MIRROR one fd, the address space.
    `pid` only names the launcher in logs and reasons.
    """

    def __init__(self, mode: str, pid: int, base: int, pfnlimit: int,
                 pieces: tuple[SharedPiece, ...], fds: list[int]) -> None:
        want = len(pieces) if mode == SHARED else 1
        if mode not in (SHARED, MIRROR) or len(fds) != want:
            raise ValueError(f"{mode} memory handles need {want} fds, got {len(fds)}")
        self.mode = mode
        self.pid = pid
        self.base = base
        self.pfnlimit = pfnlimit
        self.pieces = pieces
        self._fds = list(fds)

    @property
    def limit(self) -> int:
        return self.pfnlimit * abi.PAGE_SIZE

    @property
    def mem_fd(self) -> int:
        """MIRROR: the open /proc/<tgid>/mem."""
        if self.mode != MIRROR or not self._fds:
            raise ValueError("no address-space handle")
        return self._fds[0]

    def fds(self) -> list[int]:
        """The fds to pass (SCM_RIGHTS), in the order received() expects them."""
        return list(self._fds)

    def description(self) -> dict[str, Any]:
        """Everything but the fds, as plain data (JSON- and pickle-safe)."""
        return {"mode": self.mode, "pid": self.pid, "base": self.base, "pfnlimit": self.pfnlimit,
                "pieces": [[p.gpa, p.file_offset, p.length] for p in self.pieces]}

    @classmethod
    def received(cls, description: dict[str, Any], fds: list[int]) -> "MemoryHandles":
        """Rebuild handles from description() and the fds that came with it (now owned by the result)."""
        d = description
        pieces = tuple(SharedPiece(int(g), int(o), int(n)) for g, o, n in d["pieces"])
        return cls(str(d["mode"]), int(d["pid"]), int(d["base"]), int(d["pfnlimit"]), pieces, fds)

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)

    def __repr__(self) -> str:
        return f"<MemoryHandles {self.mode} pid {self.pid} base {self.base:#x} pages {self.pfnlimit}>"


def _refuse(pid: int, why: str) -> GuestSetupError:
    log.error("guest memory of pid %d refused: %s", pid, why)
    return GuestSetupError(errno.EFAULT, f"guest memory refused: {why}")


def setup_error(e: OSError, what: str) -> GuestSetupError:
    """A host allocation or mapping failed: ENOMEM stays ENOMEM (the seed's kmalloc failure), else EFAULT."""
    code = errno.ENOMEM if e.errno == errno.ENOMEM else errno.EFAULT
    log.error("%s: %s", what, e.strerror)
    return GuestSetupError(code, f"{what}: {e.strerror}")


def check_range(pid: int, base: int, pfnlimit: int) -> None:
    """The INITIALIZE words themselves: before anything is read, opened or copied.

    EFAULT, as an unreadable guest range is: the seed never validated these
    words, and the first thing that went wrong with bad ones was reaching
    the memory.
    """
    if pfnlimit <= 0 or pfnlimit > MAX_PFNLIMIT:
        raise _refuse(pid, f"pfnlimit {pfnlimit:#x} is not a usable page count "
                           f"(guest memory must end below the switcher region at {SWITCHER_BASE:#x})")
    if base % abi.PAGE_SIZE or base <= 0 or base + pfnlimit * abi.PAGE_SIZE > 1 << 64:
        raise _refuse(pid, f"base {base:#x} is not a page-aligned address with room for {pfnlimit} pages")


def acquire(pid: int, base: int, pfnlimit: int, *, caller: tuple[int, int] | None = None) -> MemoryHandles:
    """Take the handles on [base, base + pfnlimit pages) of process `pid` (its tgid).

    Called while the launcher is blocked in INITIALIZE.  `caller` is its
    (uid, gid) as the request named it, when known.  Raises GuestSetupError:
    EFAULT for a range that is not (all) mapped, readable and the caller's.
    """
    check_range(pid, base, pfnlimit)
    owner = _owner(pid)
    if caller is not None and caller[0] != 0 and owner != caller:
        raise _refuse(pid, f"the process is not the caller's (owned by {owner}, caller {caller})")
    start, end = base, base + pfnlimit * abi.PAGE_SIZE
    maps = _smaps(pid)
    pieces, why_not_shared = covering(maps, start, end)
    if why_not_shared is None:
        handles = _open_shared(pid, base, pfnlimit, pieces)
    else:
        hole = first_hole(maps, start, end)
        if hole is not None:
            raise _refuse(pid, f"range {start:#x}-{end:#x}: hole at {hole:#x}: nothing is mapped there")
        unreadable = [m for m in maps if m.start < end and m.end > start and m.perms[0] != "r"]
        if unreadable:
            raise _refuse(pid, f"range {start:#x}-{end:#x}: mapping {unreadable[0].describe} is not readable")
        handles = _open_mirror(pid, base, pfnlimit)
        log.info("guest memory of pid %d will be mirrored: %s", pid, why_not_shared)
    try:
        if _owner(pid) != owner:
            raise _refuse(pid, "the process changed hands while its memory was being opened (exec?)")
    except BaseException:
        handles.close()
        raise
    return handles


def _owner(pid: int) -> tuple[int, int]:
    """Who /proc/<pid> belongs to: the process's uid/gid, or root's if it is undumpable (setuid)."""
    try:
        st = os.stat(f"/proc/{pid}")
    except OSError as e:
        raise _refuse(pid, f"cannot look at the process: {e.strerror}") from None
    return st.st_uid, st.st_gid


def _smaps(pid: int) -> list[Mapping]:
    try:
        return read_smaps(pid)
    except OSError as e:
        raise _refuse(pid, f"cannot read /proc/{pid}/smaps: {e.strerror}") from None


def _open_shared(pid: int, base: int, pfnlimit: int, maps: list[Mapping]) -> MemoryHandles:
    """Open every piece through map_files; refuse if any is not what the maps said, then or now."""
    end = base + pfnlimit * abi.PAGE_SIZE
    fds: list[int] = []
    pieces: list[SharedPiece] = []
    try:
        for m in maps:
            path = f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}"
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as e:
                raise _refuse(pid, f"cannot open {path} ({m.describe}): {e.strerror}") from None
            fds.append(fd)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (m.dev, m.inode):
                raise _refuse(pid, f"mapping {m.describe} changed while it was being opened")
            lo, hi = max(m.start, base), min(m.end, end)
            pieces.append(SharedPiece(lo - base, m.offset + (lo - m.start), hi - lo))
        again, why = covering(_smaps(pid), base, end)
        if why is not None or [_identity(m) for m in again] != [_identity(m) for m in maps]:
            raise _refuse(pid, "the mappings changed while they were being opened")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return MemoryHandles(SHARED, pid, base, pfnlimit, tuple(pieces), fds)


def _identity(m: Mapping) -> tuple[int, int, int, int, int]:
    return m.start, m.end, m.offset, m.dev, m.inode


def _open_mirror(pid: int, base: int, pfnlimit: int) -> MemoryHandles:
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise _refuse(pid, f"cannot open the address space: {e.strerror}") from None
    return MemoryHandles(MIRROR, pid, base, pfnlimit, (), [fd])
