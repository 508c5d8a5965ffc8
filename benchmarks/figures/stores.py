"""Guest stores, loads and a mixed loop: the installed Unicorn against the stock PyPI wheel.

This is the figure that justifies native/unicorn/: stock 2.1.4 sends every store
of a guest whose RAM is executable down its slow path.  Goal: stores at least 5x
the stock wheel's rate.  Loads are the control (the patch should not move them);
the mixed loop (load, add, store) is closer to real guest code.  Each run starts
one process per build, alternating builds, so drift on this shared machine hits
both alike.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks import stock_unicorn
from benchmarks.figure import Context, Measurement

NAME = "stores"
SUMMARY = "guest stores/loads/mixed MIPS, installed Unicorn vs the stock PyPI wheel (goal: stores >= 5x)"

LOOPS = {  # loop: (row name, goal ratio)
    "stores": ("guest stores", 5.0),
    "loads": ("guest loads (control)", None),
    "mixed": ("mixed load/add/store loop", None),
}


def _run_worker(ctx: Context, pythonpath: list[str], iterations: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(pythonpath))
    out = subprocess.run([sys.executable, "-m", "benchmarks.bare_x86", str(iterations), *LOOPS],
                         cwd=ctx.root, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def run(ctx: Context) -> list[Measurement]:
    stock = str(stock_unicorn.site_dir(ctx.cache))
    iterations = 4_000_000 if ctx.quick else 20_000_000
    installed: list[dict] = []
    baseline: list[dict] = []
    for i in range(ctx.repeats):
        ctx.log(f"stores: run {i + 1}/{ctx.repeats}")
        installed.append(_run_worker(ctx, [str(ctx.root)], iterations))
        baseline.append(_run_worker(ctx, [stock, str(ctx.root)], iterations))
    rows = []
    for loop, (name, goal) in LOOPS.items():
        rows.append(Measurement(
            figure=NAME, name=name, unit="MIPS",
            samples=[r["mips"][loop] for r in installed], build=installed[0]["build"],
            baseline_name="stock PyPI wheel", baseline_samples=[r["mips"][loop] for r in baseline],
            baseline_build=baseline[0]["build"],
            goal=f"ratio >= {goal:g}" if goal else "", goal_ratio=goal,
            note="" if "stock" not in installed[0]["build"] else
                 "the installed Unicorn is stock: run ./bootstrap install"))
    return rows
