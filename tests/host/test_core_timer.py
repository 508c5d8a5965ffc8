"""The clock event (IRQ 0), HALT, and LHREQ_IRQ injection into a spinning or halted Guest."""
from __future__ import annotations

import threading

import psutil
import pytest

from cuse_lguest.core.contract import RunExit
from test_core_support import boot, wait_until_halted


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



def test_halted_guest_takes_its_irq_without_leaving_emulation(native_build):
    g = boot(native_build, "timer", "halt-for-irq=5")
    try:
        assert g.string_at(g.guest.run()[1]) == "halting\n"
        machine = g.guest.vcpu.machine
        enters, result = [], []
        enter = machine.enter
        machine.enter = lambda: enters.append(1) or enter()
        runner = threading.Thread(target=lambda: result.append(g.guest.run()))
        runner.start()
        wait_until_halted(g)
        g.guest.irq(5)
        runner.join()
        # One emu_start for the whole run: HALT slept inside the hook and the IRQ was delivered there.
        assert len(enters) == 1
        assert result[0][0] is RunExit.NOTIFY and g.string_at(result[0][1]) == "irq while halted=0x00000005\n"
        assert g.run_to_end() == "CRASH: timer test done"
    finally:
        g.close()


def test_interrupt_returns_from_a_halted_guest_which_then_still_takes_its_irq(native_build):
    g = boot(native_build, "timer", "halt-for-irq=6")
    try:
        assert g.string_at(g.guest.run()[1]) == "halting\n"
        result = []
        runner = threading.Thread(target=lambda: result.append(g.guest.run()))
        runner.start()
        wait_until_halted(g)
        g.guest.interrupt()
        runner.join()
        assert result == [(RunExit.INTERRUPTED, 0)] and g.guest.death is None and g.guest.vcpu.halted
        g.guest.irq(6)               # the next run() finds the Guest still halted, and wakes it
        assert g.run_to_end() == "CRASH: timer test done"
        assert g.console[-1] == "irq while halted=0x00000006\n"
    finally:
        g.close()


def test_irq_sync_point_once_per_injection_even_if_its_line_was_taken_meanwhile(native_build):
    """pending_irqs() peeks without the lock; that must never skip the LHREQ_IRQ sync point."""
    g = boot(native_build, "timer", "halt-for-irq=5")
    try:
        syncs = []
        g.guest.memory.on_irq = lambda: syncs.append(1)
        assert g.guest.pending_irqs() == 0 and syncs == []
        g.guest.irq(3)
        g.guest.take_irq(3)          # an earlier injection of line 3 was delivered in between
        assert g.guest.pending_irqs() == 0 and syncs == [1]
        assert g.guest.pending_irqs() == 0 and syncs == [1]
        g.guest.irq(4)
        assert g.guest.pending_irqs() == 1 << 4 and syncs == [1, 1]
    finally:
        g.close()
