"""Finding the launcher's guest RAM in its own address space.

A launcher hands us `base`, an address in *its* process.  To use the same
pages without copying we look up which mappings cover
[base, base + pfnlimit*4096) in /proc/<pid>/maps.  Only MAP_SHARED mappings
of a real object (a memfd, shm or ordinary file) can be opened again through
/proc/<pid>/map_files and still be the launcher's pages; a private mapping
would give us a copy that silently diverges, so it is refused.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/<pid>/maps."""
    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def describe(self) -> str:
        return f"{self.start:#x}-{self.end:#x} {self.perms} {self.path or '[anon]'}"


def parse_maps(text: str) -> list[Mapping]:
    """Parse the text of /proc/<pid>/maps (the path may contain spaces)."""
    out = []
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 5:
            continue
        lo, hi = parts[0].split("-")
        out.append(Mapping(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16),
                           int(parts[4]), parts[5] if len(parts) > 5 else ""))
    return out


def covering(maps: list[Mapping], start: int, end: int) -> tuple[list[Mapping], str | None]:
    """The mappings that cover [start, end) without a hole, or ([], why not).

    Every piece must be shared and file-backed: that is what makes the pages
    the launcher's own pages when we map them again.
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
        pieces.append(m)
        at = m.end
        if at >= end:
            return pieces, None
    return [], f"hole at {at:#x}: nothing is mapped there"
