"""The vCPU's one interrupt hook: native for exits that need no decision, Python for the rest.

Unicorn reports every trap and `int n` of the Guest to a UC_HOOK_INTR
callback.  Through the Python binding each one cost tens of microseconds
before any work was done, and a Linux Guest makes a system call for nearly
everything.  The real lguest host did not even see most of them: it loaded
the Guest's system-call gate into the CPU's IDT ("direct traps") and the
CPU delivered them.  Unicorn has no IDT it would use, so we do the next
best thing: lg_intr_hook (_exits_build.py, which says exactly what it
takes on and what it refuses) is the hook, in C, and it builds the frame
itself when the answer is certain.  Everything else goes, untouched, to the
Python handler it was given, behind the binding's own exception guard (an
exception there stops emulation and is raised by emu_start, as for any
hook).

C reads a copy of the Guest's IDT and lguest_data address.  Python owns
them and calls the setters below whenever one changes, so the copy is
never stale.  What a Linux task switch changes, which C runs itself, has
one home that both sides use in place: the async ring's cursor, the
Guest's TS request and kernel stack (here), the live GDT (the switcher
region) and which Guest page directory is current (the mirror's struct
lg_mirror).

The switch: `CUSE_LGUEST_NATIVE_EXITS=0` in the environment, or
`enabled = False` on a running vCPU's NativeExits, sends every exit to
Python.  It exists for tests that compare both paths frame by frame and for
benchmarks that measure the difference; nothing else should turn it off.
"""
from __future__ import annotations

import ctypes
import os
from typing import Callable

from unicorn import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH, UC_HOOK_INTR, Uc, x86_const
from unicorn.unicorn_py3.unicorn import HOOK_INTR_CFUNC, uccallback, uclib

from cuse_lguest import abi
from cuse_lguest.cpu._exits import ffi, lib
from cuse_lguest.cpu.context import SavedContext
from cuse_lguest.cpu.paging import PageDirectoryMirror
from cuse_lguest.cpu.stopper import library_symbol
from cuse_lguest.cpu.switcher import GDT_ADDR, PD_ADDR, SWITCHER_BASE, SWITCHER_PDE_INDEX, SwitcherRegion
from cuse_lguest.memory.guest_memory import GuestMemory

ENV = "CUSE_LGUEST_NATIVE_EXITS"


def wanted() -> bool:
    """Whether new vCPUs start with native exits on (the default), per the environment."""
    return os.environ.get(ENV, "1") != "0"


def _entry(name: str, ctype: str):
    address = library_symbol(name)
    if address is None:
        raise RuntimeError(f"the loaded libunicorn has no {name}")
    return ffi.cast(ctype, address)


class NativeExits:
    """One vCPU's native hook and the copy of Guest state it reads.

    Built by Machine.install_hooks; off until the vCPU has connected the IRQ
    words and the stats block (connect()) and switched it on.  Unicorn keeps
    a pointer to the struct, so this object lives as long as the Machine.
    """

    def __init__(self, uc: Uc, ctx: SavedContext, memory: GuestMemory, region: SwitcherRegion,
                 pgdir: PageDirectoryMirror, cr0_ts: int, on_intr: Callable[[int], None]) -> None:
        self._x = x = ffi.new("struct lg_exits *")
        self._uc = uc
        x.uc = ffi.cast("void *", ctypes.cast(uc._uch, ctypes.c_void_p).value)
        x.reg_read = _entry("uc_reg_read", "int (*)(void *, int, void *)")
        x.reg_write = _entry("uc_reg_write", "int (*)(void *, int, const void *)")
        x.context_save = _entry("uc_context_save", "int (*)(void *, void *)")
        x.context_restore = _entry("uc_context_restore", "int (*)(void *, void *)")
        x.ctl = _entry("uc_ctl", "int (*)(void *, int, ...)")
        # What Machine.flush_tlb passes: the binding encodes (op << 30) | (nargs << 26) | control.
        x.tlb_flush = (UC_CTL_IO_WRITE << 30) | UC_CTL_TLB_FLUSH
        x.cr0_ts = cr0_ts
        for name, index in ffi.typeof("enum lg_register").relements.items():
            x.regid[index] = getattr(x86_const, "UC_X86_REG_" + name.removeprefix("LG_R_"))
        view = ctx.native_view()
        x.ctx = ffi.cast("char *", view.address)
        x.ctx_error_code, x.ctx_is_int, x.ctx_old_exception = view.error_code, view.is_int, view.old_exception
        x.ctx_hflags, x.ctx_segs = view.hflags, view.segs
        x.seg_size, x.seg_cs, x.seg_ss = view.seg_size, view.seg_cs, view.seg_ss
        # The Python handler, wrapped the way the binding wraps every hook.
        self._slow = uccallback(uc, HOOK_INTR_CFUNC)(lambda _uc, intno, _key: on_intr(intno))
        x.slow = ffi.cast("void (*)(void *, uint32_t, void *)", ctypes.cast(self._slow, ctypes.c_void_p).value)
        x.ram = ffi.cast("uint8_t *", memory.host_address)
        x.limit = memory.limit
        x.pfnlimit = memory.pfnlimit
        x.host_pd = ffi.cast("uint32_t *", region.host_address(PD_ADDR))
        x.mirror = pgdir.native
        x.pd_addr = PD_ADDR
        x.switcher_pde = region.switcher_pde
        x.switcher_slot = SWITCHER_PDE_INDEX
        x.switcher_base = SWITCHER_BASE
        x.gdt = ffi.cast("uint64_t *", region.host_address(GDT_ADDR))
        x.clock_fd = -1
        hook = ctypes.c_size_t()
        err = uclib.uc_hook_add(uc._uch, ctypes.byref(hook), UC_HOOK_INTR,
                                ctypes.c_void_p(int(ffi.cast("uintptr_t", ffi.addressof(lib, "lg_intr_hook")))),
                                ctypes.c_void_p(int(ffi.cast("uintptr_t", x))), 1, 0)
        if err:
            raise RuntimeError(f"cannot install the interrupt hook (uc_hook_add error {err})")

    def connect(self, irq_words: tuple[int, int, int, int], stat_arrays: tuple[int, int],
                stat_slots: tuple[int, int, int, int]) -> None:
        """Where the IRQ line's (pending, from_launcher, alive, interrupt) and the stats' (count, ns) live,
        and the profiler's (trap, hypercall, async hypercall) slot bases and its number of hypercall slots."""
        x = self._x
        x.pending, x.from_launcher, x.alive, x.interrupt = (ffi.cast("volatile uint32_t *", a) for a in irq_words)
        x.stat_count, x.stat_ns = (ffi.cast("uint64_t *", a) for a in stat_arrays)
        x.trap_slot_base, x.hcall_slot_base, x.async_slot_base, x.hcall_slots = stat_slots

    def connect_halt(self, sleep: tuple[int, int, int], stop_flag: int, sync: Callable[[], None] | None,
                     slots: tuple[int, int]) -> None:
        """What a native HALT needs: the IRQ line's sleep (lg_irq_sleep's address, the line, its wait fd),
        the stop flag's address, the memory's IRQ sync point (None: it does nothing), and the
        profiler's (first IRQ, HALT sleep) slots.  `sync` runs behind the binding's exception guard."""
        x = self._x
        function, irqs, x.wait_fd = sleep
        x.irqs = ffi.cast("void *", irqs)
        x.stop_flag = ffi.cast("volatile int *", stop_flag)
        x.irq_slot_base, x.halt_sleep_slot = slots
        if sync is not None:
            self._sync = uccallback(self._uc, HOOK_INTR_CFUNC)(lambda _uc, _intno, _key: sync())
            x.sync = ffi.cast("void (*)(void *, uint32_t, void *)", ctypes.cast(self._sync, ctypes.c_void_p).value)
        x.irq_sleep = ffi.cast("int (*)(void *, int, const volatile uint32_t *)", function)

    def connect_clock(self, fd: int) -> None:
        """The Guest's clock event, a timerfd (lg_clock_new), which C arms at SET_CLOCKEVENT."""
        self._x.clock_fd = fd

    def connect_notify(self, table: tuple[int, int, int], owner: object, sync: Callable[[int], None] | None) -> None:
        """What a native NOTIFY needs: the eventfd table (EventfdTable.native_target(): the table, and
        the addresses of its lookup and its claim), the object that keeps the table alive (held here
        as long as this), and the memory's sync point before a notify (None: it does nothing), which
        runs behind the binding's exception guard with the value."""
        x = self._x
        self._eventfds = owner
        if sync is not None:
            self._sync_notify = uccallback(self._uc, HOOK_INTR_CFUNC)(lambda _uc, value, _key: sync(value))
            x.sync_notify = ffi.cast("void (*)(void *, uint32_t, void *)",
                                     ctypes.cast(self._sync_notify, ctypes.c_void_p).value)
        address, has, claim = table
        x.eventfds_has = ffi.cast("int (*)(void *, uint64_t)", has)
        x.eventfds_claim = ffi.cast("int (*)(void *, uint64_t, int)", claim)
        x.eventfds = ffi.cast("void *", address)

    @property
    def ring_cursor(self):
        """The async ring's cursor, one word both AsyncRing and C use (`cell[0]`)."""
        return ffi.addressof(self._x, "ring_cursor")

    @property
    def enabled(self) -> bool:
        return bool(self._x.enabled)

    @enabled.setter
    def enabled(self, on: bool) -> None:
        if on and self._x.pending == ffi.NULL:
            raise RuntimeError("native exits need connect() first")
        self._x.enabled = int(on)

    @property
    def halting(self) -> bool:
        """A native HALT is under way (asleep, or about to deliver its IRQ); any thread may ask."""
        return bool(self._x.halting)

    @property
    def handled(self) -> int:
        """How many exits C has finished on its own (tests check the path really ran)."""
        return self._x.handled

    # ---- the Guest state C reads: Python calls these whenever it changes ------------
    def set_gate(self, vector: int, gate: tuple[int, int, int] | None) -> None:
        offset, dpl, kind = gate if gate is not None else (0, 0, 0)
        g = self._x.idt[vector]
        g.offset, g.dpl, g.type = offset, dpl, kind

    @property
    def kernel_stack(self) -> tuple[int, int]:
        """SET_STACK's (SS, ESP), as Python or C (at a task switch) last set it."""
        return self._x.kstack_ss, self._x.kstack_esp

    def set_kernel_stack(self, ss: int, esp: int) -> None:
        self._x.kstack_ss, self._x.kstack_esp = ss, esp

    @property
    def task_switched(self) -> bool:
        """LHCALL_TS as the Guest last asked (C runs TS itself): whether a #NM is the Guest's."""
        return bool(self._x.ts)

    @task_switched.setter
    def task_switched(self, on: bool) -> None:
        self._x.ts = int(on)

    def set_lguest_data(self, gpa: int, noirq: tuple[int, int] = (0, 0)) -> None:
        """After the handshake checked that all of lguest_data lies in Guest RAM; `noirq` is its
        "never interrupt here" EIP window [start, end)."""
        if gpa + abi.LGUEST_DATA_SIZE > self._x.limit:
            raise ValueError("lguest_data outside Guest RAM")
        self._x.noirq_start, self._x.noirq_end = noirq
        self._x.ld, self._x.have_ld = gpa, 1
