"""A real Linux Guest's fork+exec and shell loop against the same workload under qemu-system-i386 TCG.

Goals (docs/performance.md): fork+exec <= 1.0x and a shell loop <= 1.5x the
peer emulator's time.  Both sides boot the same busybox initramfs with the
same /init (_peer_workload.py): 100 fork+exec of /bin/true, then a
200 000-iteration shell loop, each between two marker lines.

* Ours: the patched Linux 3.18 lguest bzImage (LGUEST_LINUX_KERNEL) on
  LGUEST_LINUX_INITRD, through the Python launcher library, the in-process
  Device and the core, as tests/host/test_linux_guest.py runs it.  Needs root,
  like every use of Device.
* The peer: Debian's i386 kernel (linux-image-686, fetched once into the
  cache; _peer_qemu.py) under qemu-system-i386 with TCG and one vCPU.

Boot time is not in either number: only the span between a phase's two
markers, stamped on the host as each line arrives.  The two sides alternate
within each repeat, so machine drift hits both alike.  The guests' own
/proc/uptime spans are in each row's note as a cross-check.
"""
from __future__ import annotations

import os
import pathlib
import statistics

from benchmarks.figure import Context, Measurement
from benchmarks.figures import _peer_qemu
from benchmarks.figures._peer_workload import FORKS, LOOP, MarkClock, build_initrd
from cuse_lguest import unicorn_build

NAME = "peer_emulator"
SUMMARY = "Linux 3.18 Guest's fork+exec and shell loop vs Debian's i386 kernel under qemu-system-i386 TCG"

MEM_MB = 64                 # what the Linux Guest test gives our Guest; the peer gets the same
TIMEOUT = 600.0             # one boot-to-power-off; ours takes about 25 s on an idle machine
PHASES = (("fork", f"{FORKS} fork+exec of /bin/true", 1.0),
          ("loop", f"{LOOP // 1000}k-iteration shell loop", 1.5))


def _linux_inputs() -> tuple[pathlib.Path, pathlib.Path]:
    """LGUEST_LINUX_KERNEL and LGUEST_LINUX_INITRD, or Unavailable saying which is missing."""
    paths = []
    for var in ("LGUEST_LINUX_KERNEL", "LGUEST_LINUX_INITRD"):
        value = os.environ.get(var)
        if not value or not os.path.isfile(value):
            raise _peer_qemu.Unavailable(f"{var} is unset or missing (see docs/linux-guest.md)")
        paths.append(pathlib.Path(value))
    if os.geteuid() != 0:
        raise _peer_qemu.Unavailable("needs root: the Device maps launcher RAM via /proc/<pid>/map_files")
    return paths[0], paths[1]


def _ours(kernel: pathlib.Path, initrd: pathlib.Path) -> MarkClock:
    """Boot our Guest on the workload initrd to power-off; the marker times."""
    from cuse_lguest.device import Device
    from cuse_lguest.testing.launcher import Launcher
    from cuse_lguest.testing.transport import DeviceTransport

    clock = MarkClock()
    result = Launcher(kernel, mem_mb=MEM_MB, args=["quiet"], initrd=initrd, timeout=TIMEOUT,
                      on_output=clock.feed).run(DeviceTransport(Device()))
    if result.error or "loop-end" not in clock.host:
        raise RuntimeError(f"Linux Guest: error {result.error}, death {result.death}\n{result.console[-2000:]}")
    return clock


def run(ctx: Context) -> list[Measurement]:
    try:
        kernel, base = _linux_inputs()
        peer_version = _peer_qemu.qemu_version()
        vmlinuz = _peer_qemu.kernel(ctx.cache / "peer", ctx.log)
    except _peer_qemu.Unavailable as why:
        ctx.log(f"{NAME}: skipped: {why}")
        return []
    initrd = build_initrd(base, ctx.cache / "peer" / "workload-initrd.gz")
    ours: list[MarkClock] = []
    peer: list[MarkClock] = []
    repeats = 1 if ctx.quick else 3
    for i in range(repeats):
        ctx.log(f"{NAME}: run {i + 1}/{repeats}: our Linux Guest")
        ours.append(_ours(kernel, initrd))
        ctx.log(f"{NAME}: run {i + 1}/{repeats}: {vmlinuz.name} under {peer_version} TCG")
        peer.append(_peer_qemu.run(vmlinuz, initrd, MEM_MB, TIMEOUT))
    rows = []
    for phase, label, goal in PHASES:
        in_guest = [statistics.median(c.phase(phase)[1] for c in side) for side in (ours, peer)]
        rows.append(Measurement(
            figure=NAME, name=f"{label} (Linux 3.18 lguest Guest)", unit="s",
            samples=[c.phase(phase)[0] for c in ours], build=unicorn_build.current().describe(),
            baseline_name=f"{vmlinuz.name} under qemu-system-i386 TCG",
            baseline_samples=[c.phase(phase)[0] for c in peer], baseline_build=f"{peer_version} TCG",
            higher_is_better=False, goal=f"ratio <= {goal}", goal_ratio=goal,
            note=f"in-guest /proc/uptime: {in_guest[0]:.2f} s vs {in_guest[1]:.2f} s"))
    return rows
