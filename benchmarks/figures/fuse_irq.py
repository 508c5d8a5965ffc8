"""An 8-byte LHREQ_IRQ write through our FUSE server against a minimal C FUSE server, on this host.

The FUSE transport (serve --transport fuse) needs no VM: both servers mount
a one-file filesystem over a regular file in a scratch directory, side by
side, and one client process (benchmarks/native/irqwrite.c --pair, 32-bit,
so 8-byte LHREQ_IRQ writes as from the historical launcher) alternates
between them in chunks of CHUNK writes, so that both are measured from the
same CPU under the same load; each run gives one p50 per server, and the
ratio is taken over the runs' medians.  Against ours it first sends
INITIALIZE (a Guest that never runs), which
also moves the file position to 12: every LHREQ_IRQ then arrives at offset
12, the position our server tracks as vCPU 0, and is answered by the native
shortcut.  The baseline, benchmarks/native/fuse_min.c, opens with direct
I/O as ours does and accepts every write.  Goal: our p50 <= 1.5x the C
server's.  Needs root (mounting) and /dev/fuse.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import tempfile

from benchmarks.figure import Context, Measurement
from benchmarks.figures import _build, _fuse, _irqwrite

NAME = "fuse_irq"
CHUNK = 50          # writes to one server before the client turns to the other
SUMMARY = "8-byte LHREQ_IRQ write through our FUSE server vs a minimal C FUSE server, on the host (goal <= 1.5x)"


def run(ctx: Context) -> list[Measurement]:
    why = _fuse.unavailable()
    if why:
        ctx.log(f"{NAME}: skipped: {why}")
        return []
    client, cmin = _build.native("irqwrite32"), _build.native("fuse_min")
    n = 300 if ctx.quick else 3000
    runs: dict[str, list[dict]] = {"ours": [], "cmin": []}

    def measure(ours: pathlib.Path, cmin: pathlib.Path, count: int) -> None:
        done = subprocess.run([str(client), "--pair", str(ours), str(cmin), str(count), str(CHUNK)],
                              capture_output=True, text=True, check=True, timeout=300)
        ours_run, cmin_run = (json.loads(line) for line in done.stdout.splitlines())
        runs["ours"].append(ours_run)
        runs["cmin"].append(cmin_run)

    with tempfile.TemporaryDirectory(prefix="fuse-irq-") as tmp:
        cmin_node = pathlib.Path(tmp) / "cmin"
        cmin_node.touch()       # libfuse mounts over it and takes the root's type from it
        with _fuse.ours(ctx.root, pathlib.Path(tmp) / "ours") as ours_node, \
                _fuse.mounted([str(cmin), str(cmin_node)], cmin_node):
            measure(ours_node, cmin_node, 200)          # warm-up: threads, caches, the shortcut
            runs["ours"].clear()
            runs["cmin"].clear()
            ctx.log(f"{NAME}: {ctx.repeats * 3} runs x {n} writes per server, alternating every {CHUNK}")
            for _ in range(ctx.repeats * 3):
                measure(ours_node, cmin_node, n)
    return _irqwrite.rows(NAME, runs["ours"], runs["cmin"], "minimal C FUSE server",
                          f"host, {n} writes per server per run, interleaved by {CHUNK}")
