"""The timer service itself: bounded by the armed timers, and never stopped by one bad callback."""
from __future__ import annotations

import threading

from cuse_lguest.core.timer import TimerService

HOUR_NS = 3600 * 10**9


def test_re_arming_does_not_grow_the_heap():
    """A Guest re-arming a far deadline in a loop (LHCALL_SET_CLOCKEVENT) holds a few entries, not one per call."""
    timers = TimerService()
    timers.attach()
    owners = [object() for _ in range(3)]
    try:
        for _ in range(10_000):
            for owner in owners:
                timers.arm(owner, HOUR_NS, lambda: None)
        assert len(timers) <= 2 * len(owners) + 64 + 1
    finally:
        timers.detach(None)


def test_a_failing_callback_leaves_the_other_guests_timers_running():
    timers = TimerService()
    timers.attach()
    fired = threading.Event()

    def broken() -> None:
        raise RuntimeError("a bug in one guest's timer callback")

    try:
        timers.arm("first", 1_000_000, broken)
        timers.arm("second", 50_000_000, fired.set)
        assert fired.wait(30), "the second timer never fired: the timer thread died with the first"
    finally:
        timers.detach(None)
