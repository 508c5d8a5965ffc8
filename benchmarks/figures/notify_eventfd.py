"""From the Guest's NOTIFY to the eventfd being readable in another process.

This is a virtqueue kick's path: the Guest traps with NOTIFY, the core finds
the value in the eventfd table (registered with LHREQ_EVENTFD through the
Device) and signals it without leaving the Guest, and the launcher's helper
process wakes up.  The helper here is benchmarks/native/evpeer.c, a C
process that blocks in read() on its copy of the eventfd.  Both ends stamp
the TSC (the Guest with rdtsc, which Unicorn passes through), so the figure is
one-way: from the instruction before `int $0x1f` to read() returning.  The
Guest waits for the helper's acknowledgement (in shared RAM) before the next
kick, so kicks never coalesce.  Goal: p50 < 20 us.

The baseline is the floor under any host: the same helper, kicked by this
process itself (stamp, then eventfd_write, from Python) with no Guest in
between; what remains is the kernel waking a process on a shared machine.
"""
from __future__ import annotations

import os
import subprocess

from benchmarks.figure import Context, Measurement
from benchmarks.figures import _build, _stats
from benchmarks.figures._guest import CoreBench
from cuse_lguest import abi, unicorn_build

NAME = "notify_eventfd"
SUMMARY = "Guest NOTIFY -> eventfd readable in another process, p50/p99 (goal p50 < 20 us)"
VALUE = 0x7000            # the NOTIFY value the eventfd is registered for (any gpa will do)


def _kick_from_host(guest: CoreBench, evfd: int, n: int) -> None:
    """The baseline: what the Guest's loop does, done by this process with no Guest."""
    for i in range(1, n + 1):
        stamp = _stats.rdtsc()
        guest["stamp_lo"], guest["stamp_hi"], guest["seq"] = stamp & 0xFFFFFFFF, stamp >> 32, i
        os.eventfd_write(evfd, 1)
        while guest["ack"] != i:
            pass


def _round(guest: CoreBench, peer: str, evfd: int, n: int, from_guest: bool) -> list[float]:
    ram = guest.ram
    mapfile = f"/proc/{os.getpid()}/map_files/{ram.base:x}-{ram.base + ram.size:x}"
    guest["seq"], guest["ack"], guest["notify"] = 0, 0, VALUE
    with subprocess.Popen([peer, str(evfd), mapfile, str(guest.bench), str(n)], pass_fds=(evfd,),
                          stdout=subprocess.PIPE, text=True) as proc:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("evpeer did not start")
        if from_guest:
            guest.run("notify", n)
        else:
            _kick_from_host(guest, evfd, n)
        out, _ = proc.communicate(timeout=60)
    if proc.returncode:
        raise RuntimeError(f"evpeer exited with {proc.returncode}")
    return _stats.ticks_to_us([int(line) for line in out.split()])


def run(ctx: Context) -> list[Measurement]:
    elf, peer = _build.bench_guest(), str(_build.native("evpeer"))
    n = 300 if ctx.quick else 2000
    p50, p99, base50, base99 = [], [], [], []
    evfd = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        with CoreBench(elf) as guest:
            if guest.write((abi.LHREQ_EVENTFD, VALUE, evfd)) != 0:
                raise RuntimeError("LHREQ_EVENTFD refused")
            _round(guest, peer, evfd, 20, True)
            for i in range(ctx.repeats):
                ctx.log(f"{NAME}: run {i + 1}/{ctx.repeats}")
                lat = _round(guest, peer, evfd, n, True)
                p50.append(_stats.percentile(lat, 50))
                p99.append(_stats.percentile(lat, 99))
                lat = _round(guest, peer, evfd, n, False)
                base50.append(_stats.percentile(lat, 50))
                base99.append(_stats.percentile(lat, 99))
    finally:
        os.close(evfd)
    build = unicorn_build.current().describe()
    common = dict(figure=NAME, unit="us", build=build, higher_is_better=False,
                  baseline_name="eventfd_write from the host", note=f"{n} kicks per run")
    return [Measurement(name="NOTIFY -> eventfd, p50", samples=p50, baseline_samples=base50,
                        goal="p50 < 20 us", goal_value=20.0, **common),
            Measurement(name="NOTIFY -> eventfd, p99", samples=p99, baseline_samples=base99, **common)]
