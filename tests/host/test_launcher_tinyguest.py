"""tinyguest scenarios through the whole host tier: Python launcher -> Device -> core -> Unicorn."""
from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

from cuse_lguest.testing.launcher import Block, Launcher, WaitFor
from cuse_lguest.testing.transport import DeviceTransport
from cuse_lguest.testing import blkpattern

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = ROOT / "native" / "build"


@pytest.fixture(scope="module")
def tinyguest() -> pathlib.Path:
    if os.geteuid() != 0:
        pytest.skip("needs root: the Device maps launcher RAM via /proc/<pid>/map_files and uses pidfd_getfd")
    subprocess.run(["make", "-s", "-C", str(ROOT / "native" / "guests" / "tinyguest"), f"BUILD={BUILD}"], check=True)
    return BUILD / "guests" / "tinyguest.elf"


def boot(kernel: pathlib.Path, scenario: str, **kw):
    from cuse_lguest.device import Device   # the default guest factory is the real core
    result = Launcher(kernel, mem_mb=32, args=[f"test={scenario}"], timeout=120, **kw).run(DeviceTransport(Device()))
    assert result.error is None, f"{result.error}\n{result.console}"
    assert result.death == "CRASH: tinyguest: done", result.console
    return result


def test_hello_uses_early_then_virtio_console(tinyguest):
    result = boot(tinyguest, "hello")
    assert "tinyguest: hello from the early console\n" in result.console
    assert "tinyguest: hello PASS console=virtio\n" in result.console


def test_echo_reads_console_input_from_queue_0(tinyguest):
    result = boot(tinyguest, "echo", console_input=[WaitFor(b"echo ready"), b"hello there\n", b"quit\n"])
    after = result.console.split("tinyguest: echo ready\n", 1)[1]
    assert after.startswith("hello there\nquit\n")
    assert "tinyguest: echo PASS lines=2 bytes=17\n" in after


def test_blk_writes_reads_and_flushes_the_backing_file(tinyguest, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\xAB" * (1 << 20))
    result = boot(tinyguest, "blk", devices=[Block(disk)])
    assert "head=abababababababab" in result.console
    assert "tinyguest: blk PASS sectors=64 start=0" in result.console and "flush=ok capacity=2048" in result.console
    data = disk.read_bytes()
    for s in (0, 17, 63):
        assert data[s * 512:(s + 1) * 512] == blkpattern.sector(s)
    assert data[64 * 512:] == b"\xAB" * ((1 << 20) - 64 * 512)
