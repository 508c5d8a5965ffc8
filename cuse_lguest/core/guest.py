"""A Guest as the device layer sees it (contract.Guest), and its cross-thread state.

The vCPU thread runs the Guest inside run().  Other threads only ever touch
what is here: the pending-IRQ word, the interrupt request and the death
slot, plus the stop flag that makes a running vCPU look at them (see
cpu/stopper.py) and a pipe that wakes a halted one.  That is the whole
concurrency story: LHREQ_IRQ, the timer and the device's interrupt() all
reduce to "change state, then kick".

The pending-IRQ word lives in a shared page of native memory (core/irqline.py)
because the CUSE transport answers the hot LHREQ_IRQ write in C, without the
GIL and maybe from another process: it calls lg_irq_inject on the line the
device hands it.  Python changes the word with the same atomic helpers, so
neither side needs the other's lock.  A halted vCPU sleeps in a read of the
line's pipe (the GIL released), which C can post as easily as Python; a post
left over from a kick that came while the vCPU was running costs one extra
look.  Kicks write the pipe only while the vCPU says it sleeps, which
spares the common case (a running or never-run Guest) a system call per
IRQ.  A halted Guest's IRQ latency is mostly that wake-up.

The clock event is a timerfd of the Guest's own, which the process's timer
service watches (core/timer.py): SET_CLOCKEVENT arms it, in C when the
native exits take the call, so arming needs neither the GIL nor the
service's lock; expiry still runs _timer_fired on the service's thread.
The first SET_CLOCKEVENT is always Python's (C has no fd before it): it
makes the timerfd and has it watched, so a Guest that never asks for a
clock costs no fd and starts no thread.  Once the Guest is destroyed
nobody arms it again, and it is handed to the service to close.

The vCPU looks at this state at every exit and almost always finds nothing,
so it peeks without the lock: the word is read in one load, and the other
flags are attributes, atomic under the GIL.  A change that lands just after
a peek came with a kick, and the kick makes the vCPU look again.
"""
from __future__ import annotations

import errno
import logging
import threading

from cuse_lguest import abi
from cuse_lguest.core import exitstats
from cuse_lguest.core.contract import GuestParams, GuestSetupError, RunExit
from cuse_lguest.core.irqline import IrqLine
from cuse_lguest.core.timer import timers
from cuse_lguest.core.vcpu import VCpu
from cuse_lguest.cpu._exits import ffi as _exits_ffi
from cuse_lguest.cpu._exits import lib as _exits_lib
from cuse_lguest.memory.shared import open_guest_memory

log = logging.getLogger("cuse_lguest.core")

# How soon an IRQ the Guest could not take is tried again: the tick of a
# HZ=1000 host, which is what gave the real host its next chance.
RETRY_DELIVERY_NS = 1_000_000


class LguestGuest:
    """One Guest with one vCPU (implements contract.Guest)."""

    def __init__(self, params: GuestParams, line: IrqLine | None = None) -> None:
        """`line`: the IRQ line a worker adopted from the front end; a new one when None."""
        self.name = params.name
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._destroyed = False
        self._death: str | int | None = None
        self._retry = _RetryTick()      # the timer key for delayed re-delivery
        # The IRQ line's page also holds the vCPU's stop flag, so that a C
        # injector (the transport, maybe in another process) can raise it.
        # Whatever fails after it (Unicorn, a descriptor when the service is
        # out of fds) must give back what was already built, above all the
        # guest RAM mapping.
        try:
            self.irq_line = line if line is not None else IrqLine.create()
        except BaseException:
            params.memory.close()         # ours from the call on, as open_guest_memory's would be
            raise
        try:
            self.memory = open_guest_memory(params.memory)
            try:
                stats = (exitstats.ExitStats.anonymous(params.name, params.pid) if params.stats_fd is None
                         else exitstats.ExitStats.from_fd(params.stats_fd))
                try:
                    self.vcpu = VCpu(self, params, self.memory, self.irq_line, stats)
                except BaseException:
                    stats.close()
                    raise
            except BaseException:
                self.memory.close()
                raise
        except BaseException:
            self.irq_line.close()
            raise
        self._clock: int | None = None      # the clock event's timerfd, from the first SET_CLOCKEVENT on
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
        with self._lock:                    # kicks never race close() (see destroy)
            self.irq_line.raise_irqs(1 << irq, from_launcher=True)

    def interrupt(self) -> None:
        with self._lock:
            self.irq_line.request_interrupt()

    def destroy(self) -> None:
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
            self.irq_line.retire()
            self.irq_line.request_interrupt()
            self._stop_clock()
        timers.cancel(self._retry)
        with self._run_lock:                 # wait for a running vCPU to come out
            self.vcpu.close()
            self.memory.close()
        with self._lock:
            self.irq_line.close()
        timers.release(self)                 # nobody arms it any more: the service closes it
        timers.detach(self)

    # ---- used by the vCPU thread ------------------------------------------------
    def _kick(self) -> None:
        """Caller holds the lock: wake a halted vCPU, stop a running one."""
        self.irq_line.kick()

    def kill(self, reason: str) -> None:
        """The first reason wins; later ones are ignored (spec §1.5)."""
        with self._lock:
            if self._death is not None:
                return
            self._death = reason
            self.irq_line.retire()
            if not self._destroyed:          # else the clock may be closed already
                self._stop_clock()
        timers.cancel(self._retry)
        log.warning("guest %s died: %s", self.name, reason.rstrip("\n"))

    def request_restart(self) -> None:
        """SHUTDOWN(restart): after the CRASH text was recorded, the death becomes ERESTART."""
        with self._lock:
            self._death = abi.ERESTART

    def pending_irqs(self) -> int:
        """The pending bitmap; also performs the LHREQ_IRQ memory sync point once per injection."""
        line = self.irq_line
        pending = line.pending            # first: see the ordering in cpu/_native_build.py
        if not pending and not line.from_launcher:
            return 0                      # the peek (module docstring)
        if line.take_launcher_mark():
            self.vcpu.sync_on_irq()
        return pending

    def take_irq(self, irq: int) -> None:
        self.irq_line.take(1 << irq)

    def take_interrupt_request(self) -> bool:
        line = self.irq_line
        return line.interrupt_requested and line.take_interrupt()   # the peek first (module docstring)

    def sleep_while_halted(self, vcpu: VCpu) -> None:
        """HALT: sleep until an unblocked IRQ is pending or the device wants the vCPU back.

        The whole sleep is C (IrqLine.sleep): kicks post the pipe only while
        the line says we sleep, and we say so before we look; a change that
        lands between the look and the read leaves a post behind, so the read
        returns at once and we look again.  The look reads the Guest's
        blocked_interrupts word in place, so it is bounds-checked here once.
        """
        blocked_at = vcpu.ld.gpa + abi.LGUEST_DATA_BLOCKED_INTERRUPTS
        self.memory.check_read(blocked_at, 4)
        self.irq_line.sleep(self.memory.host_address + blocked_at)

    def set_clockevent(self, delta_ns: int) -> None:
        """One IRQ 0 delta_ns from now, replacing any earlier one; 0 cancels (the native exits do the same).

        On the vCPU thread, which also makes the timerfd on first use: nothing else runs then."""
        if self._clock is None:
            if delta_ns == 0:
                return
            clock = _exits_lib.lg_clock_new()
            if clock < 0:
                raise OSError(_exits_ffi.errno, "cannot create the Guest's clock event (timerfd)")
            timers.watch(self, clock, self._timer_fired)
            self._clock = clock
            self.vcpu.exits.connect_clock(clock)
        _exits_lib.lg_clock_set(self._clock, delta_ns)

    def _stop_clock(self) -> None:
        """Caller holds the lock: no clock event any more (until the next SET_CLOCKEVENT)."""
        if self._clock is not None:
            _exits_lib.lg_clock_set(self._clock, 0)

    def _timer_fired(self) -> None:
        with self._lock:
            if self._destroyed:
                return                    # the stats block may be unmapped already
            self.vcpu.stats.add(exitstats.TIMER_TICK)
            self.irq_line.raise_irqs(1)

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
    """contract.GuestFactory: build a Guest for one INITIALIZE (raises GuestSetupError).

    Running out of memory or of file descriptors while building it is the
    seed's allocation failure, ENOMEM.
    """
    try:
        return LguestGuest(params)
    except OSError as e:
        if e.errno in (errno.ENOMEM, errno.EMFILE, errno.ENFILE):
            raise GuestSetupError(errno.ENOMEM, f"cannot build the guest: {e.strerror}") from None
        raise
