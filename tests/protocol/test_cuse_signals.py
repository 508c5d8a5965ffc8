"""signals.judge(): when a read that runs a guest ends early (architecture §3)."""
from __future__ import annotations

import os
import signal

import pytest

from cuse_lguest.cuse.signals import TaskSignals, Verdict, judge, owner_verdict, parse_status


def bit(*sigs: int) -> int:
    return sum(1 << (s - 1) for s in sigs)


def task(pending=0, blocked=0, ignored=0, caught=0, state="S") -> TaskSignals:
    return TaskSignals(state=state, pending=pending, blocked=blocked, ignored=ignored, caught=caught)


@pytest.mark.parametrize("t, eintr, verdict", [
    (task(), False, Verdict.RUN_ON),
    (task(pending=bit(signal.SIGKILL)), False, Verdict.FATAL),
    (task(pending=bit(signal.SIGKILL), blocked=bit(signal.SIGKILL)), False, Verdict.FATAL),
    (task(pending=bit(signal.SIGTERM)), False, Verdict.FATAL),
    (task(pending=bit(signal.SIGRTMIN)), False, Verdict.FATAL),          # real-time: terminate
    (task(pending=bit(signal.SIGTERM), caught=bit(signal.SIGTERM)), False, Verdict.RUN_ON),
    (task(pending=bit(signal.SIGTERM), caught=bit(signal.SIGTERM)), True, Verdict.SIGNAL),
    (task(pending=bit(signal.SIGTERM), ignored=bit(signal.SIGTERM)), True, Verdict.RUN_ON),
    (task(pending=bit(signal.SIGTERM), blocked=bit(signal.SIGTERM)), True, Verdict.RUN_ON),
    (task(pending=bit(signal.SIGCHLD)), False, Verdict.RUN_ON),          # default: ignore
    (task(pending=bit(signal.SIGWINCH, signal.SIGALRM)), False, Verdict.FATAL),
    (task(state="Z"), False, Verdict.GONE),
    (None, False, Verdict.GONE),
])
def test_judge(t, eintr, verdict):
    assert judge(t, eintr_on_signal=eintr) is verdict


def test_parse_status_merges_thread_and_process_pending():
    text = ("Name:\tx\nState:\tt (tracing stop)\nSigQ:\t1/100\nSigPnd:\t0000000000000100\n"
            "ShdPnd:\t0000000000004000\nSigBlk:\t0000000000000001\nSigIgn:\t0000000000001000\n"
            "SigCgt:\t0000000000000002\n")
    assert parse_status(text) == TaskSignals(state="t", pending=0x4100, blocked=1,
                                             ignored=0x1000, caught=2)


def test_owner_verdict_of_live_and_missing_tasks():
    assert owner_verdict(os.getpid()) is Verdict.RUN_ON
    assert owner_verdict(0) is Verdict.GONE
    assert owner_verdict(2**22 + 12345) is Verdict.GONE     # above pid_max's usual range
