"""The clock event (IRQ 0), HALT, and LHREQ_IRQ injection into a spinning or halted Guest."""
from __future__ import annotations

import threading

import psutil
import pytest

from cuse_lguest.core.contract import RunExit
from test_core_support import boot


@pytest.mark.parametrize("hz", [100, 1000])
def test_timer_ticks_while_halted(native_build, hz):
    g = boot(native_build, "timer", f"hz={hz} ticks=20")
    try:
        assert g.run_to_end() == "CRASH: timer test done"
        assert g.console == ["ticks=0x00000014\n"]
    finally:
        g.close()


@pytest.mark.parametrize("mode", ["spin-for-irq", "halt-for-irq"])
def test_irq_reaches_busy_or_halted_guest(native_build, mode):
    g = boot(native_build, "timer", f"{mode}=5")
    try:
        why, value = g.guest.run()
        assert why is RunExit.NOTIFY and g.string_at(value) in ("spinning\n", "halting\n")
        # Inject from another thread while the Guest spins or sleeps in HALT.
        timer = threading.Timer(0.05, g.guest.irq, args=(5,))
        timer.start()
        try:
            assert g.run_to_end() == "CRASH: timer test done"
        finally:
            timer.join()
        assert g.console[-1] == "irq while " + ("spinning" if mode.startswith("spin") else "halted") + "=0x00000005\n"
    finally:
        g.close()


def test_interrupt_returns_from_a_spinning_guest(native_build):
    g = boot(native_build, "timer", "spin-for-irq=7")
    try:
        assert g.guest.run()[0] is RunExit.NOTIFY
        kick = threading.Timer(0.05, g.guest.interrupt)
        kick.start()
        assert g.guest.run() == (RunExit.INTERRUPTED, 0)
        kick.join()
        assert g.guest.death is None
    finally:
        g.close()


def test_guest_killed_with_armed_timer_leaves_no_thread(native_build):
    before = {t.id for t in psutil.Process().threads()}
    g = boot(native_build, "timer", "die-with-timer=1")
    assert g.run_to_end() == "Bad hypercall 99\n"
    g.close()
    assert {t.id for t in psutil.Process().threads()} <= before
