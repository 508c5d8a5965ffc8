"""Finding 4 of issue 13: a Guest must run where 1 GiB of address space cannot be reserved.

Unicorn's default translation buffer is a 1 GiB mapping; on a 512 MiB
machine under the default overcommit heuristic the kernel refuses it, and
Unicorn exits the whole process.  The same refusal is provoked here by an
address-space limit (RLIMIT_AS) on a child process, which then boots
tinyguest in-process.  With an explicit buffer (cpu/engine.py) it passes;
with Unicorn's default it would die with "Could not allocate dynamic
translator buffer".
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from cuse_lguest.cpu import engine

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ADDRESS_SPACE = 900 << 20     # less than Unicorn's default buffer alone, plenty for Python and a Guest

_CHILD = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    from cuse_lguest.cpu import engine
    engine.set_translation_buffer({buffer})
    from cuse_lguest.device import Device
    from cuse_lguest.testing.launcher import Launcher
    from cuse_lguest.testing.transport import DeviceTransport
    r = Launcher({kernel!r}, mem_mb=16, args=["test=hello"], timeout=60).run(DeviceTransport(Device()))
    print("DEATH", r.death, r.error)
""")


def boot_under_limit(kernel: str, buffer: int) -> subprocess.CompletedProcess:
    code = _CHILD.format(limit=ADDRESS_SPACE, buffer=buffer, kernel=kernel)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})


@pytest.fixture(scope="module")
def tinyguest(native_build):
    from tests.conftest import needs_root
    needs_root()
    return str(native_build / "guests" / "tinyguest.elf")


def test_guest_runs_where_unicorns_default_buffer_cannot_be_reserved(tinyguest):
    out = boot_under_limit(tinyguest, engine.DEFAULT_TRANSLATION_BUFFER)
    assert out.returncode == 0, out.stderr
    assert "DEATH CRASH: tinyguest: done None" in out.stdout, out.stdout + out.stderr


def test_the_limit_is_one_unicorns_default_would_not_survive(tinyguest):
    """The control: the same child with Unicorn's 1 GiB default is killed by Unicorn itself."""
    out = boot_under_limit(tinyguest, engine.MAX_TRANSLATION_BUFFER)
    assert out.returncode != 0
    assert "Could not allocate dynamic translator buffer" in out.stderr


def test_every_guest_cpu_gets_the_configured_size():
    before = engine.translation_buffer()
    try:
        engine.set_translation_buffer(32 * engine.MIB)
        uc = engine.new_x86()
        assert uc.ctl_get_tcg_buffer_size() == 32 * engine.MIB
        assert engine.new_x86(scratch=True).ctl_get_tcg_buffer_size() == engine.SCRATCH_TRANSLATION_BUFFER
    finally:
        engine.set_translation_buffer(before)


@pytest.mark.parametrize("size", [0, engine.MIN_TRANSLATION_BUFFER - 1, engine.MAX_TRANSLATION_BUFFER + 1])
def test_sizes_unicorn_cannot_take_are_refused(size):
    with pytest.raises(ValueError):
        engine.set_translation_buffer(size)
