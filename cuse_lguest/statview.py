"""`cuse-lguest stat`: where each live Guest's time goes, exit by exit (in the spirit of kvm_stat).

The running service publishes one exit stats block per Guest in its stats
directory (core/exitstats.py, StatsDirectory); this command maps them read
only and prints, per Guest and per kind of exit, how many happened and how
much host time they took: totals with `--once`, otherwise the rates over each
interval, refreshed until interrupted.  Blocks of services that are gone are
skipped.  Reading needs the right to read the files (root, as for the service).
"""
from __future__ import annotations

import argparse
import sys
import time

from cuse_lguest.core import exitstats
from cuse_lguest.core.exitstats import ExitStats, Snapshot, StatsDirectory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=StatsDirectory.DEFAULT,
                        help=f"the service's stats directory (default: {StatsDirectory.DEFAULT})")
    parser.add_argument("--once", action="store_true", help="print the totals once and exit")
    parser.add_argument("-i", "--interval", type=float, default=1.0, help="seconds between refreshes (default: 1)")
    parser.add_argument("-n", "--count", type=int, default=0, help="stop after this many refreshes (default: never)")


def _open_all(directory: StatsDirectory, opened: dict[str, ExitStats]) -> dict[str, ExitStats]:
    """The live blocks, keeping the ones already mapped; blocks whose file went are dropped."""
    paths = directory.live()
    for path in list(opened):
        if path not in paths:
            opened.pop(path).close()
    for path in paths:
        if path not in opened:
            try:
                opened[path] = ExitStats.open(path)
            except (OSError, ValueError):
                continue                  # went away meanwhile, or not ours
    return opened


def render(path: str, snap: Snapshot, seconds: float | None) -> list[str]:
    """One Guest's table: totals (seconds None) or rates over `seconds`."""
    head = f"guest {path.rsplit('/', 1)[-1]}: {snap.name} (launcher pid {snap.launcher_pid})"
    if seconds is None:
        lines = [head, f"  {'exit':44} {'count':>12} {'host us/exit':>13} {'host ms':>11}"]
    else:
        lines = [head + f", last {seconds:.1f} s",
                 f"  {'exit':44} {'per s':>12} {'host us/exit':>13} {'host ms/s':>11}"]
    scale = 1.0 if seconds is None else 1.0 / seconds
    rows = sorted(snap.rows(), key=lambda r: (-r[2], -r[1]))
    for slot, count, ns in rows:
        per_exit = f"{ns / count / 1e3:13.2f}" if ns else f"{'':13}"
        lines.append(f"  {exitstats.slot_name(slot):44} {count * scale:12.0f} {per_exit} {ns * scale / 1e6:11.2f}")
    if snap.count[exitstats.EMU]:
        lines.append(f"  {'guest code (in Unicorn, outside exits)':44} {'':12} {'':13} "
                     f"{snap.guest_ns() * scale / 1e6:11.2f}")
    return lines


def run(args: argparse.Namespace) -> int:
    directory = StatsDirectory(args.dir)
    opened: dict[str, ExitStats] = {}
    _open_all(directory, opened)
    if args.once:
        if not opened:
            print(f"no live guests in {args.dir}")
        for path, stats in opened.items():
            print("\n".join(render(path, stats.snapshot(), None)))
        return 0
    before = {path: s.snapshot() for path, s in opened.items()}
    shown = 0
    try:
        while not args.count or shown < args.count:
            started = time.monotonic()
            time.sleep(args.interval)
            seconds = time.monotonic() - started
            _open_all(directory, opened)
            out = [time.strftime("%H:%M:%S") + f"  {len(opened)} live guest(s) in {args.dir}"]
            now = {}
            for path, stats in opened.items():
                now[path] = snap = stats.snapshot()
                out += render(path, snap.minus(before[path]) if path in before else snap, seconds)
            before = now
            if sys.stdout.isatty():
                out.insert(0, "\x1b[H\x1b[2J")
            print("\n".join(out), flush=True)
            shown += 1
    except KeyboardInterrupt:
        pass
    return 0
