"""Which kernel transport serves /dev/lguest here: CUSE, or FUSE where CUSE is missing.

CUSE gives a genuine character device and is the reference; FUSE gives the
same requests for a regular file mounted over the node path (see
cuse/fusenode.py and docs/architecture.md), for kernels built without CUSE.
This module only looks at which control devices exist, so it imports
nothing of libfuse and serves `serve`, `demo` and `doctor` alike.
"""
from __future__ import annotations

import pathlib

CUSE_DEVICE = pathlib.Path("/dev/cuse")
FUSE_DEVICE = pathlib.Path("/dev/fuse")
CHOICES = ("auto", "cuse", "fuse")


class NoTransport(Exception):
    """Neither transport can be used; str(e) says why, in one sentence."""


def choose(wanted: str = "auto") -> str:
    """'cuse' or 'fuse' for `wanted` ('auto': CUSE when it exists, else FUSE)."""
    cuse, fuse = CUSE_DEVICE, FUSE_DEVICE
    if wanted == "cuse" or (wanted == "auto" and cuse.exists()):
        return "cuse"           # a missing /dev/cuse is reported by open_cuse with its fix
    if wanted == "fuse" or fuse.exists():
        return "fuse"
    raise NoTransport(f"neither {cuse} nor {fuse} exists: this kernel has neither CUSE nor FUSE "
                      "(try 'modprobe cuse' or 'modprobe fuse').")
