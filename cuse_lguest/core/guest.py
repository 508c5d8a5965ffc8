"""A Guest as the device layer sees it (contract.Guest), and its cross-thread state.

The vCPU thread runs the Guest inside run().  Other threads only ever touch
what is here: the pending-IRQ bitmap, the interrupt request and the death
slot, all under one lock, plus the stop flag that makes a running vCPU look
at them (see cpu/stopper.py) and a wake-up token that wakes a halted one.
That is the whole concurrency story: LHREQ_IRQ, the timer and the device's
interrupt() all reduce to "change state, then kick".

The token is a bare lock used as a binary semaphore (locked = no wake-up
posted) rather than a Condition: a kick posts it with two C calls, and the
woken vCPU has no Condition bookkeeping to do before it looks at its
pending work.  A halted Guest's IRQ latency is mostly that wake-up.

The vCPU looks at this state at every exit and almost always finds nothing,
so it first peeks without the lock: reading an attribute is atomic under
the GIL, and only changes need the lock.  A change that lands just after a
peek came with a kick, and the kick makes the vCPU look again.
"""
from __future__ import annotations

import logging
import threading

from cuse_lguest import abi
from cuse_lguest.core.contract import GuestParams, RunExit
from cuse_lguest.core.timer import timers
from cuse_lguest.core.vcpu import VCpu
from cuse_lguest.memory.shared import open_guest_memory

log = logging.getLogger("cuse_lguest.core")

# How soon an IRQ the Guest could not take is tried again: the tick of a
# HZ=1000 host, which is what gave the real host its next chance.
RETRY_DELIVERY_NS = 1_000_000


class LguestGuest:
    """One Guest with one vCPU (implements contract.Guest)."""

    def __init__(self, params: GuestParams) -> None:
        self.name = params.name
        self._lock = threading.Lock()
        self._wakeup = threading.Lock()
        self._wakeup.acquire()          # nothing posted yet
        self._run_lock = threading.Lock()
        self._pending = 0
        self._from_launcher = False
        self._interrupt = False
        self._destroyed = False
        self._death: str | int | None = None
        self._retry = _RetryTick()      # the timer key for delayed re-delivery
        self.memory = open_guest_memory(params.pid, params.base, params.pfnlimit)
        try:
            self.vcpu = VCpu(self, params, self.memory)
        except BaseException:
            self.memory.close()
            raise
        timers.attach()

    # ---- contract.Guest ---------------------------------------------------------
    @property
    def death(self) -> str | int | None:
        return self._death

    def run(self) -> tuple[RunExit, int]:
        with self._run_lock:
            if self._death is not None or self._destroyed:
                return RunExit.DEAD, 0
            return self.vcpu.run()

    def irq(self, irq: int) -> None:
        if not 0 <= irq < abi.LGUEST_IRQS:
            raise ValueError(f"irq {irq} out of range")
        with self._lock:
            self._pending |= 1 << irq
            self._from_launcher = True
            self._kick()

    def interrupt(self) -> None:
        with self._lock:
            self._interrupt = True
            self._kick()

    def destroy(self) -> None:
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
            self._interrupt = True
            self._kick()
        timers.cancel(self)
        timers.cancel(self._retry)
        with self._run_lock:                 # wait for a running vCPU to come out
            self.vcpu.close()
            self.memory.close()
        timers.detach(self)

    # ---- used by the vCPU thread ------------------------------------------------
    def _kick(self) -> None:
        """Caller holds the lock: wake a halted vCPU, stop a running one."""
        if self._wakeup.locked():       # post the token once; kicks are serialised by the lock
            self._wakeup.release()
        self.vcpu.machine.stop.request()

    def kill(self, reason: str) -> None:
        """The first reason wins; later ones are ignored (spec §1.5)."""
        with self._lock:
            if self._death is not None:
                return
            self._death = reason
        timers.cancel(self)
        timers.cancel(self._retry)
        log.warning("guest %s died: %s", self.name, reason.rstrip("\n"))

    def request_restart(self) -> None:
        """SHUTDOWN(restart): after the CRASH text was recorded, the death becomes ERESTART."""
        with self._lock:
            self._death = abi.ERESTART

    def pending_irqs(self) -> int:
        """The pending bitmap; also performs the LHREQ_IRQ memory sync point once per injection."""
        if not self._pending and not self._from_launcher:
            return 0                      # the lock-free peek (module docstring)
        with self._lock:
            pending, launcher, self._from_launcher = self._pending, self._from_launcher, False
        if launcher:
            self.memory.on_irq()
        return pending

    def take_irq(self, irq: int) -> None:
        with self._lock:
            self._pending &= ~(1 << irq)

    def take_interrupt_request(self) -> bool:
        if not self._interrupt:
            return False                  # the lock-free peek (module docstring)
        with self._lock:
            asked, self._interrupt = self._interrupt, False
            return asked

    def sleep_while_halted(self, vcpu: VCpu) -> None:
        """HALT: sleep until an unblocked IRQ is pending or the device wants the vCPU back.

        The state is checked under the lock and the token taken outside it.
        A kick between the two leaves the token posted, so the acquire returns
        at once and we look again; so does a token left over from a kick that
        came while the vCPU was running, which costs one extra look.
        """
        blocked_at = vcpu.ld.gpa + abi.LGUEST_DATA_BLOCKED_INTERRUPTS
        while True:
            with self._lock:
                if self._interrupt or self._pending & ~self.memory.read_u32(blocked_at):
                    return
            self._wakeup.acquire()

    def set_clockevent(self, delta_ns: int) -> None:
        if delta_ns == 0:
            timers.cancel(self)
        else:
            timers.arm(self, delta_ns, self._timer_fired)

    def _timer_fired(self) -> None:
        with self._lock:
            self._pending |= 1
            self._kick()

    def retry_delivery_soon(self) -> None:
        """An IRQ is pending that the Guest cannot take yet: look again in a moment."""
        timers.arm(self._retry, RETRY_DELIVERY_NS, self._retry_fired)

    def _retry_fired(self) -> None:
        with self._lock:
            if not self._destroyed:
                self._kick()


class _RetryTick:
    """Identity of a Guest's re-delivery timer, separate from its clock event."""


def create_guest(params: GuestParams) -> LguestGuest:
    """contract.GuestFactory: build a Guest for one INITIALIZE (raises GuestSetupError)."""
    return LguestGuest(params)
