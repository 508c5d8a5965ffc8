"""Should a read that runs a guest stop?  Decided from the owner's /proc status.

CUSE cannot restart a system call (architecture §3): answering a FUSE
INTERRUPT with EINTR makes the launcher's read() fail even under SA_RESTART,
and the historical launcher exits on that.  So a read ends early only when
the owner is going away anyway:

* SIGKILL is pending (a group exit sets it on every thread), or a pending,
  unblocked signal will kill the task because it is neither caught nor
  ignored and its default action terminates;
* the owner no longer exists, or is a zombie.

A caught signal lets the guest run on; its handler runs when read() returns.
The service option `eintr_on_signal` ends the read for caught signals too.

Blocked signals are left out on purpose: a blocked signal is never delivered,
the kernel sends no INTERRUPT for it, and it cannot end the process.
"""
from __future__ import annotations

import enum
import signal
from dataclasses import dataclass

# Signals whose default action is to ignore, stop or continue: everything else terminates.
_NOT_FATAL_BY_DEFAULT = frozenset({
    signal.SIGCHLD, signal.SIGCONT, signal.SIGSTOP, signal.SIGTSTP,
    signal.SIGTTIN, signal.SIGTTOU, signal.SIGURG, signal.SIGWINCH,
})
_KILL_BIT = 1 << (signal.SIGKILL - 1)


def _bit(sig: int) -> int:
    return 1 << (sig - 1)


_DEFAULT_FATAL_MASK = sum(_bit(s) for s in range(1, 65) if s not in _NOT_FATAL_BY_DEFAULT)


@dataclass(frozen=True)
class TaskSignals:
    """Signal masks of one task (bit n-1 is signal n), as /proc/<tid>/status shows them."""
    state: str        # the State: letter, e.g. "S", "t", "Z"
    pending: int      # SigPnd | ShdPnd: for this thread, and for its whole process
    blocked: int
    ignored: int
    caught: int


class Verdict(enum.Enum):
    RUN_ON = "run on"
    FATAL = "a fatal signal is pending"
    SIGNAL = "a caught signal is pending (eintr-on-signal)"
    GONE = "the owner has exited"

    @property
    def stops(self) -> bool:
        return self is not Verdict.RUN_ON


def parse_status(text: str) -> TaskSignals:
    """Read the fields we need out of a /proc/<tid>/status text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()

    def mask(name: str) -> int:
        return int(fields.get(name, "0") or "0", 16)

    return TaskSignals(state=(fields.get("State", "?") or "?")[0],
                       pending=mask("SigPnd") | mask("ShdPnd"),
                       blocked=mask("SigBlk"), ignored=mask("SigIgn"), caught=mask("SigCgt"))


def read_task(tid: int) -> TaskSignals | None:
    """The task's signal masks, or None if it no longer exists."""
    if tid <= 0:
        return None
    try:
        with open(f"/proc/{tid}/status", encoding="ascii", errors="replace") as f:
            return parse_status(f.read())
    except (FileNotFoundError, ProcessLookupError):
        return None


def judge(task: TaskSignals | None, *, eintr_on_signal: bool = False) -> Verdict:
    """What a read owned by `task` should do now."""
    if task is None or task.state in ("Z", "X"):
        return Verdict.GONE
    if task.pending & _KILL_BIT:
        return Verdict.FATAL
    deliverable = task.pending & ~task.blocked & ~task.ignored
    if deliverable & ~task.caught & _DEFAULT_FATAL_MASK:
        return Verdict.FATAL
    if eintr_on_signal and deliverable & task.caught:
        return Verdict.SIGNAL
    return Verdict.RUN_ON


def owner_verdict(tid: int, *, eintr_on_signal: bool = False) -> Verdict:
    """judge() applied to the live task `tid`."""
    return judge(read_task(tid), eintr_on_signal=eintr_on_signal)
