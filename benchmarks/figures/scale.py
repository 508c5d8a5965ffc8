"""Several Guests at once: aggregate guest speed against one Guest, and host memory per Guest.

1, 2 and 4 benchmark guests, each on its own owner thread with its own
Device file, run the CRC-32 loop at the same moment (a barrier releases
them).  Unicorn drops the GIL while it emulates, so on N cores the
aggregate should approach N times one Guest; this machine has os.cpu_count()
cores, shared.  Memory: the growth of this process's anonymous RSS per
Guest while they are all alive (Unicorn, its translation cache, the core's
objects); the Guest's RAM is the launcher's (here a shared memfd) and is
not counted.  The diagnostic rows run the same loop on N bare Unicorns in N
threads: what this machine's free cores allow at that moment.
"""
from __future__ import annotations

import pathlib
import threading
import time

from benchmarks.figure import Context, Measurement
from benchmarks.figures import _build
from benchmarks.figures._guest import BareBench, CoreBench
from cuse_lguest import unicorn_build

NAME = "scale"
SUMMARY = "aggregate CRC-32 MB/s of 2 and 4 Guests at once vs 1; host anonymous RSS per Guest"
COUNTS = (1, 2, 4)


def _rss_anon_kib() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise RuntimeError("no RssAnon in /proc/self/status")


def _together(elf: pathlib.Path, count: int, n: int) -> tuple[float, float]:
    """Run `count` Guests at once: (aggregate MB/s, anonymous RSS growth per Guest in MiB)."""
    before = _rss_anon_kib()
    booted, done, closing = threading.Barrier(count + 1), threading.Barrier(count + 1), threading.Event()
    ends: list[float] = []
    failed: list[BaseException] = []

    def guest_thread() -> None:
        try:
            with CoreBench(elf) as guest:
                guest.run("compute", n // 64)
                booted.wait()
                guest.run("compute", n)
                ends.append(time.perf_counter())
                done.wait()
                closing.wait()
        except BaseException as e:
            failed.append(e)
            booted.abort()
            done.abort()
    threads = [threading.Thread(target=guest_thread) for _ in range(count)]
    for t in threads:
        t.start()
    try:
        booted.wait()
        start = time.perf_counter()
        done.wait()
        grown = (_rss_anon_kib() - before) / 1024 / count
    finally:
        closing.set()
        for t in threads:
            t.join()
    if failed:
        raise failed[0]
    return count * n / (max(ends) - start) / 1e6, grown


def _bare_together(elf: pathlib.Path, count: int, n: int) -> float:
    """The same loop on `count` bare Unicorns in as many threads: aggregate MB/s."""
    machines = [BareBench(elf) for _ in range(count)]
    for bare in machines:
        bare.call("bench_compute", n // 64)
    threads = [threading.Thread(target=bare.call, args=("bench_compute", n)) for bare in machines]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count * n / (time.perf_counter() - start) / 1e6


def run(ctx: Context) -> list[Measurement]:
    elf = _build.bench_guest()
    n = 2_000_000 if ctx.quick else 8_000_000
    rate: dict[int, list[float]] = {c: [] for c in COUNTS}
    rss: dict[int, list[float]] = {c: [] for c in COUNTS}
    bare: dict[int, list[float]] = {c: [] for c in COUNTS}
    for i in range(ctx.repeats):
        ctx.log(f"{NAME}: run {i + 1}/{ctx.repeats}")
        for count in COUNTS:
            mbs, grown = _together(elf, count, n)
            rate[count].append(mbs)
            rss[count].append(grown)
            bare[count].append(_bare_together(elf, count, n))
    build = unicorn_build.current().describe()
    rows = [Measurement(figure=NAME, name=f"{count} Guests at once, aggregate", unit="MB/s",
                        samples=rate[count], build=build, baseline_name="1 Guest",
                        baseline_samples=rate[1]) for count in COUNTS[1:]]
    rows += [Measurement(figure=NAME, name=f"{count} bare Unicorns at once, aggregate", unit="MB/s",
                         samples=bare[count], build=build, baseline_name="1 bare Unicorn",
                         baseline_samples=bare[1], note="diagnostic: the machine's free cores")
             for count in COUNTS[1:]]
    rows += [Measurement(figure=NAME, name=f"host anonymous RSS per Guest, {count} alive", unit="MiB",
                         samples=rss[count], build=build, higher_is_better=False) for count in COUNTS]
    return rows
