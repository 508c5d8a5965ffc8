"""The contract between the suite and a figure module, and the numbers they exchange.

A figure module (benchmarks/figures/<name>.py) defines:

    NAME: str                        what `--only` selects (the module's name)
    SUMMARY: str                     one line for `--list` and the report
    def run(ctx: Context) -> list[Measurement]

A Measurement always carries its baseline, measured in the same run and
interleaved with it, because this machine is shared and its speed drifts: only the
ratio of two numbers taken side by side means anything.
"""
from __future__ import annotations

import dataclasses
import pathlib
import statistics
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Context:
    """What the suite gives every figure."""

    quick: bool                   # --quick: fewer and shorter runs, for a smoke check
    repeats: int                  # how many interleaved runs of figure and baseline
    root: pathlib.Path            # the project checkout
    cache: pathlib.Path           # downloads and builds kept between runs
    log: Callable[[str], None]    # progress, to stderr


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One row of the table: a figure, its baseline, and the goal on their ratio (or on the value)."""

    figure: str                   # the module's NAME
    name: str                     # e.g. "guest stores"
    unit: str                     # e.g. "MIPS", "us"
    samples: list[float]          # one per run
    build: str                    # the Unicorn build the samples ran on
    baseline_name: str = ""       # e.g. "stock PyPI wheel"; empty when the goal is absolute
    baseline_samples: list[float] = dataclasses.field(default_factory=list)
    baseline_build: str = ""
    higher_is_better: bool = True
    goal: str = ""                # e.g. "ratio >= 5"; empty for an informational row
    goal_ratio: float | None = None   # the ratio the goal asks for (>= if higher is better)
    goal_value: float | None = None   # or the bound on the value itself (e.g. p50 < 20 us)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def baseline_median(self) -> float | None:
        return statistics.median(self.baseline_samples) if self.baseline_samples else None

    @property
    def ratio(self) -> float | None:
        """value / baseline, so above 1 means faster when higher is better."""
        b = self.baseline_median
        return self.median / b if b else None

    @property
    def goal_met(self) -> bool | None:
        if self.goal_ratio is not None and self.ratio is not None:
            return self.ratio >= self.goal_ratio if self.higher_is_better else self.ratio <= self.goal_ratio
        if self.goal_value is not None:
            return self.median >= self.goal_value if self.higher_is_better else self.median < self.goal_value
        return None

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(median=self.median, baseline_median=self.baseline_median, ratio=self.ratio,
                 goal_met=self.goal_met, spread=[min(self.samples), max(self.samples)],
                 baseline_spread=[min(self.baseline_samples), max(self.baseline_samples)]
                 if self.baseline_samples else None)
        return d
