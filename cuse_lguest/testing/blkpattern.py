"""What tinyguest's `blk` scenario writes to the disk, so a test can check the backing file.

Word i (0..127, little-endian) of sector s is (s * 2654435761) ^ (i * 16777619) ^ seed,
mod 2**32 (native/guests/tinyguest/README.md, "blk pattern").
"""
from __future__ import annotations

import struct

SEED = 0x7A6B5C4D       # tinyguest's default `blkseed`
_SECTOR = struct.Struct("<128I")


def sector(s: int, seed: int = SEED) -> bytes:
    """The 512 bytes tinyguest writes to sector `s`."""
    return _SECTOR.pack(*(((s * 2654435761) ^ (i * 16777619) ^ seed) & 0xFFFFFFFF for i in range(128)))
