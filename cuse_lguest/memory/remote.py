"""The launcher's own copy of guest RAM, reached through a handle on its address space.

Mirror mode cannot map the launcher's pages (they are MAP_PRIVATE), so it
copies between them and its local copy.  It does so through an open file of
/proc/<tgid>/mem taken at INITIALIZE (memory/handles.py), with pread(2) and
pwrite(2) at the launcher's addresses.  That file is bound to the address
space the launcher had when it was opened: after the launcher exits or
execs, every transfer through it fails, so the service can never reach
another program's memory through a reused pid or a setuid exec, which a
bare pid and process_vm_readv/writev (what this module used before) could.
The launcher's device helpers are clone(CLONE_VM) children that share its
address space, so the same file reaches them too.

A piece list is copied in order, and the kernel copies each call front to
back.  Callers rely on that to publish a ring the way the other side expects:
buffers first, descriptors next, the index last.  Pieces that follow each
other on both sides travel in one call.

Any failure (the launcher exited, exec'd, unmapped its RAM, or is a zombie)
means the Guest's memory is gone: that is a GuestFault, so the core kills the
Guest with a reason instead of the service crashing.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

from cuse_lguest.memory.errors import GuestFault

_libc = ctypes.CDLL(None, use_errno=True)
for _fn in (_libc.pread64, _libc.pwrite64):
    _fn.restype = ctypes.c_ssize_t
    _fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64]

_MAX_CALL = 1 << 30              # bytes per call: the kernel caps one call at about 2 GiB

# (gpa, local host address, length): one contiguous run, the same length on both sides.
Piece = tuple[int, int, int]


@dataclass
class TransferStats:
    """What crossed between the address spaces: cheap counters for benchmarks."""
    pulled_bytes: int = 0
    pushed_bytes: int = 0
    pull_calls: int = 0          # pread system calls
    push_calls: int = 0          # pwrite system calls


class LauncherMemory:
    """[base, base + limit) of the address space behind `mem_fd`, indexed by guest-physical address.

    `mem_fd` is an open /proc/<tgid>/mem; it stays owned by the caller.
    `pid` only names the launcher in reasons and logs.
    """

    def __init__(self, mem_fd: int, base: int, limit: int, pid: int) -> None:
        self.fd = mem_fd
        self.pid = pid
        self.base = base
        self.limit = limit
        self.stats = TransferStats()

    def pull(self, pieces: Sequence[Piece]) -> None:
        """Copy each piece from the launcher into our memory, in order."""
        moved, calls = self._transfer(_libc.pread64, pieces)
        self.stats.pulled_bytes += moved
        self.stats.pull_calls += calls

    def push(self, pieces: Sequence[Piece]) -> None:
        """Copy each piece from our memory into the launcher, in order."""
        moved, calls = self._transfer(_libc.pwrite64, pieces)
        self.stats.pushed_bytes += moved
        self.stats.push_calls += calls

    def _transfer(self, fn, pieces: Sequence[Piece]) -> tuple[int, int]:
        moved = calls = 0
        fd, base = self.fd, self.base
        for gpa, addr, n in _runs(pieces):
            got = fn(fd, addr, n, base + gpa)
            calls += 1
            if got < 0:
                err = ctypes.get_errno()
                raise GuestFault(f"launcher memory gone: {os.strerror(err)} (pid {self.pid})")
            if got != n:
                # A short copy stops at the first page the launcher no longer has;
                # none at all means its address space is gone (exit or exec).
                raise GuestFault(f"launcher memory gone: only {got} of {n} bytes could be copied "
                                 f"(pid {self.pid})")
            moved += got
        return moved, calls


def _runs(pieces: Sequence[Piece]) -> Iterator[Piece]:
    """Pieces in order, joining neighbours that are contiguous on both sides, at most _MAX_CALL each."""
    run: Piece | None = None
    for piece in pieces:
        if piece[2] <= 0:
            continue
        if run is not None and run[0] + run[2] == piece[0] and run[1] + run[2] == piece[1]:
            run = (run[0], run[1], run[2] + piece[2])
            continue
        if run is not None:
            yield from _split(run)
        run = piece
    if run is not None:
        yield from _split(run)


def _split(piece: Piece) -> Iterator[Piece]:
    gpa, addr, n = piece
    while n > _MAX_CALL:
        yield gpa, addr, _MAX_CALL
        gpa, addr, n = gpa + _MAX_CALL, addr + _MAX_CALL, n - _MAX_CALL
    yield gpa, addr, n
