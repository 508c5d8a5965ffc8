"""The peer_emulator workload: one initramfs for both kernels, and the clock that times its phases.

Both kernels boot the same busybox initramfs, LGUEST_LINUX_INITRD, with a
second gzip'ed newc archive appended whose /init replaces the test /init
(the kernel unpacks concatenated archives in order; later files win).  That
/init prints a marker line around each phase and powers off.

Each phase is timed on the host, by stamping each marker line the moment
its newline reaches us from the console: that clock is the same for both
sides, whatever either guest believes the time to be.  Each marker also
carries the guest's own /proc/uptime (10 ms steps), read with the shell's
`read` builtin so that taking it costs no fork; the figure reports it
beside the host's numbers as a cross-check.
"""
from __future__ import annotations

import gzip
import pathlib
import re

from benchmarks.figures._launch import ConsoleLines
from cuse_lguest.vm import cpio

FORKS = 100                 # fork+exec of /bin/true (a path, so ash really execs busybox)
LOOP = 200_000              # iterations of a pure shell arithmetic loop: no system calls at all

INIT = f"""#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mark() {{ read up idle </proc/uptime; echo "PEER-MARK:$1 $up"; }}
mark fork-start
i=0; while [ $i -lt {FORKS} ]; do /bin/true; i=$((i+1)); done
mark fork-end
mark loop-start
i=0; while [ $i -lt {LOOP} ]; do i=$((i+1)); done
mark loop-end
poweroff -f
"""

_MARK = re.compile(rb"PEER-MARK:([a-z]+-(?:start|end)) ([0-9.]+)")


def build_initrd(base: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """`base` with the workload /init appended as a second archive, written to `out`."""
    data = base.read_bytes()
    data += bytes(-len(data) % 512)          # the next archive must start aligned; the unpacker skips zeros
    data += gzip.compress(cpio.archive([cpio.regular("init", INIT.encode(), 0o755)]), mtime=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out


class MarkClock(ConsoleLines):
    """Notes when each marker line completed, host- and guest-side."""

    def __init__(self) -> None:
        super().__init__()
        self.host: dict[str, float] = {}     # perf_counter when the marker's line ended
        self.guest: dict[str, float] = {}    # the guest's /proc/uptime in that line

    def line(self, raw: bytes, now: float) -> None:
        found = _MARK.search(raw)
        if found:
            name = found.group(1).decode()
            self.host[name] = now
            self.guest[name] = float(found.group(2))

    def phase(self, name: str) -> tuple[float, float]:
        """(host seconds, guest seconds) from `name`-start to `name`-end; KeyError if either is missing."""
        start, end = f"{name}-start", f"{name}-end"
        return self.host[end] - self.host[start], self.guest[end] - self.guest[start]
