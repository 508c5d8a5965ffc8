"""Boot times: tinyguest to its first console line, and a real Linux Guest to its init marker.

tinyguest's first line is its banner on the early console, a NOTIFY the
launcher reads right after LGUEST_INIT, the page tables, the GDT/IDT and the
linear map: the host's setup cost plus the Guest's own boot.  The clock
starts before the launcher lays out RAM and sends INITIALIZE.

Shared mode is the project launcher's memfd RAM; mirror mode is private RAM,
as the historical launcher had, which the host copies (memory/mirror.py).
The Linux row is skipped, with the reason on stderr, unless it can run:
* Linux needs LGUEST_LINUX_KERNEL (a 3.x i386 lguest bzImage) and
  LGUEST_LINUX_INITRD; LGUEST_LINUX_MARKER (default LGUEST-GUEST-UP) is what
  its /init prints, LGUEST_LINUX_ARGS the kernel command line.
"""
from __future__ import annotations

import os
import pathlib

from benchmarks.figure import Context, Measurement
from benchmarks.figures import _build
from benchmarks.figures._launch import run_tinyguest, time_to_marker
from cuse_lguest import unicorn_build

NAME = "boot"
SUMMARY = "tinyguest to its first console line; Linux to its init marker (when LGUEST_LINUX_KERNEL is set)"


def _linux(ctx: Context, build: str) -> list[Measurement]:
    kernel, initrd = os.environ.get("LGUEST_LINUX_KERNEL"), os.environ.get("LGUEST_LINUX_INITRD")
    if not kernel or not initrd:
        ctx.log(f"{NAME}: Linux row skipped: set LGUEST_LINUX_KERNEL and LGUEST_LINUX_INITRD")
        return []
    marker = os.environ.get("LGUEST_LINUX_MARKER", "LGUEST-GUEST-UP").encode()
    args = os.environ.get("LGUEST_LINUX_ARGS", "").split()
    seconds = []
    for i in range(1 if ctx.quick else 3):
        ctx.log(f"{NAME}: Linux boot {i + 1}")
        seconds.append(time_to_marker(pathlib.Path(kernel), pathlib.Path(initrd), args, marker,
                                      mem_mb=64, timeout=120))
    return [Measurement(figure=NAME, name=f"Linux to {marker.decode()}", unit="s", samples=seconds,
                        build=build, higher_is_better=False)]


def run(ctx: Context) -> list[Measurement]:
    kernel = _build.project(ctx.root, "guests", "tinyguest.elf")
    first: dict[bool, list[float]] = {False: [], True: []}
    total: dict[bool, list[float]] = {False: [], True: []}
    run_tinyguest(kernel, ["test=hello"])
    for i in range(ctx.repeats):
        ctx.log(f"{NAME}: run {i + 1}/{ctx.repeats}")
        for private in (False, True):
            to_line, to_end, _ = run_tinyguest(kernel, ["test=hello"], private=private)
            first[private].append(to_line * 1e3)
            total[private].append(to_end * 1e3)
    build = unicorn_build.current().describe()
    rows = []
    for private, mode in ((False, "shared"), (True, "mirror")):
        baseline = dict(baseline_name="shared mode", baseline_samples=first[False]) if private else {}
        rows.append(Measurement(figure=NAME, name=f"tinyguest to its first console line ({mode})", unit="ms",
                                samples=first[private], build=build, higher_is_better=False, **baseline))
        baseline = dict(baseline_name="shared mode", baseline_samples=total[False]) if private else {}
        rows.append(Measurement(figure=NAME, name=f"tinyguest hello, start to power-off ({mode})", unit="ms",
                                samples=total[private], build=build, higher_is_better=False, **baseline))
    return rows + _linux(ctx, build)
