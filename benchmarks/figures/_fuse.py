"""Our service, or another FUSE server, mounted over a scratch file for a figure that runs on the host.

Figures that measure the FUSE transport (fuse_irq, fuse_linux) need no VM:
they start `cuse-lguest serve --transport fuse --node PATH` (or a C server)
and point the client at PATH.  Whatever happens, nothing stays mounted.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys
import time
from typing import Iterator

from cuse_lguest import children

MOUNT_WAIT_S = 60.0


def unavailable() -> str | None:
    """Why FUSE figures cannot run here, or None."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        return "needs root and /dev/fuse (it mounts FUSE servers)"
    return None


def _mounted(path: pathlib.Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@contextlib.contextmanager
def mounted(argv: list[str], path: pathlib.Path, env: dict | None = None) -> Iterator[pathlib.Path]:
    """Run the server `argv` until it has mounted `path`; stop it and detach `path` afterwards."""
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + MOUNT_WAIT_S
        while not _mounted(path):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} did not mount {path} (status {proc.poll()})")
            time.sleep(0.05)
        yield path
    finally:
        children.stop(proc, 15)
        while _mounted(path):
            subprocess.run(["umount", "-l", str(path)], check=False)


def ours(root: pathlib.Path, node: pathlib.Path) -> contextlib.AbstractContextManager[pathlib.Path]:
    """`cuse-lguest serve --transport fuse` of the checkout at `root`, serving `node`."""
    return mounted([sys.executable, "-m", "cuse_lguest.cli", "serve", "--transport", "fuse", "--node", str(node)],
                   node, env=dict(os.environ, PYTHONPATH=str(root)))
