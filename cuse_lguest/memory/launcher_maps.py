"""Finding the launcher's guest RAM in its own address space.

A launcher hands us `base`, an address in *its* process.  To use the same
pages without copying we look up which mappings cover
[base, base + pfnlimit*4096) in /proc/<pid>/smaps.  Only MAP_SHARED mappings
of a real object (a memfd, shm or ordinary file) can be opened again through
/proc/<pid>/map_files and still be the launcher's pages; a private mapping
would give us a copy that silently diverges, so it is refused.

The service opens those objects as root, so "shared and file-backed" is not
enough: a launcher that maps /etc/passwd read-only and MAP_SHARED beside its
RAM would have us write the file for it.  A piece is shared only if the
launcher itself may write it: the kernel's `mw` flag ("may write", VM_MAYWRITE)
is set on a shared file mapping only when the file was opened for writing,
so it survives an mprotect to read-only but never appears on a mapping of a
file the caller could not write.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Mapping:
    """One mapping of /proc/<pid>/smaps (or a line of /proc/<pid>/maps, which has no flags)."""
    start: int
    end: int
    perms: str
    offset: int
    dev: int
    inode: int
    path: str
    flags: frozenset[str] = field(default=frozenset())

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def may_write(self) -> bool:
        return "mw" in self.flags

    @property
    def describe(self) -> str:
        return f"{self.start:#x}-{self.end:#x} {self.perms} {self.path or '[anon]'}"


def _header(line: str) -> Mapping | None:
    parts = line.split(maxsplit=5)
    if len(parts) < 5 or "-" not in parts[0] or ":" not in parts[3]:
        return None
    lo, hi = parts[0].split("-")
    major, minor = parts[3].split(":")
    return Mapping(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16),
                   os.makedev(int(major, 16), int(minor, 16)), int(parts[4]),
                   parts[5] if len(parts) > 5 else "")


def parse_maps(text: str) -> list[Mapping]:
    """Parse /proc/<pid>/maps or /proc/<pid>/smaps (the path may contain spaces).

    smaps repeats the maps line for each mapping, then its counters, then its
    `VmFlags:` line, which we keep as `flags`.
    """
    out: list[Mapping] = []
    for line in text.splitlines():
        if line.startswith("VmFlags:"):
            if out:
                last = out[-1]
                out[-1] = Mapping(last.start, last.end, last.perms, last.offset, last.dev, last.inode,
                                  last.path, frozenset(line.split()[1:]))
            continue
        m = _header(line)
        if m is not None:
            out.append(m)
    return out


def read_smaps(pid: int) -> list[Mapping]:
    """The mappings of `pid` with their flags.  Raises OSError."""
    with open(f"/proc/{pid}/smaps") as f:
        return parse_maps(f.read())


def covering(maps: list[Mapping], start: int, end: int) -> tuple[list[Mapping], str | None]:
    """The mappings that cover [start, end) without a hole, or ([], why not).

    Every piece must be shared, file-backed and writable by the launcher:
    that is what makes the pages the launcher's own pages, and ours to write,
    when we map them again.
    """
    pieces: list[Mapping] = []
    at = start
    for m in sorted(maps, key=lambda m: m.start):
        if m.end <= at or m.start >= end:
            continue
        if m.start > at:
            return [], f"hole at {at:#x}: nothing is mapped there"
        if not m.shared:
            return [], f"mapping {m.describe} is private (MAP_PRIVATE), so its pages cannot be shared"
        if m.inode == 0 and not m.path.startswith("/"):
            return [], f"mapping {m.describe} has no file behind it"
        if not m.may_write:
            return [], f"mapping {m.describe} is of a file the launcher cannot write"
        pieces.append(m)
        at = m.end
        if at >= end:
            return pieces, None
    return [], f"hole at {at:#x}: nothing is mapped there"


def first_hole(maps: list[Mapping], start: int, end: int) -> int | None:
    """The first address of [start, end) that nothing maps, or None if it is all mapped."""
    at = start
    for m in sorted(maps, key=lambda m: m.start):
        if m.end <= at or m.start >= end:
            continue
        if m.start > at:
            return at
        at = m.end
        if at >= end:
            return None
    return at
