"""From INITIALIZE to the Guest's first instructions: a Guest in a worker process against one in-process.

`cuse-lguest serve` runs each Guest in a worker forked from a preloaded
zygote (cuse_lguest/worker/).  What that costs a launcher shows here: the
time from just before the INITIALIZE write to the return of the first
read(), which runs the benchmark guest from its entry point to its first
NOTIFY, a few dozen instructions later (one LGUEST_INIT, its trap table).
The span covers taking the memory handles, forking and confining the
worker, mapping guest RAM, building the CPU, and that first short run.  The baseline is the
same with the core in this process.  No goal: the figure says what
isolation costs at start-up.
"""
from __future__ import annotations

from benchmarks.figure import Context, Measurement
from benchmarks.figures import _build, _stats
from benchmarks.figures._guest import CoreBench
from cuse_lguest import unicorn_build
from cuse_lguest.worker.proxy import WorkerFactory

NAME = "startup"
SUMMARY = "INITIALIZE -> the Guest's first instructions, worker process vs in-process (ms)"


def _start(elf, factory) -> float:
    with CoreBench(elf, factory=factory) as guest:
        return guest.startup * 1000


def run(ctx: Context) -> list[Measurement]:
    elf = _build.bench_guest()
    n = 3 if ctx.quick else 10
    workers = WorkerFactory()
    try:
        _start(elf, workers), _start(elf, None)          # warm both paths up
        worker, local = [], []
        for i in range(ctx.repeats):
            ctx.log(f"{NAME}: run {i + 1}/{ctx.repeats}")
            worker.append(_stats.percentile([_start(elf, workers) for _ in range(n)], 50))
            local.append(_stats.percentile([_start(elf, None) for _ in range(n)], 50))
    finally:
        workers.close()
    return [Measurement(figure=NAME, name="INITIALIZE -> first NOTIFY, Guest in a worker, p50",
                        unit="ms", samples=worker, build=unicorn_build.current().describe(),
                        baseline_name="the core in-process", baseline_samples=local,
                        higher_is_better=False, note=f"{n} Guests per run")]
