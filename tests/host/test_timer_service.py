"""The timer service itself: bounded by the armed timers, and never stopped by one bad callback."""
from __future__ import annotations

import os
import threading

import pytest

from cuse_lguest.core.timer import TimerService
from cuse_lguest.cpu._exits import lib

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


def test_a_watched_timerfd_fires_each_time_it_is_armed_and_is_closed_on_release():
    """A Guest's clock event: armed from outside the service (the native exits do), fired by its thread."""
    timers = TimerService()
    timers.attach()
    fd = lib.lg_clock_new()
    fired = threading.Semaphore(0)
    try:
        timers.watch("guest", fd, fired.release)
        for _ in range(3):
            assert lib.lg_clock_set(fd, 2_000_000) == 0
            assert fired.acquire(timeout=30), "the timerfd expired unseen"
        lib.lg_clock_set(fd, 50_000_000)
        lib.lg_clock_set(fd, 0)                    # cancelled: never fires
        assert not fired.acquire(timeout=0.2)
        timers.release("guest")
    finally:
        timers.detach(None)                        # joins the thread, which closes released fds first
    with pytest.raises(OSError):
        os.fstat(fd)
