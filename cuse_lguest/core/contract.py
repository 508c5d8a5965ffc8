"""What the device layer needs from the hypervisor core, and nothing more.

The device (the seed's `lguest_user.c`) creates one Guest per open file at
LHREQ_INITIALIZE, runs it from read(), pokes interrupts into it from write(),
and destroys it at release.  Keeping that surface this small lets the device
be tested on its own and lets the core grow without the device noticing.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from cuse_lguest.eventfds import EventfdTable
    from cuse_lguest.memory.handles import MemoryHandles


class RunExit(enum.Enum):
    """Why Guest.run() came back to the device."""
    NOTIFY = "notify"            # the Guest issued NOTIFY(value) and no eventfd claimed it
    DEAD = "dead"                # the Guest died during this run; see Guest.death
    INTERRUPTED = "interrupted"  # Guest.interrupt() was called (a fatal signal, or shutdown)


class GuestSetupError(Exception):
    """INITIALIZE could not build a Guest.  `errno` is what write() returns (positive)."""

    def __init__(self, errno_: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno_


@dataclass(frozen=True)
class GuestParams:
    """The three INITIALIZE words plus who sent them, and the launcher's memory.

    `memory` is the only way to the launcher's guest RAM: the handles taken
    while INITIALIZE blocked (memory/handles.py), owned by the Guest once it
    is built (None only for doubles that never touch memory).  `pid` (the
    launcher's thread-group id, in whose address space `base` lies) and
    `name` are for logs; nothing may reach the launcher through the pid.
    `claim_notify(value)` is the eventfd table's lookup: it signals the first
    eventfd registered for `value` and returns True, or returns False so that
    run() hands the value back to the launcher.  `eventfds`, when given, is
    the EventfdTable behind claim_notify: the vCPU then claims NOTIFYs in C
    (cpu/_exits_build.py, lg_native_notify) without entering Python.
    `stats_fd`, when given, is a file holding a formatted exit stats block
    (core/exitstats.py) that the caller publishes for `cuse-lguest stat`;
    the Guest maps it and counts its exits there (the caller keeps the fd).
    Without one the Guest counts into a private block.
    """
    pid: int
    base: int
    pfnlimit: int
    start: int
    claim_notify: Callable[[int], bool]
    memory: MemoryHandles | None
    name: str = "guest"
    stats_fd: int | None = None
    eventfds: EventfdTable | None = None


class Guest(Protocol):
    """One Guest with one vCPU.  run() is called only from the owner thread.

    Two optional attributes, looked up with getattr by the device: `irq_line`,
    the native line the transport's C fast path injects into (core/irqline.py),
    and `eventfd_added(value, fd)`, called after each LHREQ_EVENTFD by a Guest
    that runs in another process and must signal the eventfd itself (the
    device's table keeps owning `fd`; worker/proxy.py sends a copy).
    """

    @property
    def death(self) -> str | int | None:
        """None while alive; the first kill reason (str), or ERESTART/ENOMEM (int)."""

    def run(self) -> tuple[RunExit, int]:
        """Run until NOTIFY (value), death (0) or interrupt (0).  Never raises for Guest faults."""

    def irq(self, irq: int) -> None:
        """Mark IRQ `irq` (< LGUEST_IRQS) pending and wake or kick the vCPU.  Any thread."""

    def interrupt(self) -> None:
        """Make the current (or the next) run() return INTERRUPTED promptly.  Any thread."""

    def destroy(self) -> None:
        """Release everything: Unicorn, threads, timers, mappings.  Idempotent."""


GuestFactory = Callable[[GuestParams], Guest]
# acquire(pid, base, pfnlimit, caller=(uid, gid) or None): the handles for a GuestParams.
MemorySource = Callable[..., "MemoryHandles | None"]
