"""One emulated x86 CPU for one Guest: Unicorn plus everything lguest's host added around it.

Machine owns the Unicorn instance and hides its quirks from the core:
  * Guest RAM is the GuestMemory's pages at physical 0 (mem_map_ptr, no copy);
    the switcher region sits at the top (see switcher.py).
  * The first entry runs a one-instruction CPL0 stub whose `iret` puts the
    Guest at CPL 1 with lguest's initial registers; then the ring-0
    descriptors are retired.
  * old_exception must be reset after every fault (Unicorn would otherwise
    turn the next one into a double fault).  Only #DE, #TS-#GP, #PF and #DF
    set it, and each of them reaches the core's UC_HOOK_INTR hook, which
    resets it first thing; so does the ud2 hook.  enter() checks it only when
    emu_start ends in an error, the one way out that no hook may have seen.
  * `until` is a mapped, user-readable address in the switcher region.
  * in/out: stock Unicorn skips the CPU's I/O permission check, so port I/O
    never faults.  Our io-permission patch (native/unicorn/) restores it: at
    CPL 1 or 3 with IOPL 0, in/out raise #GP(0) as on hardware, and the core
    emulates them for the Guest kernel only, as lguest did.  The instruction
    hooks below answer what still reaches them (on a stock wheel: everything,
    at any CPL, which is the one place that build is not faithful).
    cpuid is answered from cpuid.py's table; ud2 arrives on the
    invalid-instruction hook.
The core supplies the handlers; Machine only wires them.
"""
from __future__ import annotations

from typing import Callable, Iterable

from unicorn import (UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH, UC_HOOK_INSN, UC_HOOK_INSN_INVALID,
                     UC_PROT_ALL, Uc, UcError)
from unicorn.x86_const import (UC_X86_INS_CPUID, UC_X86_INS_IN, UC_X86_INS_OUT, UC_X86_REG_CR0,
                               UC_X86_REG_CR3, UC_X86_REG_CS, UC_X86_REG_DS, UC_X86_REG_EAX,
                               UC_X86_REG_EBX, UC_X86_REG_ECX, UC_X86_REG_EDX,
                               UC_X86_REG_EIP, UC_X86_REG_ES, UC_X86_REG_ESP, UC_X86_REG_GDTR,
                               UC_X86_REG_SS)

from cuse_lguest import abi
from cuse_lguest.cpu import cpuid, engine
from cuse_lguest.cpu.context import SEG_CS, SEG_SS, SavedContext
from cuse_lguest.cpu.exits import NativeExits
from cuse_lguest.cpu.gdt import HostGdt, cache_of
from cuse_lguest.cpu.paging import PageDirectoryMirror
from cuse_lguest.cpu.regs import RawRegs
from cuse_lguest.cpu.stopper import StopFlag
from cuse_lguest.cpu.switcher import (BOOT_CS, BOOT_DS, PD_ADDR, STUB_ADDR, STUB_STACK, UNTIL_ADDR,
                                      SwitcherRegion)
from cuse_lguest.memory.guest_memory import GuestMemory

CR0_TS = 0x8
CR0_WP = 0x10000
CR0_PG = 0x80000000


class Machine:
    """The CPU of one Guest.  Used only from that Guest's vCPU thread, except `stop`."""

    def __init__(self, memory: GuestMemory, start: int, stop=None, stop_owner: object = None) -> None:
        """`stop`: where the stop flag lives (a `struct lg_stop *`, see StopFlag), kept alive by `stop_owner`."""
        self.uc = uc = engine.new_x86()
        try:
            self.ctx = SavedContext(uc)      # refuses to run on an unverified Unicorn
            self.memory = memory
            uc.mem_map_ptr(0, memory.limit, UC_PROT_ALL, memory.host_address)
            memory.code_changed = self.drop_code
            self.region = SwitcherRegion(uc)
            self.gdt = HostGdt(self.region)
            self.pgdir = PageDirectoryMirror(memory, self.region)
            self.regs = RawRegs(uc)
            self.stop = StopFlag(uc, stop, stop_owner)
            uc.reg_write(UC_X86_REG_GDTR, (0, self.gdt.base, self.gdt.limit, 0))
            uc.reg_write(UC_X86_REG_CS, BOOT_CS)
            uc.reg_write(UC_X86_REG_SS, BOOT_DS)
            for seg in (UC_X86_REG_DS, UC_X86_REG_ES):
                uc.reg_write(seg, abi.GUEST_DS)
            uc.reg_write(UC_X86_REG_ESP, STUB_STACK)
            self.region.install_boot_stub(start)
            self._start = start
            self._booted = False
        except BaseException:
            self.close()
            raise

    # ---- wiring -------------------------------------------------------
    def install_hooks(self, on_intr: Callable[[int], None], on_invalid: Callable[[], bool]) -> None:
        """Traps and software interrupts go to the native hook, and on to on_intr(vector) for
        what it leaves (cpu/exits.py); ud2 & co to on_invalid()."""
        uc = self.uc
        self.exits = NativeExits(uc, self.ctx, self.memory, self.region, self.pgdir, CR0_TS, on_intr)
        uc.hook_add(UC_HOOK_INSN_INVALID, lambda _uc, _ud: on_invalid())
        uc.hook_add(UC_HOOK_INSN, self._on_in, None, 1, 0, UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_out, None, 1, 0, UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, UC_X86_INS_CPUID)

    @staticmethod
    def _on_in(_uc: Uc, _port: int, size: int, _ud: object) -> int:
        return (1 << (8 * size)) - 1          # no device answers: all ones

    @staticmethod
    def _on_out(_uc: Uc, _port: int, _size: int, _value: int, _ud: object) -> None:
        return None                            # discarded, as lguest did

    def _on_cpuid(self, _uc: Uc, _ud: object) -> int:
        r = self.regs
        a, b, c, d = cpuid.answer(r.read(UC_X86_REG_EAX), r.read(UC_X86_REG_ECX))
        r.write(UC_X86_REG_EAX, a)
        r.write(UC_X86_REG_EBX, b)
        r.write(UC_X86_REG_ECX, c)
        r.write(UC_X86_REG_EDX, d)
        return 1                               # skip Unicorn's own cpuid

    # ---- running --------------------------------------------------------
    def enter(self) -> int:
        """Run the Guest until a hook stops it.  Returns 0, or the UC_ERR_* that ended it."""
        try:
            if not self._booted:
                self.uc.emu_start(STUB_ADDR, self._start)
                self.gdt.retire_boot_segments()
                self._booted = True
            self.uc.emu_start(self.regs.read(UC_X86_REG_EIP), UNTIL_ADDR)
        except BaseException as e:
            self._reset_old_exception()
            if isinstance(e, UcError):
                return e.errno
            raise
        return 0

    def _reset_old_exception(self) -> None:
        """After an abnormal end of emu_start, which may have left a fault half handled."""
        ctx = self.ctx
        ctx.snapshot()
        if ctx.old_exception != -1:
            ctx.clear_old_exception()
            ctx.restore()

    @property
    def at_until(self) -> bool:
        """Did the Guest itself jump to the stop address? (It must not use the switcher region.)"""
        return self.regs.read(UC_X86_REG_EIP) == UNTIL_ADDR

    # ---- paging and TLB -------------------------------------------------
    def new_pgtable(self, pgd_gpa: int) -> None:
        """Switch to (a copy of) the Guest's page directory; the first call turns paging on."""
        first = not self.pgdir.paging
        self.pgdir.load(pgd_gpa)
        self.regs.write(UC_X86_REG_CR3, PD_ADDR)              # also flushes Unicorn's TLB
        if first:
            self.regs.write(UC_X86_REG_CR0, self.regs.read(UC_X86_REG_CR0) | CR0_PG | CR0_WP)

    def flush_tlb(self) -> None:
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    def drop_code(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Forget translations of the Guest-physical (gpa, length) ranges, rewritten from outside the CPU.

        Only the pages named go: a block read scatters its buffers over RAM,
        and dropping the span from the lowest to the highest took the Guest
        kernel's own code with it at every interrupt (a 32 MiB md5sum ran 4x
        slower retranslating it).  ctl_remove_cache takes a *virtual* range in
        the current address space and silently ignores unmapped ones.  With
        paging off, virtual is physical, so we switch paging off once for all
        the ranges and back on after: exactly those pages are dropped and every
        other translation survives.  (The alternative, ctl_flush_tb, throws away
        all of the Guest's translated code, which it then pays to translate
        again.)  The CR0 writes flush the TLB, which refills from the Guest's
        tables as usual.
        """
        runs = page_runs(ranges)
        if not runs:
            return
        paging = self.pgdir.paging
        cr0 = self.regs.read(UC_X86_REG_CR0)
        if paging:
            self.regs.write(UC_X86_REG_CR0, cr0 & ~CR0_PG)
        try:
            for lo, hi in runs:
                self.uc.ctl_remove_cache(lo, hi)
        finally:
            if paging:
                self.regs.write(UC_X86_REG_CR0, cr0)

    def set_ts(self, on: bool) -> None:
        cr0 = self.regs.read(UC_X86_REG_CR0)
        self.regs.write(UC_X86_REG_CR0, (cr0 | CR0_TS) if on else (cr0 & ~CR0_TS))

    # ---- privilege change -----------------------------------------------
    def enter_ring1(self, ss: int) -> None:
        """From ring 3 to the Guest kernel: CS 0x61 and `ss`, CPL 1 (Unicorn cannot do this by reg_write)."""
        ctx = self.ctx
        ctx.snapshot()
        ctx.set_segment(SEG_CS, abi.GUEST_CS, *cache_of(self.gdt.entry(abi.GDT_ENTRY_KERNEL_CS)))
        ctx.set_segment(SEG_SS, ss, *cache_of(self.gdt.entry((ss >> 3) & 31)))
        ctx.set_cpl(abi.GUEST_PL)
        ctx.clear_old_exception()
        ctx.restore()

    def close(self) -> None:
        """Release the Unicorn instance and the switcher pages.  Idempotent."""
        uc = getattr(self, "uc", None)
        if uc is not None:
            uc._Uc__finalizer()
            self.uc = None
            if hasattr(self, "region"):
                self.region.close()


def page_runs(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The pages touched by (addr, length) ranges, as sorted, merged [start, end) runs of whole pages."""
    mask = abi.PAGE_SIZE - 1
    runs: list[tuple[int, int]] = []
    for lo, hi in sorted((a & ~mask, (a + n + mask) & ~mask) for a, n in ranges if n > 0):
        if runs and lo <= runs[-1][1]:
            if hi > runs[-1][1]:
                runs[-1] = (runs[-1][0], hi)
        else:
            runs.append((lo, hi))
    return runs
