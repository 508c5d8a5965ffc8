"""Boot times: tinyguest to its first console line, and a real Linux Guest to its init marker.

tinyguest's first line is its banner on the early console, a NOTIFY the
launcher reads right after LGUEST_INIT, the page tables, the GDT/IDT and the
linear map: the host's setup cost plus the Guest's own boot.  The clock
starts before the launcher lays out RAM and sends INITIALIZE.

Rows that cannot run say so on stderr:
* mirror mode (private launcher RAM) needs the in-process launcher
  (cuse_lguest.testing.launcher) to be able to give private RAM;
* Linux needs LGUEST_LINUX_KERNEL (a 3.x i386 lguest bzImage) and
  LGUEST_LINUX_INITRD; LGUEST_LINUX_MARKER (default LGUEST-GUEST-UP) is what
  its /init prints, LGUEST_LINUX_ARGS the kernel command line.
"""
from __future__ import annotations

import importlib.util
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
    args = os.environ.get("LGUEST_LINUX_ARGS", "console=hvc0").split()
    seconds = []
    for i in range(1 if ctx.quick else 3):
        ctx.log(f"{NAME}: Linux boot {i + 1}")
        seconds.append(time_to_marker(pathlib.Path(kernel), pathlib.Path(initrd), args, marker,
                                      mem_mb=64, timeout=120))
    return [Measurement(figure=NAME, name=f"Linux to {marker.decode()}", unit="s", samples=seconds,
                        build=build, higher_is_better=False)]


def run(ctx: Context) -> list[Measurement]:
    kernel = _build.project(ctx.root, "guests", "tinyguest.elf")
    first, total = [], []
    run_tinyguest(kernel, ["test=hello"])
    for i in range(ctx.repeats):
        ctx.log(f"{NAME}: run {i + 1}/{ctx.repeats}")
        to_line, to_end, _ = run_tinyguest(kernel, ["test=hello"])
        first.append(to_line * 1e3)
        total.append(to_end * 1e3)
    if importlib.util.find_spec("cuse_lguest.memory.mirror") is None:
        ctx.log(f"{NAME}: mirror-mode rows skipped: cuse_lguest/memory/mirror.py does not exist yet")
    else:
        ctx.log(f"{NAME}: mirror-mode rows skipped: cuse_lguest.testing.launcher.Launcher always gives "
                "shared-memfd RAM; it needs an option for private RAM")
    build = unicorn_build.current().describe()
    return [Measurement(figure=NAME, name="tinyguest to its first console line (shared)", unit="ms",
                        samples=first, build=build, higher_is_better=False),
            Measurement(figure=NAME, name="tinyguest hello, start to power-off (shared)", unit="ms",
                        samples=total, build=build, higher_is_better=False),
            *_linux(ctx, build)]
