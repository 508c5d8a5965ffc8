"""A real Linux Guest booted by the C launcher on /dev/lguest served through FUSE, against the in-process path.

The FUSE transport lets the project's C launcher (native/build/launcher/
lguest32, the historical ABI) drive the genuine kernel path on this host,
no VM: `cuse-lguest serve --transport fuse` over a scratch node, the
launcher pointed at it with LGUEST_DEVICE.  The Guest is the patched Linux
3.18 lguest bzImage (LGUEST_LINUX_KERNEL) on the peer_emulator workload
initramfs (_peer_workload.py, built on LGUEST_LINUX_INITRD): boot, 100
fork+exec, a 200k-iteration shell loop, power-off.  The baseline is the
same Guest through the Python launcher library and the in-process Device
(what peer_emulator and boot measure), so the ratio is what the kernel, FUSE
and the C launcher add.  Informational rows; each phase is timed on the host
from the marker lines, boot from the launcher's start to the first marker.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import tempfile
import time

from benchmarks.figure import Context, Measurement
from benchmarks.figures import _build, _fuse
from benchmarks.figures._peer_workload import FORKS, LOOP, MarkClock, build_initrd
from cuse_lguest import unicorn_build

NAME = "fuse_linux"
SUMMARY = "Linux 3.18 Guest via the C launcher on /dev/lguest over FUSE vs the in-process Device (host)"

MEM_MB = 64
TIMEOUT = 600.0
ROWS = (("boot", "boot to the workload's first marker"), ("fork", f"{FORKS} fork+exec of /bin/true"),
        ("loop", f"{LOOP // 1000}k-iteration shell loop"))


def _inputs() -> tuple[pathlib.Path, pathlib.Path] | str:
    paths = []
    for var in ("LGUEST_LINUX_KERNEL", "LGUEST_LINUX_INITRD"):
        value = os.environ.get(var)
        if not value or not os.path.isfile(value):
            return f"{var} is unset or missing (see docs/linux-guest.md)"
        paths.append(pathlib.Path(value))
    return paths[0], paths[1]


def _spans(clock: MarkClock, start: float) -> dict[str, float]:
    return {"boot": clock.host["fork-start"] - start, "fork": clock.phase("fork")[0],
            "loop": clock.phase("loop")[0]}


def _through_fuse(launcher: pathlib.Path, node: pathlib.Path, kernel: pathlib.Path,
                  initrd: pathlib.Path) -> dict[str, float]:
    """The C launcher on `node`, its console fed to the marker clock as it arrives."""
    clock = MarkClock()
    start = time.perf_counter()
    proc = subprocess.Popen([str(launcher), f"--initrd={initrd}", str(MEM_MB), str(kernel), "quiet"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env=dict(os.environ, LGUEST_DEVICE=str(node)))
    tail = b""
    try:
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):
            clock.feed(chunk)
            tail = (tail + chunk)[-2000:]
            if time.perf_counter() - start > TIMEOUT:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if "loop-end" not in clock.host:
        raise RuntimeError(f"Linux Guest through FUSE: no loop-end marker (status {proc.returncode})\n"
                           f"{tail.decode(errors='replace')}")
    return _spans(clock, start)


def _in_process(kernel: pathlib.Path, initrd: pathlib.Path) -> dict[str, float]:
    from cuse_lguest.device import Device
    from cuse_lguest.testing.launcher import Launcher
    from cuse_lguest.testing.transport import DeviceTransport

    clock = MarkClock()
    start = time.perf_counter()
    result = Launcher(kernel, mem_mb=MEM_MB, args=["quiet"], initrd=initrd, timeout=TIMEOUT,
                      on_output=clock.feed).run(DeviceTransport(Device()))
    if result.error or "loop-end" not in clock.host:
        raise RuntimeError(f"Linux Guest in-process: error {result.error}, death {result.death}\n"
                           f"{result.console[-2000:]}")
    return _spans(clock, start)


def run(ctx: Context) -> list[Measurement]:
    inputs = _inputs()
    why = inputs if isinstance(inputs, str) else _fuse.unavailable()
    if why:
        ctx.log(f"{NAME}: skipped: {why}")
        return []
    kernel, base = inputs
    initrd = build_initrd(base, ctx.cache / "peer" / "workload-initrd.gz")
    launcher = _build.project(ctx.root, "launcher", "lguest32")
    fuse: list[dict[str, float]] = []
    local: list[dict[str, float]] = []
    repeats = 1 if ctx.quick else 3
    with tempfile.TemporaryDirectory(prefix="fuse-linux-") as tmp:
        with _fuse.ours(ctx.root, pathlib.Path(tmp) / "lguest") as node:
            for i in range(repeats):
                ctx.log(f"{NAME}: run {i + 1}/{repeats}: lguest32 on {node} (FUSE)")
                fuse.append(_through_fuse(launcher, node, kernel, initrd))
                ctx.log(f"{NAME}: run {i + 1}/{repeats}: in-process Device")
                local.append(_in_process(kernel, initrd))
    build = unicorn_build.current().describe()
    return [Measurement(figure=NAME, name=f"{label} (Linux 3.18 lguest Guest)", unit="s",
                        samples=[r[key] for r in fuse], build=build,
                        baseline_name="Python launcher, in-process Device",
                        baseline_samples=[r[key] for r in local], higher_is_better=False,
                        note="C launcher lguest32 on a FUSE node, host")
            for key, label in ROWS]
