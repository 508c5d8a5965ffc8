"""`python -m benchmarks`: run the figures, print the markdown table, write it and JSON.

    python -m benchmarks                 every figure (the whole suite must fit in 10 minutes)
    python -m benchmarks --only stores   one figure (repeatable)
    python -m benchmarks --quick         fewer, shorter runs: a smoke check, not a result
    python -m benchmarks --list          the figures and what they measure

Results go to benchmarks/results/latest.md and latest.json (not committed; paste
the table into docs/performance.md's "Latest table").  A figure that crashes is
reported as failed and makes the exit status 1; an unmet goal is only reported.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import os
import pathlib
import pkgutil
import sys
import time
import traceback
from types import ModuleType

from benchmarks import figures, machine, report
from benchmarks.figure import Context, Measurement

ROOT = pathlib.Path(__file__).resolve().parent.parent


def discover() -> dict[str, ModuleType]:
    mods = (importlib.import_module(f"benchmarks.figures.{m.name}")
            for m in pkgutil.iter_modules(figures.__path__) if not m.name.startswith("_"))
    return {mod.NAME: mod for mod in sorted(mods, key=lambda mod: mod.NAME)}


def log(msg: str) -> None:
    print(f"benchmarks: {msg}", file=sys.stderr, flush=True)


def parse(argv: list[str], names: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", choices=names, metavar="NAME",
                   help=f"run only this figure (repeatable): {', '.join(names)}")
    p.add_argument("--quick", action="store_true", help="fewer, shorter runs (a smoke check)")
    p.add_argument("--repeats", type=int, help="runs per figure (default 5, or 3 with --quick)")
    p.add_argument("--list", action="store_true", help="list the figures and exit")
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results",
                   help="where latest.md and latest.json go")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    found = discover()
    args = parse(sys.argv[1:] if argv is None else argv, list(found))
    if args.list:
        for name, mod in found.items():
            print(f"{name:12} {mod.SUMMARY}")
        return 0
    repeats = args.repeats or (3 if args.quick else 5)
    cache = pathlib.Path(os.environ.get("CUSE_LGUEST_CACHE", "/var/cache/cuse-lguest")) / "bench"
    ctx = Context(quick=args.quick, repeats=repeats, root=ROOT, cache=cache, log=log)
    meta = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine.describe(), "git": machine.git_revision(ROOT),
            "repeats": repeats, "quick": args.quick}
    rows: list[Measurement] = []
    failures: dict[str, str] = {}
    for name in args.only or list(found):
        start = time.monotonic()
        try:
            rows += found[name].run(ctx)
        except Exception as e:  # one broken figure must not hide the others
            traceback.print_exc()
            failures[name] = f"{type(e).__name__}: {e}"
        log(f"{name}: {time.monotonic() - start:.0f} s")
    print(report.write(args.out, meta, rows, failures), end="")
    log(f"wrote {args.out / 'latest.md'} and latest.json")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
