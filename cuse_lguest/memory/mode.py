"""Shared or mirror: which way to hold a launcher's guest RAM.

Sharing the launcher's pages is exact and free, so it is always preferred.
It is impossible when any part of the range is a private mapping or has no
object behind it (the historical launcher's /dev/zero RAM with the kernel
mapped privately on top): then, and only then, we mirror.  A range with a
hole is neither; the shared path refuses it with the precise reason.
"""
from __future__ import annotations

from cuse_lguest import abi
from cuse_lguest.memory.launcher_maps import Mapping, covering, parse_maps


def needs_mirror(pid: int, base: int, pfnlimit: int) -> bool:
    """True if [base, base + pfnlimit pages) of `pid` is all mapped but cannot all be shared."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = parse_maps(f.read())
    except OSError:
        return False
    start, end = base, base + pfnlimit * abi.PAGE_SIZE
    return _no_hole(maps, start, end) and covering(maps, start, end)[1] is not None


def _no_hole(maps: list[Mapping], start: int, end: int) -> bool:
    at = start
    for m in sorted(maps, key=lambda m: m.start):
        if m.end <= at or m.start >= end:
            continue
        if m.start > at:
            return False
        at = m.end
        if at >= end:
            return True
    return False
