"""Guest compute under the full core against the same code on a bare Unicorn.

The benchmark guest's CRC-32 loop (loads, a table lookup, a store and a
branch per byte: small blocks, like kernel code) runs in a Guest booted
through the Device, and the very same function, byte for byte, is called on
a bare Unicorn with no hooks.  Goal: the core keeps >= 0.95 of bare speed.
The note says how the core's vCPU is stopped (cpu/stopper.py): the
block-stop flag, which costs nothing per block, or, on a Unicorn without our
patches, the block hook, which costs about a fifth.

Both sides are timed in CPU time of the thread that runs them (the Guest
runs on the thread that reads the Device), because the figure is the work
the core adds: on a shared machine wall time mostly measures the neighbours
(pairwise wall-time ratios from 0.5 to 1.7 in one run at load 10).  The wall
time ratio is in the note.
"""
from __future__ import annotations

import statistics
import time

from benchmarks.figure import Context, Measurement
from benchmarks.figures import _build
from benchmarks.figures._guest import BareBench, CoreBench
from cuse_lguest import unicorn_build
from cuse_lguest.cpu.stopper import FLAG, HOOK, block_stop_available

NAME = "guest_compute"
SUMMARY = "CRC-32 loop in a Guest under the core vs the same code on bare Unicorn (goal >= 0.95)"


def run(ctx: Context) -> list[Measurement]:
    elf = _build.bench_guest()
    n = 4_000_000 if ctx.quick else 24_000_000
    bare = BareBench(elf)
    core_mb, bare_mb, wall = [], [], []
    with CoreBench(elf) as guest:
        stop = FLAG if block_stop_available() else HOOK
        guest.run("compute", n // 16)          # translate everything once, on every machine
        bare.call("bench_compute", n // 16)
        for i in range(ctx.repeats):
            ctx.log(f"{NAME}: run {i + 1}/{ctx.repeats}")
            started = time.perf_counter()
            core_mb.append(n / guest.run("compute", n, clock=time.thread_time) / 1e6)
            middle = time.perf_counter()
            bare_mb.append(n / bare.call("bench_compute", n, clock=time.thread_time) / 1e6)
            wall.append((time.perf_counter() - middle) / (middle - started))
    build = unicorn_build.current().describe()
    return [
        Measurement(figure=NAME, name="CRC-32 loop, Guest under the core", unit="MB/s",
                    samples=core_mb, build=build, baseline_name="bare Unicorn",
                    baseline_samples=bare_mb, goal="ratio >= 0.95", goal_ratio=0.95,
                    note=f"CPU time; stop: {stop}; wall-time ratio {statistics.median(wall):.2f}"),
    ]
