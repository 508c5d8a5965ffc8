"""Build what the figures run (the benchmark guest, the native helpers) and find it.

Everything is built on demand into build/ directories beside the sources
(ignored by git), so a clean checkout needs nothing but `make` and gcc; make
keeps reruns cheap.
"""
from __future__ import annotations

import pathlib
import subprocess

HERE = pathlib.Path(__file__).resolve().parent.parent
GUESTS = HERE / "guests"
NATIVE = HERE / "native"


def _run_make(*args: str) -> None:
    done = subprocess.run(["make", "-s", *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"make {' '.join(args)} failed:\n{done.stderr.strip()}")


def _make(directory: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    _run_make("-C", str(directory), f"BUILD={directory / 'build'}", str(target))
    return target


def bench_guest() -> pathlib.Path:
    """benchmarks/guests/bench.c as an lguest ELF kernel."""
    return _make(GUESTS, GUESTS / "build" / "bench.elf")


def native(name: str) -> pathlib.Path:
    """One program or library of benchmarks/native (e.g. "evpeer", "libbenchtsc.so")."""
    return _make(NATIVE, NATIVE / "build" / name)


def project(root: pathlib.Path, *parts: str) -> pathlib.Path:
    """Build native/ (tinyguest, the launchers) and return a path under native/build."""
    _run_make("-C", str(root / "native"))
    return root.joinpath("native", "build", *parts)
