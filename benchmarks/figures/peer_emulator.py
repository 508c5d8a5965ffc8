"""A real Linux Guest's fork+exec and shell loop against the same workload under qemu-system-i386 TCG.

Goals (docs/performance.md, issue 15): fork+exec <= 0.8x and a shell loop
<= 1.0x the peer emulator's time.  Both sides boot the same busybox initramfs with the
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

The exit profiler (core/exitstats.py) is read exactly as `cuse-lguest stat`
reads it, from the block the Device publishes, at each marker: per phase, a
Guest system call's host time (goal <= 5 us) and the phase's top exits.
"""
from __future__ import annotations

import os
import pathlib
import statistics
import tempfile

from benchmarks.figure import Context, Measurement
from benchmarks.figures import _peer_qemu
from benchmarks.figures._peer_workload import FORKS, LOOP, MarkClock, build_initrd
from cuse_lguest import abi, unicorn_build
from cuse_lguest.core import exitstats
from cuse_lguest.core.exitstats import ExitStats, Snapshot, StatsDirectory

NAME = "peer_emulator"
SUMMARY = "Linux 3.18 Guest's fork+exec and shell loop vs Debian's i386 kernel under qemu-system-i386 TCG"

MEM_MB = 64                 # what the Linux Guest test gives our Guest; the peer gets the same
TIMEOUT = 600.0             # one boot-to-power-off; ours takes about 25 s on an idle machine
PHASES = (("fork", f"{FORKS} fork+exec of /bin/true", 0.8),
          ("loop", f"{LOOP // 1000}k-iteration shell loop", 1.0))


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


SYSCALL = exitstats.trap_slot(abi.SYSCALL_VECTOR, True)
SYSCALL_GOAL_US = 5.0


class _ProfiledClock(MarkClock):
    """The marker clock, plus a snapshot of the Guest's published exit stats at each marker."""

    def __init__(self, directory: StatsDirectory) -> None:
        super().__init__()
        self.directory = directory
        self.stats: dict[str, Snapshot] = {}
        self._block: ExitStats | None = None

    def feed(self, data: bytes) -> None:
        super().feed(data)
        for name in self.host.keys() - self.stats.keys():
            if self._block is None and self.directory.live():
                self._block = ExitStats.open(self.directory.live()[0])
            if self._block is not None:
                self.stats[name] = self._block.snapshot()

    def profile(self, phase: str) -> Snapshot:
        return self.stats[f"{phase}-end"].minus(self.stats[f"{phase}-start"])

    def close(self) -> None:
        if self._block is not None:
            self._block.close()


def _ours(kernel: pathlib.Path, initrd: pathlib.Path) -> _ProfiledClock:
    """Boot our Guest on the workload initrd to power-off; the marker times and exit profiles."""
    from cuse_lguest.device import Device
    from cuse_lguest.testing.launcher import Launcher
    from cuse_lguest.testing.transport import DeviceTransport

    with tempfile.TemporaryDirectory(prefix="peer-stats-") as where:
        directory = StatsDirectory(where)
        clock = _ProfiledClock(directory)
        try:
            result = Launcher(kernel, mem_mb=MEM_MB, args=["quiet"], initrd=initrd, timeout=TIMEOUT,
                              on_output=clock.feed).run(DeviceTransport(Device(stats=directory)))
        finally:
            clock.close()
    if result.error or "loop-end" not in clock.host:
        raise RuntimeError(f"Linux Guest: error {result.error}, death {result.death}\n{result.console[-2000:]}")
    return clock


def _top_exits(snap: Snapshot, seconds: float, n: int = 4) -> str:
    """The phase's costliest exit kinds: count, us each, share of the phase's host time."""
    rows = sorted((r for r in snap.rows() if r[0] < exitstats.ASYNC), key=lambda r: -r[2])[:n]
    parts = [f"{exitstats.slot_name(slot)}: {count} x {ns / count / 1e3:.1f} us ({ns / 1e9 / seconds:.0%})"
             for slot, count, ns in rows]
    guest = snap.guest_ns() / 1e9 / seconds
    return "; ".join(parts + [f"guest code+Unicorn {guest:.0%}"])


def run(ctx: Context) -> list[Measurement]:
    try:
        kernel, base = _linux_inputs()
        peer_version = _peer_qemu.qemu_version()
        vmlinuz = _peer_qemu.kernel(ctx.cache / "peer", ctx.log)
    except _peer_qemu.Unavailable as why:
        ctx.log(f"{NAME}: skipped: {why}")
        return []
    initrd = build_initrd(base, ctx.cache / "peer" / "workload-initrd.gz")
    ours: list[_ProfiledClock] = []
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
        profiles = [(c.profile(phase), c.phase(phase)[0]) for c in ours]
        per_call = [p.ns[SYSCALL] / p.count[SYSCALL] / 1e3 for p, _ in profiles if p.count[SYSCALL]]
        if per_call:
            rows.append(Measurement(
                figure=NAME, name=f"{label}: host time per Guest system call (exit profiler)", unit="us",
                samples=per_call, build=unicorn_build.current().describe(), higher_is_better=False,
                goal=f"value <= {SYSCALL_GOAL_US:g} us", goal_value=SYSCALL_GOAL_US,
                note=_top_exits(*profiles[len(profiles) // 2])))
    return rows
