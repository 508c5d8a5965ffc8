"""From LHREQ_IRQ (Device.write) to the first instruction of the Guest's handler.

A helper thread writes LHREQ_IRQ through the in-process Device, as a
launcher's helper does, while the owner thread runs the Guest.  It stamps the
TSC just before the write; the Guest's handler stamps it (rdtsc) on entry, so
the figure covers exactly the host's part: the IRQ bookkeeping, the kick
(native stop hook, or waking a halted vCPU), leaving Unicorn, building the
interrupt frame and re-entering.  Two Guests' states:

* spinning: a busy loop with interrupts on (the kick must stop Unicorn);
* halted: asleep in HALT (the kick must wake the vCPU thread).

Between injections the helper sleeps (1 ms when the Guest halts, so that it
is really asleep again).  Goal: p50 < 100 us.

Both states are measured twice: with the core in this process, and with the
Guest in a worker process as `cuse-lguest serve` runs it
(cuse_lguest/worker/), where the IRQ crosses the process boundary through
the IRQ line's shared page and wake-up pipe.

`serve` answers LHREQ_IRQ in C (cuse/_build.py): the transport calls the
IRQ line's lg_irq_inject, with no Python on the injecting side.  The rows
above go through Device.write instead, whose Python (about 20 us before the
kick) a launcher under `serve` never pays; one more row injects a halted
Guest in a worker the transport's way, to show what a launcher sees.

The halted rows' baseline is the floor under the wake-up: one Python thread
waking another through a threading.Condition, the way a halted vCPU sleeps,
stamped the same way, with no Guest at all.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from benchmarks.figure import Context, Measurement
from benchmarks.figures import _build, _stats
from benchmarks.figures._guest import CoreBench
from cuse_lguest import unicorn_build
from cuse_lguest.worker.proxy import WorkerFactory

NAME = "irq_injection"
SUMMARY = "LHREQ_IRQ write -> Guest handler, spinning and halted Guest, p50/p99 (goal p50 < 100 us)"
LINE = 5


def _inject(guest: CoreBench, n: int, gap: float, out: list[int], failed: list[BaseException],
            send: Callable[[int], int]) -> None:
    try:
        # An IRQ raised before the Guest unblocked its line would stay pending
        # for good: unblocking is a plain store to lguest_data, which no host
        # ever saw (lguest's own "FIXME: If it's pending?").  So wait for it.
        deadline = time.monotonic() + 10
        while guest.irq_blocked(LINE):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Guest never unblocked IRQ {LINE}")
            time.sleep(20e-6)
        for i in range(n):
            deadline = time.monotonic() + 10
            while guest["handled"] != i:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the Guest took {i} interrupts, not {i + 1}")
                time.sleep(20e-6)
            time.sleep(gap)
            start = _stats.rdtsc()
            if send(LINE) != 0:
                raise RuntimeError("LHREQ_IRQ refused")
            while guest["handled"] != i + 1:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"interrupt {i + 1} never reached the handler")
                time.sleep(20e-6)
            out.append(guest.stamp - start)
    except BaseException as e:   # reported by the owner thread
        failed.append(e)


def _condition_wake(n: int) -> list[float]:
    """The halted rows' baseline: stamp, notify a Condition, the waiter stamps when it runs."""
    cond = threading.Condition()
    state = {"asked": 0, "seen": 0, "stamp": 0}

    def waiter() -> None:
        with cond:
            while state["seen"] < n:
                cond.wait_for(lambda: state["asked"] != state["seen"])
                state["stamp"], state["seen"] = _stats.rdtsc(), state["asked"]
    thread = threading.Thread(target=waiter)
    thread.start()
    ticks = []
    for i in range(1, n + 1):
        time.sleep(1e-3)
        start = _stats.rdtsc()
        with cond:
            state["asked"] = i
            cond.notify()
        while state["seen"] != i:
            time.sleep(20e-6)
        ticks.append(state["stamp"] - start)
    thread.join()
    return _stats.ticks_to_us(ticks)


def _round(guest: CoreBench, mode: str, n: int, shortcut: bool = False) -> list[float]:
    ticks: list[int] = []
    failed: list[BaseException] = []
    guest["irq"], guest["handled"] = LINE, 0
    gap = 1e-3 if mode == "irq_halt" else 200e-6
    send = guest.irq_shortcut if shortcut else guest.irq
    helper = threading.Thread(target=_inject, args=(guest, n, gap, ticks, failed, send))
    helper.start()
    guest.run(mode, n)
    helper.join()
    if failed:
        raise failed[0]
    return _stats.ticks_to_us(ticks)


def run(ctx: Context) -> list[Measurement]:
    elf = _build.bench_guest()
    n = 60 if ctx.quick else 300
    kinds = [(mode, place) for place in ("in-process", "worker") for mode in ("irq_spin", "irq_halt")]
    kinds.append(("irq_halt", "worker, C shortcut"))
    samples: dict[tuple[str, str], dict[int, list[float]]] = {k: {50: [], 99: []} for k in kinds}
    wake: dict[int, list[float]] = {50: [], 99: []}
    workers = WorkerFactory()
    try:
        with CoreBench(elf) as local, CoreBench(elf, factory=workers) as remote:
            guests = {"in-process": local, "worker": remote, "worker, C shortcut": remote}
            for mode, place in kinds:
                _round(guests[place], mode, 5, place.endswith("shortcut"))
            for i in range(ctx.repeats):
                ctx.log(f"{NAME}: run {i + 1}/{ctx.repeats}")
                runs = [(wake, _condition_wake(n))]
                runs += [(samples[mode, place], _round(guests[place], mode, n, place.endswith("shortcut")))
                         for mode, place in kinds]
                for by_p, lat in runs:
                    for p, into in by_p.items():
                        into.append(_stats.percentile(lat, p))
    finally:
        workers.close()
    build = unicorn_build.current().describe()
    labels = {"irq_spin": "spinning Guest", "irq_halt": "halted Guest"}
    rows = []
    for mode, place in kinds:
        label = labels[mode] + {"in-process": "", "worker": " in a worker",
                                "worker, C shortcut": " in a worker, LHREQ_IRQ through the C shortcut"}[place]
        for p in (50, 99):
            baseline = {"baseline_name": "Python Condition wake",
                        "baseline_samples": wake[p]} if mode == "irq_halt" else {}
            rows.append(Measurement(
                figure=NAME, name=f"LHREQ_IRQ -> handler, {label}, p{p}", unit="us",
                samples=samples[mode, place][p], build=build, higher_is_better=False, **baseline,
                goal="p50 < 100 us" if p == 50 else "", goal_value=100.0 if p == 50 else None,
                note=f"{n} IRQs per run"))
    return rows
