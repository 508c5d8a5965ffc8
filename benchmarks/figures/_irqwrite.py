"""The rows of the LHREQ_IRQ round-trip figures (cuse_vm, fuse_irq): our server against a minimal C one.

Both figures run benchmarks/native/irqwrite.c against the two servers and
get one JSON line per run (p50_ns, p99_ns); they differ only in where the
servers run and on which transport.
"""
from __future__ import annotations

from benchmarks.figure import Measurement
from cuse_lguest import unicorn_build

GOAL_RATIO = 1.5


def rows(figure: str, ours: list[dict], baseline: list[dict], baseline_name: str, note: str) -> list[Measurement]:
    """The p50 row (goal: ours <= 1.5x the baseline's) and the informational p99 row, in us."""
    common = dict(figure=figure, unit="us", build=unicorn_build.current().describe(), higher_is_better=False,
                  baseline_name=baseline_name, note=note)
    return [Measurement(name="LHREQ_IRQ write, p50", samples=[r["p50_ns"] / 1e3 for r in ours],
                        baseline_samples=[r["p50_ns"] / 1e3 for r in baseline],
                        goal=f"ratio <= {GOAL_RATIO}", goal_ratio=GOAL_RATIO, **common),
            Measurement(name="LHREQ_IRQ write, p99", samples=[r["p99_ns"] / 1e3 for r in ours],
                        baseline_samples=[r["p99_ns"] / 1e3 for r in baseline], **common)]
