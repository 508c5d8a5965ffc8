"""A real Linux Guest's fork+exec and shell loop against the same workload under qemu-system-i386 TCG.

Goals (docs/performance.md): fork+exec <= 1.0x and a shell loop <= 1.5x the
peer emulator's time.  Not measured yet, and skipped with the reason, because
both sides need things this checkout does not have:

* LGUEST_LINUX_KERNEL: a 3.x i386 lguest bzImage (the Guest under our host);
* LGUEST_LINUX_INITRD: an initramfs whose /init runs the workload from the
  kernel command line and prints timing markers (the same image serves both
  kernels);
* LGUEST_PEER_KERNEL: Debian's i386 kernel (linux-image-686) for
  qemu-system-i386, and qemu-system-i386 on PATH.

The runner itself is the missing piece: until an initramfs with that
contract exists, this figure only reports what is missing.
"""
from __future__ import annotations

import os
import shutil

from benchmarks.figure import Context, Measurement

NAME = "peer_emulator"
SUMMARY = "Linux fork+exec and shell loop vs qemu-system-i386 TCG (skipped: see the module's docstring)"


def missing() -> list[str]:
    """What stands between this machine and the figure."""
    needs = [name for name in ("LGUEST_LINUX_KERNEL", "LGUEST_LINUX_INITRD", "LGUEST_PEER_KERNEL")
             if not os.environ.get(name) or not os.path.exists(os.environ[name])]
    if shutil.which("qemu-system-i386") is None:
        needs.append("qemu-system-i386")
    return needs + ["an initramfs contract for the workload and its markers (not written yet)"]


def run(ctx: Context) -> list[Measurement]:
    ctx.log(f"{NAME}: skipped: needs {'; '.join(missing())}")
    return []
