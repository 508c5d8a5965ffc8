"""The vCPU: lguest's run loop (spec §4.1) around Unicorn, and its exit handlers.

run() repeats, in the 3.x order:
  1. a pending hypercall: the handshake, or drain the async ring then the call;
  2. a pending NOTIFY: an eventfd claims it (keep going) or run() returns it;
  4. an interrupt request from the device: return;
  5. deliver the lowest unblocked pending IRQ if the Guest can take it;
  7. halted: sleep until an unblocked IRQ is pending;
  8. enter the Guest until the next exit.
Exits are handled inside Unicorn's hooks and then steps 1-5 run right there,
so a hypercall or a trap costs no extra emu_start round trip.  A HALT sleeps
right there too (step 7), and the IRQ that wakes it is delivered before the
hook returns: the Guest resumes in its handler without leaving emu_start.
The hook only stops emulation when run() must return.  Everything that goes
wrong in the Guest surfaces as GuestFault and becomes its death.
"""
from __future__ import annotations

from time import perf_counter_ns
from typing import TYPE_CHECKING

from unicorn import (UC_ERR_FETCH_PROT, UC_ERR_FETCH_UNMAPPED, UC_ERR_READ_PROT,
                     UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_PROT, UC_ERR_WRITE_UNMAPPED)
from unicorn.x86_const import (UC_X86_REG_CS, UC_X86_REG_EAX, UC_X86_REG_EBX, UC_X86_REG_ECX,
                               UC_X86_REG_EDX, UC_X86_REG_EFLAGS, UC_X86_REG_EIP, UC_X86_REG_ESI,
                               UC_X86_REG_ESP, UC_X86_REG_SS)

from cuse_lguest import abi
from cuse_lguest.core import exitstats, interrupts
from cuse_lguest.core.async_ring import AsyncRing
from cuse_lguest.core.contract import GuestParams, RunExit
from cuse_lguest.core.handshake import LguestData, lguest_init
from cuse_lguest.core.hypercalls import Hypercalls
from cuse_lguest.cpu import exits
from cuse_lguest.cpu._native import lib
from cuse_lguest.cpu.machine import Machine
from cuse_lguest.memory.errors import GuestFault
from cuse_lguest.memory.guest_memory import GuestMemory

if TYPE_CHECKING:
    from cuse_lguest.core.guest import LguestGuest
    from cuse_lguest.core.irqline import IrqLine

_stat_add = lib.lg_stat_add     # exitstats.ExitStats.add without its Python frame (every exit)

# Guest accesses Unicorn could not satisfy: a page table named a frame outside Guest RAM.
_MEMORY_ERRORS = frozenset({UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED, UC_ERR_FETCH_UNMAPPED,
                            UC_ERR_READ_PROT, UC_ERR_WRITE_PROT, UC_ERR_FETCH_PROT})


class VCpu:
    """The one vCPU of a Guest.  Everything here runs on the thread inside Guest.run()."""

    def __init__(self, guest: "LguestGuest", params: GuestParams, memory: GuestMemory,
                 line: "IrqLine", stats: exitstats.ExitStats) -> None:
        self.guest = guest
        self.memory = memory
        self.stats = stats
        self._stats_ptr = stats.native
        # The memory sync points, timed only where this memory does something at them.
        self._at_run_entry = self._timed_sync(exitstats.SYNC_RUN_ENTRY, "at_run_entry")
        self._before_notify = self._timed_sync(exitstats.SYNC_NOTIFY, "before_notify")
        self.sync_on_irq = self._timed_sync(exitstats.SYNC_IRQ, "on_irq")
        self._slept_ns = 0
        self.claim_notify = params.claim_notify
        self.machine = Machine(memory, params.start, line.stop, line)
        self.regs = self.machine.regs
        # Every int exit needs CS (hypercall or trap?) and a hypercall needs
        # five more: one native call reads all six.
        self._exit_regs = self.regs.batch(UC_X86_REG_CS, UC_X86_REG_EAX, UC_X86_REG_EBX,
                                          UC_X86_REG_ECX, UC_X86_REG_EDX, UC_X86_REG_ESI)
        self.frame_regs = self.regs.batch(UC_X86_REG_CS, UC_X86_REG_SS, UC_X86_REG_ESP, UC_X86_REG_EFLAGS)
        self.calls = Hypercalls(self)
        self.ld: LguestData | None = None
        self.ring: AsyncRing | None = None
        self.idt: list[tuple[int, int, int] | None] = [None] * abi.IDT_ENTRIES
        self._halted = False
        self.need_flush = False
        self.hcall: tuple[int, int, int, int, int] | None = None
        self.notify = 0
        self._leave: tuple[RunExit, int] | None = None
        self.machine.install_hooks(self._on_intr, self._on_invalid)
        self.exits = self.machine.exits
        self.exits.connect(line.word_addresses(), stats.slot_arrays(),
                           (exitstats.TRAP, exitstats.HCALL, exitstats.ASYNC, exitstats.HCALL_SLOTS))
        sync = None if type(memory).on_irq is GuestMemory.on_irq else self._sync_for_native_halt
        self.exits.connect_halt(line.sleep_target(), line.stop_address(), sync, (exitstats.IRQ, exitstats.HALT_SLEEP))
        if params.eventfds is not None:
            sync = None if type(memory).before_notify is GuestMemory.before_notify else self._sync_for_native_notify
            self.exits.connect_notify(params.eventfds.native_target(), params.eventfds, sync)
        self.exits.enabled = exits.wanted()

    # ---- the loop -------------------------------------------------------------
    def run(self) -> tuple[RunExit, int]:
        # The memory sync points may find the launcher's memory gone (mirror
        # mode): like any Guest fault that becomes the Guest's death.
        started = perf_counter_ns()
        try:
            return self._run()
        finally:
            self.stats.add(exitstats.RUN, perf_counter_ns() - started)

    def _run(self) -> tuple[RunExit, int]:
        leave = self._guarded(self._at_run_entry)
        if leave is not None:
            return leave
        while True:
            self.machine.stop.clear()          # before looking at pending work: see stopper.py
            leave, self._leave = self._leave, None
            if leave is None:
                leave = self._guarded(self._service)
            if leave is not None:
                return leave
            if self.halted:
                self.guest.sleep_while_halted(self)
                continue
            entered = perf_counter_ns()
            err = self.machine.enter()
            _stat_add(self._stats_ptr, exitstats.EMU, perf_counter_ns() - entered)
            if err in _MEMORY_ERRORS:
                self.guest.kill("bad page table entry")
            elif err:
                self.guest.kill(f"unhandled trap 256 at {self.regs.read(UC_X86_REG_EIP):#x} ({err:#x})")
            elif self.machine.at_until:
                self.guest.kill(f"Bad address {self.regs.read(UC_X86_REG_EIP):#x}")

    def _guarded(self, step) -> tuple[RunExit, int] | None:
        try:
            return step()
        except GuestFault as fault:
            self.guest.kill(fault.reason)
            return RunExit.DEAD, 0

    def _service(self) -> tuple[RunExit, int] | None:
        """Steps 1, 2, 4 and 5; a result means run() must return it."""
        while True:
            if self.hcall is not None:
                self._hypercall()
            if not self.notify:
                break
            value, self.notify = self.notify, 0
            self._before_notify(value)
            if not self.claim_notify(value):
                return RunExit.NOTIFY, value
        if self.guest.death is not None:
            return RunExit.DEAD, 0
        if self.guest.take_interrupt_request():
            return RunExit.INTERRUPTED, 0
        if self.ld is not None:
            interrupts.deliver_pending_irq(self)
        return None

    def _hypercall(self) -> None:
        nr, a1, a2, a3, a4 = self.hcall
        if self.ld is None:
            self.hcall = None
            if nr != abi.LHCALL_LGUEST_INIT:
                raise GuestFault(f"hypercall {nr} before INIT")
            self.ld = lguest_init(self.memory, a1)
            self.exits.set_lguest_data(self.ld.gpa, (self.ld.noirq_start, self.ld.noirq_end))
            self.ring = AsyncRing(self.memory, self.ld.gpa, self._async_call, self._notify_pending,
                                  self.exits.ring_cursor)
            return
        self.ring.drain()
        if not self.notify:
            self.hcall = None
            self.calls.execute(nr, a1, a2, a3, a4)
        if self.need_flush:
            self.need_flush = False
            self.machine.flush_tlb()

    def _notify_pending(self) -> bool:
        return self.notify != 0

    def _async_call(self, nr: int, a1: int, a2: int, a3: int, a4: int) -> None:
        started = perf_counter_ns()
        try:
            self.calls.execute(nr, a1, a2, a3, a4)
        finally:
            self.stats.add(exitstats.async_slot(nr), perf_counter_ns() - started)

    def _timed_sync(self, slot: int, name: str):
        """memory.<name>, counted and timed in `slot` when this memory does work there."""
        if getattr(type(self.memory), name) is getattr(GuestMemory, name):
            return getattr(self.memory, name)   # the base class's no-op: nothing worth a clock read

        def timed(*args):
            started = perf_counter_ns()
            try:
                return getattr(self.memory, name)(*args)
            finally:
                self.stats.add(slot, perf_counter_ns() - started)
        return timed

    # ---- exits (inside emu_start, on this thread) -----------------------------
    def _on_intr(self, vector: int) -> None:
        started = perf_counter_ns()
        slot = exitstats.TRAP + 2 * vector          # (the slot arithmetic inline: this is the hot path)
        try:
            regs = self._exit_regs.read()           # CS, then the hypercall's EAX, EBX, ECX, EDX, ESI
            cpl = regs[0] & 3
            if vector == abi.LGUEST_TRAP_ENTRY and cpl == abi.GUEST_PL:
                nr = regs[1]
                slot = exitstats.HCALL + nr if nr < exitstats.HCALL_SLOTS else exitstats.hcall_slot(nr)
                self.hcall = regs[1:]
            else:
                slot += cpl == 3
                ctx = self.machine.ctx
                ctx.snapshot()
                err, software = ctx.error_code, ctx.is_int
                ctx.clear_old_exception()
                ctx.restore()
                eip = self.regs.read(UC_X86_REG_EIP)
                if software:
                    interrupts.software_interrupt(self, vector, eip, cpl)
                else:
                    interrupts.hardware_trap(self, vector, err, eip)
            self._leave = self._service()
            while self._leave is None and self.halted:
                self._leave = self._sleep_then_service()
        except GuestFault as fault:
            self.guest.kill(fault.reason)
        slept, self._slept_ns = self._slept_ns, 0
        _stat_add(self._stats_ptr, slot, perf_counter_ns() - started - slept)
        if self._leave is not None or self.guest.death is not None:
            self.machine.uc.emu_stop()        # safe: we are the vCPU thread, inside a hook

    def _sleep_then_service(self) -> tuple[RunExit, int] | None:
        """Step 7 inside the hook, then steps 1-5 again, exactly as a pass of run()'s loop would.

        The stop flag is cleared after the sleep and before the pending work is
        looked at (see cpu/stopper.py): the kick that woke us set it, and
        leaving it set would stop the Guest at the first block of its handler.
        """
        started = perf_counter_ns()
        self.guest.sleep_while_halted(self)
        slept = perf_counter_ns() - started
        self.stats.add(exitstats.HALT_SLEEP, slept)
        self._slept_ns += slept
        self.machine.stop.clear()
        return self._service()

    def _sync_for_native_halt(self) -> None:
        """The native HALT took an LHREQ_IRQ's mark: the memory's sync point, as Guest.pending_irqs runs it.

        A fault there is the Guest's death, as on the Python path; C sees the
        line retired and hands the HALT back to Python, which reports it."""
        try:
            self.sync_on_irq()
        except GuestFault as fault:
            self.guest.kill(fault.reason)

    def _sync_for_native_notify(self, value: int) -> None:
        """The native NOTIFY's sync point, as _service runs it before a claim.  A fault there is the
        Guest's death, as on the Python path; C then skips the claim and stops emulation."""
        try:
            self._before_notify(value)
        except GuestFault as fault:
            self.guest.kill(fault.reason)

    def _on_invalid(self) -> bool:
        """ud2 and other undefined opcodes: #UD (6) for the Guest's handler."""
        started = perf_counter_ns()
        ctx = self.machine.ctx
        try:
            ctx.snapshot()
            ctx.clear_old_exception()
            ctx.restore()
            from_user = self.regs.read(UC_X86_REG_CS) & 3 == 3
            interrupts.reflect(self, 6, None, self.regs.read(UC_X86_REG_EIP))
            self.stats.add(exitstats.trap_slot(6, from_user), perf_counter_ns() - started)
            return True
        except GuestFault as fault:
            self.guest.kill(fault.reason)
            return False

    @property
    def halted(self) -> bool:
        """In HALT: Python's own (Hypercalls._halt until an IRQ is delivered), or a native HALT
        asleep in C right now.  The native HALT never sets Python's flag: it either delivers
        the waking IRQ itself, or hands the whole HALT back to Python, which sets it then."""
        return self._halted or self.exits.halting

    @halted.setter
    def halted(self, on: bool) -> None:
        self._halted = on

    # ---- called by hypercalls ---------------------------------------------------
    def set_gate(self, vector: int, gate: tuple[int, int, int] | None) -> None:
        """LOAD_IDT_ENTRY: (offset, dpl, type), or None for no gate; the native exits get a copy."""
        self.idt[vector] = gate
        self.exits.set_gate(vector, gate)

    @property
    def kernel_stack(self) -> tuple[int, int]:
        """SET_STACK's (SS, ESP): kept by the native exits, which run a task switch's SET_STACK themselves."""
        return self.exits.kernel_stack

    def set_kernel_stack(self, ss: int, esp: int) -> None:
        self.exits.set_kernel_stack(ss, esp)

    @property
    def ts(self) -> bool:
        """The Guest's last LHCALL_TS, which decides whose a #NM is (interrupts.hardware_trap).

        Kept by the native exits, which run TS themselves."""
        return self.exits.task_switched

    def set_task_switched(self, on: bool) -> None:
        """LHCALL_TS: CR0.TS as the Guest wants it."""
        self.exits.task_switched = on
        self.machine.set_ts(on)

    def shutdown(self, reason: str, restart: bool) -> None:
        self.guest.kill(reason)
        if restart:
            self.guest.request_restart()

    def set_clockevent(self, delta_ns: int) -> None:
        self.guest.set_clockevent(delta_ns)

    def close(self) -> None:
        self.machine.close()
        self.stats.close()

