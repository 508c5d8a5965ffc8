"""Console round trip: a line typed to the Guest and its echo, in shared and in mirror mode.

tinyguest's `echo` scenario sends every byte it receives on the console's
receive queue straight back on its transmit queue.  One round trip is the
whole virtio conversation in both directions: the launcher's input worker
fills a posted buffer and raises the queue's IRQ, the Guest takes it, copies
the bytes to a transmit buffer and kicks, the eventfd wakes the output worker,
and the text reaches the console.  In mirror mode every step adds a sync
point (pull on the IRQ, push before the kick), which is what this figure
prices.  The clock starts when the line is handed to the input worker and
stops when its echo is on the console; each line is unique, so no echo can be
mistaken for another.
"""
from __future__ import annotations

import time
from collections.abc import Iterator

from benchmarks.figure import Context, Measurement
from benchmarks.figures import _build
from benchmarks.figures._stats import percentile
from cuse_lguest import unicorn_build
from cuse_lguest.device import Device
from cuse_lguest.testing.launcher import Launcher, WaitFor
from cuse_lguest.testing.transport import DeviceTransport

NAME = "console_rt"
SUMMARY = "a console line echoed by the Guest, shared against mirror mode (p50 and p99)"


def _round_trips(kernel, lines: int, private: bool) -> list[float]:
    """Microseconds per echoed line, one tinyguest boot."""
    samples: list[float] = []

    def typed() -> Iterator[bytes | WaitFor]:
        yield WaitFor(b"echo ready")
        for i in range(lines):
            line = f"rt{i:06d}\n".encode()
            start = time.perf_counter()
            yield line
            yield WaitFor(line)          # resumes once the echo is on the console
            samples.append((time.perf_counter() - start) * 1e6)
        yield b"quit\n"

    result = Launcher(kernel, mem_mb=32, args=["test=echo"], console_input=typed(), timeout=120,
                      private=private).run(DeviceTransport(Device()))
    if result.error or result.death != "CRASH: tinyguest: done" or len(samples) != lines:
        raise RuntimeError(f"echo ({'mirror' if private else 'shared'}): error {result.error}, "
                           f"death {result.death}, {len(samples)}/{lines} lines\n{result.console[-2000:]}")
    return samples


def run(ctx: Context) -> list[Measurement]:
    kernel = _build.project(ctx.root, "guests", "tinyguest.elf")
    lines = 50 if ctx.quick else 200
    p50: dict[bool, list[float]] = {False: [], True: []}
    p99: dict[bool, list[float]] = {False: [], True: []}
    for i in range(ctx.repeats):
        ctx.log(f"{NAME}: run {i + 1}/{ctx.repeats}")
        for private in (False, True):
            rts = _round_trips(kernel, lines, private)
            p50[private].append(percentile(rts, 50))
            p99[private].append(percentile(rts, 99))
    build = unicorn_build.current().describe()
    rows = []
    for stat, values in (("p50", p50), ("p99", p99)):
        rows.append(Measurement(figure=NAME, name=f"console line echoed, {stat} (shared, {lines} lines per run)",
                                unit="us", samples=values[False], build=build, higher_is_better=False))
        rows.append(Measurement(figure=NAME, name=f"console line echoed, {stat} (mirror, {lines} lines per run)",
                                unit="us", samples=values[True], build=build, higher_is_better=False,
                                baseline_name="shared mode", baseline_samples=values[False]))
    return rows
