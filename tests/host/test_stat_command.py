"""`cuse-lguest stat` against a live Guest: the Device publishes its block, the command shows its exits.

tinyguest runs through the whole host tier (Python launcher -> Device -> core);
when its first console line arrives the Guest is alive and mid-run, and the
command, run as its own process as an operator would, must list it with the
NOTIFY that printed the line.  After the Guest is gone its file is gone too.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from cuse_lguest.core.exitstats import StatsDirectory
from cuse_lguest.testing.launcher import Launcher
from cuse_lguest.testing.transport import DeviceTransport

STAT = [sys.executable, "-m", "cuse_lguest.cli", "stat"]


def test_stat_shows_a_live_guests_exits(tinyguest_elf, tmp_path):
    from cuse_lguest.device import Device
    directory = StatsDirectory(str(tmp_path))
    directory.prepare()
    shown: list[str] = []

    def on_output(data: bytes) -> None:
        if not shown:
            shown.append(subprocess.run(STAT + ["--once", "--dir", str(tmp_path)], capture_output=True,
                                        text=True, check=True, timeout=60).stdout)

    result = Launcher(tinyguest_elf, mem_mb=32, args=["test=hello"], timeout=120,
                      on_output=on_output).run(DeviceTransport(Device(stats=directory)))
    assert result.death == "CRASH: tinyguest: done", result.console
    table = shown[0]
    assert f"guest {os.getpid()}.1: " in table
    assert "hypercall 1 LGUEST_INIT" in table
    assert "hypercall 17 NOTIFY" in table
    assert "inside Unicorn (emu_start)" in table
    assert os.listdir(tmp_path) == []
    assert subprocess.run(STAT + ["--once", "--dir", str(tmp_path)], capture_output=True, text=True,
                          check=True).stdout.startswith("no live guests")


def test_stat_live_mode_prints_rates(tmp_path):
    directory = StatsDirectory(str(tmp_path))
    fd, path = directory.publish("test launcher", 7)
    try:
        out = subprocess.run(STAT + ["--dir", str(tmp_path), "-i", "0.05", "-n", "2"], capture_output=True,
                             text=True, check=True, timeout=60).stdout
    finally:
        directory.withdraw(fd, path)
    assert out.count("1 live guest(s)") == 2
    assert "test launcher (launcher pid 7), last" in out and "per s" in out


def test_a_worker_cannot_resize_its_block_under_stat(tmp_path):
    """A worker holds its Guest's block read-write (it counts into it), and a Guest may take its
    worker over.  Shrinking the block under `cuse-lguest stat`, which has it mapped, killed the
    command with SIGBUS, and growing it could fill /run; the block is sealed at its size."""
    directory = StatsDirectory(str(tmp_path))
    fd, path = directory.publish("hijacked worker", 9)
    refused = []
    try:
        stat = subprocess.Popen(STAT + ["--dir", str(tmp_path), "-i", "0.1", "-n", "20"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert stat.stdout is not None
        first = stat.stdout.readline()          # the block is mapped now
        for size in (0, 1 << 30):
            try:
                os.ftruncate(fd, size)          # what the worker could do with its descriptor
            except PermissionError:
                refused.append(size)
            time.sleep(0.5)                     # a few refreshes of stat with the block so
        out = first + stat.communicate(timeout=60)[0]
    finally:
        directory.withdraw(fd, path)
    assert "1 live guest(s)" in first, out
    assert refused == [0, 1 << 30]
    assert stat.returncode == 0 and out.count("1 live guest(s)") == 20, out
