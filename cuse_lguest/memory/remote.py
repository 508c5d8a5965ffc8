"""The launcher's own copy of guest RAM, reached with process_vm_readv/writev.

Mirror mode cannot map the launcher's pages (they are MAP_PRIVATE), so it
copies between them and its local copy.  process_vm_readv(2) and
process_vm_writev(2) do that in one system call for a whole list of pieces,
straight between the two address spaces and at memcpy speed (about 4 GiB/s
measured).  They work on any mapping the launcher can touch: private
/dev/zero, privately mapped kernel files, or a shared memfd.  The launcher's
device helpers are clone(CLONE_VM) children that share its address space, so
copying to or from the launcher's pid reaches them too.

A piece list is copied in order, and the kernel copies each piece front to
back.  Callers rely on that to publish a ring the way the other side expects:
buffers first, descriptors next, the index last.

Any failure (the launcher exited, unmapped its RAM, or is a zombie) means the
Guest's memory is gone: that is a GuestFault, so the core kills the Guest
with a reason instead of the service crashing.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

from cuse_lguest.memory.errors import GuestFault

_libc = ctypes.CDLL(None, use_errno=True)


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


for _fn in (_libc.process_vm_readv, _libc.process_vm_writev):
    _fn.restype = ctypes.c_ssize_t
    _fn.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong,
                    ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong]

_IOV_MAX = 1024                  # per call, for each side (UIO_MAXIOV)
_MAX_CALL = 1 << 30              # bytes per call: the kernel caps one call at about 2 GiB

# (gpa, local host address, length): one contiguous run, the same length on both sides.
Piece = tuple[int, int, int]


@dataclass
class TransferStats:
    """What crossed between the address spaces: cheap counters for benchmarks."""
    pulled_bytes: int = 0
    pushed_bytes: int = 0
    pull_calls: int = 0          # process_vm_readv system calls
    push_calls: int = 0          # process_vm_writev system calls


class LauncherMemory:
    """[base, base + limit) in process `pid`, indexed by guest-physical address."""

    def __init__(self, pid: int, base: int, limit: int) -> None:
        self.pid = pid
        self.base = base
        self.limit = limit
        self.stats = TransferStats()

    def pull(self, pieces: Sequence[Piece]) -> None:
        """Copy each piece from the launcher into our memory, in order."""
        moved, calls = self._transfer(_libc.process_vm_readv, pieces)
        self.stats.pulled_bytes += moved
        self.stats.pull_calls += calls

    def push(self, pieces: Sequence[Piece]) -> None:
        """Copy each piece from our memory into the launcher, in order."""
        moved, calls = self._transfer(_libc.process_vm_writev, pieces)
        self.stats.pushed_bytes += moved
        self.stats.push_calls += calls

    def _transfer(self, fn, pieces: Sequence[Piece]) -> tuple[int, int]:
        moved = calls = 0
        for batch in _batches(pieces):
            local = (_Iovec * len(batch))(*[_Iovec(addr, n) for _, addr, n in batch])
            remote = (_Iovec * len(batch))(*[_Iovec(self.base + gpa, n) for gpa, _, n in batch])
            want = sum(n for _, _, n in batch)
            got = fn(self.pid, local, len(batch), remote, len(batch), 0)
            calls += 1
            if got < 0:
                err = ctypes.get_errno()
                raise GuestFault(f"launcher memory gone: {os.strerror(err)} (pid {self.pid})")
            if got != want:
                # A partial copy stops at the first page the launcher no longer has.
                raise GuestFault(f"launcher memory gone: only {got} of {want} bytes could be copied "
                                 f"(pid {self.pid})")
            moved += got
        return moved, calls


def _batches(pieces: Sequence[Piece]) -> Iterator[list[Piece]]:
    """Pieces in order, grouped so that no call has too many iovecs or moves more than the kernel allows."""
    batch: list[Piece] = []
    size = 0
    for gpa, addr, n in pieces:
        while n > 0:
            step = min(n, _MAX_CALL - size)
            batch.append((gpa, addr, step))
            size += step
            gpa, addr, n = gpa + step, addr + step, n - step
            if size == _MAX_CALL or len(batch) == _IOV_MAX:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch
