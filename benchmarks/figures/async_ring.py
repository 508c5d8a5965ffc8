"""Page-table updates through the 64-slot async ring against synchronous hypercalls.

Linux batches SET_PTE in lazy-MMU mode: it queues each call in
lguest_data's ring and traps once per batch.  The Guest here queues 64
SET_PTEs and ends the batch with FLUSH_ASYNC; the baseline makes every
SET_PTE its own `int $0x1f`.  The ratio is what batching buys per update.
"""
from __future__ import annotations

from benchmarks.figure import Context, Measurement
from benchmarks.figures import _build
from benchmarks.figures._guest import CoreBench
from cuse_lguest import unicorn_build

NAME = "async_ring"
SUMMARY = "SET_PTE/s through the async ring (batches of 64) vs one synchronous hypercall each"


def run(ctx: Context) -> list[Measurement]:
    elf = _build.bench_guest()
    n = 64 * (100 if ctx.quick else 500)
    ring_k, sync_k = [], []
    with CoreBench(elf) as guest:
        guest.run("pte_ring", 640)
        guest.run("pte_sync", 640)
        for i in range(ctx.repeats):
            ctx.log(f"{NAME}: run {i + 1}/{ctx.repeats}")
            ring_k.append(n / guest.run("pte_ring", n) / 1e3)
            sync_k.append(n / guest.run("pte_sync", n) / 1e3)
    return [Measurement(figure=NAME, name="SET_PTE via the ring", unit="k/s", samples=ring_k,
                        build=unicorn_build.current().describe(),
                        baseline_name="synchronous SET_PTE", baseline_samples=sync_k)]
