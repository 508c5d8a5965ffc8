"""The Guest's native IRQ line: what the CUSE transport's C shortcut calls instead of Guest.irq().

lg_irq_inject is called here exactly as the transport's C calls it, with the
line's `inject`/`target` addresses, and must behave like Guest.irq(): the
bit, the launcher's sync point, a kick that wakes a halted vCPU without any
Python on the injecting side, and a refusal (left to the device's errno) for
an IRQ >= 32 or a dead Guest.
"""
from __future__ import annotations

import threading

from cuse_lguest.core.contract import RunExit
from cuse_lguest.cpu._native import ffi
from test_core_support import boot, wait_until_halted

_INJECT = ffi.typeof("int (*)(void *, uint64_t)")


def _inject(guest, irq: int) -> int:
    line = guest.irq_line
    return ffi.cast(_INJECT, line.inject)(ffi.cast("void *", line.target), irq)



def test_native_inject_wakes_a_halted_guest_inside_emulation(native_build):
    g = boot(native_build, "timer", "halt-for-irq=5")
    try:
        assert g.string_at(g.guest.run()[1]) == "halting\n"
        result = []
        runner = threading.Thread(target=lambda: result.append(g.guest.run()))
        runner.start()
        wait_until_halted(g)
        assert _inject(g.guest, 5) == 0
        runner.join()
        assert result[0][0] is RunExit.NOTIFY and g.string_at(result[0][1]) == "irq while halted=0x00000005\n"
        assert g.run_to_end() == "CRASH: timer test done"
    finally:
        g.close()


def test_native_inject_marks_the_launcher_sync_point_once(native_build):
    g = boot(native_build, "timer", "halt-for-irq=5")
    try:
        syncs = []
        g.guest.memory.on_irq = lambda: syncs.append(1)
        assert _inject(g.guest, 4) == 0
        assert g.guest.pending_irqs() == 1 << 4 and syncs == [1]
        assert g.guest.pending_irqs() == 1 << 4 and syncs == [1]
    finally:
        g.close()


def test_native_inject_refuses_irq_32_and_leaves_nothing_pending(native_build):
    g = boot(native_build, "timer", "halt-for-irq=5")
    try:
        assert _inject(g.guest, 32) == -1 and _inject(g.guest, 1 << 40) == -1
        assert g.guest.irq_line.pending == 0 and not g.guest.irq_line.from_launcher
    finally:
        g.close()


def test_native_inject_refuses_once_the_guest_died_or_was_destroyed(native_build):
    g = boot(native_build, "timer", "halt-for-irq=5")
    try:
        assert _inject(g.guest, 3) == 0
        g.guest.kill("test death")
        assert _inject(g.guest, 3) == -1
    finally:
        g.close()
    g = boot(native_build, "timer", "halt-for-irq=5")
    g.close()
    assert _inject(g.guest, 3) == -1
