"""An 8-byte LHREQ_IRQ write through our FUSE server against a minimal C FUSE server, on this host.

The FUSE transport (serve --transport fuse) needs no VM: both servers mount
a one-file filesystem over a regular file in a scratch directory, side by
side, and the client (benchmarks/native/irqwrite.c, 32-bit, so 8-byte
LHREQ_IRQ writes as from the historical launcher) alternates between them.
Against ours it first sends INITIALIZE (a Guest that never runs), which
also moves the file position to 12: every LHREQ_IRQ then arrives at offset
12, the position our server tracks as vCPU 0, and is answered by the native
shortcut.  The baseline, benchmarks/native/fuse_min.c, opens with direct
I/O as ours does and accepts every write.  Goal: our p50 <= 1.5x the C
server's.  Needs root (mounting) and /dev/fuse.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from benchmarks.figure import Context, Measurement
from benchmarks.figures import _build, _irqwrite

NAME = "fuse_irq"
SUMMARY = "8-byte LHREQ_IRQ write through our FUSE server vs a minimal C FUSE server, on the host (goal <= 1.5x)"
MOUNT_WAIT_S = 60.0


def _mounted(path: pathlib.Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def _wait_mounted(path: pathlib.Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + MOUNT_WAIT_S
    while not _mounted(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args[0]} did not mount {path} (status {proc.poll()})")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen, path: pathlib.Path) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    while _mounted(path):
        subprocess.run(["umount", "-l", str(path)], check=False)


def run(ctx: Context) -> list[Measurement]:
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        ctx.log(f"{NAME}: skipped: needs root and /dev/fuse (it mounts two FUSE servers)")
        return []
    client, cmin = _build.native("irqwrite32"), _build.native("fuse_min")
    n = 300 if ctx.quick else 3000
    runs: dict[str, list[dict]] = {"ours": [], "cmin": []}
    with tempfile.TemporaryDirectory(prefix="fuse-irq-") as tmp:
        ours_node, cmin_node = pathlib.Path(tmp) / "ours", pathlib.Path(tmp) / "cmin"
        cmin_node.touch()       # libfuse mounts over it and takes the root's type from it
        env = dict(os.environ, PYTHONPATH=str(ctx.root))
        ours = subprocess.Popen([sys.executable, "-m", "cuse_lguest.cli", "serve", "--transport", "fuse",
                                 "--node", str(ours_node)], env=env, stderr=subprocess.DEVNULL)
        c = subprocess.Popen([str(cmin), str(cmin_node)], stderr=subprocess.DEVNULL)
        try:
            _wait_mounted(ours_node, ours)
            _wait_mounted(cmin_node, c)

            def measure(node: pathlib.Path, count: int, *extra: str) -> dict:
                done = subprocess.run([str(client), str(node), str(count), *extra], capture_output=True,
                                      text=True, check=True, timeout=300)
                return json.loads(done.stdout)

            measure(ours_node, 200, "lguest")           # warm-up: threads, caches, the shortcut
            measure(cmin_node, 200)
            ctx.log(f"{NAME}: {ctx.repeats} x {n} writes per server, alternating")
            for _ in range(ctx.repeats):
                runs["ours"].append(measure(ours_node, n, "lguest"))
                runs["cmin"].append(measure(cmin_node, n))
        finally:
            _stop(ours, ours_node)
            _stop(c, cmin_node)
    return _irqwrite.rows(NAME, runs["ours"], runs["cmin"], "minimal C FUSE server", f"host, {n} writes per run")
