"""Shared fixtures: the native build, and skips that say exactly what is missing."""
from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NATIVE_BUILD = ROOT / "native" / "build"


@pytest.fixture(scope="session")
def native_build() -> pathlib.Path:
    """Build native/ once per session (make is incremental) and return the output root."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "native")], check=True)
    return NATIVE_BUILD


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (reads /proc/<pid>/map_files and duplicates fds with pidfd_getfd)")


@pytest.fixture(scope="module")
def tinyguest_elf(native_build) -> pathlib.Path:
    """tinyguest, for tests that run it in-process (which needs root: see needs_root)."""
    needs_root()
    return native_build / "guests" / "tinyguest.elf"


@pytest.fixture(scope="module")
def workers():
    """A worker factory, as `cuse-lguest serve` runs Guests: its zygote lives for the test module."""
    from cuse_lguest.worker.proxy import WorkerFactory
    factory = WorkerFactory()
    yield factory
    factory.close()
