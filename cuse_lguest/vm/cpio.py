"""A minimal writer for the kernel's initramfs format ("newc" cpio).

Written here rather than shelling out to cpio(1) so the VM tier needs one
tool fewer and the archive's contents are decided by Python code alone.
The kernel unpacks concatenated archives in order, which is how a cached
base image and a small per-run archive are combined into one initrd.
"""
from __future__ import annotations

import stat
from collections.abc import Iterable

_TRAILER = "TRAILER!!!"


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = header + encoded
    out += _pad4(len(out))
    return out + data + _pad4(len(data))


def archive(entries: Iterable[tuple[str, int, bytes]]) -> bytes:
    """Pack (path, mode, data) triples; mode carries the file type bits.

    Directories must come before their contents.  Symlinks carry their
    target as data, as the newc format specifies.
    """
    out = bytearray()
    ino = 1
    for name, mode, data in entries:
        out += _entry(name, mode, data, ino)
        ino += 1
    out += _entry(_TRAILER, 0, b"", 0)
    return bytes(out)


def directory(name: str) -> tuple[str, int, bytes]:
    return (name, stat.S_IFDIR | 0o755, b"")


def regular(name: str, data: bytes, mode: int = 0o644) -> tuple[str, int, bytes]:
    return (name, stat.S_IFREG | mode, data)


def symlink(name: str, target: str) -> tuple[str, int, bytes]:
    return (name, stat.S_IFLNK | 0o777, target.encode())
