"""The suite's output: a markdown table for people and JSON for tools, written side by side."""
from __future__ import annotations

import json
import pathlib

from benchmarks.figure import Measurement


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def _cell(median: float | None, samples: list[float], unit: str) -> str:
    if median is None:
        return ""
    return f"{_fmt(median)} {unit} [{_fmt(min(samples))}–{_fmt(max(samples))}]"


def markdown(meta: dict, rows: list[Measurement], failures: dict[str, str]) -> str:
    m = meta["machine"]
    lines = [
        f"Run {meta['started']} on {m['cpu']}, {m['cores']} cores, load {' '.join(map(str, m['loadavg']))}, "
        f"{m['kernel']}; git {meta['git']}; {meta['repeats']} runs each{' (quick)' if meta['quick'] else ''}. "
        "Cells: median [min–max].",
        "",
        "| figure | measure | value | baseline | ratio | goal | met | Unicorn |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        baseline = _cell(r.baseline_median, r.baseline_samples, r.unit)
        if r.baseline_name:
            baseline = f"{r.baseline_name}: {baseline}"
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        met = {True: "yes", False: "**no**", None: ""}[r.goal_met]
        build = r.build + (f" vs {r.baseline_build}" if r.baseline_build else "")
        measure = r.name + (f" ({r.note})" if r.note else "")
        lines.append(f"| {r.figure} | {measure} | {_cell(r.median, r.samples, r.unit)} | {baseline} | "
                     f"{ratio} | {r.goal} | {met} | {build} |")
    for figure, error in failures.items():
        lines.append(f"| {figure} | **failed**: {error} | | | | | | |")
    return "\n".join(lines) + "\n"


def write(out_dir: pathlib.Path, meta: dict, rows: list[Measurement], failures: dict[str, str]) -> str:
    """Write latest.md and latest.json into out_dir and return the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(meta, rows, failures)
    (out_dir / "latest.md").write_text(text)
    doc = dict(meta, figures=[r.to_json() for r in rows], failures=failures)
    (out_dir / "latest.json").write_text(json.dumps(doc, indent=2) + "\n")
    return text
