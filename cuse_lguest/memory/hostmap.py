"""Placing mappings at chosen addresses, which Python's mmap module cannot do.

Two places need it.  Shared mode lays the launcher's RAM pieces side by side
in one contiguous host view, so one pointer serves Unicorn and the host
accessors alike.  The test RAM (testing.guestram) puts a memfd between two
guard pages, the way a launcher lays out its guest memory.  Both first
reserve an address range with no access, then map objects over parts of it.
"""
from __future__ import annotations

import ctypes
import mmap
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FIXED = 0x10
_MAP_FAILED = ctypes.c_void_p(-1).value


def reserve(size: int) -> int:
    """An inaccessible, private range of `size` bytes; its address.  Raises OSError."""
    addr = _libc.mmap(None, size, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if addr in (None, _MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, f"cannot reserve {size} bytes of address space: {os.strerror(err)}")
    return addr


def map_shared_at(addr: int, size: int, fd: int, offset: int) -> None:
    """Map `size` bytes of `fd` from `offset`, MAP_SHARED and read-write, exactly at `addr`."""
    got = _libc.mmap(addr, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | _MAP_FIXED, fd, offset)
    if got != addr:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot map {size} bytes at {addr:#x}: {os.strerror(err)}")


def unmap(addr: int, size: int) -> None:
    _libc.munmap(addr, size)
