"""Every tinyguest scenario through the host tier: Python launcher -> Device -> core -> Unicorn.

test_launcher_tinyguest.py covers hello, echo and blk; this file covers the
rest of the scenario list in native/guests/tinyguest/README.md, each asserting
the guest's own result line and the death reason the host gives.  Each runs
twice: with the launcher's RAM shared (the project launcher's default) and
private (the historical launcher's layout, served by mirror mode), and each
of those with the Guest in this process and in a worker process.
"""
from __future__ import annotations

import errno

import pytest

from cuse_lguest import abi
from cuse_lguest.device import Device
from cuse_lguest.testing.launcher import Block, Launcher
from cuse_lguest.testing.transport import DeviceTransport


@pytest.fixture(params=[(False, False), (True, False), (False, True), (True, True)],
                ids=["shared", "private", "shared-worker", "private-worker"])
def tinyguest(request, tinyguest_elf):
    """The guest, whether the launcher keeps its RAM private (mirror mode), and the Guest factory:
    the core in this process, or a worker process per Guest as `serve` runs them."""
    private, in_worker = request.param
    return tinyguest_elf, private, request.getfixturevalue("workers") if in_worker else None


def run(guest, *args: str, **kw):
    kernel, private, factory = guest
    result = Launcher(kernel, mem_mb=32, args=list(args), timeout=120, private=private,
                      **kw).run(DeviceTransport(Device(factory)))
    assert result.error is None, f"{result.error}\n{result.console}"
    return result


def passes(guest, scenario: str, *args: str, **kw) -> str:
    """Run a scenario that must print its PASS line and power off normally; return the line."""
    result = run(guest, f"test={scenario}", *args, **kw)
    assert result.death == "CRASH: tinyguest: done", result.console
    lines = [ln for ln in result.console.splitlines() if ln.startswith(f"tinyguest: {scenario} PASS")]
    assert lines, result.console
    return lines[0]


def test_usermode_syscalls_faults_and_gp(tinyguest):
    line = passes(tinyguest, "usermode")
    # CR2 comes from lguest_data.cr2 and the error codes are the hardware's:
    # ring 1 read of a missing page 0, write to a read-only page 3; ring 3
    # read of a missing page 4, write to its read-only code page 7; int $0x1f
    # from ring 3 is #GP with error code 0xfa.
    assert "syscalls=3 exit=100 gp=fa" in line
    assert "/0 kro=" in line and line.endswith("/3 upf=8300000/4 uro=8048000/7")


def test_timer_at_100_and_1000_hz(tinyguest):
    line = passes(tinyguest, "timer", "ms=300")
    assert "hz=100" in line and "hz=1000" in line


def test_spin_takes_timer_irqs_without_ever_trapping(tinyguest):
    """A guest spinning with interrupts on must still get IRQs that arrived while IF was off."""
    line = passes(tinyguest, "spin", "hz=1000", "irqs=50")
    assert " irqs=50 " in line


def test_halt_wakes_for_timer_irqs(tinyguest):
    passes(tinyguest, "halt", "hz=100", "irqs=3")


def test_crash_reason_is_the_guests_message(tinyguest):
    result = run(tinyguest, "test=crash", "msg=the_end")
    assert result.errno == errno.ENOENT
    assert result.death == "CRASH: the_end"


def test_storm_of_sync_and_async_hypercalls(tinyguest):
    result = run(tinyguest, "test=storm", "n=200")
    assert result.death == "CRASH: tinyguest: done", result.console
    assert "fullring=64 overflow=ok midnotify=ok lazy=ok" in result.console
    # The NOTIFY in the middle of an async batch reached the launcher as a string.
    assert "storm-mid" in result.console


@pytest.mark.parametrize("kind,reason", [("pte", "bad page table entry"), ("pde", "bad page directory entry")])
def test_badpte_is_killed(tinyguest, kind, reason):
    result = run(tinyguest, "test=badpte", f"kind={kind}")
    assert result.errno == errno.ENOENT
    assert result.death == reason


def test_reboot_restarts_then_boots_again(tinyguest, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    first = run(tinyguest, "test=reboot", devices=[Block(disk)])
    assert first.errno == abi.ERESTART and "first boot, restarting" in first.console
    # The launcher re-executes itself: a fresh open and INITIALIZE.
    assert passes(tinyguest, "reboot", devices=[Block(disk)]) == "tinyguest: reboot PASS second boot"
