"""IrqNotifyGuest: a test double for the core's Guest, for the transport tests.

The hypervisor core (cuse_lguest.core.create_guest) does not exist yet, so
these tests stand a double in its place behind the real Device.  It keeps the
one behaviour the transport cares about: run() blocks until something
happens.  An IRQ n wakes it; it first offers NOTIFY(EVENT_VALUE) to the
eventfd table (as a guest kicking a virtqueue would) and then returns
NOTIFY(NOTIFY_BASE + n) to the launcher.  interrupt() makes run() return
INTERRUPTED.  Nothing here runs guest code.
"""
from __future__ import annotations

import logging
import threading

from cuse_lguest.core.contract import GuestParams, RunExit
from cuse_lguest.core.irqline import IrqLine
from cuse_lguest.testing.nomemory import no_memory

EVENT_VALUE = 0x5E0      # the notify value tests wire to an eventfd
NOTIFY_BASE = 0x1000     # run() returns NOTIFY_BASE + irq

log = logging.getLogger("cuse_guest_double")
acquire_memory = no_memory   # the double maps nothing: `serve --guest-factory` takes no handles
made: list["IrqNotifyGuest"] = []


class IrqNotifyGuest:
    def __init__(self, params: GuestParams) -> None:
        self.params = params
        self.death = None
        self.destroyed = False
        self.runs = 0
        self._cond = threading.Condition()
        self._irqs: list[int] = []
        self._interrupted = False

    def run(self) -> tuple[RunExit, int]:
        with self._cond:
            self.runs += 1
            self._cond.wait_for(lambda: self._irqs or self._interrupted)
            if self._interrupted:
                self._interrupted = False
                return RunExit.INTERRUPTED, 0
            irq = self._irqs.pop(0)
        self.params.claim_notify(EVENT_VALUE)
        return RunExit.NOTIFY, NOTIFY_BASE + irq

    def irq(self, irq: int) -> None:
        with self._cond:
            self._irqs.append(irq)
            self._cond.notify_all()

    def interrupt(self) -> None:
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()

    def destroy(self) -> None:
        self.destroyed = True
        log.warning("guest double for %s destroyed", self.params.name)


def make_guest(params: GuestParams) -> IrqNotifyGuest:
    """The guest factory handed to Device(guest_factory=...)."""
    guest = IrqNotifyGuest(params)
    made.append(guest)
    return guest


class NativeLineGuest(IrqNotifyGuest):
    """The double, offering the core's real native IRQ line as LguestGuest does.

    So the device registers the transport's C shortcut for it.  IRQs that
    arrive through the shortcut land in `irq_line` (run() does not see them);
    those that reach Python arrive through irq() as before.  die() is the
    core's kill(): the death, and the line refusing from then on.
    """

    def __init__(self, params: GuestParams) -> None:
        super().__init__(params)
        self.irq_line = IrqLine.create()

    def die(self, reason: str) -> None:
        self.death = reason
        self.irq_line.retire()

    def destroy(self) -> None:
        self.irq_line.retire()
        self.irq_line.close()
        super().destroy()


def make_native_guest(params: GuestParams) -> NativeLineGuest:
    guest = NativeLineGuest(params)
    made.append(guest)
    return guest
